//! Telling the workers that submissions are waiting, without slowing the submissions down.
//!
//! Postgres lets one notifying transaction commit at a time (it holds a database-wide lock from its notify until
//! its commit is on disk), so a `NOTIFY` in every submission's own transaction made the submissions queue behind
//! each other's disk flushes. Instead, an API process announces after the commit, on a connection of its own whose
//! commits do not wait for the disk (a lost wake-up costs at most the workers' half-second pass): one
//! `postbridge_sends_due` notice at a time, and every submission committed while one is on its way is covered by
//! the next. Other ways a message becomes due (retry, resolve as resend, given back) are rare and still announced
//! by the `outbound_messages_due` trigger.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::{Connection as _, PgConnection};
use tokio::sync::{oneshot, Notify};

/// The channel workers listen on for sends due.
pub const CHANNEL: &str = "postbridge_sends_due";

/// How long connecting or announcing may take before the announcement is given up (the pass covers it).
const TIMEOUT: Duration = Duration::from_secs(5);

/// Cheap to clone; one per process, inside `AppContext`. Announces nothing until [`SendsDue::start`] (API processes).
#[derive(Clone, Default)]
pub struct SendsDue {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// A permit while an announcement is wanted: many submissions leave one.
    wanted: Arc<Notify>,
    /// Dropped with the announcer, which stops its task.
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

impl SendsDue {
    /// Announces in the background on its own connection to `database_url`; `announced` counts each try by result.
    pub fn start(&self, database_url: String, announced: prometheus::IntCounterVec) {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let wanted = self.inner.wanted.clone();
        tokio::spawn(async move {
            let mut connection = None;
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    () = wanted.notified() => {}
                }
                let sent =
                    match tokio::time::timeout(TIMEOUT, announce_once_more_on_failure(&mut connection, &database_url)).await {
                        Ok(Ok(())) => true,
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "could not announce submitted messages; the workers' pass sends them");
                            false
                        }
                        Err(_) => {
                            tracing::warn!("announcing submitted messages timed out; the workers' pass sends them");
                            false
                        }
                    };
                if !sent {
                    // Failed or cut off mid-way: its state is unknown, the next announcement opens a new one.
                    connection = None;
                }
                announced.with_label_values(&[if sent { "sent" } else { "failed" }]).inc();
            }
        });
        *self.inner.stop.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(stop);
    }

    /// A submission committed: the workers hear of it shortly (together with any others committed meanwhile).
    pub fn announce(&self) {
        self.inner.wanted.notify_one();
    }
}

/// Announces; a connection that failed (Postgres restarted, the backend terminated) is replaced at once and the
/// announcement made on the new one.
async fn announce_once_more_on_failure(connection: &mut Option<PgConnection>, database_url: &str) -> Result<(), sqlx::Error> {
    if let Err(first) = announce(connection, database_url).await {
        tracing::debug!(error = %first, "the announcing connection failed; announcing on a new one");
        *connection = None;
        announce(connection, database_url).await?;
    }
    Ok(())
}

async fn announce(connection: &mut Option<PgConnection>, database_url: &str) -> Result<(), sqlx::Error> {
    if connection.is_none() {
        let mut opened = PgConnection::connect(database_url).await?;
        // A wake-up need not be on disk: a notice is delivered at commit, flushed or not.
        sqlx::query("SET synchronous_commit TO off").execute(&mut opened).await?;
        *connection = Some(opened);
    }
    let Some(connection) = connection.as_mut() else { return Ok(()) };
    sqlx::query("SELECT pg_notify($1, '')").bind(CHANNEL).execute(connection).await?;
    Ok(())
}
