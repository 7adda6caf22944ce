//! OAuth grants: "Authenticate account" (user flow with consent, or app flow), the callback, revocation,
//! and the one function that gives a caller a valid access token, refreshing at most once at a time.

use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::access::auth::TenantScope;
use crate::connect::account_lifecycle::{self, AccountEvent};
use crate::connect::accounts::Account;
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::model::{AuthorizeStatus, GrantStatus, Page, PageRequest, Role};
use crate::observe::audit;
use crate::observe::events;
use crate::protocols::oauth::{OAuthClient, ProviderConfig};
use crate::secrets;
use crate::store::entities::{email_account, grant, token_config};
use crate::store::ids::{GrantId, TenantId};
use crate::store::limit_of;
use crate::store::page_of;
use crate::store::positional;
use crate::store::tenant_owned::{find_in_tenant, TenantOwned};
use async_graphql::{InputObject, SimpleObject};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

mod authorize;
mod background;
mod callback;
mod client_secrets;
mod import;
mod lease;
mod link;
mod provider_revocation;
pub(crate) mod reauth;
mod tokens;

pub use authorize::authorize;
pub use background::{batches_of, refresh_due, refresh_grants, RefreshPass, INTERNAL_REFRESH_ERROR, REFRESH_BATCH};
pub use callback::{complete_callback, CallbackOutcome, CallbackParams};
pub use import::{import, ImportGrant};
pub use tokens::{access_token, expire_access_token, TokenAccessError};

/// Tokens one identity granted to one token configuration (the tokens themselves are never shown).
#[derive(Clone, Debug, Serialize, Deserialize, SimpleObject, ToSchema)]
pub struct Grant {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub token_config_id: Uuid,
    /// The mailbox login the grant serves, or `app` for the app flow.
    pub subject: String,
    /// Who consented, as the provider said.
    pub consented_by: Option<String>,
    pub status: GrantStatus,
    /// When the current access token expires.
    pub expires_at: Option<DateTime<Utc>>,
    pub scopes: Vec<String>,
    pub has_refresh_token: bool,
    pub last_error: Option<String>,
    /// Set while the grant needs re-consent or its last refresh failed: a stable reason and the next step.
    pub problem: Option<crate::observe::hints::Problem>,
    pub last_refreshed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Default, Deserialize, InputObject, ToSchema)]
pub struct AuthorizeAccount {
    /// Where the browser goes after consent (must be on one of the tenant's `allowed_return_origins`);
    /// `status`, `reason` and `account_id` are appended.
    pub return_url: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, SimpleObject, ToSchema)]
pub struct AuthorizeResult {
    pub status: AuthorizeStatus,
    /// The provider's consent page (user flow).
    pub authorization_url: Option<String>,
    /// The authorization must finish before this time.
    pub expires_at: Option<DateTime<Utc>>,
    pub account: Account,
}

/// An access token is refreshed when less than this, or a third of its lifetime, is left (whichever is less).
pub fn refresh_margin() -> chrono::Duration {
    chrono::Duration::minutes(5)
}

/// When a token that expires at `expires_at`, received at `now`, is due for refresh: with less than
/// min(5 minutes, a third of its lifetime) left. A 5-minute token is refreshed after 3m20s, not on every pass.
pub fn refresh_at_for(expires_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let expires_at = expires_at?;
    let lifetime = expires_at.signed_duration_since(now).max(chrono::Duration::zero());
    let margin = refresh_margin().min(lifetime / 3);
    Some(expires_at.checked_sub_signed(margin).unwrap_or(expires_at))
}

/// Whether the grant's access token is due for refresh at `now` (the one predicate; the SQL twins read
/// `refresh_at <= now()` too).
fn refresh_due_at(model: &grant::Model, now: DateTime<Utc>) -> bool {
    model.refresh_at.is_some_and(|at| at <= now)
}

/// Who the token response's id_token names, checked as OIDC Core 3.1.3.7 asks: issued to this client (`aud`) and,
/// where the configuration knows its issuer, by it (`iss`). No id_token names nobody; a mismatch is the reason.
fn consent_identity(
    config: &token_config::Model,
    id_token: Option<&str>,
) -> Result<crate::protocols::oauth::ConsentIdentity, String> {
    let Some(identity) = id_token.and_then(crate::protocols::oauth::id_token_identity) else { return Ok(Default::default()) };
    if !identity.audiences.contains(&config.client_id) {
        return Err(format!(
            "the id_token was issued to another client (aud {:?}), not {}",
            identity.audiences, config.client_id
        ));
    }
    let expected = crate::connect::presets::expected_issuer(
        config.provider,
        config.directory_tenant_id.as_deref(),
        config.issuer.as_deref(),
    );
    let issuer = identity.issuer.as_deref();
    let issuer_ok = match (config.provider, issuer) {
        // Google's id_tokens name it with or without the scheme.
        (crate::model::Provider::Google, Some(iss)) => iss == "https://accounts.google.com" || iss == "accounts.google.com",
        (_, Some(iss)) => expected.accepts(iss),
        (_, None) => expected == crate::connect::presets::ExpectedIssuer::Unknown,
    };
    if !issuer_ok {
        return Err(format!("the id_token was issued by {}, not by the configuration's issuer", issuer.unwrap_or("nobody")));
    }
    Ok(identity)
}

fn state_ttl() -> chrono::Duration {
    chrono::Duration::minutes(10)
}

/// Deletes sign-in states that expired over a day ago (a late callback still hears "expired" for a day): every
/// consent started writes one, and nothing else removes them. Returns how many went.
pub async fn purge_ended_states(ctx: &AppContext) -> AppResult<u64> {
    Ok(crate::store::delete_in_batches(&ctx.db, "oauth_states", "expires_at < now() - interval '1 day'", vec![]).await?)
}

