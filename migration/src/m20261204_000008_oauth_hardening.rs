//! OAuth hardening: a grant's refresh time follows its token's lifetime, an authorization state remembers the
//! token URL it was issued for, and a generic configuration may name its issuer (RFC 9207).

sql_migration!();

const UP: &str = r#"
-- When the access token is refreshed: its expiry less min(5 minutes, a third of its lifetime), computed when the
-- token is stored. NULL: a token without expiry, never refreshed ahead. Every "due" predicate reads this column.
ALTER TABLE grants ADD COLUMN refresh_at timestamptz;
UPDATE grants SET refresh_at = expires_at - LEAST(interval '5 minutes',
    GREATEST(expires_at - COALESCE(last_refreshed_at, created_at), interval '0') / 3)
  WHERE expires_at IS NOT NULL;
DROP INDEX IF EXISTS grants_refresh_due_idx;
CREATE INDEX grants_refresh_due_idx ON grants (refresh_at) WHERE status = 'valid';

-- The token URL the code of this state is redeemed at; a configuration whose token URL changed since refuses it.
ALTER TABLE oauth_states ADD COLUMN token_url text;
UPDATE oauth_states s SET token_url = c.token_url FROM token_configs c WHERE c.id = s.token_config_id;
DELETE FROM oauth_states WHERE token_url IS NULL;
ALTER TABLE oauth_states ALTER COLUMN token_url SET NOT NULL;

-- The authorization server's issuer identifier of a generic configuration (presets know theirs).
ALTER TABLE token_configs ADD COLUMN issuer text;
"#;

const DOWN: &str = r#"
ALTER TABLE token_configs DROP COLUMN IF EXISTS issuer;
ALTER TABLE oauth_states DROP COLUMN IF EXISTS token_url;
DROP INDEX IF EXISTS grants_refresh_due_idx;
CREATE INDEX grants_refresh_due_idx ON grants (expires_at) WHERE status = 'valid';
ALTER TABLE grants DROP COLUMN IF EXISTS refresh_at;
"#;
