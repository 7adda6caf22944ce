//! Who is calling: API keys (stored hashed), JWT bearer tokens (algorithm pinned per key id), and the
//! operator bootstrap token. Produces a `Principal`; tenant-scoped calls then need a `TenantScope`.

use std::collections::HashMap;

use base64::Engine;
use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::config::{JwtAlgorithm, JwtKeyMaterial, JwtSettings};
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::model::{IssuedToken, Role, TenantStatus};
use crate::store::entities::{api_key, tenant};

pub const API_KEY_PREFIX: &str = "pbk_";

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Stable identity: `apikey:<id>`, a JWT `sub`, or `operator`.
    pub subject: String,
    pub role: Role,
    /// `None` only for operators.
    pub tenant_id: Option<Uuid>,
    /// The tenant's own API rate limit, read with the tenant while authenticating (so the limiter needs no
    /// second lookup); `None` for operators and for tenants without one.
    pub api_rate_limit_per_minute: Option<i32>,
}

/// A principal acting inside one tenant; every tenant-owned query is filtered by `tenant_id`.
#[derive(Clone, Debug)]
pub struct TenantScope {
    pub tenant_id: Uuid,
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
    fn operator(subject: String) -> Self {
        Principal { subject, role: Role::Operator, tenant_id: None, api_rate_limit_per_minute: None }
    }

    fn in_tenant(subject: String, role: Role, tenant: &tenant::Model) -> Self {
        Principal { subject, role, tenant_id: Some(tenant.id), api_rate_limit_per_minute: tenant.api_rate_limit_per_minute }
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
                requested
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

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub role: Role,
    /// Tenant id; absent for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<Uuid>,
}

struct VerifyingKey {
    algorithm: Algorithm,
    key: DecodingKey,
    /// Only Postbridge's own signing key may carry the operator role; any other key (an identity provider's)
    /// is limited to tenant roles.
    may_grant_operator: bool,
    /// Tokens of this key act in this tenant only.
    tenant: Option<Uuid>,
}

/// Configured JWT keys: verification by `kid` only among these, each pinned to its algorithm.
pub struct JwtKeys {
    verifying: HashMap<String, VerifyingKey>,
    signing_kid: String,
    signing_algorithm: Algorithm,
    signing_key: EncodingKey,
    issuer: String,
    audience: String,
    ttl_seconds: i64,
    leeway_seconds: u64,
}

fn to_algorithm(alg: JwtAlgorithm) -> Algorithm {
    match alg {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::HS384 => Algorithm::HS384,
        JwtAlgorithm::HS512 => Algorithm::HS512,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
    }
}

impl JwtKeys {
    pub fn new(settings: &JwtSettings) -> anyhow::Result<Self> {
        let mut verifying = HashMap::new();
        let mut signing = None;
        for key in &settings.keys {
            let algorithm = to_algorithm(key.algorithm);
            let decoding = match (&key.material, key.algorithm) {
                (JwtKeyMaterial::Secret(secret), _) => {
                    if key.kid == settings.signing_key_id {
                        signing = Some(EncodingKey::from_secret(secret));
                    }
                    DecodingKey::from_secret(secret)
                }
                (JwtKeyMaterial::PublicPem(pem), JwtAlgorithm::ES256 | JwtAlgorithm::ES384) => DecodingKey::from_ec_pem(pem)
                    .map_err(|e| anyhow::anyhow!("JWT key {}: invalid EC public key PEM: {e}", key.kid))?,
                (JwtKeyMaterial::PublicPem(pem), _) => DecodingKey::from_rsa_pem(pem)
                    .map_err(|e| anyhow::anyhow!("JWT key {}: invalid RSA public key PEM: {e}", key.kid))?,
            };
            let may_grant_operator = key.kid == settings.signing_key_id;
            verifying.insert(key.kid.clone(), VerifyingKey { algorithm, key: decoding, may_grant_operator, tenant: key.tenant });
        }
        let signing_key = signing.ok_or_else(|| anyhow::anyhow!("JWT signing key {} has no secret", settings.signing_key_id))?;
        let signing_algorithm = verifying
            .get(&settings.signing_key_id)
            .map(|k| k.algorithm)
            .ok_or_else(|| anyhow::anyhow!("JWT signing key {} is not configured", settings.signing_key_id))?;
        Ok(JwtKeys {
            verifying,
            signing_kid: settings.signing_key_id.clone(),
            signing_algorithm,
            signing_key,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            ttl_seconds: settings.ttl_seconds,
            leeway_seconds: settings.leeway_seconds,
        })
    }

