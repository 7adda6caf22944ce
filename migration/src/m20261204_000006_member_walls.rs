//! Walls between members and toward mail hosts: who connected a grant, which accounts an admin let use an
//! app-flow grant, and which mail hosts a token configuration's tokens may be sent to.

sql_migration!();

const UP: &str = r#"
-- The subject (API key or JWT `sub`) that started the consent which produced the grant; a member's new account
-- is linked automatically only to grants that member connected.
ALTER TABLE grants ADD COLUMN connected_by text;

-- An app-flow grant (client credentials) reaches every mailbox of the directory, so only accounts an admin
-- created or authorized use it.
ALTER TABLE email_accounts ADD COLUMN app_grant_approved boolean NOT NULL DEFAULT false;
UPDATE email_accounts a SET app_grant_approved = true
  FROM grants g WHERE g.id = a.grant_id AND g.subject = 'app';

-- Mail hosts an oauth2 account of a generic configuration may use; tokens are never sent elsewhere.
-- Existing configurations keep the hosts their accounts already use.
ALTER TABLE token_configs ADD COLUMN allowed_mail_hosts jsonb NOT NULL DEFAULT '[]'::jsonb;
UPDATE token_configs c SET allowed_mail_hosts = hosts.list
  FROM (SELECT token_config_id, jsonb_agg(DISTINCT lower(host)) AS list
          FROM email_accounts WHERE token_config_id IS NOT NULL GROUP BY token_config_id) hosts
 WHERE hosts.token_config_id = c.id AND c.provider = 'generic';
"#;

const DOWN: &str = r#"
ALTER TABLE token_configs DROP COLUMN IF EXISTS allowed_mail_hosts;
ALTER TABLE email_accounts DROP COLUMN IF EXISTS app_grant_approved;
ALTER TABLE grants DROP COLUMN IF EXISTS connected_by;
"#;
