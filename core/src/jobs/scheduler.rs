//! What is due, read from Postgres (the source of truth) and claimed atomically, so any number of
//! schedulers can run: a claim marks the row dispatched for a grace period (its due time is left as is),
//! the job clears the mark when it finishes, and if the job is lost (Redis flushed or restarted, a worker
//! killed) the row is dispatched again once the grace has passed. The jobs themselves take leases, so a
//! job dispatched twice still runs once in effect.

use sea_orm::{ConnectionTrait, DbBackend, DbErr, QueryResult, Statement, TransactionTrait, TryGetable};
use uuid::Uuid;

use crate::context::AppContext;
use crate::error::AppResult;
use crate::jobs::{due, leases};
use crate::model::GrantStatus;
use crate::store::ids::{AccountId, GrantId, OutboundMessageId, TenantId, TokenConfigId};

/// How long a dispatched job has to finish before its row is dispatched again.
pub const DISPATCH_GRACE_SECONDS: f64 = 120.0;

/// Runs a claim (`due` says what each selects): `$1` is the grace, `$2` the limit; returns the claimed ids.
async fn claim<Id: TryGetable>(ctx: &AppContext, sql: &str, limit: u64) -> AppResult<Vec<Id>> {
    claim_with(ctx, sql, limit, |r| r.try_get::<Id>("", "id")).await
}

/// `claim`, reading each claimed row with `read` (a claim that returns more than the id).
async fn claim_with<T>(
    ctx: &AppContext,
    sql: &str,
    limit: u64,
    read: impl Fn(&QueryResult) -> Result<T, DbErr>,
) -> AppResult<Vec<T>> {
    let values = vec![DISPATCH_GRACE_SECONDS.into(), (limit as i64).into()];
    let rows = ctx.db.query_all_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
    Ok(rows.iter().map(read).collect::<Result<_, _>>()?)
}

/// Inbound accounts due for a poll: enabled, confirmed, not held by a worker.
pub async fn claim_due_polls(ctx: &AppContext, limit: u64) -> AppResult<Vec<AccountId>> {
    let sql = format!(
        "UPDATE email_accounts SET dispatched_until = now() + make_interval(secs => $1) WHERE id IN ( \
           SELECT id FROM email_accounts WHERE {} AND {} \
           AND (dispatched_until IS NULL OR dispatched_until < now()) \
           ORDER BY next_poll_at NULLS FIRST LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING id",
        due::poll(),
        leases::FREE
    );
    claim(ctx, &sql, limit).await
}

/// Mailboxes to watch in IDLE (`due::idle`) that nobody holds: their lease is taken here for this process (the
/// watch renews it). Returns each with its tenant, whose scope the watch runs in.
pub async fn claim_idle_mailboxes(ctx: &AppContext, limit: u64) -> AppResult<Vec<(AccountId, TenantId)>> {
    let sql = format!(
        "UPDATE email_accounts SET {} WHERE id IN ( \
           SELECT id FROM email_accounts WHERE {} AND {} \
           ORDER BY last_polled_at NULLS FIRST LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING id, tenant_id",
        leases::Leased::hold_for(1),
        due::idle(),
        leases::FREE
    );
    let values = vec![(crate::receive::poll::LEASE_SECONDS as f64).into(), (limit as i64).into()];
    let rows = ctx.db.query_all_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
    rows.iter().map(|r| Ok((r.try_get::<AccountId>("", "id")?, r.try_get::<TenantId>("", "tenant_id")?))).collect()
}

/// This process's fair share of the mailboxes to watch: all of them over the live worker processes, rounded up.
pub async fn idle_share(ctx: &AppContext) -> AppResult<usize> {
    let sql = format!(
        "SELECT (SELECT count(*) FROM email_accounts WHERE {}) AS mailboxes, \
                (SELECT count(*) FROM worker_processes WHERE {}) AS workers",
        due::idle(),
        crate::jobs::workers::live()
    );
    let row = ctx.db.query_one_raw(Statement::from_string(DbBackend::Postgres, sql)).await?;
    let (mailboxes, workers) = match row {
        Some(row) => (row.try_get::<i64>("", "mailboxes")?, row.try_get::<i64>("", "workers")?),
        None => (0, 1),
    };
    let mailboxes = usize::try_from(mailboxes).unwrap_or(0);
    Ok(mailboxes.div_ceil(usize::try_from(workers).unwrap_or(1).max(1)))
}

