//! Storing a new grant and linking it to the accounts it serves.

use chrono::Utc;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, DatabaseTransaction, IntoActiveModel, QueryFilter, QuerySelect, Set};
use uuid::Uuid;

use super::refresh_at_for;
use super::tokens::mark_fresh;
use crate::connect::account_lifecycle::{self, AccountEvent};
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::failure::FailureKind;
use crate::model::{AuthMethod, GrantStatus};
use crate::observe::events;
use crate::protocols::oauth::{ConsentIdentity, TokenSet};
use crate::secrets;
use crate::store::entities::{email_account, grant};
use crate::store::ids::{GrantId, TenantId, TokenConfigId};
use crate::store::is_unique_violation;
use crate::store::json::StringList;
use crate::store::tenant_owned::TenantOwned;

/// A user-flow consent (or import) for one mailbox: who it is, who the provider says it was, who started it.
pub(super) struct MailboxConsent<'a> {
    /// The mailbox login, lower-cased.
    pub(super) login: &'a str,
    pub(super) identity: &'a ConsentIdentity,
    /// The Postbridge caller that started it.
    pub(super) connected_by: &'a str,
    /// The owner of the account it was started for (with `connected_by`, whose accounts of the mailbox are linked).
    pub(super) account_owner: &'a str,
}

/// Stores the mailbox's grant, links the mailbox's accounts of its owners to it and records `grant.connected`
/// (with `extra` fields), in `txn`. A concurrent authorization of the same mailbox is `AppError::Conflict`.
pub(super) async fn connect_mailbox(
    ctx: &AppContext,
    txn: &DatabaseTransaction,
    tenant_id: TenantId,
    config_id: TokenConfigId,
    consent: MailboxConsent<'_>,
    tokens: &TokenSet,
    extra: serde_json::Value,
) -> AppResult<Uuid> {
    let MailboxConsent { login, identity, connected_by, account_owner } = consent;
    let connection = Connection { subject: login, consented_by: identity.username.clone(), connected_by };
    let grant_id = store_grant(ctx, txn, tenant_id, config_id, connection, tokens).await?;
    let owners = [connected_by, account_owner];
    let linked = link_accounts(txn, tenant_id, config_id, LinkTo::Mailbox { login, owners }, grant_id.into()).await?;
    let mut data = serde_json::json!({"token_config_id": config_id, "subject": login, "consented_by": identity.username,
                                      "consented_by_id": identity.stable_id(), "accounts": linked});
    if let (Some(data), serde_json::Value::Object(extra)) = (data.as_object_mut(), extra) {
        data.extend(extra);
    }
    events::record(txn, tenant_id, events::GRANT_CONNECTED, "grant", Some(grant_id), data).await?;
    Ok(grant_id)
}

/// Whose grant is stored, and by whom.
pub(super) struct Connection<'a> {
    /// The mailbox login (lower-cased), or `app`.
    pub(super) subject: &'a str,
    /// Who consented, as the provider said.
    pub(super) consented_by: Option<String>,
    /// The Postbridge caller that started it.
    pub(super) connected_by: &'a str,
}

