//! The tenant's event log: what happened, recorded in the same transaction as the change itself.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, QueryResult, Statement};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::access::auth::TenantScope;
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::model::{Page, PageRequest, Role};
use crate::store::ids::TenantId;

pub const MESSAGE_RECEIVED: &str = "message.received";
pub const MESSAGE_SENT: &str = "message.sent";
pub const MESSAGE_FAILED: &str = "message.failed";
pub const MESSAGE_CANCELLED: &str = "message.cancelled";
pub const MESSAGE_RESOLVED: &str = "message.resolved";
pub const MESSAGE_RETRIED: &str = "message.retried";
pub const GRANT_CONNECTED: &str = "grant.connected";
pub const GRANT_REAUTH_REQUIRED: &str = "grant.reauth_required";
pub const GRANT_REVOKED: &str = "grant.revoked";
pub const GRANT_PROVIDER_REVOKED: &str = "grant.provider_revoked";
pub const GRANT_PROVIDER_REVOCATION_FAILED: &str = "grant.provider_revocation_failed";
pub const TOKEN_CONFIG_NEEDS_ADMIN: &str = "token_config.needs_admin";
pub const TOKEN_CONFIG_SECRET_EXPIRING: &str = "token_config.secret_expiring";
pub const TOKEN_CONFIG_SECRET_PROMOTED: &str = "token_config.secret_promoted";
pub const WEBHOOK_ENDPOINT_DISABLED: &str = "webhook_endpoint.disabled";

/// Every event type there is. `account.<state>` events are written by the database itself, in the
/// transaction that changes an account's state (migration `observability`), so no code path can miss one.
pub const EVENT_TYPES: &[&str] = &[
    MESSAGE_RECEIVED,
    MESSAGE_SENT,
    MESSAGE_FAILED,
    MESSAGE_CANCELLED,
    MESSAGE_RESOLVED,
    MESSAGE_RETRIED,
    "account.draft",
    "account.authorized",
    "account.confirmed",
    "account.error",
    "account.disabled",
    GRANT_CONNECTED,
    GRANT_REAUTH_REQUIRED,
    GRANT_REVOKED,
    GRANT_PROVIDER_REVOKED,
    GRANT_PROVIDER_REVOCATION_FAILED,
    TOKEN_CONFIG_NEEDS_ADMIN,
    TOKEN_CONFIG_SECRET_EXPIRING,
    TOKEN_CONFIG_SECRET_PROMOTED,
    WEBHOOK_ENDPOINT_DISABLED,
];

pub async fn record<C: ConnectionTrait>(
    db: &C,
    tenant_id: TenantId,
    event_type: &str,
    resource_type: &str,
    resource_id: Option<Uuid>,
    data: serde_json::Value,
) -> Result<(), DbErr> {
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        format!("{INSERT_EVENT} VALUES ($1, $2, $3, $4, $5, $6, $7)"),
        Pending { tenant_id, event_type, resource_type, resource_id, data }.values(),
    ))
    .await
    .map(|_| ())
}

/// An event written by the same statement as the change it reports (`record_with`): one round trip, no
/// transaction, and recorded exactly when the change happened.
#[derive(Clone)]
pub struct Pending<'a> {
    pub tenant_id: TenantId,
    pub event_type: &'a str,
    pub resource_type: &'a str,
    pub resource_id: Option<Uuid>,
    pub data: Value,
}

/// The insert of one event row, its columns in the order of `Pending::values`.
const INSERT_EVENT: &str = "INSERT INTO events (id, tenant_id, event_type, resource_type, resource_id, data, created_at)";

impl Pending<'_> {
    /// The values of a new event row, in the order of `INSERT_EVENT`.
    fn values(self) -> Vec<sea_orm::Value> {
        vec![
            Uuid::now_v7().into(),
            self.tenant_id.into(),
            self.event_type.into(),
            self.resource_type.into(),
            self.resource_id.into(),
            self.data.into(),
            Utc::now().into(),
        ]
    }
}

