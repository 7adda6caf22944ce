//! States nothing ever wrote leave the schema: a grant is never `refreshing` (a refresh holds the row lock
//! instead) nor `revoked` (revoking deletes it), and a message is never `cancelled` (until the outbox gives
//! cancelling a meaning). The checks now list exactly the states the code's enums know.

sql_migration!();

const UP: &str = r#"
ALTER TABLE grants DROP CONSTRAINT grants_status_check;
ALTER TABLE grants ADD CONSTRAINT grants_status_check CHECK (status IN ('valid', 'reauth_required'));
ALTER TABLE outbound_messages DROP CONSTRAINT outbound_messages_status_check;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_status_check
    CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'unknown'));
"#;

const DOWN: &str = r#"
ALTER TABLE grants DROP CONSTRAINT grants_status_check;
ALTER TABLE grants ADD CONSTRAINT grants_status_check CHECK (status IN ('valid', 'refreshing', 'reauth_required', 'revoked'));
ALTER TABLE outbound_messages DROP CONSTRAINT outbound_messages_status_check;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_status_check
    CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'cancelled', 'unknown'));
"#;
