//! Webhooks: per-tenant endpoints and the delivery of every event to them, signed the Standard Webhooks way
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`).
//!
//! Deliveries are created by the database in the transaction that inserts an event ([`FAN_OUT_TRIGGER`], from
//! migration `observability`), so no code path can miss one. The scheduler claims due deliveries
//! ([`claim_due_webhooks`]); the worker delivers each under a lease ([`deliver`]), retries it on
//! `settings.webhooks.retry_schedule`, and disables an endpoint whose every attempt has failed for
//! `settings.webhooks.disable_after` (recording `webhook_endpoint.disabled` in the same transaction).

use std::time::Instant;

use async_graphql::MaybeUndefined;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sea_orm::{ConnectionTrait, DbBackend, FromQueryResult, Statement, TransactionTrait};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::Sha256;
use uuid::Uuid;

use super::audit;
use super::events;
use crate::access::auth::TenantScope;
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::jobs::scheduler;
use crate::model::{Page, PageRequest, Role};
use crate::secrets::{self, SealedColumn};
use crate::store::limit_of;
use crate::store::page_of;
use crate::validate;

const SECRET_PREFIX: &str = "whsec_";
/// How long the previous secret keeps signing after a rotation, so a receiver can switch over without
/// refusing deliveries in between.
const PREVIOUS_SECRET_GRACE_HOURS: i32 = 24;
const MAX_URL_LEN: usize = 2000;
/// Attempt errors are the receiver's or the network's words; keep the log readable.
const MAX_ERROR_CHARS: usize = 500;
/// A lease outlives the request timeout by this much, so a slow attempt is never run twice at once.
const LEASE_MARGIN_SECONDS: f64 = 30.0;
const USER_AGENT: &str = concat!("Postbridge-Webhooks/", env!("CARGO_PKG_VERSION"));

// ---- views and inputs ----

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema, async_graphql::SimpleObject)]
pub struct WebhookEndpoint {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub url: String,
    pub description: Option<String>,
    /// Event types delivered to this endpoint; empty: every type.
    pub event_types: Vec<String>,
    pub enabled: bool,
    /// Why Postbridge disabled the endpoint (it kept failing); cleared when it is enabled again.
    pub disabled_reason: Option<String>,
    /// Since when every delivery attempt has failed; cleared by a success.
    pub failing_since: Option<DateTime<Utc>>,
    /// After a rotation, deliveries are signed with the previous secret too until then.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An endpoint with its signing secret: answered only by create and rotate-secret.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema, async_graphql::SimpleObject)]
pub struct WebhookEndpointSecret {
    pub endpoint: WebhookEndpoint,
    /// The signing secret (`whsec_` + base64 key). Shown only in this response; store it now.
    pub secret: String,
}

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema, async_graphql::InputObject)]
pub struct CreateWebhookEndpoint {
    /// https:// URL that receives the deliveries (POST, JSON).
    pub url: String,
    pub description: Option<String>,
    /// Event types to deliver (see the event types list); empty or absent: every type.
    pub event_types: Option<Vec<String>>,
    /// Default true.
    pub enabled: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema, async_graphql::InputObject)]
pub struct UpdateWebhookEndpoint {
    pub url: Option<String>,
    /// `null` clears it.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub description: MaybeUndefined<String>,
    /// Replaces the list; empty: every type.
    pub event_types: Option<Vec<String>>,
    /// `true` also clears the reason Postbridge disabled it and its failure streak.
    pub enabled: Option<bool>,
}

pub use crate::model::WebhookDeliveryStatus;

/// The trigger on `events` that fans each inserted event out: one `pending` delivery per enabled endpoint of the
/// event's tenant subscribed to its type (no `event_types`: every type), plus a `NOTIFY postbridge_events` for live
/// subscriptions, all in the transaction that records the event (function `postbridge_events_inserted`).
pub const FAN_OUT_TRIGGER: &str = "events_inserted";

/// One event's delivery to one endpoint.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema, async_graphql::SimpleObject)]
pub struct WebhookDelivery {
    pub endpoint_id: Uuid,
    /// The event, and the `webhook-id` of every attempt.
    pub event_id: Uuid,
    pub event_type: String,
    pub status: WebhookDeliveryStatus,
    pub attempts: i32,
    /// When the next attempt is due (pending deliveries only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One HTTP attempt of a delivery: the delivery log.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema, async_graphql::SimpleObject)]
pub struct WebhookAttempt {
    pub id: Uuid,
    pub endpoint_id: Uuid,
    pub event_id: Uuid,
    /// 1 for the first attempt of a delivery.
    pub attempt: i32,
    /// The receiver's HTTP status; absent when no answer came (connection error, timeout).
    pub status_code: Option<i32>,
    pub latency_ms: i32,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    pub status: Option<WebhookDeliveryStatus>,
    /// Items per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<Uuid>,
}

#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AttemptQuery {
    /// Only the attempts of this event's delivery.
    pub event_id: Option<Uuid>,
    /// Items per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<Uuid>,
}

// ---- storage ----

#[derive(Debug, FromQueryResult)]
struct EndpointRow {
    id: Uuid,
    tenant_id: Uuid,
    url: String,
    description: Option<String>,
    event_types: Value,
    enabled: bool,
    disabled_reason: Option<String>,
    secret: String,
    previous_secret: Option<String>,
    previous_secret_expires_at: Option<DateTime<Utc>>,
    failing_since: Option<DateTime<Utc>>,
    created_by: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// Columns of [`EndpointRow`]; `event_types` is read as JSON (the driver is built without array support).
const ENDPOINT_COLUMNS: &str = "id, tenant_id, url, description, to_jsonb(event_types) AS event_types, enabled, \
    disabled_reason, secret, previous_secret, previous_secret_expires_at, failing_since, created_by, created_at, updated_at";

/// `event_types` written from a JSON list parameter.
fn event_types_sql(param: usize) -> String {
    format!("ARRAY(SELECT jsonb_array_elements_text(${param}::jsonb))")
}

fn statement(sql: impl Into<String>, values: Vec<sea_orm::Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

fn view(row: EndpointRow) -> AppResult<WebhookEndpoint> {
    let event_types: Vec<String> = serde_json::from_value(row.event_types)
        .map_err(|e| AppError::Internal(anyhow::anyhow!("webhook_endpoints.event_types is not a text list: {e}")))?;
    Ok(WebhookEndpoint {
        id: row.id,
        tenant_id: row.tenant_id,
        url: row.url,
        description: row.description,
        event_types,
        enabled: row.enabled,
        disabled_reason: row.disabled_reason,
        failing_since: row.failing_since,
        previous_secret_expires_at: row.previous_secret_expires_at.filter(|at| *at > Utc::now()),
        created_by: row.created_by,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

async fn one_endpoint<C: ConnectionTrait>(db: &C, stmt: Statement) -> AppResult<Option<EndpointRow>> {
    let row = db.query_one_raw(stmt).await?;
    row.map(|r| EndpointRow::from_query_result(&r, "")).transpose().map_err(Into::into)
}

/// An endpoint of the tenant; any other id answers not found.
async fn find<C: ConnectionTrait>(db: &C, tenant_id: Uuid, id: Uuid) -> AppResult<EndpointRow> {
    let sql = format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2");
    one_endpoint(db, statement(sql, vec![id.into(), tenant_id.into()])).await?.ok_or(AppError::not_found("webhook endpoint"))
}

// ---- secrets and signatures ----

/// A new signing secret: `whsec_` and 32 random bytes in base64, as Standard Webhooks libraries expect.
fn generate_secret() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    format!("{SECRET_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(key))
}

fn decrypt(ctx: &AppContext, row: &EndpointRow, column: SealedColumn, stored: &str) -> AppResult<String> {
    Ok(column.open(&ctx.cipher, row.tenant_id, row.id, stored)?)
}

/// The secrets deliveries are signed with: the current one, and the previous one until it expires.
fn signing_secrets(ctx: &AppContext, row: &EndpointRow) -> AppResult<Vec<String>> {
    let mut secrets = vec![decrypt(ctx, row, secrets::WEBHOOK_SECRET, &row.secret)?];
    if let (Some(previous), Some(expires)) = (&row.previous_secret, row.previous_secret_expires_at) {
        if expires > Utc::now() {
            secrets.push(decrypt(ctx, row, secrets::WEBHOOK_PREVIOUS_SECRET, previous)?);
        }
    }
    Ok(secrets)
}

/// `v1,<base64(HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}"))>`, the key being the base64 part of `whsec_...`.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &str) -> AppResult<String> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| AppError::Internal(anyhow::anyhow!("a stored webhook secret is not base64: {e}")))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key)
        .map_err(|e| AppError::Internal(anyhow::anyhow!("webhook signing key rejected: {e}")))?;
    mac.update(format!("{msg_id}.{timestamp}.{body}").as_bytes());
    Ok(format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())))
}

