//! Mailboxes watched in IDLE: a server found without IDLE is remembered for a while, so its mailbox is polled
//! instead of being tried again every few seconds.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r#"
ALTER TABLE email_accounts ADD COLUMN idle_unsupported_until timestamptz;
"#;

const DOWN: &str = r#"
ALTER TABLE email_accounts DROP COLUMN idle_unsupported_until;
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
