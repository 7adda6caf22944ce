//! The Redis job queues (apalis): jobs carry ids only and reload their rows; queue names are fixed and
//! namespaced by `POSTBRIDGE_REDIS_PREFIX`, so moving a struct never orphans queued jobs.
//!
//! Every job runs as its own Tokio task, apart from the apalis consumer that took it: a consumer that dies
//! (Redis flushed or gone) never cuts a job in flight, a panic fails only its job, and shutdown can wait for
//! every job wherever it came from. Handlers always answer `Ok` to apalis: Postgres records the outcome and the
//! scheduler dispatches again whatever still needs doing, so apalis' own retries are never used.
//!
//! Each job runs in the database scope of the tenant owning the row it names (`Job::root`): row-level security
//! holds even where a query forgot its tenant filter.

use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_redis::{ConnectionManager, RedisStorage};
use postbridge_core::jobs::job::{Job, Queue};
use postbridge_core::store::ids::{AccountId, GrantId, OutboundMessageId, TenantId, WebhookEndpointId};
use postbridge_core::store::tenant_wall;
use postbridge_core::{AppContext, Settings};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::wake::SendSlots;

// The payloads on the wire, one type per queue (apalis stores each queue's jobs as JSON of its type). Each is one
// `Job`: ids only, the job reloads its rows.

/// Poll one inbound mailbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PollMailbox {
    pub account_id: AccountId,
}

/// Send a batch of one account's queued messages. The first id is its own field, as in the single-message jobs
/// earlier versions queued, so those still run. The scheduler also names the tenant, which spares the job the
/// look-up (a wrong one only hides the rows from the job, which then does nothing; jobs queued before it was sent
/// still look it up).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeliverMessage {
    pub message_id: OutboundMessageId,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_message_ids: Vec<OutboundMessageId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<TenantId>,
}

impl DeliverMessage {
    /// The job for one batch (`None` for an empty one).
    pub fn batch(tenant_id: TenantId, message_ids: &[OutboundMessageId]) -> Option<DeliverMessage> {
        let (&message_id, more) = message_ids.split_first()?;
        Some(DeliverMessage { message_id, more_message_ids: more.to_vec(), tenant_id: Some(tenant_id) })
    }

    /// Every message of the batch, the first one first.
    pub fn message_ids(&self) -> Vec<OutboundMessageId> {
        std::iter::once(self.message_id).chain(self.more_message_ids.iter().copied()).collect()
    }
}

/// The tenant a payload names, when it does: the runner then skips looking it up.
pub trait TenantHint {
    fn tenant_hint(&self) -> Option<TenantId> {
        None
    }
}

impl TenantHint for DeliverMessage {
    fn tenant_hint(&self) -> Option<TenantId> {
        self.tenant_id
    }
}
impl TenantHint for PollMailbox {}
impl TenantHint for DeliverWebhook {}
impl TenantHint for RefreshGrant {}
impl TenantHint for SettleMessage {}

/// Make one attempt of a webhook delivery (an event to one endpoint).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeliverWebhook {
    pub endpoint_id: WebhookEndpointId,
    pub event_id: Uuid,
}

/// Refresh a batch of grants of one token configuration whose access tokens are about to expire. The first id
/// is its own field, as in the single-grant jobs earlier versions queued, so those still run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RefreshGrant {
    pub grant_id: GrantId,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_grant_ids: Vec<GrantId>,
}

impl RefreshGrant {
    /// The job for one batch (`None` for an empty one).
    pub fn batch(grant_ids: &[GrantId]) -> Option<RefreshGrant> {
        let (&grant_id, more) = grant_ids.split_first()?;
        Some(RefreshGrant { grant_id, more_grant_ids: more.to_vec() })
    }

    /// Every grant of the batch, the first one first.
    pub fn grant_ids(&self) -> Vec<GrantId> {
        std::iter::once(self.grant_id).chain(self.more_grant_ids.iter().copied()).collect()
    }
}

/// Look an `unknown` message up in its mailbox's Sent folder.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SettleMessage {
    pub message_id: OutboundMessageId,
}

impl From<PollMailbox> for Job {
    fn from(job: PollMailbox) -> Job {
        Job::Poll { account_id: job.account_id }
    }
}

impl From<DeliverMessage> for Job {
    fn from(job: DeliverMessage) -> Job {
        Job::Send { message_ids: job.message_ids() }
    }
}

impl From<DeliverWebhook> for Job {
    fn from(job: DeliverWebhook) -> Job {
        Job::Webhook { endpoint_id: job.endpoint_id, event_id: job.event_id }
    }
}

impl From<RefreshGrant> for Job {
    fn from(job: RefreshGrant) -> Job {
        Job::Refresh { grant_ids: job.grant_ids() }
    }
}

impl From<SettleMessage> for Job {
    fn from(job: SettleMessage) -> Job {
        Job::Settle { message_id: job.message_id }
    }
}

/// The apalis storage of one queue.
pub fn storage<T>(conn: ConnectionManager, prefix: &str, queue: Queue) -> RedisStorage<T> {
    let config = apalis_redis::Config::default()
        .queue(format!("{prefix}:{}", queue.as_str()))
        // An idle consumer looks for new jobs only when its heartbeat wakes it (apalis-redis has no blocking wait),
        // so the heartbeat sets how soon an idle worker picks up a job another process pushed: every 250 ms (at
        // one second, the second and third workers of a deployment joined a backlog late). A consumer of a killed
        // process is declared orphaned after 60 missed beats (15 s), and its Redis in-flight set given back.
        .heartbeat_interval(Duration::from_millis(250))
        .missed_heartbeats(60)
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
    limits: Arc<std::collections::HashMap<Queue, Arc<Semaphore>>>,
    send_slots: SendSlots,
}

