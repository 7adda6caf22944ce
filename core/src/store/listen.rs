//! One Postgres `LISTEN` that stays up: connects on its own connection (not one of the pool's), reconnects with
//! backoff whenever the connection fails, and says when it (re)connected, since notifications sent while it was away
//! are lost and the caller must catch up. Used by the API's live events and the worker's send wake-up.

use std::time::Duration;

use sqlx::postgres::PgListener;

const FIRST_RETRY: Duration = Duration::from_millis(500);
const LAST_RETRY: Duration = Duration::from_secs(30);

/// What the listener hands back.
#[derive(Debug)]
pub enum Notice {
    /// Listening again after a start or a lost connection: anything sent meanwhile was missed.
    Connected,
    /// The connection dropped; the next call reconnects.
    Lost,
    /// One notification's payload.
    Payload(String),
}

pub struct Listener {
    url: String,
    channel: &'static str,
    what: &'static str,
    connection: Option<PgListener>,
    retry: Duration,
}

impl Listener {
    /// `what` names the listener in logs ("the live event listener").
    pub fn new(url: impl Into<String>, channel: &'static str, what: &'static str) -> Self {
        Listener { url: url.into(), channel, what, connection: None, retry: FIRST_RETRY }
    }

    /// The next notice; waits (with backoff) through connection failures, so it never ends. Callers drop the
    /// future only to stop listening.
    pub async fn next(&mut self) -> Notice {
        loop {
            let Some(connection) = self.connection.as_mut() else {
                match connect(&self.url, self.channel).await {
                    Ok(connection) => {
                        tracing::debug!(channel = self.channel, "{} is listening", self.what);
                        self.connection = Some(connection);
                        self.retry = FIRST_RETRY;
                        return Notice::Connected;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?self.retry, "{} could not connect", self.what);
                        tokio::time::sleep(self.retry).await;
                        self.retry = (self.retry * 2).min(LAST_RETRY);
                        continue;
                    }
                }
            };
            match connection.try_recv().await {
                Ok(Some(notification)) => return Notice::Payload(notification.payload().to_owned()),
                // `None`: the connection dropped; `try_recv` does not reconnect by itself, so a fresh one is made
                // and the caller hears `Connected` to catch up.
                Ok(None) => tracing::warn!("{} lost its connection; reconnecting", self.what),
                Err(e) => tracing::warn!(error = %e, "{} failed; reconnecting", self.what),
            }
            self.connection = None;
            return Notice::Lost;
        }
    }
}

async fn connect(url: &str, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(channel).await?;
    Ok(listener)
}
