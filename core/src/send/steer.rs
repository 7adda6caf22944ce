//! The outbox is the user's to steer: cancel a queued message, send a failed or cancelled one again, and settle
//! one whose outcome is `unknown` once the user knows it. Each step changes the row only from the state it
//! starts from (a message a worker has just taken cannot be cancelled under it), and records its event and audit
//! entry in the same transaction.

use async_graphql::{Enum, InputObject};
use chrono::Utc;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseTransaction, QueryFilter, TransactionTrait};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::access::auth::TenantScope;
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::model::{OutboundStatus, Role};
use crate::observe::{audit, events};
use crate::send::outbox::{find_shown, view, OutboundMessage};
use crate::store::entities::outbound_message::{self, Column};
use crate::store::ids::OutboundMessageId;
use crate::store::tenant_owned::TenantOwned;

/// What the user knows of a message whose outcome is `unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Enum, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// It arrived (the recipient has it, or it is in the Sent folder): mark it `sent`.
    Sent,
    /// It did not: queue it again. The recipient may get it twice if it had in fact arrived.
    Resend,
}

#[derive(Clone, Debug, Deserialize, InputObject, ToSchema)]
pub struct ResolveMessage {
    pub outcome: Resolution,
}

/// `queued` → `cancelled`: it will not be sent. A message being sent, or already settled, cannot be.
pub async fn cancel(ctx: &AppContext, scope: &TenantScope, id: OutboundMessageId) -> AppResult<OutboundMessage> {
    scope.require(Role::Member)?;
    let txn = ctx.db.begin().await?;
    let changed = outbound_message::Entity::update_in_tenant(scope.tenant_id)
        .col_expr(Column::Status, Expr::value(OutboundStatus::Cancelled))
        .col_expr(Column::DispatchedUntil, Expr::value(Option::<chrono::DateTime<Utc>>::None))
        .col_expr(Column::UpdatedAt, Expr::cust("now()"))
        .filter(Column::Id.eq(id))
        .filter(Column::Status.eq(OutboundStatus::Queued));
    let Some(message) = changed_row(&txn, scope, id, changed).await? else {
        return Err(not_now(&txn, scope, id, "message_not_cancellable", "only a queued message can be cancelled").await);
    };
    let data = json!({"message_id": message.message_id, "attempts": message.attempts});
    record(&txn, scope, &message, events::MESSAGE_CANCELLED, "message.cancelled", data).await?;
    txn.commit().await?;
    view(message)
}

/// `failed` or `cancelled` → `queued`, its attempts counted from zero again and its last error cleared.
pub async fn retry(ctx: &AppContext, scope: &TenantScope, id: OutboundMessageId) -> AppResult<OutboundMessage> {
    scope.require(Role::Member)?;
    let txn = ctx.db.begin().await?;
    // Read first, in the transaction, so the event can say what it was retried from (a receiver that heard
    // `message.failed` learns the message is on its way again).
    let before = find_shown(&txn, scope.tenant_id, id).await?;
    let changed = requeue(scope)
        .filter(Column::Id.eq(id))
        .filter(Column::Status.is_in([OutboundStatus::Failed, OutboundStatus::Cancelled]))
        .filter(Column::Status.eq(before.status));
    let Some(message) = changed_row(&txn, scope, id, changed).await? else {
        return Err(not_now(&txn, scope, id, "message_not_retryable", "only a failed or cancelled message can be retried").await);
    };
    let data = json!({"message_id": message.message_id, "previous_status": before.status});
    record(&txn, scope, &message, events::MESSAGE_RETRIED, "message.retried", data).await?;
    txn.commit().await?;
    view(message)
}

