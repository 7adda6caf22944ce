//! The Redis job queues (apalis): jobs carry ids only and reload their rows; queue names are fixed and
//! namespaced by `POSTBRIDGE_REDIS_PREFIX`, so moving a struct never orphans queued jobs.
//!
//! Every job runs as its own Tokio task, apart from the apalis consumer that took it: a consumer that dies
//! (Redis flushed or gone) never cuts a job in flight, a panic fails only its job, and shutdown can wait for
//! every job wherever it came from. Handlers always answer `Ok` to apalis: Postgres records the outcome and the
//! scheduler dispatches again whatever still needs doing, so apalis' own retries are never used.
//!
//! Each job runs in the database scope of the tenant owning the row it names (`tenant_wall::JobRoot`): row-level
//! security holds even where a query forgot its tenant filter.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_redis::{ConnectionManager, RedisStorage};
use postbridge_core::connect::grants;
use postbridge_core::jobs::workers;
use postbridge_core::observe::webhooks;
use postbridge_core::receive::poll;
use postbridge_core::send::delivery::{self, Delivery};
use postbridge_core::send::settle;
use postbridge_core::store::tenant_wall::{self, JobRoot};
use postbridge_core::{AppContext, Settings};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// Poll one inbound mailbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PollMailbox {
    pub account_id: Uuid,
}

/// Send one queued message.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeliverMessage {
    pub message_id: Uuid,
}

/// Make one attempt of a webhook delivery (an event to one endpoint).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeliverWebhook {
    pub endpoint_id: Uuid,
    pub event_id: Uuid,
}

/// Refresh one grant whose access token is about to expire.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RefreshGrant {
    pub grant_id: Uuid,
}

/// Look an `unknown` message up in its mailbox's Sent folder.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SettleMessage {
    pub message_id: Uuid,
}

/// The apalis storage of one queue.
pub fn storage<T>(conn: ConnectionManager, prefix: &str, queue: &str) -> RedisStorage<T> {
    let config = apalis_redis::Config::default()
        .queue(format!("{prefix}:{queue}"))
        // An idle consumer looks for new jobs only when its heartbeat wakes it (apalis-redis has no blocking wait),
        // so the heartbeat sets how soon an idle worker picks up a job: every second. A consumer of a killed
        // process is declared orphaned after 15 missed beats, and its Redis in-flight set given back.
        .heartbeat_interval(Duration::from_secs(1))
        .missed_heartbeats(15)
        // Outcomes live in Postgres; nobody subscribes to apalis' pub/sub events.
        .persist_results(false)
        .emit_events(false);
    RedisStorage::new(conn).with_config(config)
}

/// A Redis connection for the queues: lazy (the worker starts, and reports not ready, while Redis is down),
/// reconnecting by itself, and never waiting long for an answer.
pub fn connect(redis_url: &str) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(redis_url)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    Ok(ConnectionManager::new_lazy_with_config(client, config)?)
}

/// Runs jobs as tracked tasks, at most `concurrency` of each queue at once in this process.
#[derive(Clone)]
pub struct JobRunner {
    pub ctx: AppContext,
    tracker: TaskTracker,
    limits: Arc<std::collections::HashMap<&'static str, Arc<Semaphore>>>,
}

/// How many jobs of `queue` one worker process runs at once (its consumer fetches as many, and the runner lets as
/// many run).
pub fn concurrency(settings: &Settings, queue: &str) -> usize {
    match queue {
        "send" => settings.send_concurrency,
        "poll" => settings.poll_concurrency,
        "refresh" => settings.refresh_concurrency,
        "webhook" => settings.webhooks.concurrency,
        // Sent-folder look-ups are rare, and each holds a mailbox's one connection.
        _ => 2,
    }
}

impl JobRunner {
    pub fn new(ctx: AppContext) -> Self {
        let limits =
            workers::QUEUES.iter().map(|&queue| (queue, Arc::new(Semaphore::new(concurrency(&ctx.settings, queue))))).collect();
        JobRunner { ctx, tracker: TaskTracker::new(), limits: Arc::new(limits) }
    }

    /// Jobs currently running (or waiting for a slot) in this process.
    pub fn in_flight(&self) -> usize {
        self.tracker.len()
    }

