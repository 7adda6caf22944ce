//! Webhooks: per-tenant endpoints and the delivery of every event to them, signed the Standard Webhooks way
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`).
//!
//! Deliveries are created by the database in the transaction that inserts an event ([`FAN_OUT_TRIGGER`], from
//! migration `observability`), so no code path can miss one. The scheduler claims due deliveries
//! ([`claim_due_webhooks`]); the worker makes each attempt under a lease ([`attempt`]), retries it on
//! `settings.webhooks.retry_schedule`, and disables an endpoint whose every attempt has failed for
//! `settings.webhooks.disable_after` (recording `webhook_endpoint.disabled` in the same transaction).

use async_graphql::MaybeUndefined;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sea_orm::{ConnectionTrait, DbBackend, FromQueryResult, Statement};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use uuid::Uuid;

use super::events;
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::secrets::{self, SealedColumn};
use crate::store::ids::{TenantId, WebhookEndpointId};
use crate::store::json::StringList;
use crate::validate;

mod attempt;
mod endpoints;
mod log;

pub use attempt::{attempt, claim_due_webhooks, WebhookOutcome};
pub use endpoints::{create, delete, get, list, redact_url, rotate_secret, update};
pub use log::{list_attempts, list_deliveries, redeliver};

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
    id: WebhookEndpointId,
    tenant_id: TenantId,
    url: String,
    description: Option<String>,
    event_types: StringList,
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
    let event_types = row.event_types.0;
    Ok(WebhookEndpoint {
        id: row.id.into(),
        tenant_id: row.tenant_id.into(),
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
async fn find<C: ConnectionTrait>(db: &C, tenant_id: TenantId, id: WebhookEndpointId) -> AppResult<EndpointRow> {
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

#[cfg(test)]
mod tests {
    use super::attempt::truncate;
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
