//! Sending queued messages. A message is leased to one worker at a time; 4xx replies and connection
//! errors before the content was sent are retried with backoff; 5xx fails; an authentication failure
//! refreshes the token once and retries, a second one puts the account in error; a connection lost
//! after the content was sent leaves the message `unknown` (never resent blindly).
//!
//! Guarantee: a message is handed to the SMTP server at most once per lease. A worker killed after the
//! server accepted a message but before the status was written leaves it `sending`; when its lease
//! expires it becomes `unknown` rather than being sent again.

use chrono::Utc;
use rand::Rng;
use sea_orm::{ConnectionTrait, DbBackend, EntityTrait, FromQueryResult, Statement};
use serde_json::json;
use uuid::Uuid;

use super::mailbox::{self, credentials, endpoint};
use super::{events, grants};
use crate::context::AppContext;
use crate::entities::{email_account, outbound_message};
use crate::error::AppResult;
use crate::mail::error::MailError;
use crate::mail::smtp::{SendError, SendOutcome};
use crate::model::OutboundStatus;

/// Attempts before a message that keeps failing temporarily is given up.
pub const MAX_ATTEMPTS: i32 = 8;
const LEASE_SECONDS: f64 = 300.0;

#[derive(Debug, PartialEq, Eq)]
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

/// Takes a due message for this worker.
async fn lease(ctx: &AppContext, message_id: Uuid) -> AppResult<Option<outbound_message::Model>> {
    let row = ctx
        .db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE outbound_messages SET status = 'sending', attempts = attempts + 1, \
             lease_until = now() + make_interval(secs => $2), updated_at = now() \
             WHERE id = $1 AND status = 'queued' AND next_attempt_at <= now() RETURNING *",
            [message_id.into(), LEASE_SECONDS.into()],
        ))
        .await?;
    row.map(|r| outbound_message::Model::from_query_result(&r, "")).transpose().map_err(Into::into)
}

async fn set_outcome(
    ctx: &AppContext,
    id: Uuid,
    status: OutboundStatus,
    error: Option<&str>,
    reply: Option<&str>,
    retry_in: Option<i64>,
) -> AppResult<()> {
    let next = retry_in.map(|s| Utc::now() + chrono::Duration::seconds(s));
    ctx.db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE outbound_messages SET status = $2, last_error = $3, smtp_reply = COALESCE($4, smtp_reply), \
             next_attempt_at = COALESCE($5, next_attempt_at), lease_until = NULL, dispatched_until = NULL, updated_at = now(), \
             sent_at = CASE WHEN $2 = 'sent' THEN now() ELSE sent_at END WHERE id = $1",
            [id.into(), status.as_str().into(), error.map(str::to_owned).into(), reply.map(str::to_owned).into(), next.into()],
        ))
        .await?;
    Ok(())
}

fn backoff_seconds(attempts: i32) -> i64 {
    let base = (30i64 << attempts.clamp(0, 8)).min(6 * 3600);
    (base as f64 * rand::rng().random_range(0.8..1.2)) as i64
}

/// Sends one queued message (the worker's job).
pub async fn deliver(ctx: &AppContext, message_id: Uuid) -> AppResult<Delivery> {
    let Some(message) = lease(ctx, message_id).await? else { return Ok(Delivery::Skipped) };
    let Some(account_id) = message.account_id else {
        set_outcome(ctx, message.id, OutboundStatus::Failed, Some("its sending account was deleted"), None, None).await?;
        return Ok(Delivery::Failed);
    };
    let Some(account) = email_account::Entity::find_by_id(account_id).one(&ctx.db).await? else {
        set_outcome(ctx, message.id, OutboundStatus::Failed, Some("its sending account was deleted"), None, None).await?;
        return Ok(Delivery::Failed);
    };
    if let Some(wait) = pace_wait(ctx, &account).await? {
        ctx.db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "UPDATE outbound_messages SET status = 'queued', attempts = attempts - 1, lease_until = NULL, \
                 dispatched_until = NULL, next_attempt_at = now() + make_interval(secs => $2), updated_at = now() WHERE id = $1",
                [message.id.into(), wait.into()],
            ))
            .await?;
        return Ok(Delivery::Paced);
    }
    let recipients: Vec<String> = serde_json::from_value(message.recipients.clone()).unwrap_or_default();
    let mut refreshed = false;
    loop {
        let outcome = send_once(ctx, &account, &message, &recipients).await;
        match outcome {
            Ok(sent) => {
                set_outcome(ctx, message.id, OutboundStatus::Sent, None, Some(sent.reply()), None).await?;
                events::record(
                    &ctx.db,
                    message.tenant_id,
                    "message.sent",
                    "message",
                    Some(message.id),
                    json!({"message_id": message.message_id}),
                )
                .await?;
                return Ok(Delivery::Sent);
            }
            Err(Failure::Send(SendError::Auth { message: words, .. }))
            | Err(Failure::Credentials(MailError { message: words, .. }))
                if !refreshed && account.grant_id.is_some() =>
            {
                // A token that should be valid was refused: refresh once and retry.
                tracing::info!(account_id = %account.id, reply = %words, "SMTP authentication refused; refreshing the token once");
                if let Some(grant_id) = account.grant_id {
                    grants::expire_access_token(ctx, account.tenant_id, grant_id).await?;
                }
                refreshed = true;
            }
            Err(Failure::Send(SendError::Auth { code, message: words })) => {
                let hint = auth_hint(&words);
                let error = MailError::new(crate::mail::error::MailStep::Auth, format!("{words}{hint}"));
                let error = match code {
                    Some(c) => error.with_code(c),
                    None => error,
                };
                mailbox::record_account_error(&ctx.db, &account, &error).await?;
                return fail(ctx, &message, &error.to_string()).await;
            }
            Err(Failure::Credentials(e)) if e.is_transient() => return retry(ctx, &message, &e.to_string()).await,
            Err(Failure::Credentials(e)) => return fail(ctx, &message, &e.to_string()).await,
            Err(Failure::Send(SendError::Unknown { message: words })) => {
                set_outcome(ctx, message.id, OutboundStatus::Unknown, Some(&format!("delivery uncertain: {words}")), None, None)
                    .await?;
                return Ok(Delivery::Unknown);
            }
            Err(Failure::Send(e)) if e.is_retryable() => return retry(ctx, &message, &e.to_string()).await,
            Err(Failure::Send(e)) => return fail(ctx, &message, &e.to_string()).await,
        }
    }
}

