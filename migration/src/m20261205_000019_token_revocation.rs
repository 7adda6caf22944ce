//! Revocation at the provider (RFC 7009): a token configuration may name its provider's revocation endpoint, and a
//! grant deleted in Postbridge is then revoked there too. Google's preset has one; existing Google configurations
//! get it.

sql_migration!();

const UP: &str = r#"
ALTER TABLE token_configs ADD COLUMN revocation_url text;
UPDATE token_configs SET revocation_url = 'https://oauth2.googleapis.com/revoke' WHERE provider = 'google';
"#;

const DOWN: &str = r#"
ALTER TABLE token_configs DROP COLUMN revocation_url;
"#;
