//! The outbox is the user's to steer: a queued message can be cancelled, so `cancelled` is a state again.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r#"
ALTER TABLE outbound_messages DROP CONSTRAINT outbound_messages_status_check;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_status_check
    CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'unknown', 'cancelled'));
"#;

const DOWN: &str = r#"
UPDATE outbound_messages SET status = 'failed', last_error = 'cancelled' WHERE status = 'cancelled';
ALTER TABLE outbound_messages DROP CONSTRAINT outbound_messages_status_check;
ALTER TABLE outbound_messages ADD CONSTRAINT outbound_messages_status_check
    CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'unknown'));
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
