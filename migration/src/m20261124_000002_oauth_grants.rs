//! OAuth grants, single-use authorization states, and the event log, plus the columns the flows need.

sql_migration!();

const UP: &str = r#"
ALTER TABLE tenants ADD COLUMN allowed_return_origins jsonb NOT NULL DEFAULT '[]'::jsonb;

ALTER TABLE token_configs
    ADD COLUMN needs_admin boolean NOT NULL DEFAULT false,
    ADD COLUMN last_error text,
    ADD COLUMN secret_expiry_notified_days integer;

-- Tokens one identity granted to one token configuration; shared by that mailbox's inbound and outbound accounts.
CREATE TABLE grants (
    id                 uuid PRIMARY KEY,
    tenant_id          uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    token_config_id    uuid NOT NULL,
    subject            text NOT NULL,
    consented_by       text,
    access_token       text,
    refresh_token      text,
    expires_at         timestamptz,
    scopes             jsonb NOT NULL DEFAULT '[]'::jsonb,
    status             text NOT NULL DEFAULT 'valid'
                       CHECK (status IN ('valid', 'refreshing', 'reauth_required', 'revoked')),
    last_error         text,
    refresh_failures   integer NOT NULL DEFAULT 0,
    next_refresh_at    timestamptz,
    last_refreshed_at  timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, token_config_id) REFERENCES token_configs (tenant_id, id) ON DELETE CASCADE,
    UNIQUE (tenant_id, token_config_id, subject),
    UNIQUE (tenant_id, id)
);
CREATE INDEX grants_refresh_due_idx ON grants (expires_at) WHERE status = 'valid';

ALTER TABLE email_accounts ADD CONSTRAINT email_accounts_tenant_id_id_key UNIQUE (tenant_id, id);
ALTER TABLE email_accounts ADD COLUMN grant_id uuid;
ALTER TABLE email_accounts ADD CONSTRAINT email_accounts_grant_fk
    FOREIGN KEY (tenant_id, grant_id) REFERENCES grants (tenant_id, id) ON DELETE SET NULL (grant_id);
CREATE INDEX email_accounts_grant_idx ON email_accounts (grant_id) WHERE grant_id IS NOT NULL;

-- One row per authorization attempt: the state is random, stored hashed, single-use and short-lived,
-- and bound to tenant, account, token configuration and the (encrypted) PKCE verifier.
CREATE TABLE oauth_states (
    id               uuid PRIMARY KEY,
    state_hash       text NOT NULL UNIQUE,
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    account_id       uuid NOT NULL,
    token_config_id  uuid NOT NULL,
    pkce_verifier    text NOT NULL,
    return_url       text,
    created_by       text NOT NULL,
    expires_at       timestamptz NOT NULL,
    consumed_at      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, account_id) REFERENCES email_accounts (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, token_config_id) REFERENCES token_configs (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX oauth_states_expiry_idx ON oauth_states (expires_at);

-- What happened, per tenant (webhook delivery builds on this).
CREATE TABLE events (
    id             uuid PRIMARY KEY,
    tenant_id      uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    event_type     text NOT NULL,
    resource_type  text NOT NULL,
    resource_id    uuid,
    data           jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_tenant_idx ON events (tenant_id, id);
"#;

const DOWN: &str = r#"
DROP TABLE IF EXISTS events;
DROP TABLE IF EXISTS oauth_states;
ALTER TABLE email_accounts DROP CONSTRAINT IF EXISTS email_accounts_grant_fk;
ALTER TABLE email_accounts DROP COLUMN IF EXISTS grant_id;
ALTER TABLE email_accounts DROP CONSTRAINT IF EXISTS email_accounts_tenant_id_id_key;
DROP TABLE IF EXISTS grants;
ALTER TABLE token_configs DROP COLUMN IF EXISTS needs_admin, DROP COLUMN IF EXISTS last_error,
    DROP COLUMN IF EXISTS secret_expiry_notified_days;
ALTER TABLE tenants DROP COLUMN IF EXISTS allowed_return_origins;
"#;