    /// Waits until every job started so far has finished; no new job starts afterwards.
    pub async fn drain(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Runs `work` as its own task, in the database scope of the tenant owning `root`, and waits for it. If the
    /// caller (an apalis consumer) is dropped, the job goes on to its end. A panic is recorded as the job's
    /// failure.
    async fn run<F>(&self, queue: &'static str, root: JobRoot, work: F) -> Result<(), BoxDynError>
    where
        F: Future<Output = &'static str> + Send + 'static,
    {
        let limit = self.limits.get(queue).cloned();
        let metrics = self.ctx.metrics.clone();
        let db = self.ctx.db.clone();
        let handle = self.tracker.spawn(async move {
            let _slot = match limit {
                Some(limit) => limit.acquire_owned().await.ok(),
                None => None,
            };
            let started = Instant::now();
            let tenant_id = match tenant_wall::tenant_of(&db, root).await {
                Ok(Some(tenant_id)) => tenant_id,
                // The row is gone (deleted with its tenant or account): nothing is left to do.
                Ok(None) => return metrics.job(queue, "skipped", started.elapsed()),
                // The scheduler dispatches again whatever still needs doing once the database answers.
                Err(e) => {
                    tracing::error!(queue, ?root, error = %e, "could not find the job's tenant");
                    return metrics.job(queue, "error", started.elapsed());
                }
            };
            let outcome = tokio::spawn(tenant_wall::in_tenant(tenant_id, work)).await;
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(e) if e.is_panic() => {
                    tracing::error!(queue, "a job panicked; it failed and the worker goes on");
                    "panicked"
                }
                Err(_) => "cancelled",
            };
            metrics.job(queue, outcome, started.elapsed());
        });
        if let Err(e) = handle.await {
            tracing::error!(queue, error = %e, "a job task ended abnormally");
        }
        Ok(())
    }
}

/// Mail errors are recorded on the account by `poll_account`; infrastructure errors are logged and the
/// mailbox is polled again at its next dispatch.
pub async fn poll_mailbox(job: PollMailbox, runner: Data<JobRunner>) -> Result<(), BoxDynError> {
    let ctx = runner.ctx.clone();
    runner
        .run("poll", JobRoot::Account(job.account_id), async move {
            match poll::poll_account(&ctx, job.account_id).await {
                Ok(report) => {
                    if report.stored > 0 {
                        tracing::info!(account_id = %job.account_id, stored = report.stored, resynchronised = report.resynchronised, "mailbox polled");
                    }
                    if report.polled {
                        "completed"
                    } else {
                        "skipped"
                    }
                }
                Err(poll::PollError::Mail(e)) => {
                    tracing::warn!(account_id = %job.account_id, error = %e, "poll failed");
                    "mail_error"
                }
                Err(poll::PollError::App(e)) => {
                    tracing::error!(account_id = %job.account_id, error = %e, "poll job failed");
                    "error"
                }
            }
        })
        .await
}

pub async fn deliver_message(job: DeliverMessage, runner: Data<JobRunner>) -> Result<(), BoxDynError> {
    let ctx = runner.ctx.clone();
    runner
        .run("send", JobRoot::OutboundMessage(job.message_id), async move {
            match delivery::deliver(&ctx, job.message_id).await {
                Ok(outcome) => {
                    tracing::debug!(message_id = %job.message_id, ?outcome, "delivery");
                    delivery_outcome(&outcome)
                }
                Err(e) => {
                    tracing::error!(message_id = %job.message_id, error = %e, "send job failed");
                    "error"
                }
            }
        })
        .await
}

/// The `outcome` label of a send job.
fn delivery_outcome(outcome: &Delivery) -> &'static str {
    match outcome {
        Delivery::Skipped => "skipped",
        Delivery::Paced => "paced",
        Delivery::Sent => "sent",
        Delivery::Retry => "retry",
        Delivery::Failed => "failed",
        Delivery::Unknown => "unknown",
    }
}

/// Receiver failures are logged on the delivery and retried on its schedule.
pub async fn deliver_webhook(job: DeliverWebhook, runner: Data<JobRunner>) -> Result<(), BoxDynError> {
    let ctx = runner.ctx.clone();
    runner
        .run("webhook", JobRoot::WebhookEndpoint(job.endpoint_id), async move {
            match webhooks::attempt(&ctx, job.endpoint_id, job.event_id).await {
                Ok(outcome) => {
                    tracing::debug!(endpoint_id = %job.endpoint_id, event_id = %job.event_id, ?outcome, "webhook delivery");
                    outcome.as_str()
                }
                Err(e) => {
                    tracing::error!(endpoint_id = %job.endpoint_id, event_id = %job.event_id, error = %e, "webhook job failed");
                    "error"
                }
            }
        })
        .await
}

pub async fn refresh_grant(job: RefreshGrant, runner: Data<JobRunner>) -> Result<(), BoxDynError> {
    let ctx = runner.ctx.clone();
    runner
        .run("refresh", JobRoot::Grant(job.grant_id), async move {
            match grants::refresh_one(&ctx, job.grant_id).await {
                Ok(outcome) => outcome.as_str(),
                Err(e) => {
                    tracing::error!(grant_id = %job.grant_id, error = %e, "refresh job failed");
                    "error"
                }
            }
        })
        .await
}

pub async fn settle_message(job: SettleMessage, runner: Data<JobRunner>) -> Result<(), BoxDynError> {
    let ctx = runner.ctx.clone();
    runner
        .run("settle", JobRoot::OutboundMessage(job.message_id), async move {
            match settle::settle_unknown_message(&ctx, job.message_id).await {
                Ok(Some(settlement)) => {
                    tracing::info!(message_id = %job.message_id, ?settlement, "settled an unknown delivery through the Sent folder");
                    "completed"
                }
                Ok(None) => "deferred",
                Err(e) => {
                    tracing::error!(message_id = %job.message_id, error = %e, "settle job failed");
                    "error"
                }
            }
        })
        .await
}
