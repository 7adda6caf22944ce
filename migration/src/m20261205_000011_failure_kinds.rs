//! Failure kinds: an account's and a grant's `last_error` (words for people) gets `last_error_kind` beside it
//! (`postbridge_core::failure::FailureKind` as tagged JSON), so the fix-it hints match on kinds and never on
//! sentences. Rows failing before this migration get their kind read once from the sentences that wrote them.

sql_migration!();

const UP: &str = r#"
ALTER TABLE email_accounts ADD COLUMN last_error_kind jsonb;
ALTER TABLE grants ADD COLUMN last_error_kind jsonb;

-- The provider's OAuth error and Microsoft code out of "the provider refused: <error> (<description>)".
-- OR REPLACE and the DROP below: pg_temp lives as long as the session, and a down/up in one session runs this twice.
CREATE OR REPLACE FUNCTION pg_temp.token_kind(kind text, message text) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
  SELECT jsonb_build_object(
    'kind', kind,
    'oauth_error', (regexp_match(message, 'the provider refused: ([A-Za-z_]+)'))[1],
    'provider_code', (regexp_match(message, '(AADSTS[0-9]+)'))[1])
$$;

UPDATE grants SET last_error_kind = CASE
    WHEN last_error LIKE '%(no refresh token stored)%' THEN '{"kind": "refresh_token_missing"}'::jsonb
    WHEN status = 'reauth_required' THEN pg_temp.token_kind('reauth_required', last_error)
    WHEN last_error ~ 'the provider refused: (invalid_client|unauthorized_client)' THEN pg_temp.token_kind('client_refused', last_error)
    WHEN last_error LIKE 'the provider is unavailable%' THEN '{"kind": "provider_unavailable"}'::jsonb
    WHEN last_error LIKE 'Postbridge could not use this grant%' THEN '{"kind": "internal"}'::jsonb
    ELSE pg_temp.token_kind('provider_answer', last_error)
  END
  WHERE last_error IS NOT NULL;

UPDATE email_accounts SET last_error_kind = CASE
    WHEN last_error LIKE 'wrong mailbox: consent was given by %' THEN jsonb_build_object(
      'kind', 'wrong_mailbox',
      'consented', (regexp_match(last_error, '^wrong mailbox: consent was given by (.*?), but this account is ([^:]*):'))[1],
      'expected', (regexp_match(last_error, '^wrong mailbox: consent was given by (.*?), but this account is ([^:]*):'))[2])
    WHEN last_error LIKE 'the provider did not say who signed in%' THEN '{"kind": "unknown_identity"}'::jsonb
    WHEN last_error LIKE '%(no refresh token stored)%' THEN '{"kind": "refresh_token_missing"}'::jsonb
    WHEN last_error LIKE 'sign-in needed again: %' OR last_error LIKE 'auth: the grant needs re-consent: %'
      THEN pg_temp.token_kind('reauth_required', last_error)
    WHEN last_error LIKE 'auth: the token configuration needs its admin: %' THEN pg_temp.token_kind('client_refused', last_error)
    WHEN last_error LIKE 'timeout: token provider unavailable: %' THEN '{"kind": "provider_unavailable"}'::jsonb
    WHEN last_error ~ '^(dns|forbidden|connect|tls|greeting|auth|folder|command|timeout|unknown): '
      THEN jsonb_build_object('kind', 'mail', 'step', substring(last_error FROM '^([a-z]+): '))
    ELSE jsonb_build_object('kind', 'mail', 'step', 'unknown')
  END
  WHERE last_error IS NOT NULL;

DROP FUNCTION pg_temp.token_kind(text, text);
"#;

const DOWN: &str = r#"
ALTER TABLE email_accounts DROP COLUMN IF EXISTS last_error_kind;
ALTER TABLE grants DROP COLUMN IF EXISTS last_error_kind;
"#;
