//! `postbridge-worker`: polls inbound mailboxes, sends queued messages, keeps OAuth grants fresh and
//! announces expiring client secrets (see the library for how).

use postbridge_core::{AppContext, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    postbridge_core::telemetry::init("info");
    let settings = Settings::from_env()?;
    let ctx = AppContext::build(settings).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let run = postbridge_worker::run(ctx, stop_rx);
    tokio::pin!(run);
    tokio::select! {
        // The worker stopping on its own (e.g. Redis unreachable at start) ends the process with its error.
        result = &mut run => return result,
        _ = shutdown_signal() => {}
    }
    tracing::info!("stopping: finishing jobs in flight");
    let _ = stop_tx.send(true);
    run.await?;
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
