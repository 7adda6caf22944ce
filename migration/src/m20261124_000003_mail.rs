//! Mail movement: inbound messages, the outbox, and each account's sync position and schedule.
//! Postgres is the source of truth; Redis only dispatches. Leases make every job safe to run twice.

sql_migration!();

const UP: &str = r#"
ALTER TABLE email_accounts
    ADD COLUMN sync_folder        text,
    ADD COLUMN uid_validity       bigint,
    ADD COLUMN last_uid           bigint,
    ADD COLUMN next_poll_at       timestamptz,
    ADD COLUMN last_polled_at     timestamptz,
    ADD COLUMN poll_failures      integer NOT NULL DEFAULT 0,
    ADD COLUMN lease_until        timestamptz,
    ADD COLUMN dispatched_until   timestamptz,
    ADD COLUMN confirmed_at       timestamptz;
CREATE INDEX email_accounts_poll_due_idx ON email_accounts (next_poll_at)
    WHERE direction = 'inbound' AND enabled AND state = 'confirmed';

CREATE TABLE inbound_messages (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    account_id    uuid NOT NULL,
    folder        text NOT NULL,
    uid_validity  bigint NOT NULL,
    uid           bigint NOT NULL,
    pop3_uid      text,
    message_id    text,
    from_address  text,
    to_addresses  jsonb NOT NULL DEFAULT '[]'::jsonb,
    cc_addresses  jsonb NOT NULL DEFAULT '[]'::jsonb,
    subject       text,
    sent_at       timestamptz,
    size          integer NOT NULL,
    content_hash  text NOT NULL,
    raw           bytea NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, account_id) REFERENCES email_accounts (tenant_id, id) ON DELETE CASCADE,
    -- Stored once: the dedup key of IMAP (RFC 9051 UIDVALIDITY + UID) and of POP3 (UIDL).
    UNIQUE (account_id, folder, uid_validity, uid)
);
CREATE UNIQUE INDEX inbound_messages_pop3_uid_idx ON inbound_messages (account_id, pop3_uid) WHERE pop3_uid IS NOT NULL;
CREATE INDEX inbound_messages_list_idx ON inbound_messages (tenant_id, account_id, id DESC);
CREATE INDEX inbound_messages_resync_idx ON inbound_messages (account_id, message_id, content_hash);

CREATE TABLE outbound_messages (
    id                uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    idempotency_key   text,
    requested_from    text NOT NULL,
    account_id        uuid,
    routed_by         text NOT NULL CHECK (routed_by IN ('address', 'domain', 'default')),
    envelope_from     text NOT NULL,
    recipients        jsonb NOT NULL,
    subject           text NOT NULL,
    message_id        text NOT NULL,
    raw               bytea NOT NULL,
    size              integer NOT NULL,
    status            text NOT NULL DEFAULT 'queued'
                      CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'cancelled', 'unknown')),
    attempts          integer NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    lease_until       timestamptz,
    -- A job for this row sits in Redis until then; afterwards the scheduler may dispatch it again.
    dispatched_until  timestamptz,
    -- An `unknown` message is looked up once in the mailbox's Sent folder.
    sent_folder_checked_at timestamptz,
    last_error        text,
    smtp_reply        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    sent_at           timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, account_id) REFERENCES email_accounts (tenant_id, id) ON DELETE SET NULL (account_id),
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX outbound_messages_due_idx ON outbound_messages (next_attempt_at) WHERE status IN ('queued', 'sending');
CREATE INDEX outbound_messages_list_idx ON outbound_messages (tenant_id, id DESC);
"#;

const DOWN: &str = r#"
DROP TABLE IF EXISTS outbound_messages;
DROP TABLE IF EXISTS inbound_messages;
DROP INDEX IF EXISTS email_accounts_poll_due_idx;
ALTER TABLE email_accounts
    DROP COLUMN IF EXISTS sync_folder, DROP COLUMN IF EXISTS uid_validity, DROP COLUMN IF EXISTS last_uid,
    DROP COLUMN IF EXISTS next_poll_at, DROP COLUMN IF EXISTS last_polled_at, DROP COLUMN IF EXISTS poll_failures,
    DROP COLUMN IF EXISTS lease_until, DROP COLUMN IF EXISTS dispatched_until, DROP COLUMN IF EXISTS confirmed_at;
"#;
