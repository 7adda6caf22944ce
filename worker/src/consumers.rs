//! Queue consumers that never stay dead. apalis ends a consumer for good when its backend errors (Redis flushed:
//! "worker not registered"; Redis restarted or unreachable; a name still registered by a previous process).
//! Each queue's consumer therefore runs under a supervisor that builds it again, under a fresh name, with
//! backoff while Redis is down, until the worker stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::prelude::*;
use futures::future::BoxFuture;
use futures::FutureExt;

/// How long a consumer must have run before its restart backoff starts again from the shortest.
const STABLE_AFTER: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const LONGEST_BACKOFF: Duration = Duration::from_secs(5);

/// What the supervisor needs to start one consumer: its name, the stop signal, and the flag it keeps while alive.
pub type StartConsumer = Box<
    dyn Fn(String, tokio::sync::watch::Receiver<bool>, Arc<AtomicBool>) -> BoxFuture<'static, Result<(), WorkerError>>
        + Send
        + Sync,
>;

/// The listener every consumer gets: alive from its first heartbeat (registered with Redis), dead when it ends.
pub fn track_liveness(live: Arc<AtomicBool>) -> impl Fn(&WorkerContext, &Event) + Send + Sync + 'static {
    move |_, event| match event {
        Event::HeartBeat => live.store(true, Ordering::Relaxed),
        Event::Stop | Event::Exit => live.store(false, Ordering::Relaxed),
        _ => {}
    }
}

/// A future that resolves once `stop` turns true (apalis' `run_until` signal).
pub fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) -> BoxFuture<'static, Result<(), std::io::Error>> {
    async move {
        let _ = stop.wait_for(|s| *s).await;
        Ok(())
    }
    .boxed()
}

/// Runs one queue's consumer until `stop`, starting it again whenever it ends.
pub async fn supervise(
    queue: &'static str,
    name_of: impl Fn() -> String,
    start: StartConsumer,
    live: Arc<AtomicBool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        if *stop.borrow() {
            break;
        }
        let name = name_of();
        tracing::debug!(queue, consumer = %name, "starting queue consumer");
        let started = Instant::now();
        // A panic inside apalis ends this consumer, not the supervisor.
        let result = tokio::spawn(start(name.clone(), stop.clone(), live.clone())).await;
        live.store(false, Ordering::Relaxed);
        if *stop.borrow() {
            break;
        }
        match result {
            Ok(Ok(())) => tracing::warn!(queue, consumer = %name, "queue consumer ended; starting it again"),
            Ok(Err(e)) => tracing::warn!(queue, consumer = %name, error = %e, "queue consumer died; starting it again"),
            Err(e) => tracing::error!(queue, consumer = %name, error = %e, "queue consumer panicked; starting it again"),
        }
        if started.elapsed() >= STABLE_AFTER {
            backoff = FIRST_BACKOFF;
        }
        let wait = backoff.mul_f64(rand::random_range(0.8..1.2));
        backoff = (backoff * 2).min(LONGEST_BACKOFF);
        tokio::select! {
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
}
