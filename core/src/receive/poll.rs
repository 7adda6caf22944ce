//! Inbound polling: fetch what is new since the stored position, store it once, advance the position
//! only in the transaction that stores the batch, then apply the after-fetch action. A crash at any
//! point loses nothing (the position never runs ahead of what is stored) and duplicates nothing (the
//! unique keys absorb a refetch).

use std::collections::HashSet;

use chrono::Utc;
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};

use super::fetch::{header_of, Limits, BATCH, HEADER_BYTES};
pub use super::fetch::{PollError, PollReport};
use super::inbox::{self, Fetched};
use crate::connect::mailbox::{self, credentials, endpoint};
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::jobs::leases::Leased;
use crate::model::{AfterFetch, Protocol};
use crate::protocols::error::{MailError, Timeouts};
use crate::protocols::imap::{ImapSession, MailboxStatus, MessageSize};
use crate::store::entities::email_account;
use crate::store::ids::AccountId;

/// How long a poll holds its mailbox without renewing: a killed worker's mailboxes are polled again within it.
pub(crate) const LEASE_SECONDS: i64 = 60;
pub(crate) const LEASE_RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(20);

/// Polls one inbound account now (the scheduler calls this when it is due).
pub async fn poll_account(ctx: &AppContext, account_id: AccountId) -> Result<PollReport, PollError> {
    let Some(account) = mailbox::lease(&ctx.db, account_id, LEASE_SECONDS).await? else {
        return Ok(PollReport::default());
    };
    let poll = async {
        match account.protocol {
            Protocol::Imap => poll_imap_with_reauth(ctx, &account).await,
            Protocol::Pop3 => super::pop3::poll_pop3(ctx, &account).await,
            Protocol::Smtp => {
                Err(PollError::App(AppError::validation("protocol", "not_inbound", "an outbound account is not polled")))
            }
        }
    };
    let result =
        crate::jobs::leases::renewing("poll", LEASE_RENEW_EVERY, poll, || mailbox::renew(&ctx.db, account_id, LEASE_SECONDS))
            .await;
    finish(ctx, &account, result.as_ref().map(|_| ())).await?;
    result
}

/// A login refused with a token that should be valid gets one refresh and one retry.
async fn poll_imap_with_reauth(ctx: &AppContext, account: &email_account::Model) -> Result<PollReport, PollError> {
    let mut open = open_imap_with_reauth(ctx, account).await?;
    let report = sync_imap(ctx, account, &mut open).await?;
    let _ = open.session.logout().await;
    Ok(report)
}

/// An IMAP session with the account's folder selected.
pub(crate) struct OpenFolder {
    pub session: ImapSession,
    folder: String,
    status: MailboxStatus,
}

/// Connects, logs in and selects the account's folder; a login refused with a token that should be valid gets one
/// refresh and one retry.
pub(crate) async fn open_imap_with_reauth(ctx: &AppContext, account: &email_account::Model) -> Result<OpenFolder, PollError> {
    match open_imap(ctx, account).await {
        Err(PollError::Mail(e)) if e.is_auth_failure() && account.grant_id.is_some() => {
            if let Some(grant_id) = account.grant_id {
                crate::connect::grants::expire_access_token(ctx, account.tenant_id, grant_id).await?;
            }
            open_imap(ctx, account).await
        }
        other => other,
    }
}

async fn open_imap(ctx: &AppContext, account: &email_account::Model) -> Result<OpenFolder, PollError> {
    let folder = account.folder.clone().unwrap_or_else(|| "INBOX".to_owned());
    let auth = credentials(ctx, account).await?;
    let mut session = ImapSession::connect(&ctx.guard, &ctx.mail_tls, &endpoint(account)?, &auth, Timeouts::default()).await?;
    let status = session.select(&folder).await?;
    Ok(OpenFolder { session, folder, status })
}

