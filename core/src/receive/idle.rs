//! Receive in real time: a confirmed IMAP mailbox watched in IDLE (RFC 2177) by one worker of the deployment, so a
//! new message is stored moments after its delivery instead of at the next poll.
//!
//! A watch holds the mailbox lease (the same one polls, tests and Sent-folder look-ups take, so nothing else opens
//! the mailbox meanwhile) and renews it for as long as it runs. It syncs what arrived since the stored position,
//! then IDLEs; when the server announces new mail it syncs on the same connection and IDLEs again. A connection
//! lives one cycle (`POSTBRIDGE_IDLE_REISSUE`, 25 minutes by default, under servers' 30-minute IDLE limit): then
//! DONE, LOGOUT, and a new connection with fresh credentials (a rotated token, changed settings). A failure ends the
//! watch and is recorded like a poll's (backoff; refused credentials put the account in `error`), and the mailbox
//! is polled until a worker watches it again. A server without IDLE is marked and polled for a day.

use std::time::Duration;

use sea_orm::{ConnectionTrait, DbBackend, EntityTrait, Statement};
use tokio_util::sync::CancellationToken;

use super::poll::{self, PollError};
use crate::connect::mailbox;
use crate::context::AppContext;
use crate::error::AppResult;
use crate::model::{AccountState, Protocol};
use crate::protocols::imap::IdleEnd;
use crate::store::entities::email_account;
use crate::store::ids::AccountId;

/// How a watch ended.
#[derive(Debug)]
pub enum WatchEnd {
    /// Asked to stop (the worker stops, or hands the mailbox to another worker); the mailbox is let go.
    Stopped,
    /// The account is gone, disabled, not confirmed or no longer IMAP; the mailbox is let go.
    NotWatchable,
    /// The server does not offer IDLE; the mailbox is polled instead.
    Unsupported,
    /// Someone else holds the mailbox now (this watch's lease ran out); nothing is written.
    LeaseLost,
    /// The connection or the server failed; recorded on the account like a failed poll.
    Failed(PollError),
}

/// Reconnects in a row before a watch gives up and the failure is recorded like a poll's (1 s, 2 s, 4 s … apart).
const MAX_RECONNECTS: u32 = 6;
const FIRST_RECONNECT: Duration = Duration::from_secs(1);
/// A connection that lived this long before failing starts the reconnect count again.
const RECONNECTS_FORGOTTEN_AFTER: Duration = Duration::from_secs(120);

/// How long a server without IDLE is left to polling before it is asked again.
const UNSUPPORTED_FOR_SECONDS: f64 = 86_400.0;

/// Watches `account_id`, whose mailbox lease the caller has just taken, until `stop` is cancelled or the watch
/// fails; always leaves the lease released (or, when lost, alone).
pub async fn watch(ctx: &AppContext, account_id: AccountId, reissue: Duration, stop: &CancellationToken) -> WatchEnd {
    let work = watch_leased(ctx, account_id, reissue, stop);
    tokio::pin!(work);
    let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + poll::LEASE_RENEW_EVERY, poll::LEASE_RENEW_EVERY);
    loop {
        tokio::select! {
            end = &mut work => return end,
            _ = renew.tick() => match mailbox::renew(&ctx.db, account_id, poll::LEASE_SECONDS).await {
                Ok(true) => {}
                Ok(false) => return WatchEnd::LeaseLost,
                // Postgres is away for now: the watch goes on; the lease lasts a minute past the last renewal.
                Err(e) => tracing::warn!(error = %e, %account_id, "could not renew an IDLE watch's mailbox lease"),
            },
        }
    }
}

async fn watch_leased(ctx: &AppContext, account_id: AccountId, reissue: Duration, stop: &CancellationToken) -> WatchEnd {
    let mut account = match watchable(ctx, account_id).await {
        Ok(Some(account)) => account,
        Ok(None) => return let_go(ctx, account_id, WatchEnd::NotWatchable).await,
        Err(e) => return let_go(ctx, account_id, WatchEnd::Failed(e.into())).await,
    };
    let mut reconnects = 0u32;
    let end: Result<WatchEnd, PollError> = loop {
        let started = tokio::time::Instant::now();
        match cycle(ctx, &account, reissue, stop).await {
            Ok(Cycle::Stopped) => break Ok(WatchEnd::Stopped),
            Ok(Cycle::Unsupported) => {
                break mark_unsupported(ctx, account_id).await.map(|()| WatchEnd::Unsupported).map_err(Into::into)
            }
            Ok(Cycle::Again) => reconnects = 0,
            Err(PollError::Mail(e)) if !e.is_auth_failure() && reconnects < MAX_RECONNECTS => {
                // A cut connection, a BYE, a timeout: open it again soon, holding on to the mailbox meanwhile. A
                // connection that lived a while starts the count again.
                reconnects = if started.elapsed() > RECONNECTS_FORGOTTEN_AFTER { 1 } else { reconnects + 1 };
                let wait = FIRST_RECONNECT.saturating_mul(1 << (reconnects - 1).min(6));
                tracing::info!(%account_id, error = %e, ?wait, "an IDLE connection failed; opening it again");
                if let Err(e) = super::feed_health::record_idle_drop(&ctx.db, account_id).await {
                    tracing::warn!(error = %e, %account_id, "could not count an IDLE connection failure");
                }
                tokio::select! {
                    () = stop.cancelled() => break Ok(WatchEnd::Stopped),
                    () = tokio::time::sleep(wait) => {}
                }
            }
            Err(e) => break Err(e),
        }
        // A new connection, with the account as it is now.
        match watchable(ctx, account_id).await {
            Ok(Some(fresh)) => account = fresh,
            Ok(None) => return let_go(ctx, account_id, WatchEnd::NotWatchable).await,
            Err(e) => break Err(e.into()),
        }
    };
    // A poll's bookkeeping: an end schedules the next poll and clears errors, a failure backs off (refused
    // credentials put the account in `error`); both let the mailbox go.
    if let Err(e) = poll::finish(ctx, &account, end.as_ref().map(|_| ())).await {
        tracing::warn!(error = %e, %account_id, "could not record the end of an IDLE watch; its lease runs out");
    }
    end.unwrap_or_else(WatchEnd::Failed)
}

