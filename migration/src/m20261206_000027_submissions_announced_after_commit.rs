//! Postgres lets one notifying transaction commit at a time: it holds a database-wide lock from the notify until
//! the commit is flushed to disk. With a `NOTIFY` in every submission's insert, submissions queued behind each
//! other's disk flushes instead of sharing them. API processes now announce submissions themselves, after the
//! commit and on a connection that does not wait for the disk; the trigger keeps announcing the rarer ways a
//! message becomes due (retried, resolved as resend, given back by a worker).

sql_migration!();

const UP: &str = r#"
DROP TRIGGER outbound_messages_due ON outbound_messages;
CREATE TRIGGER outbound_messages_due
    AFTER UPDATE OF status, next_attempt_at ON outbound_messages
    FOR EACH ROW
    WHEN (NEW.status = 'queued' AND NEW.next_attempt_at <= now())
    EXECUTE FUNCTION postbridge_sends_due();
"#;

const DOWN: &str = r#"
DROP TRIGGER outbound_messages_due ON outbound_messages;
CREATE TRIGGER outbound_messages_due
    AFTER INSERT OR UPDATE OF status, next_attempt_at ON outbound_messages
    FOR EACH ROW
    WHEN (NEW.status = 'queued' AND NEW.next_attempt_at <= now())
    EXECUTE FUNCTION postbridge_sends_due();
"#;
