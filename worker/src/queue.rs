//! The Redis job queue (apalis): jobs carry ids only and reload their rows; queue names are fixed and
//! namespaced by `POSTBRIDGE_REDIS_PREFIX`, so moving a struct never orphans queued jobs.

use apalis::prelude::*;
use apalis_redis::{ConnectionManager, RedisStorage};
use postbridge_core::service::{delivery, sync};
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

pub fn storage<T>(conn: ConnectionManager, prefix: &str, queue: &str) -> RedisStorage<T> {
    RedisStorage::new(conn).with_config(apalis_redis::Config::default().queue(format!("{prefix}:{queue}")))
}

/// Mail errors are recorded on the account by `poll_account`; only infrastructure errors fail the job.
pub async fn poll_mailbox(job: PollMailbox, ctx: Data<AppContext>) -> Result<(), BoxDynError> {
    match sync::poll_account(&ctx, job.account_id).await {
        Ok(report) => {
            if report.stored > 0 {
                tracing::info!(account_id = %job.account_id, stored = report.stored, resynchronised = report.resynchronised, "mailbox polled");
            }
            Ok(())
        }
        Err(sync::PollError::Mail(e)) => {
            tracing::warn!(account_id = %job.account_id, error = %e, "poll failed");
            Ok(())
        }
        Err(sync::PollError::App(e)) => Err(Box::new(e)),
    }
}

pub async fn deliver_message(job: DeliverMessage, ctx: Data<AppContext>) -> Result<(), BoxDynError> {
    let outcome = delivery::deliver(&ctx, job.message_id).await?;
    tracing::debug!(message_id = %job.message_id, ?outcome, "delivery");
    Ok(())
}
