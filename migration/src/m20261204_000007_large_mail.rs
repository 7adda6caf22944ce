//! Large inbound mail: a message above the configured maximum is stored as a placeholder (its headers and its
//! size), flagged, so polling always moves past it.

sql_migration!();

const UP: &str = r#"
-- True when `raw` holds only the message's headers and `size` is the size the server announced.
ALTER TABLE inbound_messages ADD COLUMN oversized boolean NOT NULL DEFAULT false;
"#;

const DOWN: &str = r#"
ALTER TABLE inbound_messages DROP COLUMN IF EXISTS oversized;
"#;