// ---- validation ----

async fn check_url(ctx: &AppContext, raw: &str) -> AppResult<String> {
    let raw = raw.trim();
    if raw.len() > MAX_URL_LEN {
        return Err(AppError::validation("url", "too_long", format!("url must be at most {MAX_URL_LEN} characters")));
    }
    Ok(ctx.guard.check_url_for_storage(raw, "url").await?.to_string())
}

fn check_description(description: Option<String>) -> AppResult<Option<String>> {
    match description.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => validate::non_empty("description", text, 500).map(Some),
    }
}

/// Known event types, each once, in the order given.
fn check_event_types(types: Vec<String>) -> AppResult<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(types.len());
    for event_type in types {
        let event_type = event_type.trim().to_owned();
        if !events::EVENT_TYPES.contains(&event_type.as_str()) {
            return Err(AppError::validation(
                "event_types",
                "unknown_event_type",
                format!("event_types: unknown event type {event_type:?}; known types: {}", events::EVENT_TYPES.join(", ")),
            ));
        }
        if !out.contains(&event_type) {
            out.push(event_type);
        }
    }
    Ok(out)
}

fn json_list(items: &[String]) -> Value {
    Value::Array(items.iter().cloned().map(Value::String).collect())
}

// ---- endpoints ----

/// Creates an endpoint (admin); the answer carries its signing secret, the only time it is shown.
pub async fn create(ctx: &AppContext, scope: &TenantScope, input: CreateWebhookEndpoint) -> AppResult<WebhookEndpointSecret> {
    scope.require(Role::Admin)?;
    let url = check_url(ctx, &input.url).await?;
    let description = check_description(input.description)?;
    let event_types = check_event_types(input.event_types.unwrap_or_default())?;
    let enabled = input.enabled.unwrap_or(true);
    let id = Uuid::now_v7();
    let secret = generate_secret();
    let stored = secrets::WEBHOOK_SECRET.seal(&ctx.cipher, scope.tenant_id, id, &secret)?;
    let sql = format!(
        "INSERT INTO webhook_endpoints (id, tenant_id, url, description, event_types, enabled, secret, created_by) \
         VALUES ($1, $2, $3, $4, {}, $6, $7, $8) RETURNING {ENDPOINT_COLUMNS}",
        event_types_sql(5)
    );
    let values = vec![
        id.into(),
        scope.tenant_id.into(),
        url.clone().into(),
        description.clone().into(),
        json_list(&event_types).into(),
        enabled.into(),
        stored.into(),
        scope.principal.subject.clone().into(),
    ];
    let changes = audit::Changes::new()
        .set("url", Some(&url))
        .set("description", description.as_ref())
        .set("event_types", Some(&event_types))
        .set("enabled", Some(enabled))
        .secret("secret", true);
    let txn = ctx.db.begin().await?;
    let row = one_endpoint(&txn, statement(sql, values))
        .await?
        .ok_or_else(|| AppError::Internal(anyhow::anyhow!("INSERT .. RETURNING gave no row")))?;
    audit::record_in_tenant(&txn, scope, "webhook_endpoint.created", id, changes).await?;
    txn.commit().await?;
    Ok(WebhookEndpointSecret { endpoint: view(row)?, secret })
}