/// Which queued messages a send claim takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendClaim {
    /// Only those never dispatched (on a submission's notice): found through their own small index, however many
    /// dispatched ones wait for a worker.
    New,
    /// Also those whose dispatch mark ran out, their job lost (the periodic pass).
    NewAndLost,
}

/// Queued messages due for an attempt, as send jobs' batches (`batches::batches_of`), each with its tenant.
pub async fn claim_due_sends(
    ctx: &AppContext,
    limit: u64,
    which: SendClaim,
) -> AppResult<Vec<(TenantId, Vec<OutboundMessageId>)>> {
    let undispatched = match which {
        SendClaim::New => "dispatched_until IS NULL",
        SendClaim::NewAndLost => "(dispatched_until IS NULL OR dispatched_until < now())",
    };
    let sql = format!(
        // In their queue's order, so a batch sends an account's messages oldest first.
        "WITH claimed AS (UPDATE outbound_messages SET dispatched_until = now() + make_interval(secs => $1) WHERE id IN ( \
           SELECT id FROM outbound_messages WHERE {} AND {undispatched} \
           ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING id, tenant_id, account_id, next_attempt_at) \
         SELECT id, tenant_id, account_id FROM claimed ORDER BY next_attempt_at",
        due::send()
    );
    let due = claim_with(ctx, &sql, limit, |r| {
        Ok((
            r.try_get::<OutboundMessageId>("", "id")?,
            r.try_get::<TenantId>("", "tenant_id")?,
            r.try_get::<Option<AccountId>>("", "account_id")?,
        ))
    })
    .await?;
    Ok(crate::send::batches::batches_of(due))
}

/// Where a round of refresh claims goes on from: the due time and id of the last grant it claimed.
pub type RefreshKey = (chrono::DateTime<chrono::Utc>, GrantId);

