//! A broken inbound feed is noticed before a customer does: each mailbox keeps when mail last arrived and its usual
//! gap between arrivals (a moving average), and how often its IDLE connection dropped in the last hour.

sql_migration!();

const UP: &str = r#"
ALTER TABLE email_accounts
    ADD COLUMN last_received_at timestamptz,
    ADD COLUMN usual_gap_seconds double precision,
    ADD COLUMN arrivals integer NOT NULL DEFAULT 0,
    ADD COLUMN idle_drops integer NOT NULL DEFAULT 0,
    ADD COLUMN idle_drops_since timestamptz;
"#;

const DOWN: &str = r#"
ALTER TABLE email_accounts
    DROP COLUMN last_received_at,
    DROP COLUMN usual_gap_seconds,
    DROP COLUMN arrivals,
    DROP COLUMN idle_drops,
    DROP COLUMN idle_drops_since;
"#;