/// A receiver's URL often is a bearer secret itself (a token in its path or query): only admins see it whole;
/// everyone else, and every event, sees its origin only.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(url) => {
            let hidden = url.path() != "/" || url.query().is_some() || url.fragment().is_some();
            let origin = url.origin().ascii_serialization();
            if hidden {
                format!("{origin}/…")
            } else {
                origin
            }
        }
        Err(_) => "(hidden)".to_owned(),
    }
}

fn view_for(scope: &TenantScope, row: EndpointRow) -> AppResult<WebhookEndpoint> {
    let mut endpoint = view(row)?;
    if !matches!(scope.principal.role, Role::Admin | Role::Operator) {
        endpoint.url = redact_url(&endpoint.url);
    }
    Ok(endpoint)
}

pub async fn list(ctx: &AppContext, scope: &TenantScope, page: PageRequest) -> AppResult<Page<WebhookEndpoint>> {
    scope.require(Role::Viewer)?;
    let limit = limit_of(&page)?;
    let mut sql = format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant_id = $1");
    let mut values: Vec<sea_orm::Value> = vec![scope.tenant_id.into()];
    if let Some(cursor) = page.cursor {
        values.push(cursor.into());
        sql.push_str(" AND id > $2");
    }
    sql.push_str(&format!(" ORDER BY id LIMIT {}", limit + 1));
    let rows = ctx.db.query_all_raw(statement(sql, values)).await?;
    let rows = rows.iter().map(|r| EndpointRow::from_query_result(r, "")).collect::<Result<Vec<_>, _>>()?;
    page_of(rows, limit, |r| r.id, |row| view_for(scope, row))
}

pub async fn get(ctx: &AppContext, scope: &TenantScope, id: Uuid) -> AppResult<WebhookEndpoint> {
    scope.require(Role::Viewer)?;
    view_for(scope, find(&ctx.db, scope.tenant_id, id).await?)
}

/// Changes an endpoint (admin). Disabling it fails its pending deliveries; enabling it clears the reason
/// Postbridge disabled it and its failure streak.
pub async fn update(ctx: &AppContext, scope: &TenantScope, id: Uuid, input: UpdateWebhookEndpoint) -> AppResult<WebhookEndpoint> {
    // Look up first: another tenant's id answers 404 whatever the caller's role.
    let current = find(&ctx.db, scope.tenant_id, id).await?;
    scope.require(Role::Admin)?;
    let new_url = match &input.url {
        Some(url) => Some(check_url(ctx, url).await?),
        None => None,
    };
    let description = match input.description.clone() {
        MaybeUndefined::Undefined => current.description.clone(),
        MaybeUndefined::Null => None,
        MaybeUndefined::Value(text) => check_description(Some(text))?,
    };
    let new_event_types = input.event_types.map(check_event_types).transpose()?;
    let current_view = view(current)?;
    let enabled = input.enabled.unwrap_or(current_view.enabled);
    let event_types = new_event_types.clone().unwrap_or_else(|| current_view.event_types.clone());
    let url = new_url.clone().unwrap_or_else(|| current_view.url.clone());
    // Column references on the right-hand side are the row's values before this update.
    let sql = format!(
        "UPDATE webhook_endpoints SET url = $3, description = $4, event_types = {}, enabled = $6, \
         disabled_reason = CASE WHEN $6 THEN NULL ELSE disabled_reason END, \
         failing_since = CASE WHEN $6 AND NOT enabled THEN NULL ELSE failing_since END, updated_at = now() \
         WHERE id = $1 AND tenant_id = $2 RETURNING {ENDPOINT_COLUMNS}",
        event_types_sql(5)
    );
    let values = vec![
        id.into(),
        scope.tenant_id.into(),
        url.into(),
        description.clone().into(),
        json_list(&event_types).into(),
        enabled.into(),
    ];
    let description_change = match &input.description {
        MaybeUndefined::Undefined => None,
        _ => Some(&description),
    };
    let changes = audit::Changes::new()
        .set("url", new_url.as_ref())
        .set("description", description_change)
        .set("event_types", new_event_types.as_ref())
        .set("enabled", input.enabled);
    let txn = ctx.db.begin().await?;
    let row = one_endpoint(&txn, statement(sql, values)).await?.ok_or(AppError::not_found("webhook endpoint"))?;
    if current_view.enabled && !enabled {
        fail_pending(&txn, id, "the endpoint was disabled").await?;
    }
    audit::record_in_tenant(&txn, scope, "webhook_endpoint.updated", id, changes).await?;
    txn.commit().await?;
    view(row)
}

