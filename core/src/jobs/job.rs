//! Every background job as one kind of unit: the ids it carries (never state: the job reloads its rows), the queue
//! that carries it, the row whose tenant it runs as, and one outcome type. The worker's consumers only move jobs
//! between Redis and [`Job::run`].

use uuid::Uuid;

use crate::connect::grants::{self, RefreshPass};
use crate::context::AppContext;
use crate::error::AppError;
use crate::jobs::marks::{self, Dispatched, Marked};
use crate::observe::webhooks::{self, WebhookOutcome};
use crate::receive::poll::{self, PollError};
use crate::send::delivery::{self, Delivery};
use crate::send::settle;
use crate::store::ids::{AccountId, GrantId, OutboundMessageId, WebhookEndpointId};
use crate::store::tenant_wall::JobRoot;

/// The Redis queues, one per kind of job; their names are part of the deployment (`{prefix}:{name}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Queue {
    Send,
    Poll,
    Refresh,
    Settle,
    Webhook,
}

impl Queue {
    pub const ALL: [Queue; 5] = [Queue::Send, Queue::Poll, Queue::Refresh, Queue::Settle, Queue::Webhook];
    /// The names of [`Queue::ALL`], as metrics (`postbridge_worker_consumers{queue}`) and heartbeats label them.
    pub const NAMES: [&'static str; 5] = {
        let mut names = [""; 5];
        let mut i = 0;
        while i < Queue::ALL.len() {
            names[i] = Queue::ALL[i].as_str();
            i += 1;
        }
        names
    };

    pub const fn as_str(self) -> &'static str {
        match self {
            Queue::Send => "send",
            Queue::Poll => "poll",
            Queue::Refresh => "refresh",
            Queue::Settle => "settle",
            Queue::Webhook => "webhook",
        }
    }
}

/// One unit of background work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Job {
    /// Poll one inbound mailbox.
    Poll { account_id: AccountId },
    /// Send a batch of one account's queued messages, one after another.
    Send { message_ids: Vec<OutboundMessageId> },
    /// Look an `unknown` message up in its mailbox's Sent folder.
    Settle { message_id: OutboundMessageId },
    /// Refresh a batch of grants of one token configuration whose access tokens are about to expire.
    Refresh { grant_ids: Vec<GrantId> },
    /// Make one attempt of a webhook delivery (an event to one endpoint).
    Webhook { endpoint_id: WebhookEndpointId, event_id: Uuid },
}