/// Stores what arrived in the open folder since the account's stored position (`account` as it is now).
pub(crate) async fn sync_imap(
    ctx: &AppContext,
    account: &email_account::Model,
    open: &mut OpenFolder,
) -> Result<PollReport, PollError> {
    let OpenFolder { session, folder, status } = open;
    let folder = folder.as_str();
    let uid_validity = i64::from(status.uid_validity);
    // RFC 9051: a new UIDVALIDITY (or another folder) voids every stored UID; match again from the start.
    let resync = account.uid_validity.is_some()
        && (account.sync_folder.as_deref() != Some(folder) || account.uid_validity != Some(uid_validity));
    let skip: Option<HashSet<(Option<String>, String)>> =
        if resync { Some(inbox::fingerprints(&ctx.db, account.id).await?) } else { None };
    let mut last_uid = if resync || account.uid_validity.is_none() { 0 } else { account.last_uid.unwrap_or(0) };
    let after_fetch = account.after_fetch.unwrap_or(AfterFetch::Keep);
    let limits = Limits::of(ctx);
    let mut report = PollReport { polled: true, resynchronised: resync, ..Default::default() };
    let new_uids = session.uids_after(u32::try_from(last_uid).unwrap_or(u32::MAX)).await?;
    for window in new_uids.chunks(BATCH) {
        // Sizes first, so no batch holds more than its bytes; the sizes are only a hint (see `fetch_run`).
        let sizes = session.message_sizes(window).await?;
        for run in plan_runs(&sizes, &limits) {
            let fetched = fetch_run(session, &run, &limits).await?;
            if fetched.messages.is_empty() {
                if let Some(cut) = fetched.cut {
                    return Err(cut.into());
                }
            }
            let position = match (fetched.cut.is_some(), fetched.messages.last(), run.messages.last()) {
                // Cut off: past what arrived whole, and no further.
                (true, Some(kept), _) => kept.uid,
                // Past the whole run, including messages expunged meanwhile.
                (false, _, Some(last)) => last.uid,
                _ => continue,
            };
            let rows: Vec<Fetched<'_>> = fetched
                .messages
                .iter()
                .map(|m| Fetched { uid: i64::from(m.uid), pop3_uid: None, raw: &m.raw, oversized: m.oversized })
                .collect();
            let txn = ctx.db.begin().await?;
            let stored = inbox::store_batch(&txn, account, folder, uid_validity, &rows, skip.as_ref()).await?;
            save_position(&txn, account.id, folder, uid_validity, i64::from(position)).await?;
            txn.commit().await?;
            ctx.metrics.messages("received", stored);
            report.stored += stored;
            report.fetched += fetched.messages.len() as u64;
            last_uid = i64::from(position);
            if let Some(cut) = fetched.cut {
                // What arrived whole is stored; the connection is unusable, so after-fetch actions wait for the
                // next poll's messages (these stay on the server, as with `keep`).
                return Err(cut.into());
            }
            let uids: Vec<u32> = fetched.messages.iter().map(|m| m.uid).collect();
            match after_fetch {
                AfterFetch::Keep => {}
                AfterFetch::MarkSeen => session.mark_seen(&uids).await?,
                AfterFetch::Move => session.move_to(&uids, account.move_to_folder.as_deref().unwrap_or("Archive")).await?,
                AfterFetch::Delete => {
                    // The server keeps the only whole copy of an oversized message: never delete it.
                    let whole: Vec<u32> = fetched.messages.iter().filter(|m| m.oversized.is_none()).map(|m| m.uid).collect();
                    session.delete(&whole).await?
                }
            }
        }
    }
    if account.uid_validity != Some(uid_validity) || account.sync_folder.as_deref() != Some(folder) {
        // An empty mailbox still fixes the position's UIDVALIDITY.
        save_position(&ctx.db, account.id, folder, uid_validity, last_uid).await?;
    }
    Ok(report)
}

/// Consecutive messages fetched and committed together: whole ones within the batch's bytes and count, or
/// placeholders of oversized ones (whose headers only are fetched).
#[derive(Debug, PartialEq, Eq)]
struct Run {
    messages: Vec<MessageSize>,
    /// Their announced sizes, summed.
    declared: u64,
    oversized: bool,
}

impl Run {
    fn uids(&self) -> Vec<u32> {
        self.messages.iter().map(|m| m.uid).collect()
    }
}

