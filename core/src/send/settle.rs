//! Settling `unknown` messages: the connection was lost after the content was sent, so the server may have taken
//! it. Where the account's server files submissions in a Sent folder, the message is looked up there by its
//! Message-ID and marked `sent` when found; otherwise it stays `unknown` (never resent blindly).

use sea_orm::{ConnectionTrait, DbBackend, EntityTrait, FromQueryResult, Statement, TransactionTrait};
use serde_json::json;

use crate::connect::mailbox::{self, credentials, endpoint};
use crate::context::AppContext;
use crate::error::AppResult;
use crate::jobs::leases::Leased;
use crate::model::{Direction, OutboundStatus, Protocol};
use crate::observe::events;
use crate::protocols::error::MailError;
use crate::store::entities::{email_account, outbound_message};
use crate::store::ids::OutboundMessageId;

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
pub async fn settle_unknown(ctx: &AppContext) -> AppResult<Vec<(OutboundMessageId, Settlement)>> {
    let rows = ctx
        .db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            format!("SELECT id FROM outbound_messages WHERE {} ORDER BY updated_at LIMIT 100", crate::jobs::due::settle()),
        ))
        .await?;
    let mut settled = Vec::new();
    for row in rows {
        let id: OutboundMessageId = row.try_get("", "id")?;
        match settle_unknown_message(ctx, id).await {
            Ok(Some(outcome)) => settled.push((id, outcome)),
            Ok(None) => {}
            Err(e) => tracing::warn!(message_id = %id, error = %e.detail(), "could not settle the message; will retry"),
        }
    }
    Ok(settled)
}

/// Settles one `unknown` message (the worker's settle job): `None` when the mailbox was busy or unreachable, so a
/// later dispatch tries again.
pub async fn settle_unknown_message(ctx: &AppContext, id: OutboundMessageId) -> AppResult<Option<Settlement>> {
    match settle_one(ctx, id).await {
        Ok(outcome) => Ok(Some(outcome)),
        Err(SettleError::App(e)) => Err(e),
        Err(e) => {
            tracing::warn!(message_id = %id, error = %e, "could not look for the message in the Sent folder; will retry");
            Ok(None)
        }
    }
}

async fn settle_one(ctx: &AppContext, id: OutboundMessageId) -> Result<Settlement, SettleError> {
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
                "SELECT * FROM email_accounts WHERE tenant_id = $1 AND direction = $3 AND protocol = $4 \
                 AND enabled AND lower(login) = lower($2) ORDER BY id LIMIT 1",
                [sender.tenant_id.into(), sender.login.clone().into(), Direction::Inbound.into(), Protocol::Imap.into()],
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
    let mut session = crate::protocols::imap::ImapSession::connect(
        &ctx.guard,
        &ctx.mail_tls,
        &endpoint(inbound)?,
        &auth,
        crate::protocols::error::Timeouts::default(),
    )
    .await?;
    // The folders the server marks `\Sent` are the Sent folder; only a server that marks none is guessed at.
    let marked = match session.sent_folders().await {
        Ok(marked) => marked,
        Err(e) if e.step == crate::failure::MailStep::Folder => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let folders: Vec<String> =
        if marked.is_empty() { SENT_FOLDERS.iter().map(|name| (*name).to_owned()).collect() } else { marked };
    let mut searched = false;
    let mut found = false;
    for folder in &folders {
        match session.find_message_id(folder, message_id).await {
            Ok(hit) => {
                searched = true;
                if hit {
                    found = true;
                    break;
                }
            }
            Err(e) if e.step == crate::failure::MailStep::Folder => continue,
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
    // A decision ends the lease a reclaimed message kept (a late answer may not write over it).
    let sql = match outcome {
        Settlement::FoundSent => format!(
            "UPDATE outbound_messages SET status = $4, sent_at = now(), smtp_reply = 'found in the Sent folder', \
             last_error = NULL, sent_folder_checked_at = now(), dispatched_until = NULL, updated_at = now(), {released} \
             WHERE id = $1 AND status = $2 AND updated_at = $3",
            released = Leased::Messages.released()
        ),
        Settlement::Resend => format!(
            "UPDATE outbound_messages SET status = $4, next_attempt_at = now(), sent_folder_checked_at = now(), \
             last_error = 'not in the Sent folder after an interrupted delivery: sending again', dispatched_until = NULL, \
             handed_at = NULL, updated_at = now(), {released} WHERE id = $1 AND status = $2 AND updated_at = $3",
            released = Leased::Messages.released()
        ),
        Settlement::Undecided => "UPDATE outbound_messages SET sent_folder_checked_at = now(), dispatched_until = NULL, \
             updated_at = now() WHERE id = $1 AND status = $2 AND updated_at = $3"
            .to_owned(),
    };
    let txn = ctx.db.begin().await?;
    // $2, $3: the state the search started from (a message resolved, resent and cut again meanwhile is another
    // delivery, which this search says nothing about); $4: the status it writes (an undecided one writes none).
    let mut values = vec![message.id.into(), OutboundStatus::Unknown.into(), message.updated_at.into()];
    match outcome {
        Settlement::FoundSent => values.push(OutboundStatus::Sent.into()),
        Settlement::Resend => values.push(OutboundStatus::Queued.into()),
        Settlement::Undecided => {}
    }
    let updated = txn.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
    // Only the settlement that changed the row announces it (two at once would announce it twice).
    let found_sent = outcome == Settlement::FoundSent && updated.rows_affected() > 0;
    if found_sent {
        events::record(
            &txn,
            message.tenant_id,
            events::MESSAGE_SENT,
            "message",
            Some(message.id.into()),
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

impl From<mailbox::CredentialError> for SettleError {
    fn from(err: mailbox::CredentialError) -> Self {
        match err {
            mailbox::CredentialError::Mail(e) => SettleError::Mail(e),
            mailbox::CredentialError::Internal(e) => SettleError::App(e),
        }
    }
}

impl From<sea_orm::DbErr> for SettleError {
    fn from(err: sea_orm::DbErr) -> Self {
        SettleError::App(err.into())
    }
}
