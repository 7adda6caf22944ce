//! Client secrets near their recorded expiry: the list admins read, and the daily scan that records one event per
//! window crossed.

use chrono::Utc;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, TransactionTrait};

use super::view;
use super::TokenConfig;
use crate::access::auth::TenantScope;
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::model::{ExpiringQuery, Role};
use crate::store::entities::token_config;
use crate::store::tenant_owned::TenantOwned;

/// Configurations whose client secret expires within `within_days` (default 30), soonest first: an
/// expired secret stops every grant of that app at once.
pub async fn expiring(ctx: &AppContext, scope: &TenantScope, query: ExpiringQuery) -> AppResult<Vec<TokenConfig>> {
    scope.require(Role::Viewer)?;
    let days = query.within_days.unwrap_or(30);
    if !(0..=365).contains(&days) {
        return Err(AppError::validation("within_days", "invalid_window", "within_days must be between 0 and 365"));
    }
    let horizon = Utc::now().date_naive() + chrono::Duration::days(days);
    let rows = token_config::Entity::in_tenant(scope.tenant_id)
        .filter(token_config::Column::ClientSecretExpiresAt.lte(horizon))
        .order_by_asc(token_config::Column::ClientSecretExpiresAt)
        .order_by_asc(token_config::Column::Id)
        .all(&ctx.db)
        .await?;
    rows.into_iter().map(|m| view(ctx, m)).collect()
}

/// Warning windows for an expiring client secret, in days.
pub const SECRET_EXPIRY_WINDOWS: [i32; 3] = [30, 14, 1];

/// The smallest warning window that `days_left` falls in, if any.
pub fn expiry_window(days_left: i64) -> Option<i32> {
    SECRET_EXPIRY_WINDOWS.iter().rev().copied().find(|w| days_left <= i64::from(*w))
}

/// Records `token_config.secret_expiring` once per window (30, 14, 1 days) for every tenant; run periodically.
pub async fn scan_secret_expiry(ctx: &AppContext) -> AppResult<u64> {
    let today = Utc::now().date_naive();
    let horizon = today + chrono::Duration::days(i64::from(SECRET_EXPIRY_WINDOWS[0]));
    let candidates =
        token_config::Entity::find().filter(token_config::Column::ClientSecretExpiresAt.lte(horizon)).all(&ctx.db).await?;
    let mut recorded = 0;
    for config in candidates {
        let Some(expires) = config.client_secret_expires_at else { continue };
        let days_left = (expires - today).num_days();
        let Some(window) = expiry_window(days_left) else { continue };
        if config.secret_expiry_notified_days.is_some_and(|done| done <= window) {
            continue;
        }
        let txn = ctx.db.begin().await?;
        // Compare-and-set, so two workers scanning at once announce a window only once.
        let claimed = token_config::Entity::update_many()
            .col_expr(token_config::Column::SecretExpiryNotifiedDays, sea_orm::sea_query::Expr::value(window))
            .filter(token_config::Column::Id.eq(config.id))
            .filter(
                sea_orm::Condition::any()
                    .add(token_config::Column::SecretExpiryNotifiedDays.is_null())
                    .add(token_config::Column::SecretExpiryNotifiedDays.gt(window)),
            )
            .exec(&txn)
            .await?;
        if claimed.rows_affected == 1 {
            crate::observe::events::record(
                &txn,
                config.tenant_id,
                crate::observe::events::TOKEN_CONFIG_SECRET_EXPIRING,
                "token_config",
                Some(config.id.into()),
                serde_json::json!({"name": config.name, "expires_on": expires, "days_left": days_left, "window_days": window}),
            )
            .await?;
            recorded += 1;
        }
        txn.commit().await?;
    }
    Ok(recorded)
}
