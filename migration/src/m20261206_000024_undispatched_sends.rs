//! The scheduler claims newly queued messages on each submission's notice. Walking the due index, it used to step
//! over every message already dispatched and not yet sent, so under a backlog each claim read thousands of rows. New
//! messages now have their own small index.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r#"
CREATE INDEX outbound_messages_undispatched_idx ON outbound_messages (next_attempt_at)
    WHERE status = 'queued' AND dispatched_until IS NULL;
"#;

const DOWN: &str = r#"
DROP INDEX IF EXISTS outbound_messages_undispatched_idx;
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
