//! Sending queued messages. A message is leased to one worker at a time; 4xx replies and connection
//! errors before the content was sent are retried with backoff; 5xx fails; an authentication failure
//! refreshes the token once and retries, a second one puts the account in error; a connection lost
//! after the content was sent leaves the message `unknown` (never resent blindly).
//!
//! Guarantee: a message is handed to the SMTP server at most once per lease. A worker killed after the
//! server accepted a message but before the status was written leaves it `sending`; when its lease
//! expires it becomes `unknown` rather than being sent again.

use sea_orm::{ConnectionTrait, DbBackend, EntityTrait, FromQueryResult, Statement};
use serde_json::json;
use uuid::Uuid;

use crate::connect::grants;
use crate::connect::mailbox::{self, credentials, endpoint};
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::jobs::leases::{self, Leased};
use crate::model::OutboundStatus;
use crate::observe::events;
use crate::protocols::error::{MailAuth, MailError};
use crate::protocols::smtp::{SendError, SendOutcome};
use crate::store::entities::{email_account, outbound_message};
use crate::store::ids::{uuid_array, OutboundMessageId};
use crate::store::json::RecipientResult;

use super::give_back::release_unsent;
use super::outcome::{mark_handed, record_and_hand, set_outcome, Lease, Outcome, Replies};
use super::pace;

/// Attempts before a message that keeps failing temporarily is given up.
pub const MAX_ATTEMPTS: i32 = 8;
/// A send lease lasts this long and is renewed while the delivery runs, so a killed worker's messages are
/// taken back within it.
pub const LEASE_SECONDS: f64 = 30.0;
const LEASE_RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Someone else holds it, or it is not due / not sendable any more.
    Skipped,
    /// The account reached its sending pace; the message waits (no attempt counted).
    Paced,
    Sent,
    Retry,
    Failed,
    Unknown,
}

impl Delivery {
    /// A batch's outcome as its job reports it: its worst message first (each message is counted in
    /// `postbridge_messages_total`).
    pub fn most_telling(deliveries: &[Delivery]) -> Delivery {
        const WORST_FIRST: [Delivery; 6] =
            [Delivery::Failed, Delivery::Unknown, Delivery::Retry, Delivery::Sent, Delivery::Paced, Delivery::Skipped];
        WORST_FIRST.into_iter().find(|kind| deliveries.contains(kind)).unwrap_or(Delivery::Skipped)
    }
}

/// Takes the due messages of a batch for this worker, all under one token, in the batch's order.
async fn lease(ctx: &AppContext, message_ids: &[OutboundMessageId], token: Uuid) -> AppResult<Vec<outbound_message::Model>> {
    let rows = ctx
        .db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            // A queued message is free by its status: taking it makes it `sending`, which no one else takes.
            format!(
                "UPDATE outbound_messages SET status = $5, attempts = attempts + 1, {}, lease_token = $3, leased_by = $4, \
                 handed_at = NULL, updated_at = now() WHERE id = ANY($1::text::uuid[]) \
                 AND status = $6 AND next_attempt_at <= now() RETURNING *",
                Leased::hold_for(2)
            ),
            [
                uuid_array(message_ids),
                LEASE_SECONDS.into(),
                token.into(),
                ctx.instance_id.into(),
                OutboundStatus::Sending.into(),
                OutboundStatus::Queued.into(),
            ],
        ))
        .await?;
    let mut leased = rows.iter().map(|row| outbound_message::Model::from_query_result(row, "")).collect::<Result<Vec<_>, _>>()?;
    leased.sort_by_key(|m| message_ids.iter().position(|&id| id == m.id));
    Ok(leased)
}

/// Extends the leases of a batch while it runs; false when none is ours any more.
async fn renew_leases(ctx: &AppContext, message_ids: &[OutboundMessageId], token: Uuid) -> AppResult<bool> {
    let renewed = ctx
        .db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!(
                "UPDATE outbound_messages SET {} WHERE id = ANY($1::text::uuid[]) \
                 AND lease_token = $3 AND status = $4",
                Leased::hold_for(2)
            ),
            [uuid_array(message_ids), LEASE_SECONDS.into(), token.into(), OutboundStatus::Sending.into()],
        ))
        .await?;
    Ok(renewed.rows_affected() > 0)
}

/// A delivery that failed on Postbridge's own side (database, decryption) waits this long before its next try; the
/// attempt is not counted, so such failures never fail a message for good.
const INTERNAL_RETRY_SECONDS: f64 = 30.0;

/// A batch stops taking its next message after this long and gives the rest back, due at once: against a slow
/// server the rest then goes to whichever worker has a free slot, instead of waiting behind this one connection.
/// Against a fast server a batch ends well within it.
const BATCH_TIME_BUDGET: std::time::Duration = std::time::Duration::from_secs(1);

