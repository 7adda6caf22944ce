//! The audit log: who changed which configuration (tenant, API key, token configuration, account, grant,
//! webhook endpoint), when, and which fields. Written in the transaction of the change. Secret fields are
//! recorded as changed, never with their value.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::access::auth::{Principal, TenantScope};
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::model::{Page, PageRequest, Role};
use crate::store::ids::TenantId;

use crate::model::SECRET_CHANGED;

/// The fields an operation set: plain values as given, secrets replaced by [`SECRET_CHANGED`].
#[derive(Default)]
pub struct Changes(Map<String, Value>);

impl Changes {
    pub fn new() -> Self {
        Self::default()
    }

    /// The fields an API input set (absent fields are left out). Secret inputs serialize as
    /// [`SECRET_CHANGED`], so no value can reach the log this way.
    pub fn of(input: &impl Serialize) -> Self {
        match serde_json::to_value(input) {
            Ok(Value::Object(fields)) => Changes(fields.into_iter().filter(|(_, v)| !v.is_null()).collect()),
            _ => Changes::default(),
        }
    }

    /// A non-secret field and its new value (`None` values are skipped: the field was not changed).
    pub fn set(mut self, field: &str, value: Option<impl Serialize>) -> Self {
        if let Some(value) = value {
            self.0.insert(field.to_owned(), serde_json::to_value(value).unwrap_or(Value::Null));
        }
        self
    }

    /// A field the input cleared (`null`): [`Changes::of`] cannot tell it from an absent one, as both
    /// serialize as `null`.
    pub fn cleared<T>(mut self, field: &str, value: &async_graphql::MaybeUndefined<T>) -> Self {
        if value.is_null() {
            self.0.insert(field.to_owned(), Value::Null);
        }
        self
    }

    /// A secret field: only that it changed.
    pub fn secret(mut self, field: &str, changed: bool) -> Self {
        if changed {
            self.0.insert(field.to_owned(), Value::String(SECRET_CHANGED.to_owned()));
        }
        self
    }

    pub fn into_value(self) -> Value {
        Value::Object(self.0)
    }
}

/// One audit entry. `tenant_id` is `None` only for operator actions outside any tenant.
pub struct Entry<'a> {
    pub tenant_id: Option<TenantId>,
    pub action: &'a str,
    pub resource_type: &'a str,
    pub resource_id: Option<Uuid>,
    pub changes: Changes,
}

pub async fn record<C: ConnectionTrait>(db: &C, actor: &Principal, entry: Entry<'_>) -> AppResult<()> {
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO audit_log (id, tenant_id, actor, actor_role, action, resource_type, resource_id, changes, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        [
            Uuid::now_v7().into(),
            entry.tenant_id.into(),
            actor.subject.clone().into(),
            actor.role.as_str().into(),
            entry.action.into(),
            entry.resource_type.into(),
            entry.resource_id.into(),
            entry.changes.into_value().into(),
            Utc::now().into(),
        ],
    ))
    .await?;
    Ok(())
}

/// A change made inside a tenant by the scope's principal.
pub async fn record_in_tenant<C: ConnectionTrait>(
    db: &C,
    scope: &TenantScope,
    action: &str,
    resource_id: Uuid,
    changes: Changes,
) -> AppResult<()> {
    // The resource type is the action's first part: `token_config.updated` → `token_config`.
    let resource_type = action.split_once('.').map_or(action, |(resource, _)| resource);
    let entry = Entry { tenant_id: Some(scope.tenant_id), action, resource_type, resource_id: Some(resource_id), changes };
    record(db, &scope.principal, entry).await
}

/// An audit entry as shown to tenant admins and operators.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema, async_graphql::SimpleObject)]
pub struct AuditEntry {
    pub id: Uuid,
    pub tenant_id: Option<Uuid>,
    /// `apikey:<id>`, a JWT subject, or `operator`.
    pub actor: String,
    pub actor_role: String,
    /// `<resource>.<created|updated|deleted|...>`, e.g. `token_config.updated`.
    pub action: String,
    pub resource_type: String,
    pub resource_id: Option<Uuid>,
    /// Fields set by the change; secret fields say only that they changed.
    #[schema(value_type = Object)]
    pub changes: async_graphql::Json<Value>,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    pub resource_type: Option<String>,
    pub resource_id: Option<Uuid>,
    pub actor: Option<String>,
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<Uuid>,
}

/// The audit log, newest first: a tenant's own for its admins (and operators naming it); every entry,
/// including those outside any tenant (such as tenant deletions), for operators naming none.
pub async fn list(
    ctx: &AppContext,
    principal: &Principal,
    requested_tenant: Option<Uuid>,
    query: AuditQuery,
) -> AppResult<Page<AuditEntry>> {
    let tenant = match (principal.is_operator(), requested_tenant) {
        (true, None) => None,
        _ => Some(principal.scope(ctx, requested_tenant).await?.tenant_id),
    };
    principal.require(Role::Admin)?;
    let page = PageRequest { limit: query.limit, cursor: query.cursor };
    let limit = crate::store::limit_of(&page)?;
    let mut sql = String::from(
        "SELECT id, tenant_id, actor, actor_role, action, resource_type, resource_id, changes, created_at \
         FROM audit_log WHERE ($1::uuid IS NULL OR tenant_id = $1)",
    );
    let mut values: Vec<sea_orm::Value> = vec![tenant.into()];
    let mut filter = |column: &str, value: sea_orm::Value, values: &mut Vec<sea_orm::Value>| {
        values.push(value);
        sql.push_str(&format!(" AND {column} = ${}", values.len()));
    };
    if let Some(resource_type) = query.resource_type {
        filter("resource_type", resource_type.into(), &mut values);
    }
    if let Some(resource_id) = query.resource_id {
        filter("resource_id", resource_id.into(), &mut values);
    }
    if let Some(actor) = query.actor {
        filter("actor", actor.into(), &mut values);
    }
    if let Some(cursor) = query.cursor {
        values.push(cursor.into());
        sql.push_str(&format!(" AND id < ${}", values.len()));
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", limit + 1));
    let rows = ctx.db.query_all_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
    let entries = rows
        .into_iter()
        .map(|row| {
            Ok(AuditEntry {
                id: row.try_get("", "id")?,
                tenant_id: row.try_get("", "tenant_id")?,
                actor: row.try_get("", "actor")?,
                actor_role: row.try_get("", "actor_role")?,
                action: row.try_get("", "action")?,
                resource_type: row.try_get("", "resource_type")?,
                resource_id: row.try_get("", "resource_id")?,
                changes: async_graphql::Json(row.try_get("", "changes")?),
                created_at: row.try_get("", "created_at")?,
            })
        })
        .collect::<Result<Vec<_>, sea_orm::DbErr>>()
        .map_err(AppError::from)?;
    crate::store::page_of(entries, limit, |e| e.id, Ok)
}