/// What came of a job. The word inside is its `outcome` label in `postbridge_worker_jobs_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// The work was done: a mailbox polled, a message sent, a token refreshed, a webhook delivered, a message settled.
    Done(&'static str),
    /// Nothing to do now (not due, held by another worker, paced); the scheduler brings it back when due.
    Skipped(&'static str),
    /// Tried and failed for now; its row says when it is tried again.
    Retry(&'static str),
    /// Failed for good, or the far side refused; its row says why, and the failure's kind.
    Failed(&'static str),
    /// The mail server may or may not have the message; never resent blindly, settled later.
    Undecided(&'static str),
    /// Postbridge itself failed (database, decryption): logged, and dispatched again by the scheduler.
    Error,
}

impl JobOutcome {
    pub fn label(self) -> &'static str {
        match self {
            JobOutcome::Done(label)
            | JobOutcome::Skipped(label)
            | JobOutcome::Retry(label)
            | JobOutcome::Failed(label)
            | JobOutcome::Undecided(label) => label,
            JobOutcome::Error => "error",
        }
    }
}

impl From<Delivery> for JobOutcome {
    fn from(delivery: Delivery) -> Self {
        match delivery {
            Delivery::Skipped => JobOutcome::Skipped("skipped"),
            Delivery::Paced => JobOutcome::Skipped("paced"),
            Delivery::Sent => JobOutcome::Done("sent"),
            Delivery::Retry => JobOutcome::Retry("retry"),
            Delivery::Failed => JobOutcome::Failed("failed"),
            Delivery::Unknown => JobOutcome::Undecided("unknown"),
        }
    }
}

impl From<WebhookOutcome> for JobOutcome {
    fn from(outcome: WebhookOutcome) -> Self {
        let label = outcome.as_str();
        match outcome {
            WebhookOutcome::Skipped => JobOutcome::Skipped(label),
            WebhookOutcome::Delivered => JobOutcome::Done(label),
            WebhookOutcome::Retrying => JobOutcome::Retry(label),
            WebhookOutcome::Failed | WebhookOutcome::Abandoned => JobOutcome::Failed(label),
        }
    }
}

impl From<RefreshPass> for JobOutcome {
    /// A batch's outcome, its worst grant first (each grant is counted in `postbridge_token_refreshes_total`).
    fn from(pass: RefreshPass) -> Self {
        if pass.failed > 0 {
            // Those grants back off and keep their tokens.
            JobOutcome::Retry("failed")
        } else if pass.reauth_required > 0 {
            JobOutcome::Failed("reauth_required")
        } else if pass.refreshed > 0 {
            JobOutcome::Done("refreshed")
        } else {
            JobOutcome::Skipped("skipped")
        }
    }
}

impl Job {
    pub fn queue(&self) -> Queue {
        match self {
            Job::Poll { .. } => Queue::Poll,
            Job::Send { .. } => Queue::Send,
            Job::Settle { .. } => Queue::Settle,
            Job::Refresh { .. } => Queue::Refresh,
            Job::Webhook { .. } => Queue::Webhook,
        }
    }

    /// The row whose tenant the job runs as (row-level security narrows every query it makes to that tenant).
    /// A batch (refresh, send) holds one tenant's rows, so its first names the tenant; an empty one has none.
    pub fn root(&self) -> Option<JobRoot> {
        Some(match *self {
            Job::Poll { account_id } => JobRoot::Account(account_id),
            Job::Send { ref message_ids } => JobRoot::OutboundMessage(*message_ids.first()?),
            Job::Settle { message_id } => JobRoot::OutboundMessage(message_id),
            Job::Refresh { ref grant_ids } => JobRoot::Grant(*grant_ids.first()?),
            Job::Webhook { endpoint_id, .. } => JobRoot::WebhookEndpoint(endpoint_id),
        })
    }

    /// Does the work. Failures of the far side are recorded on the job's rows by the flows themselves; failures of
    /// Postbridge are logged here. When the database failed (a moment's trouble, most often), the job's rows are
    /// dispatched again in seconds (`marks::dispatch_again_soon`); anything else (a secret that cannot be opened, a
    /// bug) waits out the dispatch grace, so a lasting fault is not tried again every few seconds.
    pub async fn run(self, ctx: &AppContext) -> JobOutcome {
        match self.work(ctx).await {
            Ok(outcome) => outcome,
            Err(e) => {
                if e.is_database_failure() {
                    self.dispatch_again_soon(ctx).await;
                }
                JobOutcome::Error
            }
        }
    }

    /// After the database failed the job (or finding its tenant): its rows, still marked dispatched, are dispatched
    /// again in seconds instead of at the end of the grace.
    pub async fn dispatch_again_soon(&self, ctx: &AppContext) {
        if let Err(e) = marks::dispatch_again_soon(ctx, &self.marked()).await {
            tracing::warn!(queue = self.queue().as_str(), error = %e.detail(), "could not shorten a failed job's dispatch mark; it runs out with the grace");
        }
    }

    /// The rows its claim marked dispatched.
    pub fn marked(&self) -> Marked {
        match self {
            Job::Poll { account_id } => Marked::Rows(Dispatched::Polls, vec![(*account_id).into()]),
            Job::Send { message_ids } => Marked::Rows(Dispatched::Messages, message_ids.iter().map(|&id| id.into()).collect()),
            Job::Settle { message_id } => Marked::Rows(Dispatched::Messages, vec![(*message_id).into()]),
            Job::Refresh { grant_ids } => Marked::Rows(Dispatched::Grants, grant_ids.iter().map(|&id| id.into()).collect()),
            Job::Webhook { endpoint_id, event_id } => Marked::WebhookDelivery(*endpoint_id, *event_id),
        }
    }

    /// The job's outcome, or Postbridge's own failure (logged here).
    async fn work(&self, ctx: &AppContext) -> Result<JobOutcome, AppError> {
        Ok(match *self {
            Job::Poll { account_id } => match poll::poll_account(ctx, account_id).await {
                Ok(report) if report.polled => {
                    if report.stored > 0 {
                        tracing::info!(%account_id, stored = report.stored, resynchronised = report.resynchronised, "mailbox polled");
                    }
                    JobOutcome::Done("completed")
                }
                Ok(_) => JobOutcome::Skipped("skipped"),
                Err(PollError::Mail(e)) => {
                    tracing::warn!(%account_id, error = %e, "poll failed");
                    JobOutcome::Failed("mail_error")
                }
                Err(PollError::App(e)) => {
                    tracing::error!(%account_id, error = %e.detail(), "poll job failed");
                    return Err(e);
                }
            },
            Job::Send { ref message_ids } => match delivery::deliver_all(ctx, message_ids).await {
                Ok(deliveries) => {
                    tracing::debug!(?message_ids, ?deliveries, "delivery");
                    Delivery::most_telling(&deliveries).into()
                }
                Err(e) => {
                    tracing::error!(?message_ids, error = %e.detail(), "send job failed");
                    return Err(e);
                }
            },
            Job::Settle { message_id } => match settle::settle_unknown_message(ctx, message_id).await {
                Ok(Some(settlement)) => {
                    tracing::info!(%message_id, ?settlement, "settled an unknown delivery through the Sent folder");
                    JobOutcome::Done("completed")
                }
                Ok(None) => JobOutcome::Skipped("deferred"),
                Err(e) => {
                    tracing::error!(%message_id, error = %e.detail(), "settle job failed");
                    return Err(e);
                }
            },
            Job::Refresh { ref grant_ids } => match grants::refresh_grants(ctx, grant_ids).await {
                Ok(pass) => pass.into(),
                Err(e) => {
                    tracing::error!(grants = grant_ids.len(), error = %e.detail(), "refresh job failed");
                    return Err(e);
                }
            },
            Job::Webhook { endpoint_id, event_id } => match webhooks::attempt(ctx, endpoint_id, event_id).await {
                Ok(outcome) => {
                    tracing::debug!(%endpoint_id, %event_id, ?outcome, "webhook delivery");
                    outcome.into()
                }
                Err(e) => {
                    tracing::error!(%endpoint_id, %event_id, error = %e.detail(), "webhook job failed");
                    return Err(e);
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_names_its_queue_and_root() {
        let (account, message, grant, endpoint) =
            (AccountId::new(), OutboundMessageId::new(), GrantId::new(), WebhookEndpointId::new());
        let cases = [
            (Job::Poll { account_id: account }, Queue::Poll, JobRoot::Account(account)),
            (Job::Send { message_ids: vec![message, OutboundMessageId::new()] }, Queue::Send, JobRoot::OutboundMessage(message)),
            (Job::Settle { message_id: message }, Queue::Settle, JobRoot::OutboundMessage(message)),
            (Job::Refresh { grant_ids: vec![grant, GrantId::new()] }, Queue::Refresh, JobRoot::Grant(grant)),
            (
                Job::Webhook { endpoint_id: endpoint, event_id: Uuid::new_v4() },
                Queue::Webhook,
                JobRoot::WebhookEndpoint(endpoint),
            ),
        ];
        for (job, queue, root) in cases {
            assert_eq!((job.queue(), job.root()), (queue, Some(root)), "{job:?}");
        }
        assert_eq!(Job::Refresh { grant_ids: Vec::new() }.root(), None, "an empty batch has no tenant");
        assert_eq!(Job::Send { message_ids: Vec::new() }.root(), None, "an empty batch has no tenant");
        let names: Vec<&str> = Queue::ALL.iter().map(|q| q.as_str()).collect();
        assert_eq!(names, ["send", "poll", "refresh", "settle", "webhook"]);
    }

    #[test]
    fn outcomes_keep_the_labels_operators_graph() {
        assert_eq!(JobOutcome::from(Delivery::Paced), JobOutcome::Skipped("paced"));
        assert_eq!(JobOutcome::from(Delivery::Unknown).label(), "unknown");
        let batch = [Delivery::Sent, Delivery::Retry, Delivery::Skipped];
        assert_eq!(JobOutcome::from(Delivery::most_telling(&batch)), JobOutcome::Retry("retry"));
        assert_eq!(Delivery::most_telling(&[Delivery::Sent, Delivery::Paced]), Delivery::Sent);
        assert_eq!(Delivery::most_telling(&[]), Delivery::Skipped);
        assert_eq!(JobOutcome::from(WebhookOutcome::Abandoned), JobOutcome::Failed("abandoned"));
        let pass = |refreshed, reauth_required, failed| RefreshPass { refreshed, reauth_required, failed };
        assert_eq!(JobOutcome::from(pass(49, 0, 1)), JobOutcome::Retry("failed"));
        assert_eq!(JobOutcome::from(pass(49, 1, 0)), JobOutcome::Failed("reauth_required"));
        assert_eq!(JobOutcome::from(pass(50, 0, 0)), JobOutcome::Done("refreshed"));
        assert_eq!(JobOutcome::from(pass(0, 0, 0)), JobOutcome::Skipped("skipped"));
        assert_eq!(JobOutcome::Error.label(), "error");
    }
}