enum Failure {
    Credentials(MailError),
    Send(SendError),
}

async fn send_once(
    ctx: &AppContext,
    account: &email_account::Model,
    message: &outbound_message::Model,
    recipients: &[String],
) -> Result<SendOutcome, Failure> {
    let endpoint = endpoint(account)
        .map_err(|e| Failure::Credentials(MailError::new(crate::mail::error::MailStep::Unknown, e.to_string())))?;
    let auth = credentials(ctx, account).await.map_err(Failure::Credentials)?;
    ctx.smtp.send_raw(&endpoint, &auth, &message.envelope_from, recipients, &message.raw).await.map_err(Failure::Send)
}

async fn retry(ctx: &AppContext, message: &outbound_message::Model, error: &str) -> AppResult<Delivery> {
    if message.attempts >= MAX_ATTEMPTS {
        return fail(ctx, message, &format!("gave up after {} attempts: {error}", message.attempts)).await;
    }
    set_outcome(ctx, message.id, OutboundStatus::Queued, Some(error), None, Some(backoff_seconds(message.attempts))).await?;
    Ok(Delivery::Retry)
}

async fn fail(ctx: &AppContext, message: &outbound_message::Model, error: &str) -> AppResult<Delivery> {
    set_outcome(ctx, message.id, OutboundStatus::Failed, Some(error), None, None).await?;
    events::record(&ctx.db, message.tenant_id, "message.failed", "message", Some(message.id), json!({"error": error})).await?;
    Ok(Delivery::Failed)
}

/// The account's sending pace in messages per minute (0: none): Microsoft 365 mailboxes have their own.
fn pace_of(ctx: &AppContext, account: &email_account::Model) -> u32 {
    let microsoft =
        account.host.eq_ignore_ascii_case("smtp.office365.com") || account.host.to_ascii_lowercase().ends_with(".outlook.com");
    if microsoft {
        ctx.settings.microsoft_send_rate_per_minute
    } else {
        ctx.settings.send_rate_per_minute
    }
}

/// Seconds to wait when the account already sent its pace in the last minute (counted in Postgres, so the
/// pace holds across every worker process).
async fn pace_wait(ctx: &AppContext, account: &email_account::Model) -> AppResult<Option<f64>> {
    let pace = pace_of(ctx, account);
    if pace == 0 {
        return Ok(None);
    }
    let row = ctx
        .db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT count(*) AS sent, EXTRACT(EPOCH FROM (min(sent_at) + interval '60 seconds' - now()))::float8 AS wait \
             FROM outbound_messages WHERE account_id = $1 AND status = 'sent' AND sent_at > now() - interval '60 seconds'",
            [account.id.into()],
        ))
        .await?;
    let Some(row) = row else { return Ok(None) };
    let sent: i64 = row.try_get("", "sent")?;
    if sent < i64::from(pace) {
        return Ok(None);
    }
    let wait: Option<f64> = row.try_get("", "wait")?;
    Ok(Some(wait.unwrap_or(1.0).max(1.0) + rand::rng().random_range(0.0..1.0)))
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

/// Messages whose worker died mid-delivery (lease expired while `sending`) become `unknown`: the server
/// may have accepted them, so they are not resent blindly. Returns how many.
pub async fn settle_abandoned(ctx: &AppContext) -> AppResult<u64> {
    let result = ctx
        .db
        .execute_raw(Statement::from_string(
            DbBackend::Postgres,
            "UPDATE outbound_messages SET status = 'unknown', lease_until = NULL, updated_at = now(), \
             last_error = 'the worker stopped while delivering; the server may have accepted it' \
             WHERE status = 'sending' AND lease_until < now()",
        ))
        .await?;
    Ok(result.rows_affected())
}
