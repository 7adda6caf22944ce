//! Per-recipient outcomes: one recipient refused for good no longer fails a message for the others. Each
//! recipient's answer to `RCPT TO` is kept, and a message some recipients refused is `partially_sent`.

sql_migration!();

const UP: &str = r#"
ALTER TABLE outbound_messages ADD COLUMN recipient_results jsonb;
ALTER TABLE outbound_messages DROP CONSTRAINT outbound_messages_status_check;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_status_check
    CHECK (status IN ('queued', 'sending', 'sent', 'partially_sent', 'failed', 'unknown', 'cancelled'));
"#;

const DOWN: &str = r#"
UPDATE outbound_messages SET status = 'sent' WHERE status = 'partially_sent';
ALTER TABLE outbound_messages DROP CONSTRAINT outbound_messages_status_check;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_status_check
    CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'unknown', 'cancelled'));
ALTER TABLE outbound_messages DROP COLUMN recipient_results;
"#;