fn view(model: grant::Model) -> AppResult<Grant> {
    let problem = crate::observe::hints::for_grant(&model);
    Ok(Grant {
        id: model.id.into(),
        tenant_id: model.tenant_id.into(),
        token_config_id: model.token_config_id.into(),
        scopes: model.scopes.0,
        subject: model.subject,
        consented_by: model.consented_by,
        status: model.status,
        expires_at: model.expires_at,
        has_refresh_token: model.refresh_token.is_some(),
        last_error: model.last_error,
        problem,
        last_refreshed_at: model.last_refreshed_at,
        created_at: model.created_at,
        updated_at: model.updated_at,
    })
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn hash_state(state: &str) -> String {
    Sha256::digest(state.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The provider side of a token configuration, with its client secret decrypted.
pub fn provider_config(ctx: &AppContext, config: &token_config::Model) -> AppResult<ProviderConfig> {
    let client_secret = config
        .client_secret
        .as_deref()
        .map(|stored| secrets::TOKEN_CONFIG_CLIENT_SECRET.open(&ctx.cipher, config.tenant_id, config.id, stored))
        .transpose()?;
    Ok(ProviderConfig {
        client_id: config.client_id.clone(),
        client_secret,
        auth_url: config.auth_url.clone(),
        token_url: config.token_url.clone(),
        scopes: config.scopes.0.clone(),
        redirect_uri: ctx.settings.oauth_redirect_uri(),
    })
}

/// The token configuration of an oauth2 account (authorize and import need both).
async fn oauth_config_of(
    ctx: &AppContext,
    scope: &TenantScope,
    account: &email_account::Model,
) -> AppResult<token_config::Model> {
    if account.auth_method != crate::model::AuthMethod::Oauth2 {
        return Err(AppError::validation("auth", "not_oauth2", "only an oauth2 account is connected through a provider"));
    }
    let config_id = account
        .token_config_id
        .ok_or_else(|| AppError::validation("token_config_id", "required", "the account has no token configuration"))?;
    crate::connect::token_configs::find(ctx, scope.tenant_id, config_id).await
}

fn oauth_client(ctx: &AppContext, config: &token_config::Model) -> AppResult<OAuthClient> {
    Ok(OAuthClient::new(ctx.http.clone(), &ctx.guard, provider_config(ctx, config)?))
}

// ---- read and revoke -------------------------------------------------------------------------

pub async fn list(ctx: &AppContext, scope: &TenantScope, page: PageRequest) -> AppResult<Page<Grant>> {
    scope.require(Role::Viewer)?;
    let limit = limit_of(&page)?;
    let mut query = grant::Entity::in_tenant(scope.tenant_id).order_by_asc(grant::Column::Id).limit(limit + 1);
    if let Some(cursor) = page.cursor {
        query = query.filter(grant::Column::Id.gt(cursor));
    }
    page_of(positional::all(query, &ctx.db).await?, limit, |m| m.id.into(), view)
}

async fn find(ctx: &AppContext, tenant_id: TenantId, id: GrantId) -> AppResult<grant::Model> {
    find_in_tenant::<grant::Entity, _>(&ctx.db, tenant_id, id).await
}

pub async fn get(ctx: &AppContext, scope: &TenantScope, id: GrantId) -> AppResult<Grant> {
    scope.require(Role::Viewer)?;
    view(find(ctx, scope.tenant_id, id).await?)
}

/// Deletes a grant; its accounts go back to draft until someone consents again.
pub async fn revoke(ctx: &AppContext, scope: &TenantScope, id: GrantId) -> AppResult<()> {
    scope.require(Role::Admin)?;
    let txn = ctx.db.begin().await?;
    email_account::Entity::update_in_tenant(scope.tenant_id)
        .col_expr(email_account::Column::State, Expr::cust(account_lifecycle::sql_after(AccountEvent::GrantRevoked)))
        .col_expr(email_account::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(email_account::Column::GrantId.eq(id))
        .exec(&txn)
        .await?;
    // The tokens revoked at the provider below are the ones deleted here: a refresh that rotated them a moment
    // earlier is in this row, not in one read before the deletion.
    let deleted =
        grant::Entity::delete_in_tenant(scope.tenant_id).filter(grant::Column::Id.eq(id)).exec_with_returning(&txn).await?;
    let model = deleted.into_iter().next().ok_or(AppError::not_found(grant::Entity::RESOURCE))?;
    // Read with the deletion: the configuration cannot go while its grant is there (see `token_configs::delete`).
    let config = crate::connect::token_configs::find_in(&txn, scope.tenant_id, model.token_config_id).await?;
    events::record(
        &txn,
        scope.tenant_id,
        events::GRANT_REVOKED,
        "grant",
        Some(id.into()),
        json!({"subject": model.subject, "by": scope.principal.subject}),
    )
    .await?;
    audit::record_in_tenant(&txn, scope, "grant.revoked", id.into(), audit::Changes::new().set("subject", Some(&model.subject)))
        .await?;
    txn.commit().await?;
    // Routing in this process sees the change at once; the others hear it announced.
    ctx.route_cache.changed();
    // Deleted here whatever the provider says; then revoked there where it can be (RFC 7009).
    if let Err(e) = provider_revocation::revoke_at_provider(ctx, &config, &model).await {
        tracing::warn!(grant_id = %id, error = %e, "could not record the provider's revocation of a deleted grant");
    }
    Ok(())
}