/// Refresh batches one worker process runs at once.
const REFRESH_BATCHES_AT_ONCE: usize = 4;

/// How many jobs of `queue` one worker process runs at once (its consumer fetches as many, and the runner lets as
/// many run).
pub fn concurrency(settings: &Settings, queue: Queue) -> usize {
    match queue {
        Queue::Send => settings.send_concurrency,
        Queue::Poll => settings.poll_concurrency,
        // A batch takes a database connection only to lease and to store; its token requests share the process's
        // `refresh_concurrency` slots.
        Queue::Refresh => REFRESH_BATCHES_AT_ONCE,
        Queue::Webhook => settings.webhooks.concurrency,
        // Sent-folder look-ups are rare, and each holds a mailbox's one connection.
        Queue::Settle => 2,
    }
}

impl JobRunner {
    /// `sends_due` wakes the scheduler to claim sends (see [`SendSlots`]).
    pub fn new(ctx: AppContext, sends_due: Arc<tokio::sync::Notify>) -> Self {
        let slots = |queue| Arc::new(Semaphore::new(concurrency(&ctx.settings, queue)));
        // The send queue's slots are also the scheduler's view of how busy this process is.
        let send_limit = slots(Queue::Send);
        let limits = Queue::ALL
            .iter()
            .map(|&queue| (queue, if queue == Queue::Send { send_limit.clone() } else { slots(queue) }))
            .collect();
        let send_slots = SendSlots::new(send_limit, sends_due);
        JobRunner { ctx, tracker: TaskTracker::new(), limits: Arc::new(limits), send_slots }
    }

    /// This process's send slots, for the scheduler.
    pub fn send_slots(&self) -> SendSlots {
        self.send_slots.clone()
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

    /// Runs `job` as its own task, in the database scope of the tenant owning its root row, and waits for it. If
    /// the caller (an apalis consumer) is dropped, the job goes on to its end. A panic is recorded as the job's
    /// failure.
    async fn run(&self, job: Job, tenant_hint: Option<TenantId>) -> Result<(), BoxDynError> {
        let queue = job.queue().as_str();
        let sends = job.queue() == Queue::Send;
        let limit = self.limits.get(&job.queue()).cloned();
        let ctx = self.ctx.clone();
        let handle = self.tracker.spawn(async move {
            let _slot = match limit {
                Some(limit) => limit.acquire_owned().await.ok(),
                None => None,
            };
            let started = Instant::now();
            let metrics = ctx.metrics.clone();
            let Some(root) = job.root() else { return metrics.job(queue, "skipped", started.elapsed()) };
            let looked_up = match tenant_hint {
                Some(tenant_id) => Ok(Some(tenant_id)),
                None => tenant_wall::tenant_of(&ctx.db, root).await,
            };
            let tenant_id = match looked_up {
                Ok(Some(tenant_id)) => tenant_id,
                // The row is gone (deleted with its tenant or account): nothing is left to do.
                Ok(None) => return metrics.job(queue, "skipped", started.elapsed()),
                Err(e) => {
                    tracing::error!(queue, ?root, error = %e, "could not find the job's tenant");
                    job.dispatch_again_soon(&ctx).await;
                    return metrics.job(queue, "error", started.elapsed());
                }
            };
            let work = async move { job.run(&ctx).await.label() };
            let outcome = match tokio::spawn(tenant_wall::in_tenant(tenant_id, work)).await {
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
        if sends {
            self.send_slots.freed();
        }
        Ok(())
    }
}

/// The one handler of every queue: the payload becomes its `Job`, run by the runner. Always `Ok` to apalis (its
/// retries are never used): outcomes live in Postgres, and the scheduler dispatches again what still needs doing.
pub async fn handle<T: Into<Job> + TenantHint>(payload: T, runner: Data<JobRunner>) -> Result<(), BoxDynError> {
    let tenant_hint = payload.tenant_hint();
    runner.run(payload.into(), tenant_hint).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_job_queued_by_an_earlier_version_still_runs_and_a_batch_keeps_its_order() {
        let id = OutboundMessageId::new();
        let earlier: DeliverMessage = serde_json::from_value(serde_json::json!({"message_id": id})).expect("old payload");
        assert_eq!(Job::from(earlier), Job::Send { message_ids: vec![id] });
        let (tenant, ids) = (TenantId::new(), [OutboundMessageId::new(), OutboundMessageId::new(), OutboundMessageId::new()]);
        let batch = DeliverMessage::batch(tenant, &ids).expect("a batch");
        assert_eq!(batch.message_ids(), ids);
        let wire = serde_json::to_value(&batch).expect("serialises");
        let back: DeliverMessage = serde_json::from_value(wire).expect("deserialises");
        assert_eq!((back.tenant_hint(), Job::from(back)), (Some(tenant), Job::Send { message_ids: ids.to_vec() }));
        assert!(DeliverMessage::batch(tenant, &[]).is_none());
    }
}