/// Deletes an endpoint (admin) with its deliveries and their log.
pub async fn delete(ctx: &AppContext, scope: &TenantScope, id: Uuid) -> AppResult<()> {
    let current = find(&ctx.db, scope.tenant_id, id).await?;
    scope.require(Role::Admin)?;
    let txn = ctx.db.begin().await?;
    let deleted = txn
        .execute_raw(statement(
            "DELETE FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2",
            vec![id.into(), scope.tenant_id.into()],
        ))
        .await?;
    if deleted.rows_affected() == 0 {
        return Err(AppError::not_found("webhook endpoint"));
    }
    let changes = audit::Changes::new().set("url", Some(&current.url));
    audit::record_in_tenant(&txn, scope, "webhook_endpoint.deleted", id, changes).await?;
    txn.commit().await?;
    Ok(())
}

/// Replaces the signing secret (admin); the previous one keeps signing for 24 hours, so deliveries carry
/// both signatures while the receiver switches over. The new secret is shown only in this answer.
pub async fn rotate_secret(ctx: &AppContext, scope: &TenantScope, id: Uuid) -> AppResult<WebhookEndpointSecret> {
    let current = find(&ctx.db, scope.tenant_id, id).await?;
    scope.require(Role::Admin)?;
    let old = decrypt(ctx, &current, secrets::WEBHOOK_SECRET, &current.secret)?;
    // Moving a value to another column means encrypting it again: the column is part of its associated data.
    let previous = secrets::WEBHOOK_PREVIOUS_SECRET.seal(&ctx.cipher, scope.tenant_id, id, &old)?;
    let secret = generate_secret();
    let stored = secrets::WEBHOOK_SECRET.seal(&ctx.cipher, scope.tenant_id, id, &secret)?;
    let sql = format!(
        "UPDATE webhook_endpoints SET secret = $3, previous_secret = $4, \
         previous_secret_expires_at = now() + make_interval(hours => $5), updated_at = now() \
         WHERE id = $1 AND tenant_id = $2 AND secret = $6 RETURNING {ENDPOINT_COLUMNS}"
    );
    let values = vec![
        id.into(),
        scope.tenant_id.into(),
        stored.into(),
        previous.into(),
        PREVIOUS_SECRET_GRACE_HOURS.into(),
        current.secret.clone().into(),
    ];
    let txn = ctx.db.begin().await?;
    // Compare-and-set: of two rotations at once, the second would otherwise drop the first one's secret unseen.
    let row = one_endpoint(&txn, statement(sql, values)).await?.ok_or_else(|| AppError::Conflict {
        code: "concurrent_rotation",
        message: "the secret was rotated at the same time by another request; rotate again if needed".to_owned(),
    })?;
    audit::record_in_tenant(&txn, scope, "webhook_endpoint.secret_rotated", id, audit::Changes::new().secret("secret", true))
        .await?;
    txn.commit().await?;
    Ok(WebhookEndpointSecret { endpoint: view(row)?, secret })
}

// ---- deliveries and their log ----

