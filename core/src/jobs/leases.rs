//! Leases held while work runs: short, so a killed worker's rows come back soon, and renewed as long as the work
//! goes on, so a long job (a large first sync, a slow server) keeps what it holds.

use std::future::Future;
use std::time::Duration;

use crate::error::AppResult;

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
                Err(e) => tracing::warn!(what, error = %e, "could not renew the lease"),
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
