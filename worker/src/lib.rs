//! The worker's run loop as a library, so `main` and the tests start the same thing.
//!
//! A scheduler reads what is due from Postgres and pushes job ids to Redis (apalis); workers take the
//! jobs and reload their rows under a lease. Any number of worker processes can run side by side.

pub mod metrics;
pub mod queue;

use std::time::Duration;

use anyhow::Context as _;
use apalis::prelude::*;
use postbridge_core::service::{delivery, events, grants, scheduler, token_configs, webhooks};
use postbridge_core::AppContext;
use queue::{DeliverMessage, DeliverWebhook, PollMailbox};

/// How many due grants one refresh pass handles.
const REFRESH_BATCH: u64 = 200;

/// Runs the scheduler and the job workers until `stop` turns true; jobs in flight are finished first.
pub async fn run(ctx: AppContext, stop: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<()> {
    let conn = apalis_redis::connect(ctx.settings.redis_url.as_str())
        .await
        .context("failed to connect to Redis (POSTBRIDGE_REDIS_URL)")?;
    let prefix = ctx.settings.redis_prefix.clone();
    let polls = queue::storage::<PollMailbox>(conn.clone(), &prefix, "poll");
    let sends = queue::storage::<DeliverMessage>(conn.clone(), &prefix, "send");
    let hooks = queue::storage::<DeliverWebhook>(conn, &prefix, "webhook");
    // Bound before the workers start, so a taken address fails the start instead of going unnoticed.
    let metrics_server = match ctx.settings.worker_metrics_addr {
        Some(addr) => {
            let listener = metrics::bind(addr).await?;
            tracing::info!(addr = %listener.local_addr()?, "serving worker metrics at /metrics");
            Some(tokio::spawn(metrics::serve(ctx.clone(), listener, stop.clone())))
        }
        None => None,
    };
    tracing::info!(%prefix, "postbridge-worker started");
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
        Ok::<(), std::io::Error>(())
    };
    let poll_worker = WorkerBuilder::new("postbridge-poll")
        .backend(polls.clone())
        .concurrency(ctx.settings.poll_concurrency)
        .data(ctx.clone())
        .build(queue::poll_mailbox)
        .run_until(stopped(stop.clone()));
    let send_worker = WorkerBuilder::new("postbridge-send")
        .backend(sends.clone())
        .concurrency(ctx.settings.send_concurrency)
        .data(ctx.clone())
        .build(queue::deliver_message)
        .run_until(stopped(stop.clone()));
    let webhook_worker = WorkerBuilder::new("postbridge-webhook")
        .backend(hooks.clone())
        .concurrency(ctx.settings.webhooks.concurrency)
        .data(ctx.clone())
        .build(queue::deliver_webhook)
        .run_until(stopped(stop.clone()));
    let (polled, sent, hooked, ()) =
        tokio::join!(poll_worker, send_worker, webhook_worker, schedule(ctx.clone(), polls, sends, hooks, stop));
    polled.context("poll worker")?;
    sent.context("send worker")?;
    hooked.context("webhook worker")?;
    if let Some(server) = metrics_server {
        server.await.context("metrics server")?;
    }
    Ok(())
}

