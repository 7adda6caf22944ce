//! The loops that feed the queues and keep house. Postgres is the truth: what is due is claimed there and pushed
//! to Redis; a push that fails is unclaimed at once, and when Redis lost its data (flushed, restarted empty,
//! failed over) every claim is forgotten so everything due is dispatched again within a second. None of these
//! loops waits on a provider or a mail server: that work runs in jobs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use apalis::prelude::*;
use apalis_core::backend::Vacuum;
use apalis_redis::{ConnectionManager, RedisStorage};
use postbridge_core::connect::token_configs;
use postbridge_core::jobs::marks::{self, Dispatched};
use postbridge_core::jobs::scheduler::{self, SendClaim};
use postbridge_core::jobs::workers;
use postbridge_core::observe::{events, webhooks};
use postbridge_core::send::give_back;
use postbridge_core::AppContext;
use uuid::Uuid;

use crate::liveness::Liveness;
use crate::queue::{DeliverMessage, DeliverWebhook, PollMailbox, RefreshGrant, SettleMessage};
use crate::wake::{QueueWakers, SendSlots};
use postbridge_core::jobs::job::Queue;

/// Rows claimed per query; a full batch means more may be due.
const BATCH: u64 = 1_000;

/// The storages of every queue, and the signals that wake this process's consumers after a push.
#[derive(Clone)]
pub struct Queues {
    pub polls: RedisStorage<PollMailbox>,
    pub sends: RedisStorage<DeliverMessage>,
    pub hooks: RedisStorage<DeliverWebhook>,
    pub refreshes: RedisStorage<RefreshGrant>,
    pub settles: RedisStorage<SettleMessage>,
    pub wakers: QueueWakers,
    /// When a pass last looked for messages whose job was lost (see [`LOST_SENDS_EVERY`]).
    pub lost_sends_checked_at: Option<Instant>,
}

/// How often a pass also takes back messages whose dispatch mark ran out (their job lost). Such a mark lasts
/// minutes (`DISPATCH_GRACE_SECONDS`) and a Redis flush clears the marks at once, so looking now and then is enough;
/// looking on every pass read the whole dispatched backlog each time.
const LOST_SENDS_EVERY: Duration = Duration::from_secs(15);

impl Queues {
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        Queues {
            wakers: QueueWakers::default(),
            polls: crate::queue::storage(conn.clone(), prefix, Queue::Poll),
            sends: crate::queue::storage(conn.clone(), prefix, Queue::Send),
            hooks: crate::queue::storage(conn.clone(), prefix, Queue::Webhook),
            refreshes: crate::queue::storage(conn.clone(), prefix, Queue::Refresh),
            settles: crate::queue::storage(conn, prefix, Queue::Settle),
            lost_sends_checked_at: None,
        }
    }
}

/// What found work due: the scheduler's regular pass, a notice from Postgres that a row committed, or the due time
/// of grants known at the last pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Pass,
    Notice,
    DueTime,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Pass => "pass",
            Trigger::Notice => "notice",
            Trigger::DueTime => "due_time",
        }
    }
}

/// Where pushed jobs went and what found them due.
#[derive(Clone, Copy)]
struct Target<'a> {
    wakers: &'a QueueWakers,
    queue: Queue,
    trigger: Trigger,
}

impl Target<'_> {
    /// After a push of `count` jobs: wakes this process's consumer of the queue and counts them.
    fn pushed(self, ctx: &AppContext, count: usize) {
        self.wakers.of(self.queue).signal();
        ctx.metrics.worker_dispatched.with_label_values(&[self.queue.as_str(), self.trigger.as_str()]).inc_by(count as u64);
    }
}

