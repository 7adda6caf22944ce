//! Telling people what happens: account state events, webhook endpoints and their deliveries, the audit
//! log, per-tenant API limits and per-account send limits.
//!
//! Two triggers do work that must happen in the same transaction as the change, whatever code path made it:
//! every account state transition becomes an event, and every event is fanned out to the tenant's webhook
//! endpoints and announced with NOTIFY (live GraphQL subscriptions listen for it).

sql_migration!();

const UP: &str = r#"
-- UUIDv7 (time-ordered, like the ids the application makes) for rows the database writes itself.
CREATE FUNCTION postbridge_uuid_v7() RETURNS uuid AS $$
    SELECT encode(
        set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
            PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
            FROM 1 FOR 6), 52, 1), 53, 1),
        'hex')::uuid
$$ LANGUAGE sql VOLATILE;

CREATE INDEX events_tenant_type_idx ON events (tenant_id, event_type, id);
CREATE INDEX events_tenant_resource_idx ON events (tenant_id, resource_id, id);
CREATE INDEX events_created_idx ON events (created_at);

ALTER TABLE tenants ADD COLUMN api_rate_limit_per_minute integer CHECK (api_rate_limit_per_minute > 0);
ALTER TABLE email_accounts
    ADD COLUMN failing_since timestamptz,
    ADD COLUMN send_rate_per_minute integer CHECK (send_rate_per_minute >= 0);
-- Google apps whose consent screen is in "Testing" get refresh tokens that expire after 7 days.
ALTER TABLE token_configs ADD COLUMN testing_app boolean NOT NULL DEFAULT false;

-- Each state change of an account is an event (`account.<new state>`); `failing_since` says since when an
-- account has been in error, for the operators' worst-offenders list.
CREATE FUNCTION postbridge_account_state_changed() RETURNS trigger AS $$
BEGIN
    IF NEW.state = 'error' AND OLD.state IS DISTINCT FROM 'error' THEN
        NEW.failing_since := now();
    ELSIF NEW.state <> 'error' THEN
        NEW.failing_since := NULL;
    END IF;
    INSERT INTO events (id, tenant_id, event_type, resource_type, resource_id, data, created_at)
    VALUES (postbridge_uuid_v7(), NEW.tenant_id, 'account.' || NEW.state, 'account', NEW.id,
            jsonb_build_object('previous_state', OLD.state, 'state', NEW.state, 'login', NEW.login,
                               'direction', NEW.direction,
                               'error', CASE WHEN NEW.state = 'error' THEN NEW.last_error END),
            now());
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER email_accounts_state_changed BEFORE UPDATE OF state ON email_accounts
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION postbridge_account_state_changed();

CREATE TABLE webhook_endpoints (
    id                          uuid PRIMARY KEY,
    tenant_id                   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    url                         text NOT NULL,
    description                 text,
    -- Empty: every event type.
    event_types                 text[] NOT NULL DEFAULT '{}',
    enabled                     boolean NOT NULL DEFAULT true,
    disabled_reason             text,
    -- Encrypted `whsec_...` signing secrets; the previous one keeps signing for a while after a rotation.
    secret                      text NOT NULL,
    previous_secret             text,
    previous_secret_expires_at  timestamptz,
    -- Since when every delivery attempt has failed; cleared by a success.
    failing_since               timestamptz,
    created_by                  text NOT NULL,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id)
);
CREATE INDEX webhook_endpoints_tenant_idx ON webhook_endpoints (tenant_id, id);

-- One row per (endpoint, event): the delivery, retried on a schedule until delivered or failed.
CREATE TABLE webhook_deliveries (
    endpoint_id       uuid NOT NULL,
    event_id          uuid NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    tenant_id         uuid NOT NULL,
    status            text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts          integer NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    lease_until       timestamptz,
    dispatched_until  timestamptz,
    last_status_code  integer,
    last_error        text,
    delivered_at      timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint_id, event_id),
    FOREIGN KEY (tenant_id, endpoint_id) REFERENCES webhook_endpoints (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';

-- The delivery log: every HTTP attempt with its outcome.
CREATE TABLE webhook_attempts (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL,
    endpoint_id   uuid NOT NULL,
    event_id      uuid NOT NULL,
    attempt       integer NOT NULL,
    status_code   integer,
    latency_ms    integer NOT NULL,
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (endpoint_id, event_id) REFERENCES webhook_deliveries (endpoint_id, event_id) ON DELETE CASCADE
);
CREATE INDEX webhook_attempts_endpoint_idx ON webhook_attempts (tenant_id, endpoint_id, id);

-- Fan-out in the event's own transaction: a delivery row per matching endpoint, and a NOTIFY per event
-- (id only: a payload over 8000 bytes would fail the transaction).
CREATE FUNCTION postbridge_events_inserted() RETURNS trigger AS $$
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
CREATE TRIGGER events_inserted AFTER INSERT ON events REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION postbridge_events_inserted();

-- Who changed which configuration, when; changed field names and non-secret values only.
CREATE TABLE audit_log (
    id             uuid PRIMARY KEY,
    tenant_id      uuid REFERENCES tenants (id) ON DELETE CASCADE,
    actor          text NOT NULL,
    actor_role     text NOT NULL,
    action         text NOT NULL,
    resource_type  text NOT NULL,
    resource_id    uuid,
    changes        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_tenant_idx ON audit_log (tenant_id, id);
"#;

const DOWN: &str = r#"
DROP TABLE IF EXISTS audit_log;
DROP TRIGGER IF EXISTS events_inserted ON events;
DROP FUNCTION IF EXISTS postbridge_events_inserted();
DROP TABLE IF EXISTS webhook_attempts;
DROP TABLE IF EXISTS webhook_deliveries;
DROP TABLE IF EXISTS webhook_endpoints;
DROP TRIGGER IF EXISTS email_accounts_state_changed ON email_accounts;
DROP FUNCTION IF EXISTS postbridge_account_state_changed();
ALTER TABLE token_configs DROP COLUMN IF EXISTS testing_app;
ALTER TABLE email_accounts DROP COLUMN IF EXISTS failing_since, DROP COLUMN IF EXISTS send_rate_per_minute;
ALTER TABLE tenants DROP COLUMN IF EXISTS api_rate_limit_per_minute;
DROP INDEX IF EXISTS events_created_idx;
DROP INDEX IF EXISTS events_tenant_resource_idx;
DROP INDEX IF EXISTS events_tenant_type_idx;
DROP FUNCTION IF EXISTS postbridge_uuid_v7();
"#;
