//! The tenant's event log: what happened, recorded in the same transaction as the change itself.

use chrono::Utc;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};
use uuid::Uuid;

pub const MESSAGE_RECEIVED: &str = "message.received";
pub const MESSAGE_SENT: &str = "message.sent";
pub const MESSAGE_FAILED: &str = "message.failed";
pub const GRANT_CONNECTED: &str = "grant.connected";
pub const GRANT_REAUTH_REQUIRED: &str = "grant.reauth_required";
pub const GRANT_REVOKED: &str = "grant.revoked";
pub const TOKEN_CONFIG_NEEDS_ADMIN: &str = "token_config.needs_admin";
pub const TOKEN_CONFIG_SECRET_EXPIRING: &str = "token_config.secret_expiring";
pub const WEBHOOK_ENDPOINT_DISABLED: &str = "webhook_endpoint.disabled";

/// Every event type there is. `account.<state>` events are written by the database itself, in the
/// transaction that changes an account's state (migration `observability`), so no code path can miss one.
pub const EVENT_TYPES: &[&str] = &[
    MESSAGE_RECEIVED,
    MESSAGE_SENT,
    MESSAGE_FAILED,
    "account.draft",
    "account.authorized",
    "account.confirmed",
    "account.error",
    "account.disabled",
    GRANT_CONNECTED,
    GRANT_REAUTH_REQUIRED,
    GRANT_REVOKED,
    TOKEN_CONFIG_NEEDS_ADMIN,
    TOKEN_CONFIG_SECRET_EXPIRING,
    WEBHOOK_ENDPOINT_DISABLED,
];

pub async fn record<C: ConnectionTrait>(
    db: &C,
    tenant_id: Uuid,
    event_type: &str,
    resource_type: &str,
    resource_id: Option<Uuid>,
    data: serde_json::Value,
) -> Result<(), DbErr> {
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO events (id, tenant_id, event_type, resource_type, resource_id, data, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        [
            Uuid::now_v7().into(),
            tenant_id.into(),
            event_type.into(),
            resource_type.into(),
            resource_id.into(),
            data.into(),
            Utc::now().into(),
        ],
    ))
    .await
    .map(|_| ())
}
