//! Running many worker processes: each keeps a heartbeat row, send leases name their holder and say whether
//! the content was handed to the mail server, and grant refreshes are dispatched like the other jobs.

sql_migration!();

const UP: &str = r#"
-- One row per worker process, written by its heartbeat. Operators read it (`GET /v1/ops/workers`); it holds no
-- tenant data.
CREATE TABLE worker_processes (
    id          uuid PRIMARY KEY,
    host        text NOT NULL,
    pid         integer NOT NULL,
    version     text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    -- Set by a clean shutdown; a process that stops heartbeating without it died.
    stopped_at  timestamptz,
    -- Live consumers per queue, e.g. {"send": 1, "poll": 1}.
    consumers   jsonb NOT NULL DEFAULT '{}'::jsonb,
    ready       boolean NOT NULL DEFAULT false,
    -- Why the process is not ready, in words (empty when ready).
    problems    jsonb NOT NULL DEFAULT '[]'::jsonb
);
CREATE INDEX worker_processes_last_seen_idx ON worker_processes (last_seen);

-- A send lease belongs to one job (`lease_token`) of one process (`leased_by`); `handed_at` is written just
-- before the content goes to the SMTP server, so an interrupted delivery that never got there is queued again
-- instead of becoming `unknown`.
ALTER TABLE outbound_messages
    ADD COLUMN lease_token uuid,
    ADD COLUMN leased_by   uuid,
    ADD COLUMN handed_at   timestamptz;
CREATE INDEX outbound_messages_leased_idx ON outbound_messages (lease_until) WHERE status = 'sending';
CREATE INDEX outbound_messages_unknown_idx ON outbound_messages (updated_at) WHERE status = 'unknown';

-- Grant refreshes and Sent-folder settlements are queued jobs too: a claim marks the row for a grace period.
ALTER TABLE grants ADD COLUMN dispatched_until timestamptz;
"#;

const DOWN: &str = r#"
ALTER TABLE grants DROP COLUMN IF EXISTS dispatched_until;
DROP INDEX IF EXISTS outbound_messages_unknown_idx;
DROP INDEX IF EXISTS outbound_messages_leased_idx;
ALTER TABLE outbound_messages DROP COLUMN IF EXISTS lease_token, DROP COLUMN IF EXISTS leased_by, DROP COLUMN IF EXISTS handed_at;
DROP TABLE IF EXISTS worker_processes;
"#;
