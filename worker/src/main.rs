//! `postbridge-worker`: background work that keeps connections alive.
//!
//! For now: refreshes OAuth grants before their access tokens expire and announces expiring client
//! secrets, on timers, reading everything due from Postgres (so any number of workers can run: row
//! locks keep one refresh per grant). The Redis job queue arrives with mail polling and sending.

use std::time::Duration;

use anyhow::Context as _;
use postbridge_core::service::{grants, token_configs};
use postbridge_core::{AppContext, Settings};

/// How many due grants one refresh pass handles.
const REFRESH_BATCH: u64 = 200;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    postbridge_core::telemetry::init("info");
    let settings = Settings::from_env()?;
    let ctx = AppContext::build(settings).await?;
    let mut conn = ctx.redis.get_multiplexed_async_connection().await.context("failed to connect to Redis (POSTBRIDGE_REDIS_URL)")?;
    let _: String = redis::cmd("PING").query_async(&mut conn).await.context("Redis did not answer PING")?;
    tracing::info!(prefix = %ctx.settings.redis_prefix, "postbridge-worker started");

    let mut refresh_timer = tokio::time::interval(Duration::from_secs(30));
    let mut secret_scan_timer = tokio::time::interval(Duration::from_secs(3600));
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = refresh_timer.tick() => refresh_pass(&ctx).await,
            _ = secret_scan_timer.tick() => match token_configs::scan_secret_expiry(&ctx).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(events = n, "announced expiring client secrets"),
                Err(e) => tracing::error!(error = %e, "client secret expiry scan failed"),
            },
        }
    }
    tracing::info!("postbridge-worker stopped");
    Ok(())
}

/// Refreshes every grant that is due, batch after batch, until none is left.
async fn refresh_pass(ctx: &AppContext) {
    loop {
        match grants::refresh_due(ctx, REFRESH_BATCH).await {
            Ok(pass) => {
                if pass != grants::RefreshPass::default() {
                    tracing::info!(refreshed = pass.refreshed, reauth_required = pass.reauth_required, failed = pass.failed, "grant refresh pass");
                }
                // Failed grants have moved their next attempt into the future, so a full batch means more work.
                if pass.refreshed + pass.reauth_required + pass.failed < REFRESH_BATCH {
                    break;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "grant refresh pass failed");
                break;
            }
        }
    }
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
