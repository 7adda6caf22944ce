//! Bounded requests: an outbound message remembers a hash of the request that created it, so an idempotency
//! key reused with another body is refused instead of silently answering the first message.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r#"
-- SHA-256 (hex) of the send request without its idempotency key; null for messages stored before this column.
ALTER TABLE outbound_messages ADD COLUMN request_hash text;
"#;

const DOWN: &str = r#"
ALTER TABLE outbound_messages DROP COLUMN IF EXISTS request_hash;
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
