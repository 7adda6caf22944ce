//! Re-encrypts every stored secret with the active master key, so an old key can be retired.

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use uuid::Uuid;

use crate::context::AppContext;
use crate::secrets::crypto::Cipher;
use crate::secrets::{self, SealedColumn};
use crate::store::ids::TenantId;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct RekeyReport {
    pub reencrypted: u64,
    /// Values that could not be decrypted with any configured key (left untouched).
    pub failed: u64,
}

const BATCH: i64 = 500;

pub async fn reencrypt_all(ctx: &AppContext) -> anyhow::Result<RekeyReport> {
    let mut report = RekeyReport::default();
    let active = ctx.cipher.active_key_id().to_owned();
    for sealed in secrets::ALL {
        let SealedColumn { table, column } = sealed;
        let mut after = Uuid::nil();
        loop {
            // Table and column names come from `secrets::ALL`, never from input.
            let select = Statement::from_sql_and_values(
                DbBackend::Postgres,
                format!(
                    "SELECT id, tenant_id, {column} AS secret FROM {table} \
                     WHERE {column} IS NOT NULL AND {column} NOT LIKE $1 AND id > $2 ORDER BY id LIMIT $3"
                ),
                [format!("{active}:%").into(), after.into(), BATCH.into()],
            );
            let rows = ctx.db.query_all_raw(select).await?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                let id: Uuid = row.try_get("", "id")?;
                let tenant_id: TenantId = row.try_get("", "tenant_id")?;
                let stored: String = row.try_get("", "secret")?;
                after = id;
                let location = sealed.location(tenant_id, id);
                let plain = match ctx.cipher.decrypt(location, &stored) {
                    Ok(plain) => plain,
                    Err(e) => {
                        tracing::error!(%table, %column, %id, key_id = Cipher::key_id_of(&stored), error = %e, "cannot re-encrypt secret");
                        report.failed += 1;
                        continue;
                    }
                };
                let fresh = ctx.cipher.encrypt(location, &plain)?;
                // Compare-and-set: a value rewritten meanwhile by the API is already current.
                let update = Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    format!("UPDATE {table} SET {column} = $1 WHERE id = $2 AND {column} = $3"),
                    [fresh.into(), id.into(), stored.into()],
                );
                report.reencrypted += ctx.db.execute_raw(update).await?.rows_affected();
            }
        }
    }
    Ok(report)
}
