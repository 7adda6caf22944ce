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
use sea_orm::{ConnectionTrait, DbBackend, EntityTrait, FromQueryResult, Statement, TransactionTrait};
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

async fn set_outcome<C: ConnectionTrait>(
    db: &C,
    id: Uuid,
    status: OutboundStatus,
    error: Option<&str>,
    reply: Option<&str>,
    retry_in: Option<i64>,
) -> AppResult<()> {
    let next = retry_in.map(|s| Utc::now() + chrono::Duration::seconds(s));
    db.execute_raw(Statement::from_sql_and_values(
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
        return fail(ctx, &message, "its sending account was deleted").await;
    };
    let Some(account) = email_account::Entity::find_by_id(account_id).one(&ctx.db).await? else {
        return fail(ctx, &message, "its sending account was deleted").await;
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
                // The status and its event together: a crash in between would lose the event for good.
                let txn = ctx.db.begin().await?;
                set_outcome(&txn, message.id, OutboundStatus::Sent, None, Some(sent.reply()), None).await?;
                events::record(
                    &txn,
                    message.tenant_id,
                    events::MESSAGE_SENT,
                    "message",
                    Some(message.id),
                    json!({"message_id": message.message_id}),
                )
                .await?;
                txn.commit().await?;
                ctx.metrics.messages("sent", 1);
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
                set_outcome(
                    &ctx.db,
                    message.id,
                    OutboundStatus::Unknown,
                    Some(&format!("delivery uncertain: {words}")),
                    None,
                    None,
                )
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
    set_outcome(&ctx.db, message.id, OutboundStatus::Queued, Some(error), None, Some(backoff_seconds(message.attempts))).await?;
    Ok(Delivery::Retry)
}

async fn fail(ctx: &AppContext, message: &outbound_message::Model, error: &str) -> AppResult<Delivery> {
    let txn = ctx.db.begin().await?;
    set_outcome(&txn, message.id, OutboundStatus::Failed, Some(error), None, None).await?;
    events::record(&txn, message.tenant_id, events::MESSAGE_FAILED, "message", Some(message.id), json!({"error": error})).await?;
    txn.commit().await?;
    ctx.metrics.messages("failed", 1);
    Ok(Delivery::Failed)
}

/// The account's sending pace in messages per minute (0: none): its own if set, else the deployment's, where
/// Microsoft 365 mailboxes have their own.
fn pace_of(ctx: &AppContext, account: &email_account::Model) -> u32 {
    if let Some(own) = account.send_rate_per_minute {
        return u32::try_from(own).unwrap_or(0);
    }
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

/// Where servers file submitted mail; tried in order.
const SENT_FOLDERS: &[&str] = &["Sent", "Sent Items", "Sent Messages", "[Gmail]/Sent Mail", "INBOX.Sent"];

/// Providers whose SMTP submission files a copy into the Sent folder, so a message missing there was not sent.
fn files_submissions_in_sent(account: &email_account::Model) -> bool {
    let host = account.host.to_ascii_lowercase();
    host == "smtp.office365.com" || host == "smtp.gmail.com" || host.ends_with(".outlook.com")
}

/// How an `unknown` message was settled.
#[derive(Debug, PartialEq, Eq)]
pub enum Settlement {
    /// Its Message-ID is in the mailbox's Sent folder.
    FoundSent,
    /// Not in the Sent folder of a server that files every submission there: queued again.
    Resend,
    /// No IMAP account of the mailbox, no Sent folder, or a server that does not file submissions: stays unknown.
    Undecided,
}

/// Looks `unknown` messages (older than a minute, so the server had time to file them) up in the Sent folder of
/// the mailbox's IMAP account. Each is checked once; a connection failure leaves it for the next round.
pub async fn settle_unknown(ctx: &AppContext) -> AppResult<Vec<(Uuid, Settlement)>> {
    let rows = ctx
        .db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT id FROM outbound_messages WHERE status = 'unknown' AND sent_folder_checked_at IS NULL \
             AND updated_at < now() - interval '60 seconds' ORDER BY updated_at LIMIT 100",
        ))
        .await?;
    let mut settled = Vec::new();
    for row in rows {
        let id: Uuid = row.try_get("", "id")?;
        match settle_one(ctx, id).await {
            Ok(outcome) => settled.push((id, outcome)),
            Err(e) => {
                tracing::warn!(message_id = %id, error = %e, "could not look for the message in the Sent folder; will retry")
            }
        }
    }
    Ok(settled)
}

async fn settle_one(ctx: &AppContext, id: Uuid) -> Result<Settlement, SettleError> {
    let message = outbound_message::Entity::find_by_id(id).one(&ctx.db).await?.ok_or(SettleError::Gone)?;
    let sender = match message.account_id {
        Some(account_id) => email_account::Entity::find_by_id(account_id).one(&ctx.db).await?,
        None => None,
    };
    let inbound = match &sender {
        Some(sender) => ctx
            .db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT * FROM email_accounts WHERE tenant_id = $1 AND direction = 'inbound' AND protocol = 'imap' \
                 AND enabled AND lower(login) = lower($2) ORDER BY id LIMIT 1",
                [sender.tenant_id.into(), sender.login.clone().into()],
            ))
            .await?
            .map(|r| email_account::Model::from_query_result(&r, ""))
            .transpose()?,
        None => None,
    };
    let (Some(sender), Some(inbound)) = (sender, inbound) else {
        return record_settlement(ctx, &message, Settlement::Undecided).await;
    };
    // One connection per mailbox: take the poll lease, or try again next round.
    if mailbox::lease(&ctx.db, inbound.id, 120).await?.is_none() {
        return Err(SettleError::Busy);
    }
    let outcome = search_sent_folders(ctx, &inbound, &message.message_id).await;
    mailbox::release(&ctx.db, inbound.id).await?;
    let (searched, found) = outcome?;
    let outcome = if found {
        Settlement::FoundSent
    } else if searched && files_submissions_in_sent(&sender) {
        Settlement::Resend
    } else {
        Settlement::Undecided
    };
    record_settlement(ctx, &message, outcome).await
}