    pub fn issue(&self, subject: &str, role: Role, tenant_id: Option<Uuid>, ttl_seconds: Option<i64>) -> AppResult<IssuedToken> {
        let now = Utc::now().timestamp();
        let ttl = ttl_seconds.unwrap_or(self.ttl_seconds);
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: subject.to_owned(),
            exp: now + ttl,
            iat: now,
            nbf: now,
            role,
            tid: tenant_id,
        };
        let mut header = Header::new(self.signing_algorithm);
        header.kid = Some(self.signing_kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.signing_key)
            .map_err(|e| AppError::Internal(anyhow::anyhow!("failed to sign JWT: {e}")))?;
        Ok(IssuedToken { access_token: token, token_type: "Bearer".to_owned(), expires_in: ttl })
    }

    /// Verifies signature (with the key named by `kid` and only its algorithm), issuer, audience, expiry and not-before.
    pub fn verify(&self, token: &str) -> AppResult<Claims> {
        let invalid = |why: &str| AppError::Unauthenticated(format!("invalid bearer token: {why}"));
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed"))?;
        let key = match header.kid.as_deref() {
            Some(kid) => self.verifying.get(kid).ok_or_else(|| invalid("unknown key id"))?,
            // Without a kid only an unambiguous single key may be used.
            None if self.verifying.len() == 1 => self.verifying.values().next().ok_or_else(|| invalid("no key"))?,
            None => return Err(invalid("missing key id")),
        };
        if header.alg != key.algorithm {
            return Err(invalid("algorithm not allowed for this key"));
        }
        let mut validation = Validation::new(key.algorithm);
        validation.algorithms = vec![key.algorithm];
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway_seconds;
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => invalid("expired"),
                ErrorKind::ImmatureSignature => invalid("not valid yet"),
                ErrorKind::InvalidAudience => invalid("wrong audience"),
                ErrorKind::InvalidIssuer => invalid("wrong issuer"),
                ErrorKind::InvalidSignature => invalid("bad signature"),
                ErrorKind::InvalidAlgorithm => invalid("algorithm not allowed for this key"),
                _ => invalid("rejected"),
            }
        })?;
        let claims = data.claims;
        if claims.role == Role::Operator && !key.may_grant_operator {
            return Err(invalid("this key may not grant the operator role"));
        }
        if key.tenant.is_some_and(|tenant| claims.tid != Some(tenant)) {
            return Err(invalid("this key is limited to another tenant"));
        }
        Ok(claims)
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
            return Ok(Principal::operator("operator".to_owned()));
        }
    }
    let claims = ctx.jwt.verify(bearer)?;
    match (claims.role, claims.tid) {
        (Role::Operator, _) => Ok(Principal::operator(claims.sub)),
        (role, Some(tid)) => {
            let tenant = active_tenant(ctx, tid).await?;
            ensure_source_key_usable(ctx, &claims.sub, tid).await?;
            Ok(Principal::in_tenant(claims.sub, role, &tenant))
        }
        (_, None) => Err(AppError::Unauthenticated("invalid bearer token: no tenant".to_owned())),
    }
}

async fn authenticate_api_key(ctx: &AppContext, full_key: &str, rest: &str) -> AppResult<Principal> {
    let invalid = || AppError::Unauthenticated("invalid API key".to_owned());
    let (prefix, _) = rest.split_once('_').ok_or_else(invalid)?;
    let key = api_key::Entity::find().filter(api_key::Column::Prefix.eq(prefix)).one(&ctx.db).await?.ok_or_else(invalid)?;
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
        if let Err(e) = active.update(&ctx.db).await {
            tracing::warn!(api_key_id = %id, error = %e, "could not record API key use");
        }
    }
    let role = key.role;
    Ok(Principal::in_tenant(format!("apikey:{}", key.id), role, &tenant))
}

/// A token exchanged from an API key (subject `apikey:<id>`) lives no longer than the key: revoking the key ends it too.
async fn ensure_source_key_usable(ctx: &AppContext, subject: &str, tenant_id: Uuid) -> AppResult<()> {
    let Some(key_id) = subject.strip_prefix("apikey:") else { return Ok(()) };
    let revoked =
        || AppError::Unauthenticated("the API key this token was issued for was revoked or no longer exists".to_owned());
    let key_id = Uuid::parse_str(key_id).map_err(|_| revoked())?;
    let key = api_key::Entity::find_by_id(key_id)
        .filter(api_key::Column::TenantId.eq(tenant_id))
        .one(&ctx.db)
        .await?
        .ok_or_else(revoked)?;
    if key.revoked_at.is_some() {
        return Err(revoked());
    }
    Ok(())
}

async fn active_tenant(ctx: &AppContext, tenant_id: Uuid) -> AppResult<tenant::Model> {
    let tenant = tenant::Entity::find_by_id(tenant_id)
        .one(&ctx.db)
        .await?
        .ok_or_else(|| AppError::Unauthenticated("the credential's tenant no longer exists".to_owned()))?;
    match tenant.status {
        TenantStatus::Active => Ok(tenant),
        TenantStatus::Suspended => Err(AppError::TenantSuspended),
    }
}
