//! Inbound polling: fetch what is new since the stored position, store it once, advance the position
//! only in the transaction that stores the batch, then apply the after-fetch action. A crash at any
//! point loses nothing (the position never runs ahead of what is stored) and duplicates nothing (the
//! unique keys absorb a refetch).

use std::collections::HashSet;

use chrono::Utc;
use rand::Rng;
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
use uuid::Uuid;

use super::inbound::{self, Fetched};
use super::mailbox::{self, credentials, endpoint};
use crate::context::AppContext;
use crate::entities::email_account;
use crate::error::{AppError, AppResult};
use crate::mail::error::{MailError, Timeouts};
use crate::mail::imap::ImapSession;
use crate::mail::pop3::Pop3Session;
use crate::model::{AfterFetch, Protocol};

/// Messages fetched and committed per round trip.
const BATCH: usize = 1_000;
/// How long a poll holds its mailbox without renewing: a killed worker's mailboxes are polled again within it.
const LEASE_SECONDS: i64 = 60;
const LEASE_RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(20);

#[derive(Debug, Default, PartialEq, Eq)]
pub struct PollReport {
    /// False when another worker held the mailbox.
    pub polled: bool,
    pub fetched: u64,
    pub stored: u64,
    /// UIDVALIDITY changed (or the folder did) and the mailbox was matched again from the start.
    pub resynchronised: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Mail(#[from] MailError),
    #[error(transparent)]
    App(#[from] AppError),
}

impl From<mailbox::CredentialError> for PollError {
    fn from(err: mailbox::CredentialError) -> Self {
        match err {
            mailbox::CredentialError::Mail(e) => PollError::Mail(e),
            mailbox::CredentialError::Internal(e) => PollError::App(e),
        }
    }
}

impl From<sea_orm::DbErr> for PollError {
    fn from(err: sea_orm::DbErr) -> Self {
        PollError::App(err.into())
    }
}

/// Polls one inbound account now (the scheduler calls this when it is due).
pub async fn poll_account(ctx: &AppContext, account_id: Uuid) -> Result<PollReport, PollError> {
    let Some(account) = mailbox::lease(&ctx.db, account_id, LEASE_SECONDS).await? else {
        return Ok(PollReport::default());
    };
    let poll = async {
        match Protocol::from_db(&account.protocol)? {
            Protocol::Imap => poll_imap_with_reauth(ctx, &account).await,
            Protocol::Pop3 => poll_pop3(ctx, &account).await,
            Protocol::Smtp => {
                Err(PollError::App(AppError::validation("protocol", "not_inbound", "an outbound account is not polled")))
            }
        }
    };
    let result =
        super::leases::renewing("poll", LEASE_RENEW_EVERY, poll, || mailbox::renew(&ctx.db, account_id, LEASE_SECONDS)).await;
    finish(ctx, &account, &result).await?;
    result
}

/// A login refused with a token that should be valid gets one refresh and one retry.
async fn poll_imap_with_reauth(ctx: &AppContext, account: &email_account::Model) -> Result<PollReport, PollError> {
    match poll_imap(ctx, account).await {
        Err(PollError::Mail(e)) if e.is_auth_failure() && account.grant_id.is_some() => {
            if let Some(grant_id) = account.grant_id {
                super::grants::expire_access_token(ctx, account.tenant_id, grant_id).await?;
            }
            poll_imap(ctx, account).await
        }
        other => other,
    }
}

async fn poll_imap(ctx: &AppContext, account: &email_account::Model) -> Result<PollReport, PollError> {
    let folder = account.folder.clone().unwrap_or_else(|| "INBOX".to_owned());
    let auth = credentials(ctx, account).await?;
    let mut session = ImapSession::connect(&ctx.guard, &ctx.mail_tls, &endpoint(account)?, &auth, Timeouts::default()).await?;
    let status = session.select(&folder).await?;
    let uid_validity = i64::from(status.uid_validity);
    // RFC 9051: a new UIDVALIDITY (or another folder) voids every stored UID; match again from the start.
    let resync = account.uid_validity.is_some()
        && (account.sync_folder.as_deref() != Some(folder.as_str()) || account.uid_validity != Some(uid_validity));
    let skip: Option<HashSet<(Option<String>, String)>> =
        if resync { Some(inbound::fingerprints(&ctx.db, account.id).await?) } else { None };
    let mut last_uid = if resync || account.uid_validity.is_none() { 0 } else { account.last_uid.unwrap_or(0) };
    let after_fetch = account.after_fetch.as_deref().map(AfterFetch::from_db).transpose()?.unwrap_or(AfterFetch::Keep);
    let mut report = PollReport { polled: true, resynchronised: resync, ..Default::default() };
    loop {
        let start = u32::try_from(last_uid).unwrap_or(u32::MAX);
        let batch = session.fetch_new(start, BATCH).await?;
        let Some(max_uid) = batch.iter().map(|m| m.uid).max() else { break };
        let fetched: Vec<Fetched<'_>> =
            batch.iter().map(|m| Fetched { uid: i64::from(m.uid), pop3_uid: None, raw: &m.raw }).collect();
        let txn = ctx.db.begin().await?;
        let stored = inbound::store_batch(&txn, account, &folder, uid_validity, &fetched, skip.as_ref()).await?;
        save_position(&txn, account.id, &folder, uid_validity, i64::from(max_uid)).await?;
        txn.commit().await?;
        ctx.metrics.messages("received", stored);
        report.stored += stored;
        report.fetched += batch.len() as u64;
        last_uid = i64::from(max_uid);
        let uids: Vec<u32> = batch.iter().map(|m| m.uid).collect();
        match after_fetch {
            AfterFetch::Keep => {}
            AfterFetch::MarkSeen => session.mark_seen(&uids).await?,
            AfterFetch::Move => session.move_to(&uids, account.move_to_folder.as_deref().unwrap_or("Archive")).await?,
            AfterFetch::Delete => session.delete(&uids).await?,
        }
        if batch.len() < BATCH {
            break;
        }
    }
    if account.uid_validity != Some(uid_validity) || account.sync_folder.as_deref() != Some(folder.as_str()) {
        // An empty mailbox still fixes the position's UIDVALIDITY.
        save_position(&ctx.db, account.id, &folder, uid_validity, last_uid).await?;
    }
    let _ = session.logout().await;
    Ok(report)
}

async fn save_position<C: ConnectionTrait>(
    db: &C,
    account_id: Uuid,
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

/// POP3 has no UIDs that survive; UIDL strings say what is new, and the unique key keeps it once.
async fn poll_pop3(ctx: &AppContext, account: &email_account::Model) -> Result<PollReport, PollError> {
    let auth = credentials(ctx, account).await?;
    let mut session = Pop3Session::connect(&ctx.guard, &ctx.mail_tls, &endpoint(account)?, &auth, Timeouts::default()).await?;
    let listing = session.uidl().await?;
    let known: HashSet<String> = ctx
        .db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pop3_uid FROM inbound_messages WHERE account_id = $1 AND pop3_uid IS NOT NULL",
            [account.id.into()],
        ))
        .await?
        .iter()
        .filter_map(|r| r.try_get::<String>("", "pop3_uid").ok())
        .collect();
    let delete = account.after_fetch.as_deref() == Some(AfterFetch::Delete.as_str());
    let mut report = PollReport { polled: true, ..Default::default() };
    let mut to_delete = Vec::new();
    for chunk in listing.chunks(BATCH) {
        let mut fetched_raw = Vec::new();
        for (number, uid) in chunk {
            if known.contains(uid) {
                to_delete.push(*number);
                continue;
            }
            fetched_raw.push((*number, uid.clone(), session.retr(*number).await?));
        }
        if fetched_raw.is_empty() {
            continue;
        }
        let txn = ctx.db.begin().await?;
        // POP3 has no UIDs: number the account's messages in arrival order so the (folder, UIDVALIDITY, UID) key
        // stays unique per message (a constant 0 made every message after the first a "duplicate"); UIDL dedups.
        let next = next_pop3_number(&txn, account.id).await?;
        let fetched: Vec<Fetched<'_>> =
            fetched_raw.iter().zip(next..).map(|((_, uid, raw), n)| Fetched { uid: n, pop3_uid: Some(uid), raw }).collect();
        let stored = inbound::store_batch(&txn, account, "INBOX", 0, &fetched, None).await?;
        txn.commit().await?;
        ctx.metrics.messages("received", stored);
        report.stored += stored;
        report.fetched += fetched_raw.len() as u64;
        to_delete.extend(fetched_raw.iter().map(|(n, _, _)| *n));
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

/// The number the account's next POP3 message gets (its stand-in for a UID).
async fn next_pop3_number<C: ConnectionTrait>(db: &C, account_id: Uuid) -> AppResult<i64> {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT COALESCE(MAX(uid), 0) + 1 AS next FROM inbound_messages WHERE account_id = $1 AND pop3_uid IS NOT NULL",
            [account_id.into()],
        ))
        .await?;
    Ok(row.map(|r| r.try_get::<i64>("", "next")).transpose()?.unwrap_or(1))
}

/// Schedules the next poll, records the outcome and frees the mailbox.
async fn finish(ctx: &AppContext, account: &email_account::Model, result: &Result<PollReport, PollError>) -> AppResult<()> {
    let interval = i64::from(account.poll_interval_seconds.unwrap_or(60));
    match result {
        Ok(_) => {
            ctx.db
                .execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "UPDATE email_accounts SET lease_until = NULL, dispatched_until = NULL, last_polled_at = now(), poll_failures = 0, last_error = NULL, \
                     next_poll_at = now() + make_interval(secs => $2) WHERE id = $1",
                    [account.id.into(), (interval as f64).into()],
                ))
                .await?;
        }
        Err(PollError::Mail(e)) if e.is_auth_failure() => mailbox::record_account_error(&ctx.db, account, e).await?,
        Err(e) => {
            let failures = account.poll_failures.saturating_add(1);
            let backoff = (interval.max(30) * (1i64 << failures.clamp(0, 6))).min(3600);
            let jittered = (backoff as f64 * rand::rng().random_range(0.8..1.2)) as i64;
            ctx.db
                .execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "UPDATE email_accounts SET lease_until = NULL, dispatched_until = NULL, poll_failures = $2, last_error = $3, \
                     next_poll_at = $4 WHERE id = $1",
                    [account.id.into(), failures.into(), e.to_string().into(), (Utc::now() + chrono::Duration::seconds(jittered)).into()],
                ))
                .await?;
        }
    }
    Ok(())
}