/// Whether any Sent folder was found, and whether one holds `message_id`.
async fn search_sent_folders(
    ctx: &AppContext,
    inbound: &email_account::Model,
    message_id: &str,
) -> Result<(bool, bool), SettleError> {
    let auth = credentials(ctx, inbound).await?;
    let mut session = crate::mail::imap::ImapSession::connect(
        &ctx.guard,
        &ctx.mail_tls,
        &endpoint(inbound)?,
        &auth,
        crate::mail::error::Timeouts::default(),
    )
    .await?;
    let mut searched = false;
    let mut found = false;
    for folder in SENT_FOLDERS {
        match session.find_message_id(folder, message_id).await {
            Ok(hit) => {
                searched = true;
                if hit {
                    found = true;
                    break;
                }
            }
            Err(e) if e.step == crate::mail::error::MailStep::Folder => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let _ = session.logout().await;
    Ok((searched, found))
}

async fn record_settlement(
    ctx: &AppContext,
    message: &outbound_message::Model,
    outcome: Settlement,
) -> Result<Settlement, SettleError> {
    let sql = match outcome {
        Settlement::FoundSent => {
            "UPDATE outbound_messages SET status = 'sent', sent_at = now(), smtp_reply = 'found in the Sent folder', \
             last_error = NULL, sent_folder_checked_at = now(), updated_at = now() WHERE id = $1 AND status = 'unknown'"
        }
        Settlement::Resend => {
            "UPDATE outbound_messages SET status = 'queued', next_attempt_at = now(), sent_folder_checked_at = now(), \
             last_error = 'not in the Sent folder after an interrupted delivery: sending again', updated_at = now() \
             WHERE id = $1 AND status = 'unknown'"
        }
        Settlement::Undecided => {
            "UPDATE outbound_messages SET sent_folder_checked_at = now(), updated_at = now() WHERE id = $1 AND status = 'unknown'"
        }
    };
    let txn = ctx.db.begin().await?;
    let updated = txn.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, [message.id.into()])).await?;
    // Only the settlement that changed the row announces it (two at once would announce it twice).
    let found_sent = outcome == Settlement::FoundSent && updated.rows_affected() > 0;
    if found_sent {
        events::record(
            &txn,
            message.tenant_id,
            events::MESSAGE_SENT,
            "message",
            Some(message.id),
            json!({"message_id": message.message_id, "settled": "sent_folder"}),
        )
        .await?;
    }
    txn.commit().await?;
    if found_sent {
        ctx.metrics.messages("sent", 1);
    }
    Ok(outcome)
}

#[derive(Debug, thiserror::Error)]
enum SettleError {
    #[error("the message is gone")]
    Gone,
    #[error("a poll is using the mailbox")]
    Busy,
    #[error(transparent)]
    Mail(#[from] MailError),
    #[error(transparent)]
    App(#[from] crate::error::AppError),
}

impl From<sea_orm::DbErr> for SettleError {
    fn from(err: sea_orm::DbErr) -> Self {
        SettleError::App(err.into())
    }
}
