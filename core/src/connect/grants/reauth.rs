//! A grant the provider no longer accepts: it needs consent again, its accounts go to error, an event says so.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, QuerySelect};
use serde_json::json;

use crate::connect::account_lifecycle::{self, AccountEvent};
use crate::error::AppResult;
use crate::failure::FailureKind;
use crate::model::{AccountState, GrantStatus};
use crate::observe::events;
use crate::store::entities::{email_account, grant};
use crate::store::ids::{TenantId, TokenConfigId};
use crate::store::tenant_owned::TenantOwned;

/// `invalid_grant` and friends: the grant needs re-consent, its accounts are in error, an event says so.
pub(super) async fn bury_grant(
    txn: &DatabaseTransaction,
    model: &grant::Model,
    message: &str,
    kind: &FailureKind,
) -> AppResult<()> {
    let now = Utc::now();
    grant::Entity::update_many()
        .col_expr(grant::Column::Status, Expr::value(GrantStatus::ReauthRequired))
        .col_expr(grant::Column::LastError, Expr::value(message))
        .col_expr(grant::Column::LastErrorKind, Expr::value(kind.clone()))
        .col_expr(grant::Column::UpdatedAt, Expr::value(now))
        .filter(grant::Column::Id.eq(model.id))
        .exec(txn)
        .await?;
    email_account::Entity::update_in_tenant(model.tenant_id)
        .col_expr(email_account::Column::State, Expr::cust(account_lifecycle::sql_after(AccountEvent::Failed)))
        .col_expr(email_account::Column::LastError, Expr::value(format!("sign-in needed again: {message}")))
        .col_expr(email_account::Column::LastErrorKind, Expr::value(kind.clone()))
        .col_expr(email_account::Column::UpdatedAt, Expr::value(now))
        .filter(email_account::Column::GrantId.eq(model.id))
        .filter(email_account::Column::State.ne(AccountState::Disabled))
        .exec(txn)
        .await?;
    events::record(
        txn,
        model.tenant_id,
        events::GRANT_REAUTH_REQUIRED,
        "grant",
        Some(model.id.into()),
        json!({"subject": model.subject, "error": message}),
    )
    .await?;
    Ok(())
}

/// The configuration's endpoints changed: every grant it holds came from the old ones. Each one still valid needs
/// consent again (its accounts in error, an event each, as after `invalid_grant`), and no grant keeps tokens the
/// new endpoints could be sent. Returns how many grants were sent to re-consent.
pub(crate) async fn require_reauth_for_config(
    txn: &DatabaseTransaction,
    tenant_id: TenantId,
    config_id: TokenConfigId,
    message: &str,
) -> AppResult<u64> {
    let held =
        grant::Entity::in_tenant(tenant_id).filter(grant::Column::TokenConfigId.eq(config_id)).lock_exclusive().all(txn).await?;
    let mut buried = 0;
    for model in held.iter().filter(|g| g.status == GrantStatus::Valid) {
        bury_grant(txn, model, message, &FailureKind::REAUTH_REQUIRED).await?;
        buried += 1;
    }
    grant::Entity::update_in_tenant(tenant_id)
        .col_expr(grant::Column::AccessToken, Expr::value(Option::<String>::None))
        .col_expr(grant::Column::RefreshToken, Expr::value(Option::<String>::None))
        .col_expr(grant::Column::ExpiresAt, Expr::value(Option::<DateTime<Utc>>::None))
        .col_expr(grant::Column::RefreshAt, Expr::value(Option::<DateTime<Utc>>::None))
        .col_expr(grant::Column::NextRefreshAt, Expr::value(Option::<DateTime<Utc>>::None))
        .filter(grant::Column::TokenConfigId.eq(config_id))
        .exec(txn)
        .await?;
    Ok(buried)
}
