//! The one backoff formula: exponential from a base, doubled per failure up to a number of doublings, capped, with
//! ±20% jitter so failures that happened together do not retry together. Grants, messages and mailboxes differ
//! only in their numbers. (Webhook deliveries follow the operator's `retry_schedule` instead.)

use rand::Rng;

/// How long to wait after the n-th consecutive failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failure, before jitter.
    pub base_seconds: i64,
    /// Doublings at most (the wait stops growing after this many failures).
    pub max_doublings: i32,
    /// The longest wait, before jitter.
    pub cap_seconds: i64,
}

/// A grant whose refresh failed: 30 s, doubling to an hour.
pub const GRANT_REFRESH: Backoff = Backoff { base_seconds: 30, max_doublings: 7, cap_seconds: 3600 };

/// A message whose delivery failed transiently: 30 s, doubling eight times (about two hours between late attempts).
pub const MESSAGE_SEND: Backoff = Backoff { base_seconds: 30, max_doublings: 8, cap_seconds: 6 * 3600 };

/// A mailbox whose poll failed: its poll interval (at least 30 s), doubling to an hour.
pub fn mailbox_poll(interval_seconds: i64) -> Backoff {
    Backoff { base_seconds: interval_seconds.max(30), max_doublings: 6, cap_seconds: 3600 }
}

impl Backoff {
    /// The wait after `failures` consecutive failures, before jitter.
    pub fn nominal_seconds(&self, failures: i32) -> i64 {
        let doublings = failures.clamp(0, self.max_doublings.clamp(0, 30));
        self.base_seconds.saturating_mul(1i64 << doublings).min(self.cap_seconds)
    }

    /// The wait after `failures` consecutive failures, jittered by ±20%.
    pub fn seconds(&self, failures: i32) -> i64 {
        (self.nominal_seconds(failures) as f64 * rand::rng().random_range(0.8..1.2)) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_their_cap_and_jitter_stays_within_a_fifth() {
        assert_eq!(GRANT_REFRESH.nominal_seconds(0), 30);
        assert_eq!(GRANT_REFRESH.nominal_seconds(3), 240);
        assert_eq!(GRANT_REFRESH.nominal_seconds(1_000), 3600);
        assert_eq!(MESSAGE_SEND.nominal_seconds(8), 30 * 256);
        assert_eq!(MESSAGE_SEND.nominal_seconds(50), 30 * 256, "no doubling past the eighth");
        assert_eq!(MESSAGE_SEND.nominal_seconds(-5), 30);
        assert_eq!(mailbox_poll(60).nominal_seconds(2), 240);
        assert_eq!(mailbox_poll(5).nominal_seconds(0), 30);
        assert_eq!(mailbox_poll(i64::MAX).nominal_seconds(6), 3600, "no overflow, whatever the interval");
        for failures in 0..12 {
            let nominal = MESSAGE_SEND.nominal_seconds(failures) as f64;
            let jittered = MESSAGE_SEND.seconds(failures) as f64;
            assert!(jittered >= nominal * 0.8 - 1.0 && jittered <= nominal * 1.2, "{failures}: {jittered} vs {nominal}");
        }
    }
}