/// Creates or replaces (re-consent) the grant of `subject` at `config`, tokens encrypted.
pub(super) async fn store_grant(
    ctx: &AppContext,
    txn: &DatabaseTransaction,
    tenant_id: TenantId,
    config_id: TokenConfigId,
    connection: Connection<'_>,
    tokens: &TokenSet,
) -> AppResult<Uuid> {
    let Connection { subject, consented_by, connected_by } = connection;
    let existing = grant::Entity::in_tenant(tenant_id)
        .filter(grant::Column::TokenConfigId.eq(config_id))
        .filter(grant::Column::Subject.eq(subject))
        .lock_exclusive()
        .one(txn)
        .await?;
    let id = existing.as_ref().map(|g| g.id).unwrap_or_else(GrantId::new);
    let access = secrets::GRANT_ACCESS_TOKEN.seal(&ctx.cipher, tenant_id, id, &tokens.access_token)?;
    let refresh =
        tokens.refresh_token.as_deref().map(|t| secrets::GRANT_REFRESH_TOKEN.seal(&ctx.cipher, tenant_id, id, t)).transpose()?;
    let now = Utc::now();
    let scopes = StringList(tokens.scopes.clone());
    match existing {
        Some(model) => {
            let keep_refresh = model.refresh_token.clone();
            let mut active = model.into_active_model();
            active.access_token = Set(Some(access));
            active.refresh_token = Set(refresh.or(keep_refresh));
            active.expires_at = Set(tokens.expires_at);
            active.refresh_at = Set(refresh_at_for(tokens.expires_at, now));
            active.scopes = Set(scopes);
            active.consented_by = Set(consented_by);
            active.connected_by = Set(Some(connected_by.to_owned()));
            mark_fresh(&mut active, now);
            active.update(txn).await?;
        }
        None => {
            let inserted = grant::ActiveModel {
                id: Set(id),
                tenant_id: Set(tenant_id),
                token_config_id: Set(config_id),
                subject: Set(subject.to_owned()),
                consented_by: Set(consented_by),
                connected_by: Set(Some(connected_by.to_owned())),
                access_token: Set(Some(access)),
                refresh_token: Set(refresh),
                expires_at: Set(tokens.expires_at),
                refresh_at: Set(refresh_at_for(tokens.expires_at, now)),
                scopes: Set(scopes),
                status: Set(GrantStatus::Valid),
                last_error: Set(None),
                last_error_kind: Set(None),
                refresh_failures: Set(0),
                next_refresh_at: Set(None),
                refreshing_until: Set(None),
                last_refreshed_at: Set(Some(now)),
                created_at: Set(now),
                updated_at: Set(now),
            }
            .insert(txn)
            .await;
            match inserted {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => {
                    return Err(AppError::Conflict {
                        code: "concurrent_authorization",
                        message: "another authorization of this mailbox finished at the same moment; try again".to_owned(),
                    })
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(id.into())
}

/// Which accounts a new grant is linked to.
pub(super) enum LinkTo<'a> {
    /// User flow: the mailbox's accounts (inbound and outbound) owned by the caller who started the consent or by
    /// the owner of the account it was started for; another member's account of the same login stays unlinked.
    Mailbox { login: &'a str, owners: [&'a str; 2] },
    /// App flow: every account of the configuration an admin created or authorized.
    ApprovedAccounts,
}

/// Points the accounts `to` names at the grant and marks them authorized.
pub(super) async fn link_accounts(
    txn: &DatabaseTransaction,
    tenant_id: TenantId,
    config_id: TokenConfigId,
    to: LinkTo<'_>,
    grant_id: GrantId,
) -> AppResult<u64> {
    let mut update = email_account::Entity::update_in_tenant(tenant_id)
        .col_expr(email_account::Column::GrantId, Expr::value(grant_id))
        .col_expr(email_account::Column::State, Expr::cust(account_lifecycle::sql_after(AccountEvent::GrantLinked)))
        .col_expr(email_account::Column::LastError, Expr::value(Option::<String>::None))
        .col_expr(email_account::Column::LastErrorKind, Expr::value(Option::<FailureKind>::None))
        .col_expr(email_account::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(email_account::Column::TokenConfigId.eq(config_id))
        .filter(email_account::Column::AuthMethod.eq(AuthMethod::Oauth2));
    match to {
        LinkTo::Mailbox { login, owners } => {
            update = update
                .filter(Expr::cust_with_values("lower(login) = $1", [login.to_lowercase()]))
                .filter(email_account::Column::OwnerSubject.is_in(owners));
        }
        LinkTo::ApprovedAccounts => update = update.filter(email_account::Column::AppGrantApproved.eq(true)),
    }
    Ok(update.exec(txn).await?.rows_affected)
}
