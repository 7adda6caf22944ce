//! The scheduler claims newly queued messages on each submission's notice. Walking the due index, it used to step
//! over every message already dispatched and not yet sent, so under a backlog each claim read thousands of rows. New
//! messages now have their own small index.

sql_migration!();

const UP: &str = r#"
CREATE INDEX outbound_messages_undispatched_idx ON outbound_messages (next_attempt_at)
    WHERE status = 'queued' AND dispatched_until IS NULL;
"#;

const DOWN: &str = r#"
DROP INDEX IF EXISTS outbound_messages_undispatched_idx;
"#;
