//! Tenants, API keys, token configurations and email accounts.
//! Written as SQL so constraints (partial unique index, same-tenant foreign key) are exact.

sql_migration!();

const UP: &str = r#"
CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    slug        text NOT NULL UNIQUE,
    name        text NOT NULL,
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name          text NOT NULL,
    role          text NOT NULL CHECK (role IN ('admin', 'member', 'viewer')),
    prefix        text NOT NULL UNIQUE,
    secret_hash   text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id, id);

CREATE TABLE token_configs (
    id                        uuid PRIMARY KEY,
    tenant_id                 uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name                      text NOT NULL,
    provider                  text NOT NULL CHECK (provider IN ('microsoft', 'google', 'generic')),
    flow                      text NOT NULL CHECK (flow IN ('user', 'app')),
    client_id                 text NOT NULL,
    client_secret             text,
    client_secret_expires_at  date,
    directory_tenant_id       text,
    auth_url                  text,
    token_url                 text NOT NULL,
    scopes                    jsonb NOT NULL DEFAULT '[]'::jsonb,
    extra_auth_params         jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id)
);
CREATE INDEX token_configs_secret_expiry_idx ON token_configs (client_secret_expires_at)
    WHERE client_secret_expires_at IS NOT NULL;

CREATE TABLE email_accounts (
    id                     uuid PRIMARY KEY,
    tenant_id              uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name                   text NOT NULL,
    direction              text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    protocol               text NOT NULL CHECK (protocol IN ('imap', 'pop3', 'smtp')),
    host                   text NOT NULL,
    port                   integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    security               text NOT NULL CHECK (security IN ('tls', 'starttls', 'none')),
    auth_method            text NOT NULL CHECK (auth_method IN ('password', 'oauth2')),
    login                  text NOT NULL,
    password               text,
    token_config_id        uuid,
    state                  text NOT NULL DEFAULT 'draft'
                           CHECK (state IN ('draft', 'authorized', 'confirmed', 'error', 'disabled')),
    last_error             text,
    enabled                boolean NOT NULL DEFAULT true,
    from_filter            text,
    is_default             boolean NOT NULL DEFAULT false,
    shared_mailbox         boolean NOT NULL DEFAULT false,
    folder                 text,
    poll_interval_seconds  integer,
    after_fetch            text CHECK (after_fetch IN ('keep', 'mark_seen', 'move', 'delete')),
    move_to_folder         text,
    owner_subject          text NOT NULL,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    -- The token configuration must belong to the same tenant: enforced here, not only in code.
    FOREIGN KEY (tenant_id, token_config_id) REFERENCES token_configs (tenant_id, id) ON DELETE RESTRICT,
    CHECK (auth_method <> 'oauth2' OR token_config_id IS NOT NULL),
    CHECK ((protocol = 'smtp') = (direction = 'outbound')),
    CHECK (NOT is_default OR direction = 'outbound')
);
CREATE INDEX email_accounts_tenant_idx ON email_accounts (tenant_id, id);
CREATE INDEX email_accounts_token_config_idx ON email_accounts (token_config_id) WHERE token_config_id IS NOT NULL;
-- At most one default sender per tenant.
CREATE UNIQUE INDEX email_accounts_one_default_idx ON email_accounts (tenant_id) WHERE is_default;
"#;

const DOWN: &str = r#"
DROP TABLE IF EXISTS email_accounts;
DROP TABLE IF EXISTS token_configs;
DROP TABLE IF EXISTS api_keys;
DROP TABLE IF EXISTS tenants;
"#;
