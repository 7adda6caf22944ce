//! The scheduler claims due grants a thousand at a time, in due order, and each claim of a dispatch round goes on
//! from where the last one ended (keyset on due time and id): a storm of tokens falling due together is claimed
//! in one pass over the index instead of one pass per claim over every grant claimed so far.

sql_migration!();

const UP: &str = r#"
DROP INDEX IF EXISTS grants_refresh_due_idx;
CREATE INDEX grants_refresh_due_idx ON grants (refresh_at, id) WHERE status = 'valid';
"#;

const DOWN: &str = r#"
DROP INDEX IF EXISTS grants_refresh_due_idx;
CREATE INDEX grants_refresh_due_idx ON grants (refresh_at) WHERE status = 'valid';
"#;
