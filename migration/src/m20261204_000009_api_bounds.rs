//! Bounded requests: an outbound message remembers a hash of the request that created it, so an idempotency
//! key reused with another body is refused instead of silently answering the first message.

sql_migration!();

const UP: &str = r#"
-- SHA-256 (hex) of the send request without its idempotency key; null for messages stored before this column.
ALTER TABLE outbound_messages ADD COLUMN request_hash text;
"#;

const DOWN: &str = r#"
ALTER TABLE outbound_messages DROP COLUMN IF EXISTS request_hash;
"#;
