//! The dispatch marks a claim leaves on its rows (`dispatched_until`, see `scheduler`), taken back or cut short
//! when the job they stand for will not run (its push failed) or failed on Postbridge's side.

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use uuid::Uuid;

use crate::context::AppContext;
use crate::error::AppResult;
use crate::store::ids::{uuid_array, WebhookEndpointId};

/// The claims keyed by a row id (webhook deliveries are keyed by endpoint and event: `undispatch_webhook_deliveries`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dispatched {
    Polls,
    Messages,
    Grants,
}

impl Dispatched {
    fn table(self) -> &'static str {
        match self {
            Dispatched::Polls => "email_accounts",
            Dispatched::Messages => "outbound_messages",
            Dispatched::Grants => "grants",
        }
    }
}

/// Clears the dispatch marks of rows whose jobs never reached Redis (the push failed), so the next pass sends
/// them again instead of waiting out the grace.
pub async fn undispatch<Id: Copy + Into<Uuid>>(ctx: &AppContext, rows: Dispatched, ids: &[Id]) -> AppResult<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let sql = format!("UPDATE {} SET dispatched_until = NULL WHERE id = ANY($1::text::uuid[])", rows.table());
    let done = ctx.db.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, [uuid_array(ids)])).await?;
    Ok(done.rows_affected())
}

/// `undispatch` for webhook deliveries, keyed by `(endpoint_id, event_id)`.
pub async fn undispatch_webhook_deliveries(ctx: &AppContext, keys: &[(WebhookEndpointId, Uuid)]) -> AppResult<u64> {
    if keys.is_empty() {
        return Ok(0);
    }
    let done = ctx
        .db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE webhook_deliveries SET dispatched_until = NULL WHERE (endpoint_id, event_id) IN \
             (SELECT (pair->>0)::uuid, (pair->>1)::uuid FROM jsonb_array_elements($1) AS pair)",
            [serde_json::json!(keys).into()],
        ))
        .await?;
    Ok(done.rows_affected())
}

/// How soon the rows of a job that failed on Postbridge's own side are dispatched again: not at once, which would
/// spin on a lasting failure, and not only at the end of the grace, which kept a message waiting minutes after a
/// moment's trouble (a pool exhausted, Postgres restarting).
pub const AFTER_JOB_ERROR_SECONDS: f64 = 10.0;

/// The rows one job's claim marked dispatched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Marked {
    Rows(Dispatched, Vec<Uuid>),
    WebhookDelivery(WebhookEndpointId, Uuid),
}

/// Cuts the dispatch marks of a failed job's rows short, to run out in [`AFTER_JOB_ERROR_SECONDS`]: the job failed
/// before it could settle them (its error is logged), so they are dispatched again then. Shorter marks stay.
pub async fn dispatch_again_soon(ctx: &AppContext, marked: &Marked) -> AppResult<u64> {
    const SOON: &str = "now() + make_interval(secs => $2)";
    let (sql, values) = match marked {
        Marked::Rows(rows, ids) => (
            format!(
                "UPDATE {} SET dispatched_until = {SOON} WHERE id = ANY($1::text::uuid[]) AND dispatched_until > {SOON}",
                rows.table()
            ),
            vec![uuid_array(ids), AFTER_JOB_ERROR_SECONDS.into()],
        ),
        Marked::WebhookDelivery(endpoint_id, event_id) => (
            format!(
                "UPDATE webhook_deliveries SET dispatched_until = {SOON} \
                 WHERE endpoint_id = $1 AND event_id = $3 AND dispatched_until > {SOON}"
            ),
            vec![Uuid::from(*endpoint_id).into(), AFTER_JOB_ERROR_SECONDS.into(), (*event_id).into()],
        ),
    };
    let done = ctx.db.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
    Ok(done.rows_affected())
}
