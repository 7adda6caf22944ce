//! Authentication without a database round trip, revocation at once: API processes keep keys and tenants in a
//! short-lived cache and empty it when a change to either is announced on `postbridge_auth_changed` (at commit).
//!
//! A key's `last_used_at` (touched once a minute) is not a change worth announcing, so the key trigger fires only on
//! the columns authentication reads, and on deletion (a deleted tenant deletes its keys too).

sql_migration!();

const UP: &str = r#"
CREATE FUNCTION postbridge_auth_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('postbridge_auth_changed', TG_TABLE_NAME);
    RETURN NULL;
END;
$$;

CREATE TRIGGER api_keys_auth_changed
    AFTER UPDATE OF tenant_id, role, prefix, secret_hash, revoked_at OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION postbridge_auth_changed();

CREATE TRIGGER tenants_auth_changed
    AFTER UPDATE OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION postbridge_auth_changed();
"#;

const DOWN: &str = r#"
DROP TRIGGER tenants_auth_changed ON tenants;
DROP TRIGGER api_keys_auth_changed ON api_keys;
DROP FUNCTION postbridge_auth_changed();
"#;
