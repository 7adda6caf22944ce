//! What "due" means for each kind of job, written once: the scheduler's claims (`scheduler` and
//! `webhooks::claim_due_webhooks`), the queue gauges (`ops_metrics`) and the in-process passes the tests drive
//! (`grants::refresh_due`, `settle::settle_unknown`) all select with these predicates, so a gauge never counts
//! work no claim would take, or the reverse.
//!
//! Each is a SQL condition over its table's own columns. The states in them come from the enums (a closed set of
//! plain words, never input) and are spelled rather than bound, so the planner can use the partial indexes on
//! those states (`outbound_messages_due_idx`, `grants_refresh_due_idx`, …). Statements on one row bind states as
//! parameters instead.

use crate::model::{AccountState, Direction, GrantStatus, OutboundStatus, Protocol, WebhookDeliveryStatus};

/// Inbound accounts, enabled and confirmed, whose poll time has come (`email_accounts`).
pub fn poll() -> String {
    format!(
        "direction = '{}' AND enabled AND state = '{}' AND (next_poll_at IS NULL OR next_poll_at <= now())",
        Direction::Inbound,
        AccountState::Confirmed
    )
}

/// IMAP mailboxes to watch in IDLE (`email_accounts`): enabled and confirmed, not backing off after a failure,
/// and not on a server found without IDLE lately.
pub fn idle() -> String {
    format!(
        "direction = '{}' AND protocol = '{}' AND enabled AND state = '{}' \
         AND (poll_failures = 0 OR next_poll_at IS NULL OR next_poll_at <= now()) \
         AND (idle_unsupported_until IS NULL OR idle_unsupported_until < now())",
        Direction::Inbound,
        Protocol::Imap,
        AccountState::Confirmed
    )
}

/// Queued messages whose next attempt has come (`outbound_messages`).
pub fn send() -> String {
    format!("status = '{}' AND next_attempt_at <= now()", OutboundStatus::Queued)
}

/// Messages a worker holds right now (`outbound_messages`): the send queue's gauge counts them with `send()`.
pub fn sending() -> String {
    format!("status = '{}'", OutboundStatus::Sending)
}

/// User-flow grants whose access token is due for refresh (`refresh_at`, see `grants::refresh_at_for`), whose
/// backoff has passed and that no background batch is refreshing (`grants`).
pub fn refresh() -> String {
    format!(
        "status = '{}' AND refresh_token IS NOT NULL AND refresh_at <= now() \
         AND (next_refresh_at IS NULL OR next_refresh_at <= now()) \
         AND (refreshing_until IS NULL OR refreshing_until < now())",
        GrantStatus::Valid
    )
}

/// `unknown` messages old enough for the server to have filed them in Sent, not looked up yet (`outbound_messages`).
pub fn settle() -> String {
    format!(
        "status = '{}' AND sent_folder_checked_at IS NULL AND updated_at < now() - interval '60 seconds'",
        OutboundStatus::Unknown
    )
}

/// Webhook deliveries waiting for an attempt whose time has come (`webhook_deliveries`).
pub fn webhook() -> String {
    format!("status = '{}' AND next_attempt_at <= now()", WebhookDeliveryStatus::Pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicates_spell_the_stored_words_of_their_states() {
        assert!(poll().starts_with("direction = 'inbound' AND enabled AND state = 'confirmed'"), "{}", poll());
        assert!(idle().starts_with("direction = 'inbound' AND protocol = 'imap' AND enabled AND state = 'confirmed'"));
        assert!(send().starts_with("status = 'queued'"));
        assert_eq!(sending(), "status = 'sending'");
        assert!(refresh().starts_with("status = 'valid' AND refresh_token IS NOT NULL"));
        assert!(settle().starts_with("status = 'unknown' AND sent_folder_checked_at IS NULL"));
        assert_eq!(webhook(), "status = 'pending' AND next_attempt_at <= now()");
    }
}
