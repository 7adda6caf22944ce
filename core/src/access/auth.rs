//! Who is calling: API keys (stored hashed), JWT bearer tokens (algorithm pinned per key id), and the
//! operator bootstrap token. Produces a `Principal`; tenant-scoped calls then need a `TenantScope`.

use base64::Engine;
use chrono::Utc;
use rand::RngCore;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::model::{Role, TenantStatus};
use crate::store::entities::{api_key, tenant};
use crate::store::ids::TenantId;
use crate::store::noticed::through;
use crate::store::tenant_owned::TenantOwned;

pub const API_KEY_PREFIX: &str = "pbk_";

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Stable identity: `apikey:<id>`, a JWT `sub`, or `operator`.
    pub subject: String,
    pub role: Role,
    /// `None` only for operators.
    pub tenant_id: Option<TenantId>,
    /// The tenant's own API rate limit, read with the tenant while authenticating (so the limiter needs no
    /// second lookup); `None` for operators and for tenants without one.
    pub api_rate_limit_per_minute: Option<i32>,
    /// What the caller presented.
    pub credential: Credential,
}

/// The kind of credential a principal authenticated with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    ApiKey,
    OperatorToken,
    /// A JWT: one Postbridge issued, or one signed by a key a tenant registered.
    Token,
}

/// A principal acting inside one tenant; every tenant-owned query is filtered by `tenant_id`.
#[derive(Clone, Debug)]
pub struct TenantScope {
    pub tenant_id: TenantId,
    pub principal: Principal,
}

fn rank(role: Role) -> u8 {
    match role {
        Role::Viewer => 0,
        Role::Member => 1,
        Role::Admin => 2,
        Role::Operator => 3,
    }
}

impl Principal {
    fn operator(subject: String, credential: Credential) -> Self {
        Principal { subject, role: Role::Operator, tenant_id: None, api_rate_limit_per_minute: None, credential }
    }

    fn in_tenant(subject: String, role: Role, tenant: &tenant::Model, credential: Credential) -> Self {
        let api_rate_limit_per_minute = tenant.api_rate_limit_per_minute;
        Principal { subject, role, tenant_id: Some(tenant.id), api_rate_limit_per_minute, credential }
    }

    pub fn is_operator(&self) -> bool {
        self.role == Role::Operator
    }

    /// Fails unless the principal's role is at least `minimum`.
    pub fn require(&self, minimum: Role) -> AppResult<()> {
        if rank(self.role) >= rank(minimum) {
            Ok(())
        } else {
            Err(AppError::forbidden(format!("this operation needs the {minimum} role; the credential has {}", self.role)))
        }
    }

    /// The tenant this call acts in: the credential's own, or for operators the one they name.
    /// A tenant credential naming another tenant is answered as if that tenant did not exist.
    pub async fn scope(&self, ctx: &AppContext, requested: Option<Uuid>) -> AppResult<TenantScope> {
        let tenant_id = match (self.tenant_id, requested) {
            (Some(own), Some(other)) if own != other => return Err(AppError::not_found("tenant")),
            (Some(own), _) => own,
            (None, Some(requested)) => {
                tenant::Entity::find_by_id(requested).one(&ctx.db).await?.ok_or(AppError::not_found("tenant"))?;
                requested.into()
            }
            (None, None) => return Err(AppError::TenantRequired),
        };
        Ok(TenantScope { tenant_id, principal: self.clone() })
    }
}

impl TenantScope {
    pub fn require(&self, minimum: Role) -> AppResult<()> {
        self.principal.require(minimum)
    }
}

/// A new API key: `pbk_<prefix>_<secret>`; the prefix finds the row, the whole key is hashed.
pub struct NewApiKey {
    pub prefix: String,
    pub full_key: String,
    pub hash: String,
}

pub fn generate_api_key() -> NewApiKey {
    let mut prefix_bytes = [0u8; 6];
    let mut secret_bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut prefix_bytes);
    rand::rng().fill_bytes(&mut secret_bytes);
    let prefix: String = prefix_bytes.iter().map(|b| format!("{b:02x}")).collect();
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret_bytes);
    let full_key = format!("{API_KEY_PREFIX}{prefix}_{secret}");
    let hash = hash_api_key(&full_key);
    NewApiKey { prefix, full_key, hash }
}