#[derive(Debug, FromQueryResult)]
struct DeliveryRow {
    endpoint_id: Uuid,
    event_id: Uuid,
    event_type: String,
    status: WebhookDeliveryStatus,
    attempts: i32,
    next_attempt_at: DateTime<Utc>,
    last_status_code: Option<i32>,
    last_error: Option<String>,
    delivered_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const DELIVERY_SELECT: &str = "SELECT d.endpoint_id, d.event_id, e.event_type, d.status, d.attempts, d.next_attempt_at, \
    d.last_status_code, d.last_error, d.delivered_at, d.created_at, d.updated_at \
    FROM webhook_deliveries d JOIN events e ON e.id = d.event_id";

fn delivery_view(row: DeliveryRow) -> AppResult<WebhookDelivery> {
    let status = row.status;
    Ok(WebhookDelivery {
        endpoint_id: row.endpoint_id,
        event_id: row.event_id,
        event_type: row.event_type,
        status,
        attempts: row.attempts,
        next_attempt_at: (status == WebhookDeliveryStatus::Pending).then_some(row.next_attempt_at),
        last_status_code: row.last_status_code,
        last_error: row.last_error,
        delivered_at: row.delivered_at,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

/// An endpoint's deliveries, newest event first.
pub async fn list_deliveries(
    ctx: &AppContext,
    scope: &TenantScope,
    endpoint_id: Uuid,
    query: DeliveryQuery,
) -> AppResult<Page<WebhookDelivery>> {
    scope.require(Role::Viewer)?;
    find(&ctx.db, scope.tenant_id, endpoint_id).await?;
    let limit = limit_of(&PageRequest { limit: query.limit, cursor: query.cursor })?;
    let mut sql = format!("{DELIVERY_SELECT} WHERE d.tenant_id = $1 AND d.endpoint_id = $2");
    let mut values: Vec<sea_orm::Value> = vec![scope.tenant_id.into(), endpoint_id.into()];
    if let Some(status) = query.status {
        values.push(status.into());
        sql.push_str(&format!(" AND d.status = ${}", values.len()));
    }
    if let Some(cursor) = query.cursor {
        values.push(cursor.into());
        sql.push_str(&format!(" AND d.event_id < ${}", values.len()));
    }
    sql.push_str(&format!(" ORDER BY d.event_id DESC LIMIT {}", limit + 1));
    let rows = ctx.db.query_all_raw(statement(sql, values)).await?;
    let rows = rows.iter().map(|r| DeliveryRow::from_query_result(r, "")).collect::<Result<Vec<_>, _>>()?;
    page_of(rows, limit, |r| r.event_id, delivery_view)
}

#[derive(Debug, FromQueryResult)]
struct AttemptRow {
    id: Uuid,
    endpoint_id: Uuid,
    event_id: Uuid,
    attempt: i32,
    status_code: Option<i32>,
    latency_ms: i32,
    error: Option<String>,
    created_at: DateTime<Utc>,
}

/// An endpoint's delivery log: every attempt, newest first.
pub async fn list_attempts(
    ctx: &AppContext,
    scope: &TenantScope,
    endpoint_id: Uuid,
    query: AttemptQuery,
) -> AppResult<Page<WebhookAttempt>> {
    scope.require(Role::Viewer)?;
    find(&ctx.db, scope.tenant_id, endpoint_id).await?;
    let limit = limit_of(&PageRequest { limit: query.limit, cursor: query.cursor })?;
    let mut sql = String::from(
        "SELECT id, endpoint_id, event_id, attempt, status_code, latency_ms, error, created_at FROM webhook_attempts \
         WHERE tenant_id = $1 AND endpoint_id = $2",
    );
    let mut values: Vec<sea_orm::Value> = vec![scope.tenant_id.into(), endpoint_id.into()];
    if let Some(event_id) = query.event_id {
        values.push(event_id.into());
        sql.push_str(&format!(" AND event_id = ${}", values.len()));
    }
    if let Some(cursor) = query.cursor {
        values.push(cursor.into());
        sql.push_str(&format!(" AND id < ${}", values.len()));
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", limit + 1));
    let rows = ctx.db.query_all_raw(statement(sql, values)).await?;
    let rows = rows.iter().map(|r| AttemptRow::from_query_result(r, "")).collect::<Result<Vec<_>, _>>()?;
    page_of(
        rows,
        limit,
        |r| r.id,
        |r| {
            Ok(WebhookAttempt {
                id: r.id,
                endpoint_id: r.endpoint_id,
                event_id: r.event_id,
                attempt: r.attempt,
                status_code: r.status_code,
                latency_ms: r.latency_ms,
                error: r.error,
                created_at: r.created_at,
            })
        },
    )
}

/// Makes a delivery due now (admin). This is one more attempt, not a new schedule: a failed delivery
/// that fails again is failed again; a pending one continues its schedule; a delivered one is sent again.
pub async fn redeliver(ctx: &AppContext, scope: &TenantScope, endpoint_id: Uuid, event_id: Uuid) -> AppResult<WebhookDelivery> {
    let endpoint = find(&ctx.db, scope.tenant_id, endpoint_id).await?;
    scope.require(Role::Admin)?;
    if !endpoint.enabled {
        return Err(AppError::Conflict {
            code: "webhook_endpoint_disabled",
            message: "the endpoint is disabled; enable it before redelivering".to_owned(),
        });
    }
    let key = || -> Vec<sea_orm::Value> { vec![scope.tenant_id.into(), endpoint_id.into(), event_id.into()] };
    let reset = ctx
        .db
        .execute_raw(statement(
            "UPDATE webhook_deliveries SET status = $4, next_attempt_at = now(), dispatched_until = NULL, \
             updated_at = now() WHERE tenant_id = $1 AND endpoint_id = $2 AND event_id = $3 \
             AND (lease_until IS NULL OR lease_until < now())",
            [key(), vec![WebhookDeliveryStatus::Pending.into()]].concat(),
        ))
        .await?;
    let sql = format!("{DELIVERY_SELECT} WHERE d.tenant_id = $1 AND d.endpoint_id = $2 AND d.event_id = $3");
    let row = ctx.db.query_one_raw(statement(sql, key())).await?.ok_or(AppError::not_found("webhook delivery"))?;
    if reset.rows_affected() == 0 {
        return Err(AppError::Conflict {
            code: "delivery_in_progress",
            message: "an attempt of this delivery is running; try again when it has finished".to_owned(),
        });
    }
    delivery_view(DeliveryRow::from_query_result(&row, "")?)
}

/// Fails every pending delivery of an endpoint that no longer takes any.
async fn fail_pending<C: ConnectionTrait>(db: &C, endpoint_id: Uuid, reason: &str) -> AppResult<()> {
    db.execute_raw(statement(
        "UPDATE webhook_deliveries SET status = $3, last_error = $2, lease_until = NULL, dispatched_until = NULL, \
         updated_at = now() WHERE endpoint_id = $1 AND status = $4",
        vec![endpoint_id.into(), reason.into(), WebhookDeliveryStatus::Failed.into(), WebhookDeliveryStatus::Pending.into()],
    ))
    .await?;
    Ok(())
}

// ---- the delivery itself (the worker's job) ----

/// Due deliveries, claimed for dispatch as `(endpoint_id, event_id)` (see `scheduler` for the pattern).
pub async fn claim_due_webhooks(ctx: &AppContext, limit: u64) -> AppResult<Vec<(Uuid, Uuid)>> {
    let rows = ctx
        .db
        .query_all_raw(statement(
            format!(
                "UPDATE webhook_deliveries SET dispatched_until = now() + make_interval(secs => $1) \
                 WHERE (endpoint_id, event_id) IN ( \
                   SELECT endpoint_id, event_id FROM webhook_deliveries WHERE {} \
                   AND (lease_until IS NULL OR lease_until < now()) AND (dispatched_until IS NULL OR dispatched_until < now()) \
                   ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 RETURNING endpoint_id, event_id",
                crate::jobs::due::webhook()
            ),
            vec![scheduler::DISPATCH_GRACE_SECONDS.into(), (limit as i64).into()],
        ))
        .await?;
    rows.iter().map(|r| Ok((r.try_get::<Uuid>("", "endpoint_id")?, r.try_get::<Uuid>("", "event_id")?))).collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// Not due, already leased by another worker, delivered, or gone.
    Skipped,
    Delivered,
    /// The attempt failed; another is scheduled.
    Retrying,
    /// The last attempt failed, or the endpoint was disabled by this failure.
    Failed,
    /// The endpoint was disabled meanwhile: the delivery failed without an attempt.
    Abandoned,
}

impl WebhookOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Skipped => "skipped",
            Self::Delivered => "delivered",
            Self::Retrying => "retrying",
            Self::Failed => "failed",
            Self::Abandoned => "abandoned",
        }
    }
}

#[derive(Debug, FromQueryResult)]
struct EventRow {
    event_type: String,
    resource_type: String,
    resource_id: Option<Uuid>,
    data: Value,
    created_at: DateTime<Utc>,
}

/// The Standard Webhooks body: `{"type", "timestamp", "data"}`; `data` is the event's data with the
/// tenant and the resource it concerns.
fn payload(tenant_id: Uuid, event: EventRow) -> AppResult<String> {
    let mut data = match event.data {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        other => Map::from_iter([("value".to_owned(), other)]),
    };
    data.insert("tenant_id".to_owned(), json!(tenant_id));
    data.insert("resource_type".to_owned(), json!(event.resource_type));
    data.insert("resource_id".to_owned(), json!(event.resource_id));
    let body = json!({
        "type": event.event_type,
        "timestamp": event.created_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        "data": data,
    });
    serde_json::to_string(&body).map_err(|e| AppError::Internal(e.into()))
}

fn truncate(text: &str) -> String {
    if text.chars().count() <= MAX_ERROR_CHARS {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(MAX_ERROR_CHARS).collect();
    cut.push('…');
    cut
}

/// A transport error in words, without the URL (the log shows it beside the endpoint anyway).
fn describe(err: reqwest::Error, timeout: std::time::Duration) -> String {
    if err.is_timeout() {
        return format!("no answer within {} s", timeout.as_secs_f64());
    }
    let err = err.without_url();
    let mut words = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        words.push_str(": ");
        words.push_str(&cause.to_string());
        source = cause.source();
    }
    words
}

/// One POST: the receiver's status code, or why there was none.
async fn post(ctx: &AppContext, url: &str, headers: [(&'static str, String); 3], body: String) -> Result<u16, String> {
    let url = url::Url::parse(url).map_err(|e| format!("invalid URL: {e}"))?;
    // The deployment may have tightened its rules since the URL was stored.
    if url.scheme() != "https" && !(url.scheme() == "http" && ctx.guard.allows_private()) {
        return Err("the URL must use https".to_owned());
    }
    // The guard's resolver is not consulted for IP-literal hosts, so check those here.
    if let Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)) = url.host() {
        let port = url.port_or_known_default().unwrap_or(443);
        ctx.guard.resolve(url.host_str().unwrap_or_default(), port).await.map_err(|e| e.to_string())?;
    }
    let timeout = ctx.settings.webhooks.timeout;
    let mut request = ctx
        .http
        .post(url)
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(reqwest::header::USER_AGENT, USER_AGENT);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request.body(body).send().await.map_err(|e| describe(e, timeout))?;
    Ok(response.status().as_u16())
}

/// Makes one attempt of a due delivery (the worker's job): leases it, POSTs the signed event, logs the
/// attempt and schedules the next one or settles the delivery. Safe to run twice at once: one of the two
/// gets the lease, the other skips.
pub async fn deliver(ctx: &AppContext, endpoint_id: Uuid, event_id: Uuid) -> AppResult<WebhookOutcome> {
    let lease_seconds = ctx.settings.webhooks.timeout.as_secs_f64() + LEASE_MARGIN_SECONDS;
    let leased = ctx
        .db
        .query_one_raw(statement(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, lease_until = now() + make_interval(secs => $3), \
             updated_at = now() WHERE endpoint_id = $1 AND event_id = $2 AND status = $4 AND next_attempt_at <= now() \
             AND (lease_until IS NULL OR lease_until < now()) RETURNING tenant_id, attempts",
            vec![endpoint_id.into(), event_id.into(), lease_seconds.into(), WebhookDeliveryStatus::Pending.into()],
        ))
        .await?;
    let Some(leased) = leased else { return Ok(WebhookOutcome::Skipped) };
    let tenant_id: Uuid = leased.try_get("", "tenant_id")?;
    let attempt: i32 = leased.try_get("", "attempts")?;
    let endpoint = match find(&ctx.db, tenant_id, endpoint_id).await {
        Ok(endpoint) => endpoint,
        // Deleted meanwhile: its deliveries went with it.
        Err(AppError::NotFound { .. }) => return Ok(WebhookOutcome::Skipped),
        Err(e) => return Err(e),
    };
    if !endpoint.enabled {
        ctx.db
            .execute_raw(statement(
                "UPDATE webhook_deliveries SET status = $4, attempts = attempts - 1, last_error = $3, \
                 lease_until = NULL, dispatched_until = NULL, updated_at = now() WHERE endpoint_id = $1 AND event_id = $2",
                vec![
                    endpoint_id.into(),
                    event_id.into(),
                    "the endpoint was disabled".into(),
                    WebhookDeliveryStatus::Failed.into(),
                ],
            ))
            .await?;
        return Ok(WebhookOutcome::Abandoned);
    }
    let event = ctx
        .db
        .query_one_raw(statement(
            "SELECT event_type, resource_type, resource_id, data, created_at FROM events WHERE id = $1 AND tenant_id = $2",
            vec![event_id.into(), tenant_id.into()],
        ))
        .await?
        .map(|r| EventRow::from_query_result(&r, ""))
        .transpose()?;
    // Events past their retention are deleted with their deliveries.
    let Some(event) = event else { return Ok(WebhookOutcome::Skipped) };
    let body = payload(tenant_id, event)?;
    let started = Instant::now();
    let result = match signed_headers(ctx, &endpoint, event_id, &body) {
        Ok(headers) => post(ctx, &endpoint.url, headers, body).await,
        // E.g. a secret under a master key no longer configured: logged as a failed attempt, so the
        // delivery follows its schedule and ends instead of being leased again forever.
        Err(e) => {
            tracing::error!(%endpoint_id, %event_id, error = ?e, "cannot sign a webhook delivery");
            Err("the delivery could not be signed (internal error)".to_owned())
        }
    };
    let latency_ms = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
    let outcome = settle(ctx, &endpoint, event_id, attempt, result, latency_ms).await?;
    ctx.metrics.webhook_delivery(outcome.as_str());
    Ok(outcome)
}

/// `webhook-id` (the event id, the same on every attempt), `webhook-timestamp` (now, unix seconds) and
/// `webhook-signature` (one `v1,` entry per signing secret, space-separated).
fn signed_headers(
    ctx: &AppContext,
    endpoint: &EndpointRow,
    event_id: Uuid,
    body: &str,
) -> AppResult<[(&'static str, String); 3]> {
    let msg_id = event_id.to_string();
    let timestamp = Utc::now().timestamp();
    let signatures = signing_secrets(ctx, endpoint)?
        .iter()
        .map(|secret| sign(secret, &msg_id, timestamp, body))
        .collect::<AppResult<Vec<_>>>()?;
    Ok([("webhook-id", msg_id), ("webhook-timestamp", timestamp.to_string()), ("webhook-signature", signatures.join(" "))])
}

/// Logs an attempt and moves the delivery and the endpoint on, in one transaction.
async fn settle(
    ctx: &AppContext,
    endpoint: &EndpointRow,
    event_id: Uuid,
    attempt: i32,
    result: Result<u16, String>,
    latency_ms: i32,
) -> AppResult<WebhookOutcome> {
    let (status_code, error) = match result {
        Ok(code) if (200..300).contains(&code) => (Some(i32::from(code)), None),
        Ok(code) => (Some(i32::from(code)), Some(format!("the endpoint answered HTTP {code}"))),
        Err(words) => (None, Some(truncate(&words))),
    };
    let key = || -> Vec<sea_orm::Value> { vec![endpoint.id.into(), event_id.into()] };
    let txn = ctx.db.begin().await?;
    txn.execute_raw(statement(
        "INSERT INTO webhook_attempts (id, tenant_id, endpoint_id, event_id, attempt, status_code, latency_ms, error) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        vec![
            Uuid::now_v7().into(),
            endpoint.tenant_id.into(),
            endpoint.id.into(),
            event_id.into(),
            attempt.into(),
            status_code.into(),
            latency_ms.into(),
            error.clone().into(),
        ],
    ))
    .await?;
    let Some(error) = error else {
        let mut values = key();
        values.push(status_code.into());
        values.push(WebhookDeliveryStatus::Delivered.into());
        txn.execute_raw(statement(
            "UPDATE webhook_deliveries SET status = $4, delivered_at = now(), last_status_code = $3, \
             last_error = NULL, lease_until = NULL, dispatched_until = NULL, updated_at = now() \
             WHERE endpoint_id = $1 AND event_id = $2",
            values,
        ))
        .await?;
        txn.execute_raw(statement(
            "UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1 AND failing_since IS NOT NULL",
            vec![endpoint.id.into()],
        ))
        .await?;
        txn.commit().await?;
        return Ok(WebhookOutcome::Delivered);
    };
    // Attempt n failed: wait the schedule's n-th delay, or give up after its last one.
    let retry_in = usize::try_from(attempt - 1).ok().and_then(|i| ctx.settings.webhooks.retry_schedule.get(i).copied());
    let mut values = key();
    values.push(status_code.into());
    values.push(error.into());
    values.push(retry_in.map(|wait| wait.as_secs_f64()).into());
    values.push(WebhookDeliveryStatus::Failed.into());
    values.push(WebhookDeliveryStatus::Pending.into());
    txn.execute_raw(statement(
        "UPDATE webhook_deliveries SET status = CASE WHEN $5::float8 IS NULL THEN $6::text ELSE $7::text END, \
         next_attempt_at = CASE WHEN $5::float8 IS NULL THEN next_attempt_at ELSE now() + make_interval(secs => $5::float8) END, \
         last_status_code = $3, last_error = $4, lease_until = NULL, dispatched_until = NULL, updated_at = now() \
         WHERE endpoint_id = $1 AND event_id = $2",
        values,
    ))
    .await?;
    let mut outcome = if retry_in.is_some() { WebhookOutcome::Retrying } else { WebhookOutcome::Failed };
    let streak = txn
        .query_one_raw(statement(
            "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, now()) WHERE id = $1 \
             RETURNING failing_since, enabled AND failing_since <= now() - make_interval(secs => $2) AS overdue",
            vec![endpoint.id.into(), ctx.settings.webhooks.disable_after.as_secs_f64().into()],
        ))
        .await?;
    let (failing_since, overdue) = match streak {
        Some(row) => (row.try_get::<DateTime<Utc>>("", "failing_since")?, row.try_get::<bool>("", "overdue")?),
        None => (Utc::now(), false),
    };
    if overdue && disable(&txn, endpoint, failing_since).await? {
        outcome = WebhookOutcome::Failed;
    }
    txn.commit().await?;
    Ok(outcome)
}

/// Disables an endpoint that has failed for too long, fails its pending deliveries and records
/// `webhook_endpoint.disabled`; false if another worker did it first.
async fn disable<C: ConnectionTrait>(db: &C, endpoint: &EndpointRow, failing_since: DateTime<Utc>) -> AppResult<bool> {
    let since = failing_since.to_rfc3339_opts(SecondsFormat::Secs, true);
    let reason = format!("every delivery attempt has failed since {since}; enable the endpoint again once it accepts deliveries");
    let disabled = db
        .execute_raw(statement(
            "UPDATE webhook_endpoints SET enabled = false, disabled_reason = $2, updated_at = now() WHERE id = $1 AND enabled",
            vec![endpoint.id.into(), reason.clone().into()],
        ))
        .await?;
    if disabled.rows_affected() == 0 {
        return Ok(false);
    }
    fail_pending(db, endpoint.id, "the endpoint was disabled").await?;
    tracing::warn!(endpoint_id = %endpoint.id, tenant_id = %endpoint.tenant_id, %since, "webhook endpoint disabled after failing too long");
    // Recorded after the endpoint is disabled, so it is fanned out to the tenant's other endpoints only.
    events::record(
        db,
        endpoint.tenant_id,
        events::WEBHOOK_ENDPOINT_DISABLED,
        "webhook_endpoint",
        Some(endpoint.id),
        json!({"url": redact_url(&endpoint.url), "failing_since": failing_since, "reason": reason}),
    )
    .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_urls_keep_only_the_origin() {
        assert_eq!(redact_url("https://hooks.example.com/T0/B1/secret?token=x"), "https://hooks.example.com/…");
        assert_eq!(redact_url("https://hooks.example.com:8443/"), "https://hooks.example.com:8443");
        assert_eq!(redact_url("https://user:pass@hooks.example.com/"), "https://hooks.example.com");
        assert_eq!(redact_url("not a url"), "(hidden)");
    }

    #[test]
    fn secrets_are_whsec_and_32_bytes_of_base64() {
        let secret = generate_secret();
        let key = secret.strip_prefix(SECRET_PREFIX).expect("prefix");
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(key).expect("base64").len(), 32);
        assert_ne!(secret, generate_secret());
    }

    #[test]
    fn unknown_event_types_name_the_field_and_duplicates_collapse() {
        let err = check_event_types(vec!["message.sent".into(), "nope".into()]).expect_err("unknown");
        assert_eq!((err.code(), err.field()), ("unknown_event_type", Some("event_types")));
        let types = check_event_types(vec!["message.sent".into(), " message.sent ".into()]).expect("known");
        assert_eq!(types, vec!["message.sent".to_owned()]);
    }

    #[test]
    fn errors_are_truncated() {
        let long = "x".repeat(MAX_ERROR_CHARS + 10);
        assert_eq!(truncate(&long).chars().count(), MAX_ERROR_CHARS + 1);
        assert_eq!(truncate("short"), "short");
    }
}