/// Sends one queued message.
pub async fn deliver(ctx: &AppContext, message_id: OutboundMessageId) -> AppResult<Delivery> {
    Ok(deliver_all(ctx, &[message_id]).await?.pop().unwrap_or(Delivery::Skipped))
}

/// Sends a batch of queued messages (the worker's job; the scheduler batches one account's messages), one after
/// another over the account's pooled connection: leased in one statement, the account and its credentials loaded
/// once, each outcome recorded as it comes. The leases are renewed while it runs; an error gives every message not
/// yet handed to the server back to the queue at once. One answer per id, in order.
pub async fn deliver_all(ctx: &AppContext, message_ids: &[OutboundMessageId]) -> AppResult<Vec<Delivery>> {
    let token = Uuid::new_v4();
    let leased = lease(ctx, message_ids, token).await?;
    let held: Vec<OutboundMessageId> = leased.iter().map(|m| m.id).collect();
    let mut answers: Vec<(OutboundMessageId, Delivery)> = Vec::with_capacity(leased.len());
    let outcome = leases::renewing("send", LEASE_RENEW_EVERY, deliver_leased_all(ctx, &leased, token, &mut answers), || {
        renew_leases(ctx, &held, token)
    })
    .await;
    if let Err(e) = outcome {
        let why = interrupted_because(&e);
        match release_unsent(ctx, &held, token, Some(&why), INTERNAL_RETRY_SECONDS).await {
            Ok(0) => {}
            Ok(requeued) => tracing::warn!(requeued, error = %e.detail(), "delivery interrupted before sending; queued again"),
            Err(release) => {
                tracing::warn!(error = %release, "could not give the messages back; their leases will expire")
            }
        }
        return Err(e);
    }
    Ok(message_ids
        .iter()
        .map(|id| answers.iter().find(|(done, _)| done == id).map_or(Delivery::Skipped, |(_, delivery)| *delivery))
        .collect())
}

/// The `last_error` of messages a batch gave back unsent after failing on Postbridge's side.
fn interrupted_because(e: &AppError) -> String {
    match e {
        // The 503 sentence is for API callers ("try again in 1 s"); the message waits its own retry.
        AppError::Unavailable { .. } => format!(
            "interrupted before reaching the mail server: Postbridge's database could not be reached; \
             tried again in {INTERNAL_RETRY_SECONDS} s"
        ),
        other => format!("interrupted before reaching the mail server: {other}"),
    }
}

/// One account's side of a batch: its row, loaded once, and its credentials, fetched at first use (and again after
/// a refusal).
struct Sender {
    account: email_account::Model,
    auth: Option<MailAuth>,
    /// The account reached its pace earlier in this batch: the rest wait as long.
    paced_for: Option<f64>,
    /// The last message's outcome, not yet written: it goes with the next message's handing (`record_and_hand`),
    /// or on its own when anything else comes first.
    unrecorded: Option<Outcome>,
}

impl Sender {
    /// Writes the outcome still waiting, if any.
    async fn record(&mut self, ctx: &AppContext) -> AppResult<()> {
        if let Some(outcome) = self.unrecorded.take() {
            set_outcome(ctx, outcome).await?;
        }
        Ok(())
    }
}

async fn deliver_leased_all(
    ctx: &AppContext,
    leased: &[outbound_message::Model],
    token: Uuid,
    answers: &mut Vec<(OutboundMessageId, Delivery)>,
) -> AppResult<()> {
    let mut sender: Option<Sender> = None;
    let delivered = deliver_in_turn(ctx, leased, token, answers, &mut sender).await;
    // The last outcome has no next message to go with; it is written even when the batch stopped on an error.
    let recorded = match sender.as_mut() {
        Some(sender) => sender.record(ctx).await,
        None => Ok(()),
    };
    delivered.and(recorded)
}

async fn deliver_in_turn(
    ctx: &AppContext,
    leased: &[outbound_message::Model],
    token: Uuid,
    answers: &mut Vec<(OutboundMessageId, Delivery)>,
    sender: &mut Option<Sender>,
) -> AppResult<()> {
    let started = std::time::Instant::now();
    for (index, message) in leased.iter().enumerate() {
        if index > 0 && started.elapsed() >= BATCH_TIME_BUDGET {
            let rest: Vec<OutboundMessageId> = leased[index..].iter().map(|m| m.id).collect();
            // Not an error and not an attempt: the messages are simply due again, and announced by their trigger.
            release_unsent(ctx, &rest, token, None, 0.0).await?;
            break;
        }
        let lease = Lease { message_id: message.id, token };
        if let Some(account_id) = message.account_id.filter(|&id| sender.as_ref().map(|s| s.account.id) != Some(id)) {
            if let Some(previous) = sender.as_mut() {
                previous.record(ctx).await?;
            }
            let account = email_account::Entity::find_by_id(account_id).one(&ctx.db).await?;
            *sender = account.map(|account| Sender { account, auth: None, paced_for: None, unrecorded: None });
        }
        let delivery = match sender.as_mut().filter(|s| Some(s.account.id) == message.account_id) {
            Some(sender) => deliver_leased(ctx, sender, message, lease).await?,
            None => fail(ctx, message, lease, "its sending account was deleted").await?,
        };
        answers.push((message.id, delivery));
    }
    Ok(())
}