/// API keys carry 256 random bits, so a fast hash is enough (no password stretching needed).
pub fn hash_api_key(full_key: &str) -> String {
    Sha256::digest(full_key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Resolves a bearer credential to a principal, refusing revoked keys and suspended tenants. A tenant's credential
/// narrows the rest of the request to that tenant's rows (see `tenant_wall`).
pub async fn authenticate(ctx: &AppContext, bearer: &str) -> AppResult<Principal> {
    let principal = identify(ctx, bearer).await?;
    if let Some(tenant_id) = principal.tenant_id {
        crate::store::tenant_wall::narrow_request(tenant_id);
    }
    Ok(principal)
}

async fn identify(ctx: &AppContext, bearer: &str) -> AppResult<Principal> {
    let bearer = bearer.trim();
    if let Some(rest) = bearer.strip_prefix(API_KEY_PREFIX) {
        return authenticate_api_key(ctx, bearer, rest).await;
    }
    if let Some(operator_token) = &ctx.settings.operator_token {
        if bool::from(operator_token.as_bytes().ct_eq(bearer.as_bytes())) {
            return Ok(Principal::operator("operator".to_owned(), Credential::OperatorToken));
        }
    }
    let claims = ctx.jwt.verify(bearer)?;
    match (claims.role, claims.tid) {
        (Role::Operator, _) => Ok(Principal::operator(claims.sub, Credential::Token)),
        (role, Some(tid)) => {
            let tenant = active_tenant(ctx, tid).await?;
            ensure_source_key_usable(ctx, &claims.sub, tid).await?;
            Ok(Principal::in_tenant(claims.sub, role, &tenant, Credential::Token))
        }
        (_, None) => Err(AppError::Unauthenticated("invalid bearer token: no tenant".to_owned())),
    }
}

async fn authenticate_api_key(ctx: &AppContext, full_key: &str, rest: &str) -> AppResult<Principal> {
    let invalid = || AppError::Unauthenticated("invalid API key".to_owned());
    let (prefix, _) = rest.split_once('_').ok_or_else(invalid)?;
    let read =
        async { api_key::Entity::find().filter(api_key::Column::Prefix.eq(prefix)).one(&ctx.db).await?.ok_or_else(invalid) };
    let key =
        through(&ctx.metrics.auth_cache, ctx.auth_cache.key(prefix), read, |ticket, key| ctx.auth_cache.store_key(ticket, key))
            .await?;
    let presented = hash_api_key(full_key);
    if !bool::from(presented.as_bytes().ct_eq(key.secret_hash.as_bytes())) {
        return Err(invalid());
    }
    if key.revoked_at.is_some() {
        return Err(AppError::Unauthenticated("this API key was revoked".to_owned()));
    }
    let tenant = active_tenant(ctx, key.tenant_id).await?;
    // Touch at most once a minute, so authentication does not write on every request.
    let now = Utc::now();
    if key.last_used_at.is_none_or(|t| now - t > chrono::Duration::seconds(60)) {
        let id = key.id;
        let active = api_key::ActiveModel { id: Set(id), last_used_at: Set(Some(now)), ..Default::default() };
        match active.update(&ctx.db).await {
            Ok(_) => ctx.auth_cache.touched(&key.prefix, now),
            Err(e) => tracing::warn!(api_key_id = %id, error = %e, "could not record API key use"),
        }
    }
    let role = key.role;
    Ok(Principal::in_tenant(format!("apikey:{}", key.id), role, &tenant, Credential::ApiKey))
}

/// A token exchanged from an API key (subject `apikey:<id>`) lives no longer than the key: revoking the key ends it too.
async fn ensure_source_key_usable(ctx: &AppContext, subject: &str, tenant_id: TenantId) -> AppResult<()> {
    let Some(key_id) = subject.strip_prefix("apikey:") else { return Ok(()) };
    let revoked =
        || AppError::Unauthenticated("the API key this token was issued for was revoked or no longer exists".to_owned());
    let key_id = Uuid::parse_str(key_id).map_err(|_| revoked())?;
    let key =
        api_key::Entity::in_tenant(tenant_id).filter(api_key::Column::Id.eq(key_id)).one(&ctx.db).await?.ok_or_else(revoked)?;
    if key.revoked_at.is_some() {
        return Err(revoked());
    }
    Ok(())
}

async fn active_tenant(ctx: &AppContext, tenant_id: TenantId) -> AppResult<tenant::Model> {
    let read = async {
        tenant::Entity::find_by_id(tenant_id)
            .one(&ctx.db)
            .await?
            .ok_or_else(|| AppError::Unauthenticated("the credential's tenant no longer exists".to_owned()))
    };
    let cached = ctx.auth_cache.tenant(tenant_id);
    let tenant =
        through(&ctx.metrics.auth_cache, cached, read, |ticket, tenant| ctx.auth_cache.store_tenant(ticket, tenant)).await?;
    match tenant.status {
        TenantStatus::Active => Ok(tenant),
        TenantStatus::Suspended => Err(AppError::TenantSuspended),
    }
}