/// Pushes one job per claim to `to`'s queue (see [`Target::pushed`]); on failure the rows are unclaimed so the
/// next round dispatches them again. `row_ids` names the rows a claim marked (a refresh batch marks several).
async fn push<T, S, K, Claim, Ids>(
    ctx: &AppContext,
    storage: &mut S,
    to: Target<'_>,
    rows: Dispatched,
    claimed: Vec<Claim>,
    row_ids: impl Fn(&Claim) -> Ids,
    job: impl Fn(Claim) -> T,
) -> anyhow::Result<usize>
where
    Ids: IntoIterator,
    Ids::Item: Copy + Into<Uuid>,
    S: TaskSink<T, K>,
    S::Error: std::fmt::Display,
{
    let count = claimed.len();
    if count == 0 {
        return Ok(0);
    }
    let ids: Vec<Ids::Item> = claimed.iter().flat_map(row_ids).collect();
    if let Err(e) = storage.push_bulk(claimed.into_iter().map(job).collect()).await {
        if let Err(undo) = marks::undispatch(ctx, rows, &ids).await {
            tracing::warn!(error = %undo, "could not unclaim rows after a failed push; they wait out the dispatch grace");
        }
        anyhow::bail!("pushing {count} jobs to Redis failed: {e}");
    }
    to.pushed(ctx, count);
    Ok(count)
}

/// Claims and pushes every message due to send, a batch at a time.
pub async fn dispatch_due_sends(ctx: &AppContext, queues: &mut Queues, trigger: Trigger) -> anyhow::Result<()> {
    let lost_check_due = queues.lost_sends_checked_at.is_none_or(|at| at.elapsed() >= LOST_SENDS_EVERY);
    let which = if trigger == Trigger::Pass && lost_check_due {
        queues.lost_sends_checked_at = Some(Instant::now());
        SendClaim::NewAndLost
    } else {
        SendClaim::New
    };
    loop {
        let batches = scheduler::claim_due_sends(ctx, BATCH, which).await?;
        let claimed = batches.iter().map(|(_, ids)| ids.len()).sum::<usize>();
        let jobs: Vec<DeliverMessage> =
            batches.iter().filter_map(|(tenant_id, ids)| DeliverMessage::batch(*tenant_id, ids)).collect();
        let to = Target { wakers: &queues.wakers, queue: Queue::Send, trigger };
        push(ctx, &mut queues.sends, to, Dispatched::Messages, jobs, DeliverMessage::message_ids, |job| job).await?;
        if (claimed as u64) < BATCH {
            return Ok(());
        }
    }
}

/// Claims and pushes every grant due for a refresh, in batches of one token configuration (one job each), a
/// claim at a time: a storm of tokens expiring together is queued within the pass that finds it.
async fn dispatch_due_refreshes(ctx: &AppContext, queues: &mut Queues, trigger: Trigger) -> anyhow::Result<()> {
    let mut after = None;
    loop {
        let (batches, last) = scheduler::claim_due_refreshes(ctx, BATCH, after).await?;
        after = last;
        let claimed = batches.iter().map(Vec::len).sum::<usize>();
        let jobs: Vec<RefreshGrant> = batches.iter().filter_map(|batch| RefreshGrant::batch(batch)).collect();
        let to = Target { wakers: &queues.wakers, queue: Queue::Refresh, trigger };
        push(ctx, &mut queues.refreshes, to, Dispatched::Grants, jobs, RefreshGrant::grant_ids, |job| job).await?;
        if (claimed as u64) < BATCH {
            return Ok(());
        }
    }
}

/// Claims and pushes everything due, queue by queue; one queue's failure does not hold up the others.
pub async fn dispatch_due(ctx: &AppContext, queues: &mut Queues) -> anyhow::Result<()> {
    // Every queue is tried; the first failure is reported.
    let mut failures = Vec::new();
    if let Err(e) = dispatch_due_sends(ctx, queues, Trigger::Pass).await {
        failures.push(e);
    }
    match scheduler::claim_due_polls(ctx, 500).await {
        Ok(ids) => {
            let to = Target { wakers: &queues.wakers, queue: Queue::Poll, trigger: Trigger::Pass };
            if let Err(e) =
                push(ctx, &mut queues.polls, to, Dispatched::Polls, ids, |&id| [id], |account_id| PollMailbox { account_id })
                    .await
            {
                failures.push(e);
            }
        }
        Err(e) => failures.push(e.into()),
    }
    if let Err(e) = dispatch_due_refreshes(ctx, queues, Trigger::Pass).await {
        failures.push(e);
    }
    match scheduler::claim_due_settlements(ctx, 100).await {
        Ok(ids) => {
            let to = Target { wakers: &queues.wakers, queue: Queue::Settle, trigger: Trigger::Pass };
            if let Err(e) = push(
                ctx,
                &mut queues.settles,
                to,
                Dispatched::Messages,
                ids,
                |&id| [id],
                |message_id| SettleMessage { message_id },
            )
            .await
            {
                failures.push(e);
            }
        }
        Err(e) => failures.push(e.into()),
    }
    let to = Target { wakers: &queues.wakers, queue: Queue::Webhook, trigger: Trigger::Pass };
    if let Err(e) = dispatch_due_webhooks(ctx, &mut queues.hooks, to).await {
        failures.push(e);
    }
    match failures.into_iter().next() {
        None => Ok(()),
        Some(first) => Err(first),
    }
}

