//! What is due, read from Postgres (the source of truth) and claimed atomically, so any number of
//! schedulers can run: a claim marks the row dispatched for a grace period (its due time is left as is),
//! the job clears the mark when it finishes, and if the job is lost (Redis flushed or restarted, a worker
//! killed) the row is dispatched again once the grace has passed. The jobs themselves take leases, so a
//! job dispatched twice still runs once in effect.

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use uuid::Uuid;

use crate::context::AppContext;
use crate::error::AppResult;

/// How long a dispatched job has to finish before its row is dispatched again.
pub const DISPATCH_GRACE_SECONDS: f64 = 120.0;

async fn claim(ctx: &AppContext, sql: &str, limit: u64) -> AppResult<Vec<Uuid>> {
    let rows = ctx
        .db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            [DISPATCH_GRACE_SECONDS.into(), (limit as i64).into()],
        ))
        .await?;
    rows.iter().map(|r| r.try_get::<Uuid>("", "id").map_err(Into::into)).collect()
}

/// Inbound accounts due for a poll: enabled, confirmed, not held by a worker.
pub async fn claim_due_polls(ctx: &AppContext, limit: u64) -> AppResult<Vec<Uuid>> {
    claim(
        ctx,
        "UPDATE email_accounts SET dispatched_until = now() + make_interval(secs => $1) WHERE id IN ( \
           SELECT id FROM email_accounts WHERE direction = 'inbound' AND enabled AND state = 'confirmed' \
           AND (next_poll_at IS NULL OR next_poll_at <= now()) AND (lease_until IS NULL OR lease_until < now()) \
           AND (dispatched_until IS NULL OR dispatched_until < now()) \
           ORDER BY next_poll_at NULLS FIRST LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING id",
        limit,
    )
    .await
}

/// Queued messages due for an attempt.
pub async fn claim_due_sends(ctx: &AppContext, limit: u64) -> AppResult<Vec<Uuid>> {
    claim(
        ctx,
        "UPDATE outbound_messages SET dispatched_until = now() + make_interval(secs => $1) WHERE id IN ( \
           SELECT id FROM outbound_messages WHERE status = 'queued' AND next_attempt_at <= now() \
           AND (dispatched_until IS NULL OR dispatched_until < now()) \
           ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING id",
        limit,
    )
    .await
}
