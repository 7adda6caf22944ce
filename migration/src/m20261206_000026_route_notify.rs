//! Routing without a database round trip, changes seen at once: API processes keep the outbound accounts routing
//! read in a short-lived cache and empty it when a change to one is announced on `postbridge_routes_changed` (at
//! commit).
//!
//! Only what routing reads is worth announcing: an outbound account created or deleted, or one whose filter,
//! default flag, enabled flag, state or login really changed. Inbound accounts, and writes that leave those
//! columns as they were (a poll recording its time, a state written again), stay silent.

sql_migration!();

const UP: &str = r#"
CREATE FUNCTION postbridge_routes_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('postbridge_routes_changed', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER email_accounts_routes_added
    AFTER INSERT ON email_accounts
    FOR EACH ROW WHEN (NEW.direction = 'outbound')
    EXECUTE FUNCTION postbridge_routes_changed();

CREATE TRIGGER email_accounts_routes_removed
    AFTER DELETE ON email_accounts
    FOR EACH ROW WHEN (OLD.direction = 'outbound')
    EXECUTE FUNCTION postbridge_routes_changed();

CREATE TRIGGER email_accounts_routes_changed
    AFTER UPDATE ON email_accounts
    FOR EACH ROW WHEN ((OLD.direction = 'outbound' OR NEW.direction = 'outbound')
        AND (OLD.tenant_id, OLD.direction, OLD.from_filter, OLD.is_default, OLD.enabled, OLD.state, OLD.login)
            IS DISTINCT FROM (NEW.tenant_id, NEW.direction, NEW.from_filter, NEW.is_default, NEW.enabled, NEW.state, NEW.login))
    EXECUTE FUNCTION postbridge_routes_changed();
"#;

const DOWN: &str = r#"
DROP TRIGGER email_accounts_routes_changed ON email_accounts;
DROP TRIGGER email_accounts_routes_removed ON email_accounts;
DROP TRIGGER email_accounts_routes_added ON email_accounts;
DROP FUNCTION postbridge_routes_changed();
"#;
