//! The IDLE watches of this worker process: every couple of seconds it takes mailboxes nobody watches (up to its
//! share of the deployment's, and at most `POSTBRIDGE_IDLE_MAILBOXES`), runs each watch as its own task in its
//! tenant's scope, and hands back what it holds beyond its share when more workers run, so watches spread over
//! the processes. A watch that fails or panics ends alone: its mailbox is polled, then watched again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use postbridge_core::jobs::scheduler;
use postbridge_core::receive::idle::{self, WatchEnd};
use postbridge_core::store::ids::AccountId;
use postbridge_core::store::tenant_wall;
use postbridge_core::AppContext;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::liveness::Liveness;

/// How often the watches are counted, and free mailboxes taken.
const ROUND_EVERY: Duration = Duration::from_secs(2);
/// How long a stopping worker waits for its watches to end (DONE, LOGOUT, lease released).
const STOP_GRACE: Duration = Duration::from_secs(10);

struct Watch {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Runs this process's watches until `stop`; then ends them all, each letting its mailbox go.
pub async fn run(ctx: AppContext, liveness: Arc<Liveness>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let most = ctx.settings.idle_mailboxes;
    let held_gauge = ctx.metrics.worker_idle_mailboxes.with_label_values(&[] as &[&str]);
    let all = CancellationToken::new();
    let mut watches: HashMap<AccountId, Watch> = HashMap::new();
    let mut rounds = tokio::time::interval(ROUND_EVERY);
    rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
            _ = rounds.tick() => {}
        }
        watches.retain(|_, watch| !watch.task.is_finished());
        if most > 0 {
            if let Err(e) = balance(&ctx, most, &all, &mut watches).await {
                tracing::warn!(error = %e, "could not take mailboxes to watch; they are polled meanwhile");
            }
        }
        held_gauge.set(watches.len() as i64);
        liveness.idle_went_round();
    }
    all.cancel();
    let ending = futures::future::join_all(watches.into_values().map(|watch| watch.task));
    if tokio::time::timeout(STOP_GRACE, ending).await.is_err() {
        tracing::warn!("IDLE watches did not end within {STOP_GRACE:?}; their leases run out");
    }
    held_gauge.set(0);
}

/// Takes free mailboxes up to this process's share, or hands back what it holds beyond it.
async fn balance(
    ctx: &AppContext,
    most: usize,
    all: &CancellationToken,
    watches: &mut HashMap<AccountId, Watch>,
) -> anyhow::Result<()> {
    let share = scheduler::idle_share(ctx).await?.min(most);
    // A watch told to stop may still be ending (DONE, LOGOUT): it no longer counts, and is not told twice.
    let mut going_on: Vec<&Watch> = watches.values().filter(|watch| !watch.stop.is_cancelled()).collect();
    let held = going_on.len();
    if held > share.saturating_add(1) {
        // Another worker joined: the extra mailboxes are let go and taken by whoever has room.
        for watch in going_on.drain(..held - share) {
            watch.stop.cancel();
        }
        return Ok(());
    }
    let room = share.saturating_sub(held);
    if room == 0 {
        return Ok(());
    }
    for (account_id, tenant_id) in scheduler::claim_idle_mailboxes(ctx, room as u64).await? {
        let stop = all.child_token();
        let watch_stop = stop.clone();
        let ctx = ctx.clone();
        let reissue = ctx.settings.idle_reissue;
        let task = tokio::spawn(tenant_wall::in_tenant(tenant_id, async move {
            match idle::watch(&ctx, account_id, reissue, &watch_stop).await {
                WatchEnd::Failed(e) => {
                    tracing::info!(%account_id, error = %e, "an IDLE watch failed; the mailbox is polled until watched again")
                }
                end => tracing::debug!(%account_id, ?end, "an IDLE watch ended"),
            }
        }));
        watches.insert(account_id, Watch { stop, task });
    }
    Ok(())
}
