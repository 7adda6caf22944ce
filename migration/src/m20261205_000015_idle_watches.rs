//! Mailboxes watched in IDLE: a server found without IDLE is remembered for a while, so its mailbox is polled
//! instead of being tried again every few seconds.

sql_migration!();

const UP: &str = r#"
ALTER TABLE email_accounts ADD COLUMN idle_unsupported_until timestamptz;
"#;

const DOWN: &str = r#"
ALTER TABLE email_accounts DROP COLUMN idle_unsupported_until;
"#;