/// Pushes what is due, refreshes grants, settles abandoned sends and scans secret expiry, until stopped.
pub async fn schedule(
    ctx: AppContext,
    mut polls: apalis_redis::RedisStorage<PollMailbox>,
    mut sends: apalis_redis::RedisStorage<DeliverMessage>,
    mut hooks: apalis_redis::RedisStorage<DeliverWebhook>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut dispatch = tokio::time::interval(Duration::from_millis(500));
    let mut refresh = tokio::time::interval(Duration::from_secs(30));
    let mut housekeeping = tokio::time::interval(Duration::from_secs(60));
    let mut secret_scan = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            // The guard `wait_for` returns is not Send: drop it inside the branch's own future.
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
            _ = dispatch.tick() => {
                if let Err(e) = dispatch_due(&ctx, &mut polls, &mut sends).await {
                    tracing::error!(error = %e, "dispatching due jobs failed");
                }
                if let Err(e) = dispatch_due_webhooks(&ctx, &mut hooks).await {
                    tracing::error!(error = %e, "dispatching due webhook deliveries failed");
                }
            }
            _ = refresh.tick() => refresh_pass(&ctx).await,
            _ = housekeeping.tick() => settle(&ctx).await,
            _ = secret_scan.tick() => {
                match token_configs::scan_secret_expiry(&ctx).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(events = n, "announced expiring client secrets"),
                    Err(e) => tracing::error!(error = %e, "client secret expiry scan failed"),
                }
                // Hourly too: retention is counted in days, so an hour late is of no consequence.
                match events::purge_older_than(&ctx, ctx.settings.event_retention_days).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(events = n, "purged events past their retention"),
                    Err(e) => tracing::error!(error = %e, "purging old events failed"),
                }
            }
        }
    }
}

pub async fn dispatch_due(
    ctx: &AppContext,
    polls: &mut apalis_redis::RedisStorage<PollMailbox>,
    sends: &mut apalis_redis::RedisStorage<DeliverMessage>,
) -> anyhow::Result<()> {
    loop {
        let due = scheduler::claim_due_sends(ctx, 1_000).await?;
        let count = due.len();
        if count > 0 {
            sends
                .push_bulk(due.into_iter().map(|message_id| DeliverMessage { message_id }).collect())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        if count < 1_000 {
            break;
        }
    }
    let due = scheduler::claim_due_polls(ctx, 500).await?;
    if !due.is_empty() {
        polls
            .push_bulk(due.into_iter().map(|account_id| PollMailbox { account_id }).collect())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}

/// Pushes the webhook deliveries that are due (a separate call, so callers of `dispatch_due` keep their signature).
pub async fn dispatch_due_webhooks(
    ctx: &AppContext,
    hooks: &mut apalis_redis::RedisStorage<DeliverWebhook>,
) -> anyhow::Result<()> {
    loop {
        let due = webhooks::claim_due_webhooks(ctx, 1_000).await?;
        let count = due.len();
        if count > 0 {
            hooks
                .push_bulk(due.into_iter().map(|(endpoint_id, event_id)| DeliverWebhook { endpoint_id, event_id }).collect())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        if count < 1_000 {
            return Ok(());
        }
    }
}
/// Refreshes every grant that is due, batch after batch, until none is left.
/// Interrupted deliveries become `unknown`; `unknown` ones are looked up in the mailbox's Sent folder.
async fn settle(ctx: &AppContext) {
    match delivery::settle_abandoned(ctx).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(messages = n, "messages whose delivery was interrupted are now unknown"),
        Err(e) => tracing::error!(error = %e, "settling abandoned deliveries failed"),
    }
    match delivery::settle_unknown(ctx).await {
        Ok(settled) if settled.is_empty() => {}
        Ok(settled) => tracing::info!(?settled, "settled unknown deliveries through the Sent folder"),
        Err(e) => tracing::error!(error = %e, "settling unknown deliveries failed"),
    }
}

async fn refresh_pass(ctx: &AppContext) {
    loop {
        let started = std::time::Instant::now();
        match grants::refresh_due(ctx, REFRESH_BATCH).await {
            Ok(pass) => {
                if pass != grants::RefreshPass::default() {
                    // A pass with nothing due is not a job; each refresh is also in token_refreshes_total.
                    ctx.metrics.job("refresh", "completed", started.elapsed());
                    tracing::info!(
                        refreshed = pass.refreshed,
                        reauth_required = pass.reauth_required,
                        failed = pass.failed,
                        "grant refresh pass"
                    );
                }
                // Failed grants have moved their next attempt into the future, so a full batch means more work.
                if pass.refreshed + pass.reauth_required + pass.failed < REFRESH_BATCH {
                    break;
                }
            }
            Err(e) => {
                ctx.metrics.job("refresh", "error", started.elapsed());
                tracing::error!(error = %e, "grant refresh pass failed");
                break;
            }
        }
    }
}