/// Splits `sizes` (ascending by UID) into runs, in UID order.
fn plan_runs(sizes: &[MessageSize], limits: &Limits) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for message in sizes {
        let size = u64::from(message.size);
        let oversized = size > limits.max_message;
        let fits = runs.last().is_some_and(|run| {
            run.oversized == oversized
                && if oversized {
                    run.messages.len() < limits.headers_per_run()
                } else {
                    run.messages.len() < BATCH && run.declared.saturating_add(size) <= limits.batch_bytes
                }
        });
        match runs.last_mut() {
            Some(run) if fits => {
                run.messages.push(*message);
                run.declared = run.declared.saturating_add(size);
            }
            _ => runs.push(Run { messages: vec![*message], declared: size, oversized }),
        }
    }
    runs
}

/// A message ready to store: whole, or (`oversized` holding its size) only its header.
struct RunMessage {
    uid: u32,
    raw: Vec<u8>,
    oversized: Option<u64>,
}

struct RunFetch {
    /// In UID order: a prefix of the run's UIDs (without those the server no longer has).
    messages: Vec<RunMessage>,
    /// Why the server was cut off mid-run, if it was.
    cut: Option<MailError>,
}

/// Fetches one run within its byte bounds. A message that arrives longer than the maximum (the server announced
/// less) is kept as a placeholder made of the start that arrived. When the server is cut off, only the run's UIDs
/// up to the first missing one are kept, so the position never passes a message that was not stored.
async fn fetch_run(session: &mut ImapSession, run: &Run, limits: &Limits) -> Result<RunFetch, MailError> {
    let uids = run.uids();
    let count = uids.len();
    let batch = if run.oversized {
        let budget = limits.budget(HEADER_BYTES.saturating_mul(count as u64), count, HEADER_BYTES);
        session.fetch_headers(&uids, HEADER_BYTES, budget).await?
    } else {
        let budget = limits.budget(run.declared, count, limits.max_message.saturating_add(1));
        session.fetch_bodies(&uids, limits.max_message, budget).await?
    };
    let mut messages = Vec::with_capacity(batch.messages.len());
    let mut arrived = batch.messages.into_iter().peekable();
    for wanted in &run.messages {
        let Some(message) = arrived.next_if(|m| m.uid == wanted.uid) else {
            if batch.cut.is_some() {
                break;
            }
            continue;
        };
        let declared = u64::from(wanted.size);
        let received = message.raw.len() as u64;
        let (raw, oversized) = if run.oversized {
            (message.raw, Some(declared))
        } else if received > limits.max_message {
            (header_of(&message.raw).to_vec(), Some(declared.max(received)))
        } else {
            (message.raw, None)
        };
        messages.push(RunMessage { uid: message.uid, raw, oversized });
    }
    Ok(RunFetch { messages, cut: batch.cut })
}

async fn save_position<C: ConnectionTrait>(
    db: &C,
    account_id: AccountId,
    folder: &str,
    uid_validity: i64,
    last_uid: i64,
) -> AppResult<()> {
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "UPDATE email_accounts SET sync_folder = $2, uid_validity = $3, last_uid = $4 WHERE id = $1",
        [account_id.into(), folder.into(), uid_validity.into(), last_uid.into()],
    ))
    .await?;
    Ok(())
}

/// The `SET` fragment of a successful poll (or an IDLE watch's sync): errors cleared, the next poll `$2` seconds
/// (the account's interval) away.
pub(crate) const POLLED: &str = "last_polled_at = now(), poll_failures = 0, last_error = NULL, last_error_kind = NULL, \
     next_poll_at = now() + make_interval(secs => $2)";

/// An account's poll interval in seconds.
pub(crate) fn interval_seconds(account: &email_account::Model) -> i64 {
    i64::from(account.poll_interval_seconds.unwrap_or(60))
}

