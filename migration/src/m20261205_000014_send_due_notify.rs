//! Send at once: a message that becomes due to send (submitted, retried, resolved as `resend`, given back) is
//! announced on `postbridge_sends_due` when its transaction commits, so a worker dispatches it within milliseconds
//! instead of at its next scheduler pass. The pass stays as the backstop for a notification nobody heard.
//!
//! The payload is empty on purpose: listeners only wake and claim, and Postgres folds identical notifications of
//! one transaction into one, so a statement that requeues many rows wakes each worker once.

sql_migration!();

const UP: &str = r#"
CREATE FUNCTION postbridge_sends_due() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('postbridge_sends_due', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbound_messages_due
    AFTER INSERT OR UPDATE OF status, next_attempt_at ON outbound_messages
    FOR EACH ROW
    WHEN (NEW.status = 'queued' AND NEW.next_attempt_at <= now())
    EXECUTE FUNCTION postbridge_sends_due();
"#;

const DOWN: &str = r#"
DROP TRIGGER outbound_messages_due ON outbound_messages;
DROP FUNCTION postbridge_sends_due();
"#;
