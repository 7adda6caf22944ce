//! Large inbound mail: a message above the configured maximum is stored as a placeholder (its headers and its
//! size), flagged, so polling always moves past it.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r#"
-- True when `raw` holds only the message's headers and `size` is the size the server announced.
ALTER TABLE inbound_messages ADD COLUMN oversized boolean NOT NULL DEFAULT false;
"#;

const DOWN: &str = r#"
ALTER TABLE inbound_messages DROP COLUMN IF EXISTS oversized;
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