/// Records a poll's end and lets the mailbox go: success schedules the next poll an interval away, refused
/// credentials put the account in `error`, anything else backs off.
pub(crate) async fn finish(ctx: &AppContext, account: &email_account::Model, result: Result<(), &PollError>) -> AppResult<()> {
    let interval = interval_seconds(account);
    let (outcome, values): (&str, Vec<sea_orm::Value>) = match result {
        Ok(_) => (POLLED, vec![account.id.into(), (interval as f64).into()]),
        Err(PollError::Mail(e)) if e.is_auth_failure() => return mailbox::record_account_error(&ctx.db, account, e).await,
        Err(e) => {
            let failures = account.poll_failures.saturating_add(1);
            let jittered = crate::jobs::backoff::mailbox_poll(interval).seconds(failures);
            let next_poll_at = Utc::now() + chrono::Duration::seconds(jittered);
            let values =
                vec![account.id.into(), failures.into(), e.to_string().into(), e.failure_kind().into(), next_poll_at.into()];
            ("poll_failures = $2, last_error = $3, last_error_kind = $4, next_poll_at = $5", values)
        }
    };
    let released = Leased::Mailboxes.released();
    let sql = format!("UPDATE email_accounts SET {released}, dispatched_until = NULL, {outcome} WHERE id = $1");
    ctx.db.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(list: &[(u32, u32)]) -> Vec<MessageSize> {
        list.iter().map(|&(uid, size)| MessageSize { uid, size }).collect()
    }

    fn uids(runs: &[Run]) -> Vec<(Vec<u32>, bool)> {
        runs.iter().map(|r| (r.uids(), r.oversized)).collect()
    }

    #[test]
    fn runs_are_bounded_by_bytes_and_oversized_messages_go_apart_in_uid_order() {
        let limits = Limits { max_message: 500_000, batch_bytes: 2 * HEADER_BYTES };
        let announced = [(1, 400_000), (2, 400_000), (3, 300_000), (4, 500_001), (5, 5_000_000), (6, 10), (7, 0)];
        let runs = plan_runs(&sizes(&announced), &limits);
        assert_eq!(uids(&runs), vec![(vec![1, 2], false), (vec![3], false), (vec![4, 5], true), (vec![6, 7], false)]);
        assert!(runs.iter().filter(|r| !r.oversized).all(|r| r.declared <= limits.batch_bytes));
        assert_eq!(plan_runs(&[], &limits), Vec::<Run>::new());
    }

    #[test]
    fn runs_hold_at_most_a_batch_of_messages_and_placeholders_within_the_batch_bytes() {
        let limits = Limits { max_message: 10, batch_bytes: 3 * HEADER_BYTES };
        let small: Vec<(u32, u32)> = (1..=2500).map(|uid| (uid, 0)).collect();
        let counts: Vec<usize> = plan_runs(&sizes(&small), &limits).iter().map(|r| r.messages.len()).collect();
        assert_eq!(counts, [BATCH, BATCH, 500]);
        let big: Vec<(u32, u32)> = (1..=7).map(|uid| (uid, u32::MAX)).collect();
        let counts: Vec<usize> = plan_runs(&sizes(&big), &limits).iter().map(|r| r.messages.len()).collect();
        assert_eq!(counts, [3, 3, 1]);
    }

    #[test]
    fn a_run_may_receive_a_quarter_more_than_announced_and_always_one_whole_message() {
        let limits = Limits { max_message: 1000, batch_bytes: 10_000 };
        let framing = 64 * 1024 + 512 * 4;
        assert_eq!(limits.budget(8000, 4, 1001), 10_000 + framing);
        assert_eq!(limits.budget(10, 4, 1001), 1001 + framing);
        assert_eq!(limits.budget(u64::MAX, 4, 1001), u64::MAX);
    }

    #[test]
    fn the_header_of_a_cut_message_ends_at_its_blank_line() {
        assert_eq!(header_of(b"Subject: a\r\nFrom: b\r\n\r\nbody\r\n\r\nmore"), b"Subject: a\r\nFrom: b\r\n\r\n");
        assert_eq!(header_of(b"Subject: a\n\nbody"), b"Subject: a\n\n");
        let endless = vec![b'x'; HEADER_BYTES as usize * 2];
        assert_eq!(header_of(&endless).len(), HEADER_BYTES as usize);
    }
}
