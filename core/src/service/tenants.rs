//! Tenants: operator-managed; a tenant credential may read its own tenant.

use chrono::Utc;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, QuerySelect, Set};
use uuid::Uuid;

use super::{is_unique_violation, limit_of, page_of};
use crate::auth::Principal;
use crate::context::AppContext;
use crate::entities::tenant;
use crate::error::{AppError, AppResult};
use crate::model::{CreateTenant, Page, PageRequest, Role, Tenant, TenantStatus, UpdateTenant};
use crate::validate;

/// Each entry must be a bare origin: `https://app.example.com[:port]`, no path.
fn check_origins(origins: Vec<String>) -> AppResult<serde_json::Value> {
    let field = "allowed_return_origins";
    let mut checked = Vec::with_capacity(origins.len());
    for origin in origins {
        let trimmed = origin.trim().trim_end_matches('/');
        let parsed = url::Url::parse(trimmed).ok().filter(|u| matches!(u.scheme(), "https" | "http") && u.host().is_some());
        match parsed {
            Some(url) if url.origin().ascii_serialization() == trimmed => checked.push(trimmed.to_owned()),
            _ => {
                return Err(AppError::validation(
                    field,
                    "invalid_origin",
                    "each allowed return origin must look like https://app.example.com (no path)",
                ))
            }
        }
    }
    serde_json::to_value(checked).map_err(|e| AppError::Internal(e.into()))
}

fn view(model: tenant::Model) -> AppResult<Tenant> {
    Ok(Tenant {
        id: model.id,
        slug: model.slug,
        name: model.name,
        status: TenantStatus::from_db(&model.status)?,
        allowed_return_origins: serde_json::from_value(model.allowed_return_origins)
            .map_err(|e| AppError::Internal(anyhow::anyhow!("tenants.allowed_return_origins: {e}")))?,
        created_at: model.created_at,
        updated_at: model.updated_at,
    })
}

pub async fn create(ctx: &AppContext, principal: &Principal, input: CreateTenant) -> AppResult<Tenant> {
    principal.require(Role::Operator)?;
    let slug = validate::slug("slug", input.slug.trim())?;
    let name = validate::non_empty("name", &input.name, 200)?;
    let now = Utc::now();
    let row = tenant::ActiveModel {
        id: Set(Uuid::now_v7()),
        slug: Set(slug),
        name: Set(name),
        status: Set(TenantStatus::Active.as_str().to_owned()),
        allowed_return_origins: Set(check_origins(input.allowed_return_origins.unwrap_or_default())?),
        api_rate_limit_per_minute: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    };
    match row.insert(&ctx.db).await {
        Ok(model) => view(model),
        Err(e) if is_unique_violation(&e) => {
            Err(AppError::Conflict { code: "slug_taken", message: "a tenant with this slug already exists".to_owned() })
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn list(ctx: &AppContext, principal: &Principal, page: PageRequest) -> AppResult<Page<Tenant>> {
    principal.require(Role::Operator)?;
    let limit = limit_of(&page)?;
    let mut query = tenant::Entity::find().order_by_asc(tenant::Column::Id).limit(limit + 1);
    if let Some(cursor) = page.cursor {
        query = query.filter(tenant::Column::Id.gt(cursor));
    }
    page_of(query.all(&ctx.db).await?, limit, |m| m.id, view)
}

/// Operators read any tenant; a tenant credential reads only its own (others answer 404).
pub async fn get(ctx: &AppContext, principal: &Principal, id: Uuid) -> AppResult<Tenant> {
    if !principal.is_operator() && principal.tenant_id != Some(id) {
        return Err(AppError::not_found("tenant"));
    }
    let model = tenant::Entity::find_by_id(id).one(&ctx.db).await?.ok_or(AppError::not_found("tenant"))?;
    view(model)
}

pub async fn update(ctx: &AppContext, principal: &Principal, id: Uuid, input: UpdateTenant) -> AppResult<Tenant> {
    if !principal.is_operator() && principal.tenant_id != Some(id) {
        return Err(AppError::not_found("tenant"));
    }
    principal.require(Role::Operator)?;
    let model = tenant::Entity::find_by_id(id).one(&ctx.db).await?.ok_or(AppError::not_found("tenant"))?;
    let mut active = model.into_active_model();
    if let Some(name) = input.name {
        active.name = Set(validate::non_empty("name", &name, 200)?);
    }
    if let Some(origins) = input.allowed_return_origins {
        active.allowed_return_origins = Set(check_origins(origins)?);
    }
    if let Some(status) = input.status {
        active.status = Set(status.as_str().to_owned());
    }
    active.updated_at = Set(Utc::now());
    view(active.update(&ctx.db).await?)
}

pub async fn set_status(ctx: &AppContext, principal: &Principal, id: Uuid, status: TenantStatus) -> AppResult<Tenant> {
    update(ctx, principal, id, UpdateTenant { status: Some(status), ..Default::default() }).await
}

/// Deletes the tenant and, by cascade, everything it owns.
pub async fn delete(ctx: &AppContext, principal: &Principal, id: Uuid) -> AppResult<()> {
    if !principal.is_operator() && principal.tenant_id != Some(id) {
        return Err(AppError::not_found("tenant"));
    }
    principal.require(Role::Operator)?;
    let result = tenant::Entity::delete_many().filter(tenant::Column::Id.eq(id)).exec(&ctx.db).await?;
    if result.rows_affected == 0 {
        return Err(AppError::not_found("tenant"));
    }
    Ok(())
}
