//! Routing a submission used to read every outbound account of its tenant and match from filters in memory: a
//! tenant with thousands of mailboxes paid for all of them on each message. It now asks for the accounts filtering
//! on the sender's address or domain (and the default sender, which has its own index).

sql_migration!();

const UP: &str = r#"
CREATE INDEX email_accounts_from_filter_idx ON email_accounts (tenant_id, from_filter)
    WHERE direction = 'outbound' AND from_filter IS NOT NULL;
"#;

const DOWN: &str = r#"
DROP INDEX IF EXISTS email_accounts_from_filter_idx;
"#;