async fn deliver_leased(
    ctx: &AppContext,
    sender: &mut Sender,
    message: &outbound_message::Model,
    lease: Lease,
) -> AppResult<Delivery> {
    if sender.paced_for.is_none() {
        sender.paced_for = pace::wait(ctx, &sender.account).await?;
    }
    if let Some(wait) = sender.paced_for {
        pace::postpone(ctx, message.id, lease.token, wait).await?;
        return Ok(Delivery::Paced);
    }
    let recipients = message.recipients.0.clone();
    let mut refreshed = false;
    loop {
        let outcome = send_once(ctx, sender, message, lease, &recipients).await;
        match outcome {
            Ok(sent) => {
                // Recipients refused for good did not get it; the others did, and are not sent to again.
                let refused: Vec<_> = sent
                    .recipients()
                    .iter()
                    .filter(|r| !r.accepted)
                    .map(|r| json!({"recipient": r.recipient, "reply": r.reply}))
                    .collect();
                let status = if refused.is_empty() { OutboundStatus::Sent } else { OutboundStatus::PartiallySent };
                let results: Vec<_> = sent
                    .recipients()
                    .iter()
                    .map(|r| RecipientResult { recipient: r.recipient.clone(), accepted: r.accepted, reply: r.reply.clone() })
                    .collect();
                let replies = Replies {
                    last: Some(sent.reply().to_owned()),
                    recipients: Some(serde_json::to_value(results).map_err(anyhow::Error::from)?),
                };
                let event = events::Pending {
                    tenant_id: message.tenant_id,
                    event_type: events::MESSAGE_SENT,
                    resource_type: "message",
                    resource_id: Some(message.id.into()),
                    data: json!({"message_id": message.message_id, "status": status, "refused": refused}),
                };
                let outcome = Outcome { lease, status, error: None, replies, retry_in: None, event: Some(event) };
                // A paced account counts its sent messages in Postgres before each one: it must see this one.
                if pace::per_minute(ctx, &sender.account) == 0 {
                    sender.unrecorded = Some(outcome);
                } else {
                    set_outcome(ctx, outcome).await?;
                }
                ctx.metrics.messages("sent", 1);
                return Ok(Delivery::Sent);
            }
            Err(Failure::LeaseLost) => return Ok(Delivery::Skipped),
            Err(Failure::Send(SendError::Auth { message: words, .. }))
            | Err(Failure::Credentials(MailError { message: words, .. }))
                if !refreshed && sender.account.grant_id.is_some() =>
            {
                // A token that should be valid was refused: refresh once and retry.
                tracing::info!(account_id = %sender.account.id, reply = %words, "SMTP authentication refused; refreshing the token once");
                if let Some(grant_id) = sender.account.grant_id {
                    grants::expire_access_token(ctx, sender.account.tenant_id, grant_id).await?;
                }
                sender.auth = None;
                refreshed = true;
            }
            Err(Failure::Send(SendError::Auth { code, message: words })) => {
                let hint = auth_hint(&words);
                let error = MailError::new(crate::failure::MailStep::Auth, format!("{words}{hint}"));
                let error = match code {
                    Some(c) => error.with_code(c),
                    None => error,
                };
                mailbox::record_account_error(&ctx.db, &sender.account, &error).await?;
                return fail(ctx, message, lease, &error.to_string()).await;
            }
            Err(Failure::Credentials(e)) if e.is_transient() => return retry(ctx, message, lease, &e.to_string()).await,
            Err(Failure::Credentials(e)) => return fail(ctx, message, lease, &e.to_string()).await,
            Err(Failure::Send(SendError::Unknown { message: words })) => {
                let error = Some(format!("delivery uncertain: {words}"));
                let outcome = Outcome {
                    lease,
                    status: OutboundStatus::Unknown,
                    error,
                    replies: Replies::NONE,
                    retry_in: None,
                    event: None,
                };
                set_outcome(ctx, outcome).await?;
                return Ok(Delivery::Unknown);
            }
            Err(Failure::Send(e)) if e.is_retryable() => return retry(ctx, message, lease, &e.to_string()).await,
            Err(Failure::Send(e)) => return fail(ctx, message, lease, &e.to_string()).await,
            Err(Failure::App(e)) => return Err(e),
        }
    }
}

enum Failure {
    Credentials(MailError),
    Send(SendError),
    /// The lease was taken over before the content went out: nothing was sent.
    LeaseLost,
    App(crate::error::AppError),
}

