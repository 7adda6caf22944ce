//! A refresh's hold on its grants (`refreshing_until`), taken by a background batch for its grants or by an
//! on-demand caller for one. It is short and renewed while its holder works, so a grant held by a process that was
//! killed is free again within `LEASE_SECONDS` rather than after the longest refresh that process might have run,
//! and an answer that takes long (a slow provider, a next client secret) still lands under it.
//!
//! The lease's value is its identity: a holder stores its answer only while the row still carries the value it last
//! set (a new consent clears it, and a lease that ran out may have been taken again). Renewing changes the value, so
//! a renewal and a write of answers never run at the same time (`RefreshLease::held`).
//!
//! The renewal runs in a task of its own, not through `jobs::leases::renewing`, which pauses the work while it
//! renews: a batch's write holds row locks that the renewal would then wait on for ever.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, Statement};
use tokio::sync::{watch, Mutex, MutexGuard};

use crate::error::AppResult;
use crate::store::ids::{uuid_array, GrantId};

/// How long a lease lasts after it was taken or last renewed: at most what a grant held by a killed process waits.
pub(super) const LEASE_SECONDS: f64 = 20.0;

/// How often a holder renews: Postgres may be out of reach for two renewals before the lease runs out.
const RENEW_EVERY: Duration = Duration::from_secs(5);

/// After a renewal failed, the next comes sooner.
const RENEW_AGAIN_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// A lease on `grant_ids`, all taken with one value, renewed in the background until it is stopped. Dropped before
/// its holder ended it (a cancelled request or job), it lets the grants still under it go.
pub(super) struct RefreshLease {
    db: DatabaseConnection,
    grant_ids: Arc<[GrantId]>,
    until: Arc<Mutex<DateTime<Utc>>>,
    stop: watch::Sender<bool>,
    ended: bool,
}

impl RefreshLease {
    /// Starts renewing the lease `until` that was just taken on `grant_ids`.
    pub(super) fn keep(db: DatabaseConnection, grant_ids: Vec<GrantId>, until: DateTime<Utc>) -> Self {
        let grant_ids: Arc<[GrantId]> = grant_ids.into();
        let until = Arc::new(Mutex::new(until));
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(renew_until_stopped(db.clone(), grant_ids.clone(), until.clone(), stopped));
        RefreshLease { db, grant_ids, until, stop, ended: false }
    }

    /// The lease's value as it stands; no renewal runs while the guard lives, so answers written under it meanwhile
    /// are checked against the value the rows carry.
    pub(super) async fn held(&self) -> MutexGuard<'_, DateTime<Utc>> {
        self.until.lock().await
    }

    /// Renews no more (the answer is in and about to be written); the lease's value from now on.
    pub(super) async fn stop_renewing(&self) -> DateTime<Utc> {
        self.stop.send_replace(true);
        *self.until.lock().await
    }

    /// The holder stored or let go of every grant itself: nothing is left to let go.
    pub(super) fn ended(mut self) {
        self.ended = true;
    }

    /// Lets go of the grants still under the lease (not those a new consent or a stored answer took from it).
    pub(super) async fn release(mut self) -> AppResult<()> {
        let until = self.stop_renewing().await;
        self.ended = true;
        release_held(&self.db, &self.grant_ids, until).await
    }
}

impl Drop for RefreshLease {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if self.ended {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (db, grant_ids, until) = (self.db.clone(), self.grant_ids.clone(), self.until.clone());
        runtime.spawn(async move {
            let until = *until.lock().await;
            if let Err(e) = release_held(&db, &grant_ids, until).await {
                tracing::warn!(grants = grant_ids.len(), error = %e.detail(), "could not let go of a cancelled refresh's lease; it runs out");
            }
        });
    }
}

/// Renews the lease every `RENEW_EVERY` until it is stopped, or until no grant carries it any more (each stored,
/// let go, or taken by a new consent).
async fn renew_until_stopped(
    db: DatabaseConnection,
    grant_ids: Arc<[GrantId]>,
    until: Arc<Mutex<DateTime<Utc>>>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut wait = RENEW_EVERY;
    loop {
        tokio::select! {
            biased;
            // A dropped sender stops it too.
            _ = stopped.wait_for(|stopped| *stopped) => return,
            () = tokio::time::sleep(wait) => {}
        }
        let mut current = until.lock().await;
        // Stopped while this waited for the lock: the holder has read the value it writes under.
        if *stopped.borrow() {
            return;
        }
        match renew(&db, &grant_ids, *current).await {
            Ok(Some(renewed)) => {
                *current = renewed;
                wait = RENEW_EVERY;
            }
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(grants = grant_ids.len(), error = %e.detail(), "could not renew a refresh's lease; trying again");
                wait = RENEW_AGAIN_AFTER_FAILURE;
            }
        }
    }
}

/// Moves the lease on for the grants that still carry `until`; their new value, or `None` when none does.
async fn renew(db: &DatabaseConnection, grant_ids: &[GrantId], until: DateTime<Utc>) -> AppResult<Option<DateTime<Utc>>> {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "WITH renewed AS ( \
               UPDATE grants SET refreshing_until = now() + make_interval(secs => $3) \
               WHERE id = ANY($1::text::uuid[]) AND refreshing_until = $2 RETURNING refreshing_until) \
             SELECT max(refreshing_until) AS until FROM renewed",
            [uuid_array(grant_ids), until.into(), LEASE_SECONDS.into()],
        ))
        .await?;
    Ok(match row {
        Some(row) => row.try_get::<Option<DateTime<Utc>>>("", "until")?,
        None => None,
    })
}

/// Whether the grant still carries the lease `until`; its row stays locked for `txn` either way.
pub(super) async fn still_held(txn: &DatabaseTransaction, grant_id: GrantId, until: DateTime<Utc>) -> AppResult<bool> {
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT refreshing_until = $2 AS held FROM grants WHERE id = $1 FOR UPDATE",
            [grant_id.into(), until.into()],
        ))
        .await?;
    Ok(match row {
        Some(row) => row.try_get::<Option<bool>>("", "held")?.unwrap_or(false),
        None => false,
    })
}

/// Lets go of the grants among `grant_ids` still under the lease `until`.
pub(super) async fn release_held<C: ConnectionTrait>(db: &C, grant_ids: &[GrantId], until: DateTime<Utc>) -> AppResult<()> {
    if grant_ids.is_empty() {
        return Ok(());
    }
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "UPDATE grants SET refreshing_until = NULL WHERE id = ANY($1::text::uuid[]) AND refreshing_until = $2",
        [uuid_array(grant_ids), until.into()],
    ))
    .await?;
    Ok(())
}
