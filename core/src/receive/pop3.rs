//! POP3 polling: POP3 has no UIDs that survive, so UIDL strings say what is new and the unique key keeps each
//! message once; batches are bounded like IMAP's (see `poll`), and deletions wait for QUIT after the commit.

use std::collections::HashMap;

use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};

use super::fetch::{header_of, Limits, PollError, PollReport, BATCH, HEADER_BYTES};
use super::inbox::{self, Fetched};
use crate::connect::mailbox::{credentials, endpoint};
use crate::context::AppContext;
use crate::error::AppResult;
use crate::failure::MailStep;
use crate::model::AfterFetch;
use crate::protocols::error::{MailError, Timeouts};
use crate::protocols::pop3::{Limited, Pop3Session};
use crate::store::entities::email_account;
use crate::store::ids::AccountId;

/// POP3 has no UIDs that survive; UIDL strings say what is new, and the unique key keeps it once. LIST's sizes
/// bound the batches and pick the oversized messages (only their header is read, with `TOP n 0`); what is read
/// is bounded whatever LIST said.
pub(super) async fn poll_pop3(ctx: &AppContext, account: &email_account::Model) -> Result<PollReport, PollError> {
    let auth = credentials(ctx, account).await?;
    let mut session = Pop3Session::connect(&ctx.guard, &ctx.mail_tls, &endpoint(account)?, &auth, Timeouts::default()).await?;
    let listing = session.uidl().await?;
    let sizes: HashMap<u32, u64> = session.list().await?.into_iter().collect();
    // UIDL → whether only the header is stored.
    let known: HashMap<String, bool> = ctx
        .db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pop3_uid, oversized FROM inbound_messages WHERE account_id = $1 AND pop3_uid IS NOT NULL",
            [account.id.into()],
        ))
        .await?
        .iter()
        .filter_map(|r| Some((r.try_get::<String>("", "pop3_uid").ok()?, r.try_get::<bool>("", "oversized").ok()?)))
        .collect();
    let delete = account.after_fetch == Some(AfterFetch::Delete);
    let limits = Limits::of(ctx);
    let max = usize::try_from(limits.max_message).unwrap_or(usize::MAX);
    let mut report = PollReport { polled: true, ..Default::default() };
    // The server keeps the only whole copy of an oversized message: it is never deleted.
    let mut to_delete: Vec<u32> =
        listing.iter().filter(|(_, uid)| known.get(uid) == Some(&false)).map(|(number, _)| *number).collect();
    let mut pending: Vec<Pop3Message> = Vec::new();
    let mut pending_bytes = 0u64;
    let mut cut = None;
    for (number, uid) in listing.iter().filter(|(_, uid)| !known.contains_key(uid)) {
        let announced = sizes.get(number).copied().unwrap_or(0);
        let oversized = announced > limits.max_message;
        let expected = if oversized { HEADER_BYTES } else { announced };
        if !pending.is_empty() && (pending.len() >= BATCH || pending_bytes.saturating_add(expected) > limits.batch_bytes) {
            store_pop3(ctx, account, &mut report, std::mem::take(&mut pending), &mut to_delete).await?;
            pending_bytes = 0;
        }
        let message = if oversized {
            match session.top_headers(*number, HEADER_BYTES as usize).await? {
                Limited::Whole(head) => Pop3Message { number: *number, uid: uid.clone(), raw: head, oversized: Some(announced) },
                Limited::Cut(start) => {
                    cut = Some(MailError::new(
                        MailStep::Command,
                        format!("the header of message {number} is longer than {HEADER_BYTES} bytes"),
                    ));
                    Pop3Message { number: *number, uid: uid.clone(), raw: header_of(&start).to_vec(), oversized: Some(announced) }
                }
            }
        } else {
            match session.retr_limited(*number, max).await? {
                Limited::Whole(raw) => Pop3Message { number: *number, uid: uid.clone(), raw, oversized: None },
                Limited::Cut(start) => {
                    // LIST understated it: keep its header as a placeholder and stop (the rest is still unread).
                    cut = Some(MailError::new(
                        MailStep::Command,
                        format!("message {number} is larger than the {announced} bytes the server announced"),
                    ));
                    let size = announced.max(start.len() as u64);
                    Pop3Message { number: *number, uid: uid.clone(), raw: header_of(&start).to_vec(), oversized: Some(size) }
                }
            }
        };
        pending_bytes = pending_bytes.saturating_add(message.raw.len() as u64);
        pending.push(message);
        if cut.is_some() {
            break;
        }
    }
    store_pop3(ctx, account, &mut report, pending, &mut to_delete).await?;
    if let Some(cut) = cut {
        // The session is mid-response: drop it without QUIT, so no deletion takes effect.
        return Err(cut.into());
    }
    if delete {
        // Only messages already committed are deleted, at QUIT.
        for number in to_delete {
            session.dele(number).await?;
        }
    }
    session.quit().await?;
    Ok(report)
}

struct Pop3Message {
    number: u32,
    uid: String,
    raw: Vec<u8>,
    /// Set (to the size) when `raw` is only the header.
    oversized: Option<u64>,
}

/// Commits one batch of POP3 messages; the whole ones become deletable.
async fn store_pop3(
    ctx: &AppContext,
    account: &email_account::Model,
    report: &mut PollReport,
    batch: Vec<Pop3Message>,
    to_delete: &mut Vec<u32>,
) -> Result<(), PollError> {
    if batch.is_empty() {
        return Ok(());
    }
    let txn = ctx.db.begin().await?;
    // POP3 has no UIDs: number the account's messages in arrival order so the (folder, UIDVALIDITY, UID) key
    // stays unique per message (a constant 0 made every message after the first a "duplicate"); UIDL dedups.
    let next = next_pop3_number(&txn, account.id).await?;
    let fetched: Vec<Fetched<'_>> = batch
        .iter()
        .zip(next..)
        .map(|(m, n)| Fetched { uid: n, pop3_uid: Some(&m.uid), raw: &m.raw, oversized: m.oversized })
        .collect();
    let stored = inbox::store_batch(&txn, account, "INBOX", 0, &fetched, None).await?;
    txn.commit().await?;
    ctx.metrics.messages("received", stored);
    report.stored += stored;
    report.fetched += batch.len() as u64;
    to_delete.extend(batch.iter().filter(|m| m.oversized.is_none()).map(|m| m.number));
    Ok(())
}

/// The number the account's next POP3 message gets (its stand-in for a UID).
async fn next_pop3_number<C: ConnectionTrait>(db: &C, account_id: AccountId) -> AppResult<i64> {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT COALESCE(MAX(uid), 0) + 1 AS next FROM inbound_messages WHERE account_id = $1 AND pop3_uid IS NOT NULL",
            [account_id.into()],
        ))
        .await?;
    Ok(row.map(|r| r.try_get::<i64>("", "next")).transpose()?.unwrap_or(1))
}
