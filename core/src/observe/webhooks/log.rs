//! Each endpoint's deliveries and their attempts, as the tenant reads them, and redelivering one by hand.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, FromQueryResult};
use uuid::Uuid;

use super::find;
use super::statement;
use super::AttemptQuery;
use super::DeliveryQuery;
use super::WebhookAttempt;
use super::WebhookDelivery;
use super::WebhookDeliveryStatus;
use crate::access::auth::TenantScope;
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::jobs::leases::{self, Leased};
use crate::model::{Page, PageRequest, Role};
use crate::store::ids::WebhookEndpointId;
use crate::store::limit_of;
use crate::store::page_of;

// ---- deliveries and their log ----

#[derive(Debug, FromQueryResult)]
struct DeliveryRow {
    endpoint_id: WebhookEndpointId,
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
        endpoint_id: row.endpoint_id.into(),
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
    endpoint_id: WebhookEndpointId,
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
    id: WebhookEndpointId,
    endpoint_id: WebhookEndpointId,
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
    endpoint_id: WebhookEndpointId,
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
        |r| r.id.into(),
        |r| {
            Ok(WebhookAttempt {
                id: r.id.into(),
                endpoint_id: r.endpoint_id.into(),
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
pub async fn redeliver(
    ctx: &AppContext,
    scope: &TenantScope,
    endpoint_id: WebhookEndpointId,
    event_id: Uuid,
) -> AppResult<WebhookDelivery> {
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
            format!(
                "UPDATE webhook_deliveries SET status = $4, next_attempt_at = now(), dispatched_until = NULL, \
                 updated_at = now() WHERE tenant_id = $1 AND endpoint_id = $2 AND event_id = $3 AND {}",
                leases::FREE
            ),
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
pub(super) async fn fail_pending<C: ConnectionTrait>(db: &C, endpoint_id: WebhookEndpointId, reason: &str) -> AppResult<()> {
    db.execute_raw(statement(
        format!(
            "UPDATE webhook_deliveries SET status = $3, last_error = $2, {}, dispatched_until = NULL, \
             updated_at = now() WHERE endpoint_id = $1 AND status = $4",
            Leased::WebhookDeliveries.released()
        ),
        vec![endpoint_id.into(), reason.into(), WebhookDeliveryStatus::Failed.into(), WebhookDeliveryStatus::Pending.into()],
    ))
    .await?;
    Ok(())
}
