//! Events are announced (`NOTIFY postbridge_events`) only for tenants someone watches live. Postgres lets one
//! notifying transaction commit at a time, holding a lock until its flush, so a notice for every event (every sent
//! message has one) made those writes queue behind each other's disk flushes, for subscribers that mostly did not
//! exist. API processes with subscribers keep a row per tenant here, renewed while the subscribers stay.

sql_migration!();

const UP: &str = r#"
CREATE TABLE event_watchers (
    tenant_id   uuid NOT NULL,
    instance_id uuid NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, instance_id)
);
ALTER TABLE event_watchers ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_wall ON event_watchers USING (current_setting('postbridge.scope', true) = 'all'
    OR tenant_id = NULLIF(current_setting('postbridge.tenant', true), '')::uuid);

CREATE OR REPLACE FUNCTION postbridge_events_inserted() RETURNS trigger AS $$
BEGIN
    INSERT INTO webhook_deliveries (endpoint_id, event_id, tenant_id)
    SELECT w.id, n.id, n.tenant_id
    FROM new_events n
    JOIN webhook_endpoints w ON w.tenant_id = n.tenant_id AND w.enabled
        AND (cardinality(w.event_types) = 0 OR n.event_type = ANY (w.event_types));
    PERFORM pg_notify('postbridge_events', n.tenant_id::text || ' ' || n.id::text || ' ' || n.event_type)
    FROM new_events n
    WHERE EXISTS (SELECT 1 FROM event_watchers w WHERE w.tenant_id = n.tenant_id AND w.expires_at > now());
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
"#;

const DOWN: &str = r#"
CREATE OR REPLACE FUNCTION postbridge_events_inserted() RETURNS trigger AS $$
BEGIN
    INSERT INTO webhook_deliveries (endpoint_id, event_id, tenant_id)
    SELECT w.id, n.id, n.tenant_id
    FROM new_events n
    JOIN webhook_endpoints w ON w.tenant_id = n.tenant_id AND w.enabled
        AND (cardinality(w.event_types) = 0 OR n.event_type = ANY (w.event_types));
    PERFORM pg_notify('postbridge_events', n.tenant_id::text || ' ' || n.id::text || ' ' || n.event_type)
    FROM new_events n;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
DROP TABLE event_watchers;
"#;
