//! API keys of a tenant: the secret is shown once, stored as a hash, listed by prefix, revocable.

use chrono::Utc;
use sea_orm::{ActiveModelTrait, ColumnTrait, IntoActiveModel, QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait};
use uuid::Uuid;

use crate::access::auth::{generate_api_key, Credential, Principal, TenantScope, API_KEY_PREFIX};
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::model::{IssuedToken, Page, PageRequest, Role};
use crate::observe::audit;
use crate::store::entities::api_key;
use crate::store::ids::ApiKeyId;
use crate::store::limit_of;
use crate::store::page_of;
use crate::store::tenant_owned::{find_in_tenant, TenantOwned};
use crate::validate;
use async_graphql::{InputObject, SimpleObject};
use chrono::DateTime;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Clone, Debug, Serialize, Deserialize, SimpleObject, ToSchema)]
pub struct ApiKey {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub role: Role,
    /// The public start of the key, to recognise it; the secret is shown only once, at creation.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, InputObject, ToSchema)]
pub struct CreateApiKey {
    pub name: String,
    /// admin, member or viewer.
    pub role: Role,
}

#[derive(Clone, Debug, Serialize, Deserialize, SimpleObject, ToSchema)]
pub struct CreatedApiKey {
    pub api_key: ApiKey,
    /// The full key. Shown only in this response; store it now.
    pub secret: String,
}

fn view(model: api_key::Model) -> AppResult<ApiKey> {
    Ok(ApiKey {
        id: model.id.into(),
        tenant_id: model.tenant_id.into(),
        name: model.name,
        role: model.role,
        prefix: format!("{API_KEY_PREFIX}{}", model.prefix),
        created_at: model.created_at,
        last_used_at: model.last_used_at,
        revoked_at: model.revoked_at,
    })
}

async fn find(ctx: &AppContext, scope: &TenantScope, id: ApiKeyId) -> AppResult<api_key::Model> {
    find_in_tenant::<api_key::Entity, _>(&ctx.db, scope.tenant_id, id).await
}

pub async fn create(ctx: &AppContext, scope: &TenantScope, input: CreateApiKey) -> AppResult<CreatedApiKey> {
    scope.require(Role::Admin)?;
    let name = validate::non_empty("name", &input.name, 200)?;
    if !input.role.is_tenant_role() {
        return Err(AppError::validation("role", "invalid_role", "role must be admin, member or viewer"));
    }
    let generated = generate_api_key();
    let row = api_key::ActiveModel {
        id: Set(ApiKeyId::new()),
        tenant_id: Set(scope.tenant_id),
        name: Set(name),
        role: Set(input.role),
        prefix: Set(generated.prefix),
        secret_hash: Set(generated.hash),
        created_at: Set(Utc::now()),
        last_used_at: Set(None),
        revoked_at: Set(None),
    };
    let txn = ctx.db.begin().await?;
    let model = row.insert(&txn).await?;
    audit::record_in_tenant(&txn, scope, "api_key.created", model.id.into(), audit::Changes::of(&input)).await?;
    txn.commit().await?;
    Ok(CreatedApiKey { api_key: view(model)?, secret: generated.full_key })
}

pub async fn list(ctx: &AppContext, scope: &TenantScope, page: PageRequest) -> AppResult<Page<ApiKey>> {
    scope.require(Role::Admin)?;
    let limit = limit_of(&page)?;
    let mut query = api_key::Entity::in_tenant(scope.tenant_id).order_by_asc(api_key::Column::Id).limit(limit + 1);
    if let Some(cursor) = page.cursor {
        query = query.filter(api_key::Column::Id.gt(cursor));
    }
    page_of(query.all(&ctx.db).await?, limit, |m| m.id.into(), view)
}

pub async fn get(ctx: &AppContext, scope: &TenantScope, id: ApiKeyId) -> AppResult<ApiKey> {
    // Look up first: another tenant's id answers 404 whatever the caller's role.
    let model = find(ctx, scope, id).await?;
    scope.require(Role::Admin)?;
    view(model)
}

/// Revokes a key; it stops working at once. Revoking twice keeps the first revocation time.
pub async fn revoke(ctx: &AppContext, scope: &TenantScope, id: ApiKeyId) -> AppResult<ApiKey> {
    let model = find(ctx, scope, id).await?;
    scope.require(Role::Admin)?;
    if model.revoked_at.is_some() {
        return view(model);
    }
    let mut active = model.into_active_model();
    active.revoked_at = Set(Some(Utc::now()));
    let txn = ctx.db.begin().await?;
    let saved = active.update(&txn).await?;
    audit::record_in_tenant(&txn, scope, "api_key.revoked", id.into(), audit::Changes::new()).await?;
    txn.commit().await?;
    ctx.auth_cache.changed();
    view(saved)
}

/// Exchanges the presented API key or operator token for a short-lived JWT with the same identity and role. A JWT
/// is not exchanged: a token renewed with itself would never expire, and would outlive the operator token it came
/// from (a token from an API key dies with the key, one from the operator token only with the signing key).
pub fn issue_token(ctx: &AppContext, principal: &Principal) -> AppResult<IssuedToken> {
    if principal.credential == Credential::Token {
        return Err(AppError::forbidden(
            "a token is not exchanged for another: exchange the API key or operator token it was issued for",
        ));
    }
    ctx.jwt.issue(&principal.subject, principal.role, principal.tenant_id, None)
}
