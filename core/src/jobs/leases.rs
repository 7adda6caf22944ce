//! Leases held while work runs: short, so a killed worker's rows come back soon, and renewed as long as the work
//! goes on, so a long job (a large first sync, a slow server) keeps what it holds.
//!
//! Mailboxes (a poll, a test, a Sent-folder look-up), outbound messages (a send) and webhook deliveries (an attempt)
//! are leased the same way, spelled here once: a `lease_until` column, free when empty or past, taken by an
//! `UPDATE ... WHERE <free>` so two takers cannot both win, renewed by its holder, cleared when the work is recorded.
//! A message's lease also names its holder (`lease_token`, `leased_by`): whoever records an outcome proves the lease
//! is still its own. Grants are leased by their refreshes apart (`connect/grants/lease.rs`): a batch holds many
//! under one lease, whose value is its identity, and no transaction stays open while the provider answers.

use std::future::Future;
use std::time::Duration;

use sea_orm::{ConnectionTrait, DbBackend, QueryResult, Statement, Value};
use uuid::Uuid;

use crate::error::AppResult;

/// A table whose rows jobs lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leased {
    Mailboxes,
    Messages,
    WebhookDeliveries,
}

/// Who may renew or let go of a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// Whoever holds it (a mailbox's lease does not name its holder).
    Current,
    /// Only the holder of this token (a message's).
    Token(Uuid),
}

/// The row is held by nobody: never taken, let go, or its holder's time ran out.
pub const FREE: &str = "(lease_until IS NULL OR lease_until < now())";

/// The row was held and its holder's time ran out (its worker died or hung).
pub const EXPIRED: &str = "lease_until < now()";

impl Leased {
    /// Fixed table names, never taken from input.
    pub const fn table(self) -> &'static str {
        match self {
            Leased::Mailboxes => "email_accounts",
            Leased::Messages => "outbound_messages",
            Leased::WebhookDeliveries => "webhook_deliveries",
        }
    }

    /// The `SET` fragment that holds a row for `$seconds_param` seconds from now.
    pub fn hold_for(seconds_param: usize) -> String {
        format!("lease_until = now() + make_interval(secs => ${seconds_param})")
    }

    /// The `SET` fragment that lets a row go (a message's holder is forgotten with it).
    pub const fn released(self) -> &'static str {
        match self {
            Leased::Messages => "lease_until = NULL, lease_token = NULL, leased_by = NULL",
            Leased::Mailboxes | Leased::WebhookDeliveries => "lease_until = NULL",
        }
    }

    /// Takes the row `id` for `seconds` when nobody holds it, returning the row as it now is.
    pub async fn take<C: ConnectionTrait>(self, db: &C, id: Value, seconds: f64) -> AppResult<Option<QueryResult>> {
        let sql = format!("UPDATE {} SET {} WHERE id = $1 AND {FREE} RETURNING *", self.table(), Self::hold_for(2));
        Ok(db.query_one_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, [id, seconds.into()])).await?)
    }

    /// Extends a held lease by `seconds` from now; false when `holder` no longer holds it.
    pub async fn renew<C: ConnectionTrait>(self, db: &C, id: Value, holder: Holder, seconds: f64) -> AppResult<bool> {
        let (held_by, mut values) = held_by(holder, 3);
        let sql = format!("UPDATE {} SET {} WHERE id = $1 AND {held_by}", self.table(), Self::hold_for(2));
        values.splice(0..0, [id, seconds.into()]);
        let renewed = db.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
        Ok(renewed.rows_affected() == 1)
    }

    /// Lets the row go; false when `holder` no longer held it.
    pub async fn release<C: ConnectionTrait>(self, db: &C, id: Value, holder: Holder) -> AppResult<bool> {
        let (held_by, mut values) = held_by(holder, 2);
        let sql = format!("UPDATE {} SET {} WHERE id = $1 AND {held_by}", self.table(), self.released());
        values.insert(0, id);
        let released = db.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
        Ok(released.rows_affected() == 1)
    }
}

/// The condition that `holder` holds the row, its token bound as `$token_param`.
fn held_by(holder: Holder, token_param: usize) -> (String, Vec<Value>) {
    match holder {
        Holder::Current => ("lease_until IS NOT NULL".to_owned(), vec![]),
        Holder::Token(token) => (format!("lease_token = ${token_param}"), vec![token.into()]),
    }
}

/// Runs `work`, calling `renew` every `every` until it ends. A failed or refused renewal is logged (naming `what`)
/// and the work goes on: whoever records its outcome checks that the lease is still its own.
pub async fn renewing<T, R>(what: &str, every: Duration, work: impl Future<Output = T>, mut renew: impl FnMut() -> R) -> T
where
    R: Future<Output = AppResult<bool>>,
{
    tokio::pin!(work);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            outcome = &mut work => return outcome,
            _ = ticks.tick() => match renew().await {
                Ok(true) => {}
                Ok(false) => tracing::warn!(what, "the lease was taken over while the work ran"),
                Err(e) => tracing::warn!(what, error = %e.detail(), "could not renew the lease"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn renews_while_the_work_runs_and_stops_with_it() {
        let renewals = std::sync::atomic::AtomicUsize::new(0);
        let answer = renewing("test", Duration::from_millis(40), tokio::time::sleep(Duration::from_millis(210)), || {
            let n = renewals.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            async move { Ok(n != 2) }
        })
        .await;
        let renewals = || renewals.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(answer, ());
        assert!((4..=5).contains(&renewals()), "renewed every 40 ms for 210 ms, refused once and went on: {}", renewals());
        let after = renewals();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(renewals(), after, "no renewal once the work ended");
    }
}