async fn dispatch_due_webhooks(ctx: &AppContext, hooks: &mut RedisStorage<DeliverWebhook>, to: Target<'_>) -> anyhow::Result<()> {
    loop {
        let due = webhooks::claim_due_webhooks(ctx, BATCH).await?;
        let count = due.len();
        if count > 0 {
            let jobs = due.iter().map(|&(endpoint_id, event_id)| DeliverWebhook { endpoint_id, event_id }).collect();
            if let Err(e) = hooks.push_bulk(jobs).await {
                if let Err(undo) = marks::undispatch_webhook_deliveries(ctx, &due).await {
                    tracing::warn!(error = %undo, "could not unclaim webhook deliveries after a failed push");
                }
                anyhow::bail!("pushing {count} webhook jobs to Redis failed: {e}");
            }
            to.pushed(ctx, count);
        }
        if (count as u64) < BATCH {
            return Ok(());
        }
    }
}

/// Notices that Redis lost its data: a random epoch is kept under `{prefix}:epoch`; when it is gone or has
/// changed, the jobs it held are gone too.
pub struct RedisEpoch {
    key: String,
    known: Option<String>,
}

impl RedisEpoch {
    pub fn new(prefix: &str) -> Self {
        RedisEpoch { key: format!("{prefix}:epoch"), known: None }
    }

    /// Whether Redis lost what it held since the last check (or was empty when this process first looked), and if
    /// so Postgres's time just before the new epoch was found or made: jobs pushed before it went with the old data;
    /// claims made after it were pushed to the new Redis (a worker claims only after it has seen the epoch), so
    /// they are not forgotten (see `forget_dispatches`).
    pub async fn lost_data(
        &mut self,
        conn: &mut ConnectionManager,
        ctx: &AppContext,
    ) -> anyhow::Result<Option<chrono::DateTime<chrono::Utc>>> {
        let current: Option<String> = redis::cmd("GET").arg(&self.key).query_async(conn).await?;
        if current.is_some() && current == self.known {
            return Ok(None);
        }
        let found_at = scheduler::database_now(ctx).await.context("reading Postgres's clock")?;
        let candidate = Uuid::new_v4().to_string();
        let created: Option<String> = redis::cmd("SET").arg(&self.key).arg(&candidate).arg("NX").query_async(conn).await?;
        let current = match created {
            Some(_) => Some(candidate),
            None => redis::cmd("GET").arg(&self.key).query_async::<Option<String>>(conn).await?,
        };
        let lost = match &self.known {
            Some(known) => current.as_ref() != Some(known),
            None => created.is_some(),
        };
        self.known = current;
        Ok(lost.then_some(found_at))
    }
}

