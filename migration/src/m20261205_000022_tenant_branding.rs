//! The consent result page says whose app it is: a tenant may set the name and logo shown there.

sql_migration!();

const UP: &str = r#"
ALTER TABLE tenants ADD COLUMN display_name text, ADD COLUMN logo_url text;
"#;

const DOWN: &str = r#"
ALTER TABLE tenants DROP COLUMN display_name, DROP COLUMN logo_url;
"#;
