//! Tenants: operator-managed; a tenant credential may read its own tenant.

use async_graphql::MaybeUndefined;
use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait,
};
use uuid::Uuid;

use crate::access::auth::Principal;
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::model::{Page, PageRequest, Role, TenantStatus};
use crate::observe::audit;
use crate::store::entities::tenant;
use crate::store::ids::TenantId;
use crate::store::is_unique_violation;
use crate::store::json::StringList;
use crate::store::limit_of;
use crate::store::page_of;
use crate::validate;
use async_graphql::{InputObject, SimpleObject};
use chrono::DateTime;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Clone, Debug, Serialize, Deserialize, SimpleObject, ToSchema)]
pub struct Tenant {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub status: TenantStatus,
    /// Origins (`https://app.example.com`) that post-consent return URLs may point at.
    pub allowed_return_origins: Vec<String>,
    /// API requests per minute this tenant may make; null: the deployment's default. Set by operators.
    pub api_rate_limit_per_minute: Option<i32>,
    /// The name people see on the consent result page (default: `name`). The tenant's admins may set it.
    pub display_name: Option<String>,
    /// An https image shown on the consent result page. The tenant's admins may set it.
    pub logo_url: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, Deserialize, InputObject, ToSchema)]
pub struct CreateTenant {
    /// Lowercase letters, digits and '-', 2 to 63 characters; unique.
    pub slug: String,
    pub name: String,
    pub allowed_return_origins: Option<Vec<String>>,
    /// 1 to 1000000; omitted: the deployment's default.
    pub api_rate_limit_per_minute: Option<i32>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, InputObject, ToSchema)]
pub struct UpdateTenant {
    pub name: Option<String>,
    /// `suspended` stops every credential of the tenant; `active` restores them.
    pub status: Option<TenantStatus>,
    pub allowed_return_origins: Option<Vec<String>>,
    /// 1 to 1000000; null returns the tenant to the deployment's default.
    #[serde(default)]
    #[schema(value_type = Option<i32>)]
    pub api_rate_limit_per_minute: MaybeUndefined<i32>,
    /// 1 to 100 characters; null clears it. The tenant's own admins may change this and `logo_url` (only these).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub display_name: MaybeUndefined<String>,
    /// An https URL of at most 2048 characters; null clears it.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub logo_url: MaybeUndefined<String>,
}

impl UpdateTenant {
    /// Only the consent page's name and logo: what a tenant's admin may change.
    fn is_branding_only(&self) -> bool {
        self.name.is_none()
            && self.status.is_none()
            && self.allowed_return_origins.is_none()
            && self.api_rate_limit_per_minute.is_undefined()
    }
}

/// What the consent result page shows of a tenant.
#[derive(Clone, Debug, Default)]
pub struct Branding {
    pub name: String,
    pub logo_url: Option<String>,
}

/// The tenant's name (its display name when set) and logo for the consent result page.
pub async fn branding(ctx: &AppContext, id: TenantId) -> AppResult<Option<Branding>> {
    let model = tenant::Entity::find_by_id(id).one(&ctx.db).await?;
    Ok(model.map(|t| Branding { name: t.display_name.unwrap_or(t.name), logo_url: t.logo_url }))
}

fn check_display_name(name: String) -> AppResult<String> {
    validate::non_empty("display_name", &name, 100)
}

/// An https URL without credentials, at most 2048 characters: the page loads it from the visitor's browser.
fn check_logo_url(raw: String) -> AppResult<String> {
    let invalid = || AppError::validation("logo_url", "invalid_url", "logo_url must be an https URL of at most 2048 characters");
    let url = url::Url::parse(raw.trim()).map_err(|_| invalid())?;
    if url.scheme() != "https" || url.host().is_none() || !url.username().is_empty() || url.password().is_some() {
        return Err(invalid());
    }
    let checked = url.to_string();
    if checked.len() > 2048 {
        return Err(invalid());
    }
    Ok(checked)
}

/// Each entry must be a bare origin: `https://app.example.com[:port]`, no path.
fn check_origins(origins: Vec<String>) -> AppResult<StringList> {
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
    Ok(StringList(checked))
}

fn view(model: tenant::Model) -> AppResult<Tenant> {
    Ok(Tenant {
        id: model.id.into(),
        slug: model.slug,
        name: model.name,
        status: model.status,
        allowed_return_origins: model.allowed_return_origins.0,
        api_rate_limit_per_minute: model.api_rate_limit_per_minute,
        display_name: model.display_name,
        logo_url: model.logo_url,
        created_at: model.created_at,
        updated_at: model.updated_at,
    })
}

/// An operator's per-tenant API rate limit.
fn check_rate_limit(limit: i32) -> AppResult<i32> {
    if !(1..=1_000_000).contains(&limit) {
        return Err(AppError::validation(
            "api_rate_limit_per_minute",
            "invalid_rate_limit",
            "api_rate_limit_per_minute must be between 1 and 1000000",
        ));
    }
    Ok(limit)
}