/// Dispatches what is due every `POSTBRIDGE_DISPATCH_INTERVAL` (half a second) until `stop`, and re-dispatches everything when Redis lost its jobs.
/// Sends found due between the passes (`send_slots`, see `wake::listen_for_sends`) are dispatched at once, unless every
/// send slot of this process is busy: then the claim waits for a slot to free ([`SendSlots`]). Grants falling due
/// before the next pass are dispatched at their due time ([`next_refreshes_due`]).
pub async fn run(
    ctx: AppContext,
    mut queues: Queues,
    mut redis: ConnectionManager,
    liveness: Arc<Liveness>,
    send_slots: SendSlots,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut dispatch = tokio::time::interval(ctx.settings.dispatch_interval);
    dispatch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut epoch = RedisEpoch::new(&ctx.settings.redis_prefix);
    let mut last_error_logged: Option<std::time::Instant> = None;
    let mut failing = false;
    let mut refreshes_due_at: Option<tokio::time::Instant> = None;
    loop {
        let woken = tokio::select! {
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
            _ = dispatch.tick() => Woken::Pass,
            () = send_slots.due() => Woken::Sends,
            () = sleep_until_some(refreshes_due_at) => Woken::Refreshes,
        };
        match woken {
            Woken::Pass => {}
            Woken::Sends => {
                if send_slots.defer_while_busy() {
                    continue;
                }
                // A failure here is the pass's to report and recover from; the rows stay due.
                if let Err(e) = dispatch_due_sends(&ctx, &mut queues, Trigger::Notice).await {
                    tracing::debug!(error = %e, "dispatching sends on notice failed; the next pass tries again");
                }
                continue;
            }
            Woken::Refreshes => {
                // As above: the pass reports failures, and the grants stay due.
                if let Err(e) = dispatch_due_refreshes(&ctx, &mut queues, Trigger::DueTime).await {
                    tracing::debug!(error = %e, "dispatching refreshes at their due time failed; the next pass tries again");
                }
                refreshes_due_at = next_refreshes_due(&ctx).await;
                continue;
            }
        }
        match epoch.lost_data(&mut redis, &ctx).await {
            Ok(Some(found_at)) => match scheduler::forget_dispatches(&ctx, Some(found_at)).await {
                Ok(0) => tracing::info!("Redis holds none of this deployment's jobs yet (new, flushed or restarted)"),
                Ok(n) => tracing::warn!(
                    claims = n,
                    "Redis lost this deployment's jobs (flushed, restarted or failed over): dispatching everything due again"
                ),
                Err(e) => tracing::error!(error = %e.detail(), "could not forget dispatch claims after Redis lost its jobs"),
            },
            Ok(None) => {}
            Err(e) => {
                // Redis (or, when its epoch changed, Postgres) is down: nothing can be pushed now; the claims wait, and
                // the next check sees what survived.
                if last_error_logged.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(error = format!("{e:#}"), "could not check whether Redis kept its jobs; dispatching waits");
                    last_error_logged = Some(std::time::Instant::now());
                }
                // The loop itself is fine (Redis is reported on its own), so the round counts.
                liveness.scheduler_went_round();
                continue;
            }
        }
        match dispatch_due(&ctx, &mut queues).await {
            Ok(()) if failing => {
                // Jobs taken while Postgres was away found nothing and ended, leaving their rows claimed: forget the
                // claims so those rows are dispatched now rather than after the grace.
                failing = false;
                match scheduler::forget_dispatches(&ctx, None).await {
                    Ok(n) => tracing::info!(claims = n, "dispatching works again; claims made before are dispatched again"),
                    Err(e) => tracing::warn!(error = %e.detail(), "could not forget claims after dispatching recovered"),
                }
            }
            Ok(()) => {}
            Err(e) => {
                failing = true;
                if last_error_logged.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    tracing::error!(error = format!("{e:#}"), "dispatching due jobs failed");
                    last_error_logged = Some(std::time::Instant::now());
                }
            }
        }
        refreshes_due_at = next_refreshes_due(&ctx).await;
        // Counted once the pass is done, so a worker is ready only after its first.
        liveness.scheduler_went_round();
    }
}

/// What woke the dispatch loop: its pass, a commit's notice of due sends, or grants falling due between passes.
enum Woken {
    Pass,
    Sends,
    Refreshes,
}

async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Due-time wakes come at least this far apart: grants falling due one by one (many grants, each on its own hour)
/// are still claimed together, at most 20 times a second, rather than one claim and one job per grant.
const DUE_TIME_SPACING: Duration = Duration::from_millis(50);

/// The moment the next grants fall due for a refresh, when that comes before the next pass: the loop wakes then,
/// so tokens expiring together are refreshed from the moment they are due, not up to a pass later.
async fn next_refreshes_due(ctx: &AppContext) -> Option<tokio::time::Instant> {
    match scheduler::next_refresh_in(ctx).await {
        Ok(Some(due_in)) => {
            due_time_wait(due_in, ctx.settings.dispatch_interval).and_then(|wait| tokio::time::Instant::now().checked_add(wait))
        }
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(error = %e, "could not read when grants next fall due; the passes find them");
            None
        }
    }
}

