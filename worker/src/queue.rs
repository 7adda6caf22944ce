//! The Redis job queue (apalis): jobs carry ids only and reload their rows; queue names are fixed and
//! namespaced by `POSTBRIDGE_REDIS_PREFIX`, so moving a struct never orphans queued jobs.

use std::time::Instant;

use apalis::prelude::*;
use apalis_redis::{ConnectionManager, RedisStorage};
use postbridge_core::service::delivery::{self, Delivery};
use postbridge_core::service::{sync, webhooks};
use postbridge_core::AppContext;
use serde::{Deserialize, Serialize};
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

pub fn storage<T>(conn: ConnectionManager, prefix: &str, queue: &str) -> RedisStorage<T> {
    RedisStorage::new(conn).with_config(apalis_redis::Config::default().queue(format!("{prefix}:{queue}")))
}

/// Mail errors are recorded on the account by `poll_account`; only infrastructure errors fail the job.
pub async fn poll_mailbox(job: PollMailbox, ctx: Data<AppContext>) -> Result<(), BoxDynError> {
    let started = Instant::now();
    match sync::poll_account(&ctx, job.account_id).await {
        Ok(report) => {
            ctx.metrics.job("poll", if report.polled { "completed" } else { "skipped" }, started.elapsed());
            if report.stored > 0 {
                tracing::info!(account_id = %job.account_id, stored = report.stored, resynchronised = report.resynchronised, "mailbox polled");
            }
            Ok(())
        }
        Err(sync::PollError::Mail(e)) => {
            ctx.metrics.job("poll", "mail_error", started.elapsed());
            tracing::warn!(account_id = %job.account_id, error = %e, "poll failed");
            Ok(())
        }
        Err(sync::PollError::App(e)) => {
            ctx.metrics.job("poll", "error", started.elapsed());
            Err(Box::new(e))
        }
    }
}

pub async fn deliver_message(job: DeliverMessage, ctx: Data<AppContext>) -> Result<(), BoxDynError> {
    let started = Instant::now();
    let outcome = match delivery::deliver(&ctx, job.message_id).await {
        Ok(outcome) => outcome,
        Err(e) => {
            ctx.metrics.job("send", "error", started.elapsed());
            return Err(Box::new(e));
        }
    };
    ctx.metrics.job("send", delivery_outcome(&outcome), started.elapsed());
    tracing::debug!(message_id = %job.message_id, ?outcome, "delivery");
    Ok(())
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

/// Receiver failures are logged on the delivery and retried on its schedule; only infrastructure errors fail the job.
pub async fn deliver_webhook(job: DeliverWebhook, ctx: Data<AppContext>) -> Result<(), BoxDynError> {
    let started = Instant::now();
    match webhooks::deliver(&ctx, job.endpoint_id, job.event_id).await {
        Ok(outcome) => {
            ctx.metrics.job("webhook", outcome.as_str(), started.elapsed());
            tracing::debug!(endpoint_id = %job.endpoint_id, event_id = %job.event_id, ?outcome, "webhook delivery");
            Ok(())
        }
        Err(e) => {
            ctx.metrics.job("webhook", "error", started.elapsed());
            Err(Box::new(e))
        }
    }
}