/// The shortest time between two syncs of one watched folder.
const MIN_SYNC_GAP: Duration = Duration::from_millis(500);

enum Cycle {
    /// The connection's time is up (or the account changed): open a new one.
    Again,
    Stopped,
    Unsupported,
}

/// One connection: sync, then IDLE and sync on every announced change, until the cycle's time is up.
async fn cycle(
    ctx: &AppContext,
    account: &email_account::Model,
    reissue: Duration,
    stop: &CancellationToken,
) -> Result<Cycle, PollError> {
    let mut open = poll::open_imap_with_reauth(ctx, account).await?;
    if !open.session.has_capability("IDLE").await? {
        let _ = open.session.logout().await;
        return Ok(Cycle::Unsupported);
    }
    let deadline = tokio::time::Instant::now() + reissue;
    let mut account = account.clone();
    let mut last_sync: Option<tokio::time::Instant> = None;
    let outcome = loop {
        // A server announcing new mail at once after every IDLE (or ending each itself) gets a sync every
        // `MIN_SYNC_GAP` at most, not hundreds of statements a second; mail arriving in a burst is synced together.
        if let Some(next) = last_sync.map(|at| at + MIN_SYNC_GAP) {
            tokio::select! {
                () = stop.cancelled() => break Cycle::Stopped,
                () = tokio::time::sleep_until(next) => {}
            }
        }
        last_sync = Some(tokio::time::Instant::now());
        poll::sync_imap(ctx, &account, &mut open).await?;
        record_synced(ctx, &account).await?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break Cycle::Again;
        }
        match open.session.idle(left, stop.cancelled()).await? {
            IdleEnd::Changed => {
                // The stored position moved with the last sync; changed settings need a new connection.
                match watchable(ctx, account.id).await? {
                    Some(fresh) if fresh.updated_at == account.updated_at => account = fresh,
                    _ => break Cycle::Again,
                }
            }
            IdleEnd::TimedOut => break Cycle::Again,
            IdleEnd::Stopped => break Cycle::Stopped,
        }
    };
    let _ = open.session.logout().await;
    Ok(outcome)
}

/// The account as it is now, if it is still a confirmed, enabled IMAP mailbox.
async fn watchable(ctx: &AppContext, account_id: AccountId) -> AppResult<Option<email_account::Model>> {
    let account = email_account::Entity::find_by_id(account_id).one(&ctx.db).await?;
    Ok(account.filter(|a| a.enabled && a.state == AccountState::Confirmed && a.protocol == Protocol::Imap))
}

/// Lets the mailbox go without touching its poll bookkeeping (the account is gone or changed).
async fn let_go(ctx: &AppContext, account_id: AccountId, end: WatchEnd) -> WatchEnd {
    if let Err(e) = mailbox::release(&ctx.db, account_id).await {
        tracing::warn!(error = %e, %account_id, "could not let go of a mailbox; its lease runs out");
    }
    end
}

/// A sync in a watch counts as a poll: errors cleared, and the next poll (should the watch end) an interval away.
async fn record_synced(ctx: &AppContext, account: &email_account::Model) -> AppResult<()> {
    let interval = poll::interval_seconds(account) as f64;
    ctx.db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!("UPDATE email_accounts SET {} WHERE id = $1", poll::POLLED),
            [account.id.into(), interval.into()],
        ))
        .await?;
    Ok(())
}

async fn mark_unsupported(ctx: &AppContext, account_id: AccountId) -> AppResult<()> {
    ctx.db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE email_accounts SET idle_unsupported_until = now() + make_interval(secs => $2) WHERE id = $1",
            [account_id.into(), UNSUPPORTED_FOR_SECONDS.into()],
        ))
        .await?;
    Ok(())
}
