//! The worker as a library, so `main` and the tests start the same thing.
//!
//! A scheduler reads what is due from Postgres and pushes job ids to Redis (apalis); consumers take the jobs,
//! which reload their rows under a lease. Any number of worker processes can run side by side: each names its
//! consumers after itself, restarts a consumer that dies, writes a heartbeat row, and serves `/readyz`.

pub mod consumers;
pub mod http;
pub mod idle;
pub mod liveness;
pub mod queue;
pub mod scheduler;
pub mod wake;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use apalis::prelude::*;
use futures::FutureExt;
use postbridge_core::jobs::workers;
use postbridge_core::send::give_back;
use postbridge_core::{AppContext, Settings};

use consumers::{stopped, supervise, track_liveness, StartConsumer};
use liveness::{Identity, Liveness};
use postbridge_core::jobs::job::Queue;
use queue::{DeliverMessage, DeliverWebhook, JobRunner, PollMailbox, RefreshGrant, SettleMessage};
use scheduler::Queues;

/// `postbridge-worker`: settings from the environment, runs until SIGTERM or Ctrl-C, then stops cleanly.
pub async fn main_entry() -> anyhow::Result<()> {
    postbridge_core::telemetry::init("info");
    let settings = Settings::from_env()?;
    let ctx = AppContext::build(settings).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let run = run(ctx, stop_rx);
    tokio::pin!(run);
    tokio::select! {
        // The worker stopping on its own (e.g. its metrics address taken) ends the process with its error.
        result = &mut run => return result,
        _ = shutdown_signal() => {}
    }
    tracing::info!("stopping: no new jobs; finishing jobs in flight");
    let _ = stop_tx.send(true);
    run.await?;
    tracing::info!("postbridge-worker stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return ctrl_c.await.unwrap_or(()),
        };
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Starts one queue's consumer under its supervisor.
macro_rules! consumer {
    ($storage:expr, $wake:expr, $concurrency:expr, $handler:path, $runner:expr) => {{
        let storage = $storage;
        let wake = $wake.clone();
        let runner = $runner.clone();
        let concurrency: usize = $concurrency;
        let start: StartConsumer = Box::new(move |name, stop, live| {
            WorkerBuilder::new(name)
                // Fetches on its heartbeat, and at once when this process pushed to its queue.
                .backend(storage.clone().poll_with_strategy(StreamStrategy::new(wake.clone())))
                .concurrency(concurrency)
                .data(runner.clone())
                .on_event(track_liveness(live))
                .build($handler)
                .run_until(stopped(stop))
                .boxed()
        });
        start
    }};
}

/// Runs the scheduler, the housekeeping, the consumers and the heartbeat until `stop` turns true; then stops
/// claiming, lets jobs in flight finish (up to `POSTBRIDGE_WORKER_SHUTDOWN_GRACE`), gives back the messages it
/// leased but never handed to a server, and marks its heartbeat row stopped.
pub async fn run(ctx: AppContext, stop: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<()> {
    let redis = queue::connect(ctx.settings.redis_url.as_str()).context("invalid POSTBRIDGE_REDIS_URL")?;
    let prefix = ctx.settings.redis_prefix.clone();
    let queues = Queues::new(redis.clone(), &prefix);
    let identity = Identity::of(&ctx);
    let liveness = Liveness::new();
    let sends_due = Arc::new(tokio::sync::Notify::new());
    let runner = JobRunner::new(ctx.clone(), sends_due.clone());
    // Bound before anything starts, so a taken address fails the start instead of going unnoticed.
    let http_server = match ctx.settings.worker_metrics_addr {
        Some(addr) => {
            let listener = http::bind(addr).await?;
            tracing::info!(addr = %listener.local_addr()?, "serving worker /metrics, /healthz and /readyz");
            let probes = http::Probes { liveness: liveness.clone(), redis: redis.clone() };
            Some(tokio::spawn(http::serve(ctx.clone(), probes, listener, stop.clone())))
        }
        None => None,
    };
    tracing::info!(%prefix, worker_id = %identity.id, host = %identity.host, pid = identity.pid, "postbridge-worker started");

    let limit = |queue| queue::concurrency(&ctx.settings, queue);
    let wake = |queue| queues.wakers.of(queue);
    let starts: Vec<(Queue, StartConsumer)> = vec![
        (
            Queue::Send,
            consumer!(queues.sends.clone(), wake(Queue::Send), limit(Queue::Send), queue::handle::<DeliverMessage>, runner),
        ),
        (
            Queue::Poll,
            consumer!(queues.polls.clone(), wake(Queue::Poll), limit(Queue::Poll), queue::handle::<PollMailbox>, runner),
        ),
        (
            Queue::Refresh,
            consumer!(
                queues.refreshes.clone(),
                wake(Queue::Refresh),
                limit(Queue::Refresh),
                queue::handle::<RefreshGrant>,
                runner
            ),
        ),
        (
            Queue::Settle,
            consumer!(queues.settles.clone(), wake(Queue::Settle), limit(Queue::Settle), queue::handle::<SettleMessage>, runner),
        ),
        (
            Queue::Webhook,
            consumer!(queues.hooks.clone(), wake(Queue::Webhook), limit(Queue::Webhook), queue::handle::<DeliverWebhook>, runner),
        ),
    ];
    let mut consumer_tasks = Vec::new();
    for (queue, start) in starts {
        let queue = queue.as_str();
        let identity = identity.clone();
        let live = liveness.consumer_flag(queue);
        consumer_tasks.push(tokio::spawn(supervise(queue, move || identity.consumer_name(queue), start, live, stop.clone())));
    }
    let loops = vec![
        tokio::spawn(wake::listen_for_sends(ctx.clone(), sends_due, stop.clone())),
        tokio::spawn(idle::run(ctx.clone(), liveness.clone(), stop.clone())),
        tokio::spawn(scheduler::run(
            ctx.clone(),
            queues.clone(),
            redis.clone(),
            liveness.clone(),
            runner.send_slots(),
            stop.clone(),
        )),
        tokio::spawn(scheduler::housekeeping(ctx.clone(), queues.clone(), redis.clone(), liveness.clone(), stop.clone())),
    ];
    // The heartbeat goes on through the shutdown grace, so a stopping worker is never taken for a dead one.
    let (heartbeat_stop, heartbeat_stopped) = tokio::sync::watch::channel(false);
    let heartbeat =
        tokio::spawn(liveness::heartbeat(ctx.clone(), identity.clone(), liveness.clone(), redis.clone(), heartbeat_stopped));

    let mut stop = stop;
    let _ = stop.wait_for(|s| *s).await;
    for task in loops {
        let _ = task.await;
    }
    // Consumers stop fetching, give their buffered jobs back to Redis and deregister; jobs they started go on.
    let grace = ctx.settings.worker_shutdown_grace;
    let deadline = tokio::time::Instant::now() + grace;
    let consumers_stopped = tokio::time::timeout_at(deadline, futures::future::join_all(consumer_tasks)).await;
    if consumers_stopped.is_err() {
        tracing::warn!("queue consumers did not stop within the shutdown grace");
    }
    if tokio::time::timeout_at(deadline, runner.drain()).await.is_err() {
        tracing::warn!(jobs = runner.in_flight(), ?grace, "jobs still running at the end of the shutdown grace are cut");
    }
    let _ = heartbeat_stop.send(true);
    let _ = heartbeat.await;
    shut_down(&ctx, &identity).await;
    if let Some(server) = http_server {
        let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    }
    Ok(())
}

/// The last words of a stopping worker: messages it leased but never handed over go back to the queue (a cut job
/// that had not reached the server), and its heartbeat row says it stopped.
async fn shut_down(ctx: &AppContext, identity: &Identity) {
    match give_back::release_unsent_of_instance(ctx, identity.id).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(messages = n, "gave back messages leased but never handed to a server"),
        Err(e) => tracing::warn!(error = %e.detail(), "could not give back leased messages; their leases will expire"),
    }
    if let Err(e) = workers::record_stopped(ctx, identity.id).await {
        tracing::warn!(error = %e.detail(), "could not mark this worker stopped");
    }
}