pub async fn create(ctx: &AppContext, principal: &Principal, input: CreateTenant) -> AppResult<Tenant> {
    principal.require(Role::Operator)?;
    let changes = audit::Changes::of(&input);
    let slug = validate::slug("slug", input.slug.trim())?;
    let name = validate::non_empty("name", &input.name, 200)?;
    let now = Utc::now();
    let row = tenant::ActiveModel {
        id: Set(TenantId::new()),
        slug: Set(slug),
        name: Set(name),
        status: Set(TenantStatus::Active),
        allowed_return_origins: Set(check_origins(input.allowed_return_origins.unwrap_or_default())?),
        api_rate_limit_per_minute: Set(input.api_rate_limit_per_minute.map(check_rate_limit).transpose()?),
        display_name: Set(None),
        logo_url: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    };
    let txn = ctx.db.begin().await?;
    let model = match row.insert(&txn).await {
        Ok(model) => model,
        Err(e) if is_unique_violation(&e) => {
            return Err(AppError::Conflict { code: "slug_taken", message: "a tenant with this slug already exists".to_owned() })
        }
        Err(e) => return Err(e.into()),
    };
    audit_tenant(&txn, principal, "tenant.created", model.id, changes).await?;
    txn.commit().await?;
    view(model)
}

async fn audit_tenant(
    txn: &sea_orm::DatabaseTransaction,
    principal: &Principal,
    action: &str,
    id: TenantId,
    changes: audit::Changes,
) -> AppResult<()> {
    // A deleted tenant's own log goes with it (cascade), so its deletion is kept outside any tenant.
    let tenant_id = if action == "tenant.deleted" { None } else { Some(id) };
    let entry = audit::Entry { tenant_id, action, resource_type: "tenant", resource_id: Some(id.into()), changes };
    audit::record(txn, principal, entry).await
}

pub async fn list(ctx: &AppContext, principal: &Principal, page: PageRequest) -> AppResult<Page<Tenant>> {
    principal.require(Role::Operator)?;
    let limit = limit_of(&page)?;
    let mut query = tenant::Entity::find().order_by_asc(tenant::Column::Id).limit(limit + 1);
    if let Some(cursor) = page.cursor {
        query = query.filter(tenant::Column::Id.gt(cursor));
    }
    page_of(query.all(&ctx.db).await?, limit, |m| m.id.into(), view)
}

/// Operators read any tenant; a tenant credential reads only its own (others answer 404).
pub async fn get(ctx: &AppContext, principal: &Principal, id: TenantId) -> AppResult<Tenant> {
    if !principal.is_operator() && principal.tenant_id != Some(id) {
        return Err(AppError::not_found("tenant"));
    }
    let model = tenant::Entity::find_by_id(id).one(&ctx.db).await?.ok_or(AppError::not_found("tenant"))?;
    view(model)
}

pub async fn update(ctx: &AppContext, principal: &Principal, id: TenantId, input: UpdateTenant) -> AppResult<Tenant> {
    if !principal.is_operator() && principal.tenant_id != Some(id) {
        return Err(AppError::not_found("tenant"));
    }
    principal.require(if input.is_branding_only() { Role::Admin } else { Role::Operator })?;
    let changes = audit::Changes::of(&input)
        .cleared("api_rate_limit_per_minute", &input.api_rate_limit_per_minute)
        .cleared("display_name", &input.display_name)
        .cleared("logo_url", &input.logo_url);
    let model = tenant::Entity::find_by_id(id).one(&ctx.db).await?.ok_or(AppError::not_found("tenant"))?;
    let mut active = model.into_active_model();
    if let Some(name) = input.name {
        active.name = Set(validate::non_empty("name", &name, 200)?);
    }
    if let Some(origins) = input.allowed_return_origins {
        active.allowed_return_origins = Set(check_origins(origins)?);
    }
    if let Some(status) = input.status {
        active.status = Set(status);
    }
    match input.api_rate_limit_per_minute {
        MaybeUndefined::Undefined => {}
        MaybeUndefined::Null => active.api_rate_limit_per_minute = Set(None),
        MaybeUndefined::Value(limit) => active.api_rate_limit_per_minute = Set(Some(check_rate_limit(limit)?)),
    }
    match input.display_name {
        MaybeUndefined::Undefined => {}
        MaybeUndefined::Null => active.display_name = Set(None),
        MaybeUndefined::Value(name) => active.display_name = Set(Some(check_display_name(name)?)),
    }
    match input.logo_url {
        MaybeUndefined::Undefined => {}
        MaybeUndefined::Null => active.logo_url = Set(None),
        MaybeUndefined::Value(url) => active.logo_url = Set(Some(check_logo_url(url)?)),
    }
    active.updated_at = Set(Utc::now());
    let txn = ctx.db.begin().await?;
    let saved = active.update(&txn).await?;
    audit_tenant(&txn, principal, "tenant.updated", id, changes).await?;
    txn.commit().await?;
    ctx.auth_cache.changed();
    view(saved)
}

pub async fn set_status(ctx: &AppContext, principal: &Principal, id: TenantId, status: TenantStatus) -> AppResult<Tenant> {
    update(ctx, principal, id, UpdateTenant { status: Some(status), ..Default::default() }).await
}

/// Deletes the tenant and, by cascade, everything it owns.
pub async fn delete(ctx: &AppContext, principal: &Principal, id: TenantId) -> AppResult<()> {
    if !principal.is_operator() && principal.tenant_id != Some(id) {
        return Err(AppError::not_found("tenant"));
    }
    principal.require(Role::Operator)?;
    let txn = ctx.db.begin().await?;
    let result = tenant::Entity::delete_many().filter(tenant::Column::Id.eq(id)).exec(&txn).await?;
    if result.rows_affected == 0 {
        return Err(AppError::not_found("tenant"));
    }
    audit_tenant(&txn, principal, "tenant.deleted", id, audit::Changes::new()).await?;
    txn.commit().await?;
    ctx.auth_cache.changed();
    Ok(())
}
