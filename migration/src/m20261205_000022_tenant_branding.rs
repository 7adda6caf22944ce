//! The consent result page says whose app it is: a tenant may set the name and logo shown there.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r#"
ALTER TABLE tenants ADD COLUMN display_name text, ADD COLUMN logo_url text;
"#;

const DOWN: &str = r#"
ALTER TABLE tenants DROP COLUMN display_name, DROP COLUMN logo_url;
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(UP).await.map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(DOWN).await.map(|_| ())
    }
}