/// How long to sleep before claiming grants that fall due in `due_in`; `None` when the next pass comes first.
fn due_time_wait(due_in: Duration, pass_interval: Duration) -> Option<Duration> {
    // A millisecond late rather than early: a wake before the moment would find nothing due yet.
    (due_in < pass_interval).then(|| (due_in + Duration::from_millis(1)).max(DUE_TIME_SPACING))
}

/// Quick database chores, each on its own pace: interrupted deliveries every 5 s, Redis job bodies every minute,
/// secret expiry, event retention, ended OAuth sign-in states and old worker rows every hour.
pub async fn housekeeping(
    ctx: AppContext,
    mut queues: Queues,
    mut redis: ConnectionManager,
    liveness: Arc<Liveness>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut abandoned = tokio::time::interval(Duration::from_secs(5));
    let mut vacuum = tokio::time::interval(Duration::from_secs(60));
    let mut hourly = tokio::time::interval(Duration::from_secs(3600));
    for timer in [&mut abandoned, &mut vacuum, &mut hourly] {
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        tokio::select! {
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
            _ = abandoned.tick() => {
                match give_back::reclaim_abandoned(&ctx).await {
                    Ok(done) if done == give_back::Abandoned::default() => {}
                    Ok(done) => tracing::warn!(requeued = done.requeued, unknown = done.unknown, "took back deliveries whose worker stopped"),
                    Err(e) => tracing::error!(error = %e.detail(), "settling abandoned deliveries failed"),
                }
            }
            _ = vacuum.tick() => {
                if let Err(e) = vacuum_redis(&mut queues, &mut redis, &ctx.settings.redis_prefix).await {
                    tracing::warn!(error = %e, "clearing finished jobs from Redis failed");
                }
            }
            _ = hourly.tick() => hourly_chores(&ctx).await,
        }
        liveness.housekeeping_went_round();
    }
}

/// apalis keeps every finished job's body and metadata, and its id in a `done` set, until vacuumed.
async fn vacuum_redis(queues: &mut Queues, redis: &mut ConnectionManager, prefix: &str) -> anyhow::Result<()> {
    let mut removed = queues.polls.vacuum().await?;
    removed += queues.sends.vacuum().await?;
    removed += queues.hooks.vacuum().await?;
    removed += queues.refreshes.vacuum().await?;
    removed += queues.settles.vacuum().await?;
    for queue in Queue::NAMES {
        let _: i64 = redis::cmd("DEL").arg(format!("{prefix}:{queue}:done")).query_async(redis).await?;
    }
    tracing::debug!(removed, "vacuumed finished jobs from Redis");
    Ok(())
}

async fn hourly_chores(ctx: &AppContext) {
    match token_configs::scan_secret_expiry(ctx).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(events = n, "announced expiring client secrets"),
        Err(e) => tracing::error!(error = %e.detail(), "client secret expiry scan failed"),
    }
    // Retention is counted in days, so an hour late is of no consequence.
    match events::purge_older_than(ctx, ctx.settings.event_retention_days).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(events = n, "purged events past their retention"),
        Err(e) => tracing::error!(error = %e.detail(), "purging old events failed"),
    }
    match postbridge_core::connect::grants::purge_ended_states(ctx).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(states = n, "deleted ended OAuth sign-in states"),
        Err(e) => tracing::error!(error = %e.detail(), "purging ended OAuth sign-in states failed"),
    }
    match workers::prune(ctx).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(rows = n, "deleted rows of long-gone worker processes"),
        Err(e) => tracing::error!(error = %e.detail(), "pruning worker rows failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_due_time_wake_comes_just_after_the_moment_never_sooner_than_the_spacing_and_only_before_the_next_pass() {
        let pass = Duration::from_millis(500);
        let ms = Duration::from_millis;
        assert_eq!(due_time_wait(ms(200), pass), Some(ms(201)), "a millisecond after the moment");
        assert_eq!(due_time_wait(Duration::ZERO, pass), Some(DUE_TIME_SPACING), "just after a wake: spaced out");
        assert_eq!(due_time_wait(ms(10), pass), Some(DUE_TIME_SPACING));
        assert_eq!(due_time_wait(ms(500), pass), None, "the pass comes first");
        assert_eq!(due_time_wait(Duration::from_secs(3600), pass), None);
    }
}