/// `unknown` → `sent` or back to `queued`, as the user says. The event says which, and who said it is audited.
pub async fn resolve(
    ctx: &AppContext,
    scope: &TenantScope,
    id: OutboundMessageId,
    input: ResolveMessage,
) -> AppResult<OutboundMessage> {
    scope.require(Role::Member)?;
    let txn = ctx.db.begin().await?;
    let changed = match input.outcome {
        Resolution::Sent => released(outbound_message::Entity::update_in_tenant(scope.tenant_id))
            .col_expr(Column::Status, Expr::value(OutboundStatus::Sent))
            // When it was handed to the server is the best knowledge of when it went.
            .col_expr(Column::SentAt, Expr::cust("COALESCE(handed_at, now())"))
            .col_expr(Column::LastError, Expr::value(Option::<String>::None))
            .col_expr(Column::UpdatedAt, Expr::cust("now()")),
        Resolution::Resend => requeue(scope),
    };
    let changed = changed.filter(Column::Id.eq(id)).filter(Column::Status.eq(OutboundStatus::Unknown));
    let Some(message) = changed_row(&txn, scope, id, changed).await? else {
        return Err(
            not_now(&txn, scope, id, "message_not_unknown", "only a message whose outcome is unknown can be resolved").await
        );
    };
    let data = json!({"message_id": message.message_id, "outcome": input.outcome, "status": message.status});
    record(&txn, scope, &message, events::MESSAGE_RESOLVED, "message.resolved", data).await?;
    txn.commit().await?;
    view(message)
}

/// Back in the queue, due now, its attempts counted from zero, with nothing of the last try left on it. "Now" is
/// the transaction's own `now()`: the trigger that announces a due message compares with it, and the API's clock
/// (later than the transaction's start, or set apart from Postgres's) would leave the message unannounced until
/// the scheduler's next pass.
fn requeue(scope: &TenantScope) -> sea_orm::UpdateMany<outbound_message::Entity> {
    let none = Option::<chrono::DateTime<Utc>>::None;
    released(outbound_message::Entity::update_in_tenant(scope.tenant_id))
        .col_expr(Column::Status, Expr::value(OutboundStatus::Queued))
        .col_expr(Column::Attempts, Expr::value(0))
        .col_expr(Column::NextAttemptAt, Expr::cust("now()"))
        .col_expr(Column::HandedAt, Expr::value(none))
        .col_expr(Column::DispatchedUntil, Expr::value(none))
        .col_expr(Column::SentFolderCheckedAt, Expr::value(none))
        .col_expr(Column::LastError, Expr::value(Option::<String>::None))
        .col_expr(Column::SmtpReply, Expr::value(Option::<String>::None))
        .col_expr(Column::UpdatedAt, Expr::cust("now()"))
}

/// The user's word settles it: a worker still holding an old lease (an `unknown` message keeps its token, so a late
/// true answer can land) may no longer write over it.
fn released(update: sea_orm::UpdateMany<outbound_message::Entity>) -> sea_orm::UpdateMany<outbound_message::Entity> {
    update
        .col_expr(Column::LeaseToken, Expr::value(Option::<uuid::Uuid>::None))
        .col_expr(Column::LeasedBy, Expr::value(Option::<uuid::Uuid>::None))
        .col_expr(Column::LeaseUntil, Expr::value(Option::<chrono::DateTime<Utc>>::None))
}

/// Runs a step's update; the message as it now is when the step applied (without its raw bytes, which the answer
/// and the event never show: `RETURNING *` would send up to the sending maximum back), `None` when it did not.
async fn changed_row(
    txn: &DatabaseTransaction,
    scope: &TenantScope,
    id: OutboundMessageId,
    update: sea_orm::UpdateMany<outbound_message::Entity>,
) -> AppResult<Option<outbound_message::Model>> {
    if update.exec(txn).await?.rows_affected == 0 {
        return Ok(None);
    }
    Ok(Some(find_shown(txn, scope.tenant_id, id).await?))
}

/// Why nothing changed: the message is not the tenant's (404), or not in the state the step starts from (409,
/// naming the state it is in).
async fn not_now(
    txn: &DatabaseTransaction,
    scope: &TenantScope,
    id: OutboundMessageId,
    code: &'static str,
    rule: &str,
) -> AppError {
    match find_shown(txn, scope.tenant_id, id).await {
        Ok(message) => AppError::Conflict { code, message: format!("the message is {}; {rule}", message.status.as_str()) },
        Err(e) => e,
    }
}

async fn record(
    txn: &DatabaseTransaction,
    scope: &TenantScope,
    message: &outbound_message::Model,
    event_type: &str,
    action: &str,
    data: serde_json::Value,
) -> AppResult<()> {
    events::record(txn, message.tenant_id, event_type, "message", Some(message.id.into()), data.clone()).await?;
    audit::record_in_tenant(txn, scope, action, message.id.into(), audit::Changes::new().set("event", Some(data))).await
}
