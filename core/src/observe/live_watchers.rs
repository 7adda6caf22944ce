//! Which tenants' events someone watches live (a GraphQL subscription in some API process). The database announces
//! an event (`NOTIFY postbridge_events`) only for those tenants: Postgres lets one notifying transaction commit at
//! a time, holding a lock until its flush, so a notice for every event nobody watches made the busiest writes (a
//! sent message and its `message.sent` event) queue behind each other's disk flushes.
//!
//! Each API process keeps a row per tenant it has subscribers for, renewed while they stay; a process that dies
//! stops costing notices when its rows expire.

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use uuid::Uuid;

use crate::error::AppResult;
use crate::store::ids::{uuid_array, TenantId};

/// Marks `tenants` as watched by the process `instance_id` for the next `seconds`.
pub async fn watch<C: ConnectionTrait>(db: &C, instance_id: Uuid, tenants: &[TenantId], seconds: i64) -> AppResult<()> {
    if tenants.is_empty() {
        return Ok(());
    }
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO event_watchers (tenant_id, instance_id, expires_at) \
         SELECT tenant_id, $2, now() + make_interval(secs => $3) FROM unnest($1::text::uuid[]) AS tenant_id \
         ON CONFLICT (tenant_id, instance_id) DO UPDATE SET expires_at = EXCLUDED.expires_at",
        [uuid_array(tenants), instance_id.into(), (seconds as f64).into()],
    ))
    .await?;
    Ok(())
}

/// Renews the process's watch on `tenants` (those it still has subscribers for), ends it on the others, and
/// clears the rows of processes long gone.
pub async fn renew<C: ConnectionTrait>(db: &C, instance_id: Uuid, tenants: &[TenantId], seconds: i64) -> AppResult<()> {
    watch(db, instance_id, tenants, seconds).await?;
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "DELETE FROM event_watchers WHERE (instance_id = $2 AND NOT tenant_id = ANY($1::text::uuid[])) \
            OR expires_at < now() - interval '1 hour'",
        [uuid_array(tenants), instance_id.into()],
    ))
    .await?;
    Ok(())
}
