//! One attempt of one delivery (the worker's job): claimed under a lease, signed, posted, and its outcome recorded,
//! retried on schedule or the endpoint disabled.

use std::time::Instant;

use chrono::{DateTime, SecondsFormat, Utc};
use sea_orm::{ConnectionTrait, FromQueryResult, TransactionTrait};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::endpoints::redact_url;
use super::find;
use super::log::fail_pending;
use super::sign;
use super::signing_secrets;
use super::statement;
use super::EndpointRow;
use super::WebhookDeliveryStatus;
use super::LEASE_MARGIN_SECONDS;
use super::MAX_ERROR_CHARS;
use super::USER_AGENT;
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::jobs::leases::{self, Leased};
use crate::jobs::scheduler;
use crate::observe::events;
use crate::store::ids::{TenantId, WebhookEndpointId};

// ---- the delivery itself (the worker's job) ----

/// Due deliveries, claimed for dispatch as `(endpoint_id, event_id)` (see `scheduler` for the pattern).
pub async fn claim_due_webhooks(ctx: &AppContext, limit: u64) -> AppResult<Vec<(WebhookEndpointId, Uuid)>> {
    let rows = ctx
        .db
        .query_all_raw(statement(
            format!(
                "UPDATE webhook_deliveries SET dispatched_until = now() + make_interval(secs => $1) \
                 WHERE (endpoint_id, event_id) IN ( \
                   SELECT endpoint_id, event_id FROM webhook_deliveries WHERE {} \
                   AND {} AND (dispatched_until IS NULL OR dispatched_until < now()) \
                   ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 RETURNING endpoint_id, event_id",
                crate::jobs::due::webhook(),
                leases::FREE
            ),
            vec![scheduler::DISPATCH_GRACE_SECONDS.into(), (limit as i64).into()],
        ))
        .await?;
    rows.iter().map(|r| Ok((r.try_get::<WebhookEndpointId>("", "endpoint_id")?, r.try_get::<Uuid>("", "event_id")?))).collect()
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
fn payload(tenant_id: TenantId, event: EventRow) -> AppResult<String> {
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

pub(super) fn truncate(text: &str) -> String {
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
pub async fn attempt(ctx: &AppContext, endpoint_id: WebhookEndpointId, event_id: Uuid) -> AppResult<WebhookOutcome> {
    let lease_seconds = ctx.settings.webhooks.timeout.as_secs_f64() + LEASE_MARGIN_SECONDS;
    let leased = ctx
        .db
        .query_one_raw(statement(
            format!(
                "UPDATE webhook_deliveries SET attempts = attempts + 1, {}, updated_at = now() \
                 WHERE endpoint_id = $1 AND event_id = $2 AND status = $4 AND next_attempt_at <= now() AND {} \
                 RETURNING tenant_id, attempts",
                Leased::hold_for(3),
                leases::FREE
            ),
            vec![endpoint_id.into(), event_id.into(), lease_seconds.into(), WebhookDeliveryStatus::Pending.into()],
        ))
        .await?;
    let Some(leased) = leased else { return Ok(WebhookOutcome::Skipped) };
    let tenant_id: TenantId = leased.try_get("", "tenant_id")?;
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
                format!(
                    "UPDATE webhook_deliveries SET status = $4, attempts = attempts - 1, last_error = $3, {}, \
                     dispatched_until = NULL, updated_at = now() WHERE endpoint_id = $1 AND event_id = $2",
                    Leased::WebhookDeliveries.released()
                ),
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
    let outcome = record_attempt(ctx, &endpoint, event_id, attempt, result, latency_ms).await?;
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
async fn record_attempt(
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
            format!(
                "UPDATE webhook_deliveries SET status = $4, delivered_at = now(), last_status_code = $3, \
                 last_error = NULL, {}, dispatched_until = NULL, updated_at = now() \
                 WHERE endpoint_id = $1 AND event_id = $2",
                Leased::WebhookDeliveries.released()
            ),
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
        format!(
            "UPDATE webhook_deliveries SET status = CASE WHEN $5::float8 IS NULL THEN $6::text ELSE $7::text END, \
             next_attempt_at = CASE WHEN $5::float8 IS NULL THEN next_attempt_at ELSE now() + make_interval(secs => $5::float8) END, \
             last_status_code = $3, last_error = $4, {}, dispatched_until = NULL, updated_at = now() \
             WHERE endpoint_id = $1 AND event_id = $2",
            Leased::WebhookDeliveries.released()
        ),
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
        Some(endpoint.id.into()),
        json!({"url": redact_url(&endpoint.url), "failing_since": failing_since, "reason": reason}),
    )
    .await?;
    Ok(true)
}