/// Runs `change` (a data-modifying statement with `RETURNING`, its values `$1`..`$n` in `values`) and records
/// `event` once for each row it returned, in one statement. Returns how many rows the change returned.
pub async fn record_with<C: ConnectionTrait>(
    db: &C,
    change: &str,
    mut values: Vec<sea_orm::Value>,
    event: Pending<'_>,
) -> Result<u64, DbErr> {
    let sql = format!("WITH changed AS ({change}) {}", insert_per_changed(&mut values, event));
    let done = db.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
    Ok(done.rows_affected())
}

/// The insert recording `event` once for each row of a CTE named `changed`, its values appended to `values` (and
/// bound after those already there): for a statement that makes further changes beside it.
pub fn insert_per_changed(values: &mut Vec<sea_orm::Value>, event: Pending<'_>) -> String {
    let first = values.len() + 1;
    let event = event.values();
    let placeholders: Vec<String> = (first..first + event.len()).map(|n| format!("${n}")).collect();
    values.extend(event);
    format!("{INSERT_EVENT} SELECT {} FROM changed", placeholders.join(", "))
}

/// One event as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema, async_graphql::SimpleObject)]
pub struct Event {
    pub id: Uuid,
    /// One of the event types, e.g. `message.received` or `account.error`.
    pub event_type: String,
    /// What the event is about: `message` (outbound), `received_message`, `account`, `grant`, `token_config`,
    /// `webhook_endpoint`.
    pub resource_type: String,
    pub resource_id: Option<Uuid>,
    /// Details of the change; their shape depends on the event type.
    #[schema(value_type = Object)]
    pub data: async_graphql::Json<Value>,
    pub created_at: DateTime<Utc>,
}

/// Filters of the event list. Every filter is optional; results are newest first.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Event types to include, comma-separated (`types=message.sent,message.failed`) or repeated; all when absent.
    pub types: Option<Vec<String>>,
    /// Only events about this kind of resource (`message`, `received_message`, `account`, `grant`, ...).
    pub resource_type: Option<String>,
    /// Only events about this resource.
    pub resource_id: Option<Uuid>,
    /// Only events created at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Only events created before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// Items per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<Uuid>,
}

/// The event types a filter names: entries may themselves be comma-separated; each must be a known type.
pub fn parse_types<S: AsRef<str>>(entries: &[S]) -> AppResult<Vec<String>> {
    let mut types: Vec<String> = Vec::new();
    for entry in entries {
        for name in entry.as_ref().split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if !EVENT_TYPES.contains(&name) {
                return Err(AppError::validation(
                    "types",
                    "unknown_event_type",
                    format!("unknown event type {name:?}; known types: {}", EVENT_TYPES.join(", ")),
                ));
            }
            if !types.iter().any(|t| t == name) {
                types.push(name.to_owned());
            }
        }
    }
    Ok(types)
}

const COLUMNS: &str = "id, event_type, resource_type, resource_id, data, created_at";

/// Members see only their own accounts (and the mail those received), so not the events about other accounts
/// either: their logins and errors. `?` is the member's subject.
const MEMBER_FILTER: &str = " AND (resource_type NOT IN ('account', 'received_message') OR EXISTS (SELECT 1 FROM \
    email_accounts a WHERE a.tenant_id = events.tenant_id AND a.owner_subject = ? AND a.id = CASE \
    WHEN events.resource_type = 'account' THEN events.resource_id ELSE (events.data->>'account_id')::uuid END))";

fn from_row(row: &QueryResult) -> Result<Event, DbErr> {
    Ok(Event {
        id: row.try_get("", "id")?,
        event_type: row.try_get("", "event_type")?,
        resource_type: row.try_get("", "resource_type")?,
        resource_id: row.try_get("", "resource_id")?,
        data: async_graphql::Json(row.try_get("", "data")?),
        created_at: row.try_get("", "created_at")?,
    })
}

