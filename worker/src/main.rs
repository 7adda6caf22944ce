//! `postbridge-worker`: for now it connects to Redis and idles until stopped; jobs arrive in later issues.

use std::time::Duration;

use anyhow::Context as _;
use postbridge_core::{AppContext, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    postbridge_core::telemetry::init("info");
    let settings = Settings::from_env()?;
    let ctx = AppContext::build(settings).await?;
    let mut conn = ctx.redis.get_multiplexed_async_connection().await.context("failed to connect to Redis (POSTBRIDGE_REDIS_URL)")?;
    let _: String = redis::cmd("PING").query_async(&mut conn).await.context("Redis did not answer PING")?;
    tracing::info!(prefix = %ctx.settings.redis_prefix, "postbridge-worker connected to Redis; idle");
    let mut heartbeat = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = shutdown_signal() => break,
            _ = heartbeat.tick() => {
                if let Err(e) = redis::cmd("PING").query_async::<String>(&mut conn).await {
                    tracing::warn!(error = %e, "Redis heartbeat failed");
                }
            }
        }
    }
    tracing::info!("postbridge-worker stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return ctrl_c.await.unwrap_or(()),
        };
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
