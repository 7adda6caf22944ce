//! The outbox is the user's to steer: a queued message can be cancelled, so `cancelled` is a state again.

sql_migration!();

const UP: &str = r#"
ALTER TABLE outbound_messages DROP CONSTRAINT outbound_messages_status_check;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_status_check
    CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'unknown', 'cancelled'));
"#;

const DOWN: &str = r#"
UPDATE outbound_messages SET status = 'failed', last_error = 'cancelled' WHERE status = 'cancelled';
ALTER TABLE outbound_messages DROP CONSTRAINT outbound_messages_status_check;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_status_check
    CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'unknown'));
"#;
