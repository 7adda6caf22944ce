//! Two client secrets per token configuration, so an admin rotates an expiring Entra or Google secret without an
//! outage: the next secret (sealed like the first) is tried when the provider refuses the current one, and a
//! success with it promotes it.

sql_migration!();

const UP: &str = r#"
ALTER TABLE token_configs
    ADD COLUMN client_secret_next text,
    ADD COLUMN client_secret_next_expires_at date;
"#;

const DOWN: &str = r#"
ALTER TABLE token_configs DROP COLUMN client_secret_next, DROP COLUMN client_secret_next_expires_at;
"#;