async fn send_once(
    ctx: &AppContext,
    sender: &mut Sender,
    message: &outbound_message::Model,
    lease: Lease,
    recipients: &[String],
) -> Result<SendOutcome, Failure> {
    let endpoint = endpoint(&sender.account)
        .map_err(|e| Failure::Credentials(MailError::new(crate::failure::MailStep::Unknown, e.to_string())))?;
    let auth = match &sender.auth {
        Some(auth) => auth.clone(),
        None => {
            // Fetching credentials may take a while (a token refresh): the last outcome is not kept waiting.
            sender.record(ctx).await.map_err(Failure::App)?;
            let auth = credentials(ctx, &sender.account).await.map_err(|e| match e {
                mailbox::CredentialError::Mail(e) => Failure::Credentials(e),
                mailbox::CredentialError::Internal(e) => Failure::App(e),
            })?;
            sender.auth.insert(auth).clone()
        }
    };
    // The message is marked handed over only once the connection is open and logged in: a worker that dies while
    // connecting leaves a message that goes back to the queue, not one whose outcome is `unknown`.
    let mut handing_failed = None;
    let handed = async {
        let handed = match sender.unrecorded.take() {
            Some(previous) => {
                let handed = record_and_hand(ctx, previous.clone(), lease).await;
                if handed.is_err() {
                    // Written with the batch's end (`deliver_leased_all`), however long that takes.
                    sender.unrecorded = Some(previous);
                }
                handed
            }
            None => mark_handed(ctx, lease).await,
        };
        handed.unwrap_or_else(|e| {
            handing_failed = Some(e);
            false
        })
    };
    let sent = ctx.smtp.send_raw_when(&endpoint, &auth, &message.envelope_from, recipients, &message.raw, handed).await;
    match (sent, handing_failed) {
        (_, Some(e)) => Err(Failure::App(e)),
        (Ok(Some(sent)), None) => Ok(sent),
        (Ok(None), None) => Err(Failure::LeaseLost),
        (Err(e), None) => Err(Failure::Send(e)),
    }
}

async fn retry(ctx: &AppContext, message: &outbound_message::Model, lease: Lease, error: &str) -> AppResult<Delivery> {
    if message.attempts >= MAX_ATTEMPTS {
        return fail(ctx, message, lease, &format!("gave up after {} attempts: {error}", message.attempts)).await;
    }
    let retry_in = Some(crate::jobs::backoff::MESSAGE_SEND.seconds(message.attempts));
    let outcome = Outcome {
        lease,
        status: OutboundStatus::Queued,
        error: Some(error.to_owned()),
        replies: Replies::NONE,
        retry_in,
        event: None,
    };
    set_outcome(ctx, outcome).await?;
    Ok(Delivery::Retry)
}

async fn fail(ctx: &AppContext, message: &outbound_message::Model, lease: Lease, error: &str) -> AppResult<Delivery> {
    let event = events::Pending {
        tenant_id: message.tenant_id,
        event_type: events::MESSAGE_FAILED,
        resource_type: "message",
        resource_id: Some(message.id.into()),
        data: json!({"error": error}),
    };
    let outcome = Outcome {
        lease,
        status: OutboundStatus::Failed,
        error: Some(error.to_owned()),
        replies: Replies::NONE,
        retry_in: None,
        event: Some(event),
    };
    let recorded = set_outcome(ctx, outcome).await?;
    if !recorded {
        return Ok(Delivery::Skipped);
    }
    ctx.metrics.messages("failed", 1);
    Ok(Delivery::Failed)
}

/// What a person should do about an authentication refusal.
fn auth_hint(words: &str) -> &'static str {
    if words.contains("5.7.139") {
        " — SMTP AUTH is disabled for this Microsoft 365 tenant or mailbox: an Exchange admin must enable authenticated SMTP (Set-CASMailbox -SmtpClientAuthenticationDisabled $false)"
    } else if words.contains("5.7.3") || words.contains("535") {
        " — the server refused the credentials: check the login, the password or app password, or authorize the account again"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_cut_by_an_unreachable_database_says_when_its_messages_are_tried_again() {
        let unreachable = AppError::from(sea_orm::DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout));
        assert!(matches!(unreachable, AppError::Unavailable { .. }));
        let why = interrupted_because(&unreachable);
        assert_eq!(
            why,
            "interrupted before reaching the mail server: Postbridge's database could not be reached; tried again in 30 s"
        );
        // Not the API's 503 sentence, which tells a caller to come back in a second.
        assert!(!why.contains("1 s"), "{why}");
        let internal = AppError::Internal(anyhow::anyhow!("a secret that does not decrypt"));
        assert_eq!(interrupted_because(&internal), format!("interrupted before reaching the mail server: {internal}"));
    }
}
