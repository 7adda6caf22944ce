//! Received mail usable without a MIME parser: the text and HTML bodies, threading headers, the attachments' list,
//! a snippet, and a flag for a message that did not parse, all taken from the raw bytes once, when it is stored.
//! Messages stored before keep these empty (their raw bytes are unchanged).

sql_migration!();

const UP: &str = r#"
ALTER TABLE inbound_messages
    ADD COLUMN text_body    text,
    ADD COLUMN html_body    text,
    ADD COLUMN in_reply_to  text,
    ADD COLUMN references_ids jsonb NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN attachments  jsonb NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN snippet      text,
    ADD COLUMN unparsed     boolean NOT NULL DEFAULT false;
"#;

const DOWN: &str = r#"
ALTER TABLE inbound_messages
    DROP COLUMN text_body,
    DROP COLUMN html_body,
    DROP COLUMN in_reply_to,
    DROP COLUMN references_ids,
    DROP COLUMN attachments,
    DROP COLUMN snippet,
    DROP COLUMN unparsed;
"#;