/// The tenant's events, newest first (viewer or above).
pub async fn list(ctx: &AppContext, scope: &TenantScope, query: EventQuery) -> AppResult<Page<Event>> {
    scope.require(Role::Viewer)?;
    let limit = crate::store::limit_of(&PageRequest { limit: query.limit, cursor: query.cursor })?;
    let types = parse_types(query.types.as_deref().unwrap_or_default())?;
    crate::store::check_time_range(query.since, query.until)?;
    let mut sql = format!("SELECT {COLUMNS} FROM events WHERE tenant_id = $1");
    let mut values: Vec<sea_orm::Value> = vec![scope.tenant_id.into()];
    let mut condition = |sql: &mut String, template: &str, value: sea_orm::Value| {
        values.push(value);
        sql.push_str(&template.replace('?', &format!("${}", values.len())));
    };
    if !types.is_empty() {
        sql.push_str(" AND event_type IN (");
        for (i, event_type) in types.into_iter().enumerate() {
            condition(&mut sql, if i == 0 { "?" } else { ", ?" }, event_type.into());
        }
        sql.push(')');
    }
    if let Some(resource_type) = query.resource_type {
        condition(&mut sql, " AND resource_type = ?", resource_type.into());
    }
    if let Some(resource_id) = query.resource_id {
        condition(&mut sql, " AND resource_id = ?", resource_id.into());
    }
    if let Some(since) = query.since {
        condition(&mut sql, " AND created_at >= ?", since.into());
    }
    if let Some(until) = query.until {
        condition(&mut sql, " AND created_at < ?", until.into());
    }
    if let Some(cursor) = query.cursor {
        condition(&mut sql, " AND id < ?", cursor.into());
    }
    if scope.principal.role == Role::Member {
        condition(&mut sql, MEMBER_FILTER, scope.principal.subject.clone().into());
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", limit + 1));
    let rows = ctx.db.query_all_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
    let events = rows.iter().map(from_row).collect::<Result<Vec<_>, DbErr>>()?;
    crate::store::page_of(events, limit, |e| e.id, Ok)
}

/// One of the tenant's events (viewer or above); another tenant's id is not found, nor, for a member, an
/// event about another member's account.
pub async fn get(ctx: &AppContext, scope: &TenantScope, id: Uuid) -> AppResult<Event> {
    scope.require(Role::Viewer)?;
    if scope.principal.role != Role::Member {
        return load(&ctx.db, scope.tenant_id, id).await?.ok_or(AppError::not_found("event"));
    }
    let sql = format!("SELECT {COLUMNS} FROM events WHERE tenant_id = $1 AND id = $2{}", MEMBER_FILTER.replace('?', "$3"));
    let values = [scope.tenant_id.into(), id.into(), scope.principal.subject.clone().into()];
    let row = ctx.db.query_one_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
    row.as_ref().map(from_row).transpose()?.ok_or(AppError::not_found("event"))
}

/// An event by id within a tenant, without an authorization check: for the live event hub, which only
/// hands it to subscribers already scoped to that tenant.
pub async fn load<C: ConnectionTrait>(db: &C, tenant_id: TenantId, id: Uuid) -> Result<Option<Event>, DbErr> {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!("SELECT {COLUMNS} FROM events WHERE tenant_id = $1 AND id = $2"),
            [tenant_id.into(), id.into()],
        ))
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Deletes events older than `days` days (their webhook deliveries and attempts go with them), in batches
/// so a large backlog never holds one long transaction. `0` keeps events forever. Returns how many went.
pub async fn purge_older_than(ctx: &AppContext, days: u32) -> AppResult<u64> {
    if days == 0 {
        return Ok(0);
    }
    // A retention reaching before the calendar's start keeps everything.
    let Some(cutoff) = Utc::now().checked_sub_signed(chrono::Duration::days(i64::from(days))) else { return Ok(0) };
    Ok(crate::store::delete_in_batches(&ctx.db, "events", "created_at < $1", vec![cutoff.into()]).await?)
}