/// User-flow grants whose access token is due for refresh (`refresh_at`, see `grants::refresh_at_for`) and whose
/// backoff has passed, in batches of one token configuration (`grants::batches_of`), with the key the next claim
/// of the same round goes on `after`. Grants are claimed in due order along their index, from `after`: a round
/// claiming a storm a thousand at a time reads each grant once, not once per claim before it. A grant being
/// refreshed holds its row lock, so it is skipped here (the next round looks again).
pub async fn claim_due_refreshes(
    ctx: &AppContext,
    limit: u64,
    after: Option<RefreshKey>,
) -> AppResult<(Vec<Vec<GrantId>>, Option<RefreshKey>)> {
    // `= ANY(ARRAY(..))`: the claimed ids are found first, then updated through the primary key (an `IN` over the
    // subquery let the planner hash-join it against every grant).
    let sql = format!(
        "UPDATE grants SET dispatched_until = now() + make_interval(secs => $1) WHERE id = ANY(ARRAY( \
           SELECT id FROM grants WHERE {} AND (dispatched_until IS NULL OR dispatched_until < now()) \
           AND (refresh_at, id) > (COALESCE($3::timestamptz, '-infinity'), COALESCE($4::uuid, '{}')) \
           ORDER BY refresh_at, id LIMIT $2 FOR UPDATE SKIP LOCKED)) RETURNING id, token_config_id, refresh_at",
        due::refresh(),
        Uuid::nil()
    );
    let (after_due, after_id) = after.map_or((None, None), |(due, id)| (Some(due), Some(id)));
    let values = vec![DISPATCH_GRACE_SECONDS.into(), (limit as i64).into(), after_due.into(), after_id.into()];
    let rows = along_due_index(ctx, Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
    let mut due = Vec::with_capacity(rows.len());
    let mut last: Option<RefreshKey> = after;
    for row in &rows {
        let id = row.try_get::<GrantId>("", "id")?;
        due.push((id, row.try_get::<TokenConfigId>("", "token_config_id")?));
        // Only due rows are claimed, and a due row has its due time.
        let refresh_at = row.try_get::<chrono::DateTime<chrono::Utc>>("", "refresh_at")?;
        last = last.max(Some((refresh_at, id)));
    }
    Ok((crate::connect::grants::batches_of(due), last))
}

/// Runs a statement that reads grants in due order, walking the due index and stopping at its limit. The
/// planner is told not to scan the table or build a bitmap instead: it underrates how many rows the tenant wall
/// lets the operator-wide scope see, and due times written long ago look rare, so it would otherwise read every
/// grant and sort them for a claim of a thousand (tens of ms per claim at 30,000 grants, growing with the table).
async fn along_due_index(ctx: &AppContext, statement: Statement) -> AppResult<Vec<QueryResult>> {
    let txn = ctx.db.begin().await?;
    txn.execute_raw(Statement::from_string(
        DbBackend::Postgres,
        "SELECT set_config('enable_seqscan', 'off', true), set_config('enable_bitmapscan', 'off', true)",
    ))
    .await?;
    let rows = txn.query_all_raw(statement).await?;
    txn.commit().await?;
    Ok(rows)
}

/// How long until the next grant falls due for a refresh, by Postgres's clock (`None`: none will). Due times are
/// written with the tokens, long before they come, so the scheduler can wake at the moment itself rather than at
/// its next pass: a storm of tokens expiring together starts when they are due.
pub async fn next_refresh_in(ctx: &AppContext) -> AppResult<Option<std::time::Duration>> {
    let sql = format!(
        // The first one along the due index (a `min()` was planned as a scan of every grant not yet due).
        "SELECT EXTRACT(EPOCH FROM refresh_at - now())::float8 AS seconds FROM grants \
         WHERE status = '{}' AND refresh_token IS NOT NULL AND refresh_at > now() ORDER BY refresh_at, id LIMIT 1",
        GrantStatus::Valid
    );
    let rows = along_due_index(ctx, Statement::from_string(DbBackend::Postgres, sql)).await?;
    let seconds = rows.first().map(|row| row.try_get::<Option<f64>>("", "seconds")).transpose()?.flatten();
    Ok(seconds.and_then(|seconds| std::time::Duration::try_from_secs_f64(seconds).ok()))
}

/// `unknown` messages old enough for the server to have filed them in Sent, not looked up yet.
pub async fn claim_due_settlements(ctx: &AppContext, limit: u64) -> AppResult<Vec<OutboundMessageId>> {
    let sql = format!(
        "UPDATE outbound_messages SET dispatched_until = now() + make_interval(secs => $1) WHERE id IN ( \
           SELECT id FROM outbound_messages WHERE {} AND (dispatched_until IS NULL OR dispatched_until < now()) \
           ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING id",
        due::settle()
    );
    claim(ctx, &sql, limit).await
}

/// Tables whose rows carry a dispatch mark.
const DISPATCHED_TABLES: [&str; 4] = ["email_accounts", "outbound_messages", "grants", "webhook_deliveries"];

/// Postgres's clock, which dates the dispatch marks (see [`forget_dispatches`]).
pub async fn database_now(ctx: &AppContext) -> AppResult<chrono::DateTime<chrono::Utc>> {
    let row = ctx.db.query_one_raw(Statement::from_string(DbBackend::Postgres, "SELECT now() AS now")).await?;
    let row = row.ok_or_else(|| DbErr::Custom("SELECT now() returned no row".into()))?;
    Ok(row.try_get("", "now")?)
}

/// Redis lost its jobs (flushed, restarted empty, failed over): the dispatch marks made up to `claimed_before`
/// (Postgres's clock, read before the loss was found; `None`: up to now) are forgotten so everything due is dispatched again at
/// once. Rows whose jobs survived get a second job, which finds the row leased or not due and does nothing. Marks
/// made since (by a worker that already found the new Redis, and pushed there) are kept, so workers starting
/// together do not push each other's jobs again. A mark runs out `DISPATCH_GRACE_SECONDS` after it was made.
pub async fn forget_dispatches(ctx: &AppContext, claimed_before: Option<chrono::DateTime<chrono::Utc>>) -> AppResult<u64> {
    let mut cleared = 0;
    for table in DISPATCHED_TABLES {
        let sql = format!(
            "UPDATE {table} SET dispatched_until = NULL \
             WHERE dispatched_until > now() AND dispatched_until <= COALESCE($1, now()) + make_interval(secs => $2)"
        );
        let values = [claimed_before.into(), DISPATCH_GRACE_SECONDS.into()];
        cleared += ctx.db.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?.rows_affected();
    }
    Ok(cleared)
}
