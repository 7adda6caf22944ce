//! Token configurations: one OAuth2 app registration at a provider, with presets for Microsoft and Google.

use std::collections::BTreeMap;

use async_graphql::MaybeUndefined;
use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, IntoActiveModel, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait,
};
use uuid::Uuid;

use crate::access::auth::TenantScope;
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::model::{OAuthFlow, Page, PageRequest, Provider, Role, SecretInput};
use crate::observe::audit;
use crate::store::entities::{grant, token_config};
use crate::store::ids::{TenantId, TokenConfigId};
use crate::store::is_foreign_key_violation;
use crate::store::json::{StringList, StringMap};
use crate::store::limit_of;
use crate::store::page_of;
use crate::store::tenant_owned::{find_in_tenant, TenantOwned};
use async_graphql::{InputObject, SimpleObject};
use chrono::{DateTime, NaiveDate};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

mod settings;

pub use expiry::{expiring, expiry_window, scan_secret_expiry, SECRET_EXPIRY_WINDOWS};
pub use settings::{allowed_mail_hosts, check_mail_host};
mod expiry;
use settings::check_spec;
use settings::check_testing_app;
use settings::reaches_new_host;
use settings::Spec;
use settings::{encrypt_next_secret, encrypt_secret};

#[derive(Clone, Debug, Serialize, Deserialize, SimpleObject, ToSchema)]
pub struct TokenConfig {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub provider: Provider,
    pub flow: OAuthFlow,
    pub client_id: String,
    /// Whether a client secret is stored (the secret itself is write-only).
    pub client_secret_set: bool,
    pub client_secret_expires_at: Option<NaiveDate>,
    /// Whether a next client secret is stored: tried when the provider refuses the current one, and promoted to
    /// `client_secret` on its first success (`token_config.secret_promoted`).
    pub client_secret_next_set: bool,
    pub client_secret_next_expires_at: Option<NaiveDate>,
    /// Microsoft directory (tenant id, domain, `common` or `organizations`).
    pub directory_tenant_id: Option<String>,
    pub auth_url: Option<String>,
    pub token_url: String,
    /// RFC 7009 endpoint where a deleted grant's token is revoked (Google's preset; none for Microsoft).
    pub revocation_url: Option<String>,
    /// Generic configurations: the authorization server's issuer identifier; an authorization response carrying
    /// another `iss` (RFC 9207) is refused. Microsoft and Google configurations know their issuer (null here).
    pub issuer: Option<String>,
    pub scopes: Vec<String>,
    pub extra_auth_params: BTreeMap<String, String>,
    /// The only mail hosts this configuration's tokens are sent to: the provider's own for Microsoft and Google,
    /// the admin's list for generic configurations (`*.example.com` matches subdomains).
    pub allowed_mail_hosts: Vec<String>,
    /// Paste this at the provider as the app's redirect URI.
    pub redirect_uri: String,
    /// The provider refused the client id or secret: create a new secret at the provider and paste it here.
    pub needs_admin: bool,
    pub last_error: Option<String>,
    /// Google only: the app's OAuth consent screen is in "Testing", so Google expires its refresh tokens 7 days after
    /// consent (credential health warns before). Always false for other providers.
    pub testing_app: bool,
    /// Set while the provider refuses the client credentials or the secret is past its expiry date: why, and the fix.
    pub problem: Option<crate::observe::hints::Problem>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, Deserialize, InputObject, ToSchema)]
pub struct CreateTokenConfig {
    pub name: String,
    pub provider: Provider,
    /// Default `user`.
    pub flow: Option<OAuthFlow>,
    pub client_id: String,
    /// Required for the app flow and for Microsoft/Google; write-only.
    #[schema(value_type = Option<String>, format = Password)]
    pub client_secret: Option<SecretInput>,
    pub client_secret_expires_at: Option<NaiveDate>,
    /// A second secret for a rotation without outage: tried when the provider refuses `client_secret`, promoted on
    /// its first success. Write-only.
    #[schema(value_type = Option<String>, format = Password)]
    pub client_secret_next: Option<SecretInput>,
    pub client_secret_next_expires_at: Option<NaiveDate>,
    /// Microsoft only, required there.
    pub directory_tenant_id: Option<String>,
    /// Derived for microsoft/google; required for generic user flow.
    pub auth_url: Option<String>,
    /// Derived for microsoft/google; required for generic.
    pub token_url: Option<String>,
    /// Optional RFC 7009 revocation endpoint: a deleted grant's refresh token is revoked there. Derived for Google.
    pub revocation_url: Option<String>,
    /// Generic only, optional: the issuer identifier the provider returns as `iss` (RFC 9207), e.g.
    /// `https://id.example.com`; an authorization response naming another issuer is refused.
    pub issuer: Option<String>,
    /// Derived from provider and flow when omitted.
    pub scopes: Option<Vec<String>>,
    pub extra_auth_params: Option<BTreeMap<String, String>>,
    /// Generic only, and needed before an oauth2 account can use the configuration: the mail hosts its tokens may be
    /// sent to (host names, or `*.example.com` for subdomains; at most 50).
    pub allowed_mail_hosts: Option<Vec<String>>,
    /// Google only: the app's consent screen is in "Testing" (refresh tokens expire after 7 days). Default false.
    pub testing_app: Option<bool>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, InputObject, ToSchema)]
pub struct UpdateTokenConfig {
    pub name: Option<String>,
    pub client_id: Option<String>,
    #[schema(value_type = Option<String>, format = Password)]
    pub client_secret: Option<SecretInput>,
    /// `null` clears the date.
    #[serde(default)]
    #[schema(value_type = Option<NaiveDate>)]
    pub client_secret_expires_at: MaybeUndefined<NaiveDate>,
    /// Stores the next secret (write-only; `null` removes it): paste the new secret here before the current one
    /// expires, and Postbridge switches to it as soon as the provider refuses the old one.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Password)]
    pub client_secret_next: MaybeUndefined<SecretInput>,
    /// `null` clears the date.
    #[serde(default)]
    #[schema(value_type = Option<NaiveDate>)]
    pub client_secret_next_expires_at: MaybeUndefined<NaiveDate>,
    pub directory_tenant_id: Option<String>,
    /// Changing `auth_url` or `token_url` (directly, or through a Microsoft directory) while grants exist needs
    /// `client_secret` in the same request, and sends every grant of the configuration to `reauth_required`.
    pub auth_url: Option<String>,
    pub token_url: Option<String>,
    /// `null` clears it (Google falls back to its preset). Changing it while grants exist needs `client_secret`
    /// in the same request: the endpoint receives refresh tokens and the client's credentials.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub revocation_url: MaybeUndefined<String>,
    /// Generic only; `null` clears it.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub issuer: MaybeUndefined<String>,
    pub scopes: Option<Vec<String>>,
    pub extra_auth_params: Option<BTreeMap<String, String>>,
    /// Generic only: replaces the list of mail hosts the configuration's tokens may be sent to. Accounts on a host
    /// no longer listed stop receiving tokens.
    pub allowed_mail_hosts: Option<Vec<String>>,
    /// Google only: the app's consent screen is in "Testing" (refresh tokens expire after 7 days).
    pub testing_app: Option<bool>,
}

/// Parameters Postbridge sets itself; a tenant may not override them through extra parameters.
const RESERVED_AUTH_PARAMS: &[&str] =
    &["client_id", "redirect_uri", "response_type", "scope", "state", "code_challenge", "code_challenge_method"];

pub(crate) fn view(ctx: &AppContext, model: token_config::Model) -> AppResult<TokenConfig> {
    let allowed_mail_hosts = allowed_mail_hosts(&model);
    let problem = crate::observe::hints::for_token_config(&model, Utc::now().date_naive());
    let scopes = model.scopes.0;
    let extra_auth_params = model.extra_auth_params.0;
    Ok(TokenConfig {
        id: model.id.into(),
        tenant_id: model.tenant_id.into(),
        name: model.name,
        provider: model.provider,
        flow: model.flow,
        client_id: model.client_id,
        client_secret_set: model.client_secret.is_some(),
        client_secret_expires_at: model.client_secret_expires_at,
        client_secret_next_set: model.client_secret_next.is_some(),
        client_secret_next_expires_at: model.client_secret_next_expires_at,
        directory_tenant_id: model.directory_tenant_id,
        auth_url: model.auth_url,
        token_url: model.token_url,
        revocation_url: model.revocation_url,
        issuer: model.issuer,
        scopes,
        extra_auth_params,
        allowed_mail_hosts,
        redirect_uri: ctx.settings.oauth_redirect_uri(),
        needs_admin: model.needs_admin,
        last_error: model.last_error,
        testing_app: model.testing_app,
        problem,
        created_at: model.created_at,
        updated_at: model.updated_at,
    })
}

/// Loads a token configuration of the caller's tenant; any other id answers not found.
pub async fn find(ctx: &AppContext, tenant_id: TenantId, id: TokenConfigId) -> AppResult<token_config::Model> {
    find_in(&ctx.db, tenant_id, id).await
}

/// `find` on a given connection or transaction (so a caller holding a transaction needs no second connection).
pub async fn find_in<C: sea_orm::ConnectionTrait>(
    db: &C,
    tenant_id: TenantId,
    id: TokenConfigId,
) -> AppResult<token_config::Model> {
    find_in_tenant::<token_config::Entity, _>(db, tenant_id, id).await
}

pub async fn create(ctx: &AppContext, scope: &TenantScope, input: CreateTokenConfig) -> AppResult<TokenConfig> {
    scope.require(Role::Admin)?;
    let changes = audit::Changes::of(&input);
    let mut spec = Spec {
        name: input.name,
        provider: input.provider,
        flow: input.flow.unwrap_or(OAuthFlow::User),
        client_id: input.client_id,
        has_secret: input.client_secret.as_ref().is_some_and(|s| !s.expose().trim().is_empty()),
        directory_tenant_id: input.directory_tenant_id,
        auth_url: input.auth_url,
        token_url: input.token_url,
        revocation_url: input.revocation_url,
        issuer: input.issuer,
        scopes: input.scopes.unwrap_or_default(),
        extra_auth_params: input.extra_auth_params.unwrap_or_default(),
        allowed_mail_hosts: input.allowed_mail_hosts.unwrap_or_default(),
    };
    check_spec(ctx, &mut spec).await?;
    let testing_app = check_testing_app(spec.provider, input.testing_app)?;
    let id = TokenConfigId::new();
    let client_secret = match &input.client_secret {
        Some(secret) if !secret.expose().trim().is_empty() => Some(encrypt_secret(ctx, scope.tenant_id, id, secret.expose())?),
        _ => None,
    };
    let client_secret_next = match &input.client_secret_next {
        Some(secret) if !secret.expose().trim().is_empty() => {
            Some(encrypt_next_secret(ctx, scope.tenant_id, id, secret.expose())?)
        }
        _ => None,
    };
    let now = Utc::now();
    let row = token_config::ActiveModel {
        id: Set(id),
        tenant_id: Set(scope.tenant_id),
        name: Set(spec.name),
        provider: Set(spec.provider),
        flow: Set(spec.flow),
        client_id: Set(spec.client_id),
        client_secret: Set(client_secret),
        client_secret_expires_at: Set(input.client_secret_expires_at),
        client_secret_next: Set(client_secret_next),
        client_secret_next_expires_at: Set(input.client_secret_next_expires_at),
        directory_tenant_id: Set(spec.directory_tenant_id),
        auth_url: Set(spec.auth_url),
        token_url: Set(spec.token_url.unwrap_or_default()),
        revocation_url: Set(spec.revocation_url),
        issuer: Set(spec.issuer),
        scopes: Set(StringList(spec.scopes.clone())),
        extra_auth_params: Set(StringMap(spec.extra_auth_params.clone())),
        allowed_mail_hosts: Set(StringList(spec.allowed_mail_hosts.clone())),
        needs_admin: Set(false),
        testing_app: Set(testing_app),
        last_error: Set(None),
        secret_expiry_notified_days: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    };
    let txn = ctx.db.begin().await?;
    let saved = row.insert(&txn).await?;
    audit::record_in_tenant(&txn, scope, "token_config.created", id.into(), changes).await?;
    txn.commit().await?;
    view(ctx, saved)
}

pub async fn list(ctx: &AppContext, scope: &TenantScope, page: PageRequest) -> AppResult<Page<TokenConfig>> {
    scope.require(Role::Viewer)?;
    let limit = limit_of(&page)?;
    let mut query = token_config::Entity::in_tenant(scope.tenant_id).order_by_asc(token_config::Column::Id).limit(limit + 1);
    if let Some(cursor) = page.cursor {
        query = query.filter(token_config::Column::Id.gt(cursor));
    }
    page_of(query.all(&ctx.db).await?, limit, |m| m.id.into(), |m| view(ctx, m))
}

pub async fn get(ctx: &AppContext, scope: &TenantScope, id: TokenConfigId) -> AppResult<TokenConfig> {
    scope.require(Role::Viewer)?;
    view(ctx, find(ctx, scope.tenant_id, id).await?)
}

pub async fn update(
    ctx: &AppContext,
    scope: &TenantScope,
    id: TokenConfigId,
    input: UpdateTokenConfig,
) -> AppResult<TokenConfig> {
    // Look up first: another tenant's id answers 404 whatever the caller's role.
    let model = find(ctx, scope.tenant_id, id).await?;
    scope.require(Role::Admin)?;
    let changes = audit::Changes::of(&input)
        .cleared("client_secret_expires_at", &input.client_secret_expires_at)
        .cleared("issuer", &input.issuer)
        .cleared("revocation_url", &input.revocation_url)
        .cleared("client_secret_next", &input.client_secret_next)
        .cleared("client_secret_next_expires_at", &input.client_secret_next_expires_at);
    let current = view(ctx, model.clone())?;
    let new_secret = input.client_secret.as_ref().filter(|s| !s.expose().trim().is_empty());
    let client_id_changed = input.client_id.is_some();
    let directory_changed = input.directory_tenant_id.is_some() && input.directory_tenant_id != current.directory_tenant_id;
    // Preset URLs follow a directory change unless the caller sets URLs explicitly.
    let keep_urls = current.provider == Provider::Generic || !directory_changed;
    let mut spec = Spec {
        name: input.name.unwrap_or(current.name),
        provider: current.provider,
        flow: current.flow,
        client_id: input.client_id.unwrap_or_else(|| current.client_id.clone()),
        has_secret: current.client_secret_set || new_secret.is_some(),
        directory_tenant_id: input.directory_tenant_id.or(current.directory_tenant_id),
        auth_url: input.auth_url.or(if keep_urls { current.auth_url.clone() } else { None }),
        token_url: input.token_url.or(if keep_urls { Some(current.token_url.clone()) } else { None }),
        revocation_url: match input.revocation_url {
            MaybeUndefined::Undefined => current.revocation_url.clone(),
            MaybeUndefined::Null => None,
            MaybeUndefined::Value(url) => Some(url),
        },
        issuer: match input.issuer {
            MaybeUndefined::Undefined => current.issuer.clone(),
            MaybeUndefined::Null => None,
            MaybeUndefined::Value(issuer) => Some(issuer),
        },
        scopes: input.scopes.unwrap_or(current.scopes),
        extra_auth_params: input.extra_auth_params.unwrap_or(current.extra_auth_params),
        allowed_mail_hosts: match input.allowed_mail_hosts {
            Some(hosts) => hosts,
            // The view shows a preset's hosts; only a generic configuration stores its own.
            None if current.provider == Provider::Generic => current.allowed_mail_hosts,
            None => Vec::new(),
        },
    };
    check_spec(ctx, &mut spec).await?;
    let testing_app = check_testing_app(spec.provider, input.testing_app.or(Some(current.testing_app)))?;
    // New endpoints would receive every stored refresh token and the client secret: whoever moves them must know
    // the secret, and the grants (issued by the old endpoints) need consent again.
    let token_url_moved = spec.token_url.as_deref() != Some(current.token_url.as_str());
    let urls_changed = spec.auth_url != current.auth_url || token_url_moved;
    // The revocation endpoint receives refresh tokens too, so moving it needs the secret, but no new consent.
    let revocation_moved = spec.revocation_url.is_some() && spec.revocation_url != current.revocation_url;
    let has_grants = (urls_changed || revocation_moved)
        && grant::Entity::in_tenant(scope.tenant_id).filter(grant::Column::TokenConfigId.eq(id)).one(&ctx.db).await?.is_some();
    if has_grants && new_secret.is_none() {
        return Err(AppError::validation(
            "client_secret",
            "required",
            "changing auth_url, token_url or revocation_url while grants exist needs the client secret again in the \
             same request; new auth_url or token_url also send every grant of the configuration to consent again",
        ));
    }
    // The stored secret is sent with every token request: it never goes to a host it was not given for.
    let known = [Some(current.token_url.as_str()), current.revocation_url.as_deref()];
    let secret_would_travel =
        reaches_new_host(&known, spec.token_url.as_deref()) || reaches_new_host(&known, spec.revocation_url.as_deref());
    if secret_would_travel && current.client_secret_set && new_secret.is_none() {
        return Err(AppError::validation(
            "client_secret",
            "required",
            "moving token_url or revocation_url to another host needs the client secret again in the same request: \
             the stored one is only ever sent where it was given for",
        ));
    }
    let mut active = model.into_active_model();
    active.testing_app = Set(testing_app);
    if let Some(secret) = new_secret {
        active.client_secret = Set(Some(encrypt_secret(ctx, scope.tenant_id, id, secret.expose())?));
    }
    // New credentials are the fix for refused ones; let the next token request tell.
    let next_secret_given =
        matches!(&input.client_secret_next, MaybeUndefined::Value(secret) if !secret.expose().trim().is_empty());
    let credentials_changed = new_secret.is_some() || client_id_changed || next_secret_given;
    if credentials_changed {
        active.needs_admin = Set(false);
        active.last_error = Set(None);
    }
    // A next secret belongs to the client and the endpoints it was stored for: a refused request at new endpoints
    // (or for a new client) must not carry it there, so it goes unless this request gives one.
    let next_secret_orphaned = current.client_secret_next_set
        && (token_url_moved || spec.client_id != current.client_id || spec.revocation_url != current.revocation_url);
    let changes = changes
        .set("client_secret_next_dropped", (next_secret_orphaned && input.client_secret_next.is_undefined()).then_some(true));
    match &input.client_secret_next {
        MaybeUndefined::Undefined if next_secret_orphaned => {
            active.client_secret_next = Set(None);
            active.client_secret_next_expires_at = Set(None);
        }
        MaybeUndefined::Undefined => {}
        MaybeUndefined::Null => active.client_secret_next = Set(None),
        MaybeUndefined::Value(secret) if secret.expose().trim().is_empty() => active.client_secret_next = Set(None),
        MaybeUndefined::Value(secret) => {
            active.client_secret_next = Set(Some(encrypt_next_secret(ctx, scope.tenant_id, id, secret.expose())?));
        }
    }
    match input.client_secret_next_expires_at {
        MaybeUndefined::Undefined => {}
        MaybeUndefined::Null => active.client_secret_next_expires_at = Set(None),
        MaybeUndefined::Value(date) => active.client_secret_next_expires_at = Set(Some(date)),
    }
    match input.client_secret_expires_at {
        MaybeUndefined::Undefined => {}
        MaybeUndefined::Null => {
            active.client_secret_expires_at = Set(None);
            active.secret_expiry_notified_days = Set(None);
        }
        MaybeUndefined::Value(date) => {
            active.client_secret_expires_at = Set(Some(date));
            active.secret_expiry_notified_days = Set(None);
        }
    }
    active.name = Set(spec.name);
    active.client_id = Set(spec.client_id);
    active.directory_tenant_id = Set(spec.directory_tenant_id);
    active.auth_url = Set(spec.auth_url);
    active.token_url = Set(spec.token_url.unwrap_or_default());
    active.revocation_url = Set(spec.revocation_url);
    active.issuer = Set(spec.issuer);
    active.scopes = Set(StringList(spec.scopes.clone()));
    active.extra_auth_params = Set(StringMap(spec.extra_auth_params.clone()));
    active.allowed_mail_hosts = Set(StringList(spec.allowed_mail_hosts.clone()));
    active.updated_at = Set(Utc::now());
    let txn = ctx.db.begin().await?;
    // Grants first, then the configuration: the order an on-demand refresh takes them in (its grant's row lock, then
    // a promoted secret), so the two wait for each other instead of deadlocking.
    if credentials_changed {
        // Grants waiting out a backoff caused by the old credentials may try again at once.
        grant::Entity::update_in_tenant(scope.tenant_id)
            .col_expr(grant::Column::NextRefreshAt, sea_orm::sea_query::Expr::value(Option::<chrono::DateTime<Utc>>::None))
            .filter(grant::Column::TokenConfigId.eq(id))
            .exec(&txn)
            .await?;
    }
    let changes = if urls_changed {
        let message = "the token configuration's auth_url or token_url changed; sign in again";
        let buried = super::grants::reauth::require_reauth_for_config(&txn, scope.tenant_id, id, message).await?;
        changes.set("grants_reauth_required", Some(buried))
    } else {
        changes
    };
    let saved = active.update(&txn).await?;
    audit::record_in_tenant(&txn, scope, "token_config.updated", id.into(), changes).await?;
    txn.commit().await?;
    view(ctx, saved)
}

/// Deletes a configuration no account uses and no grant holds; one still in use answers 409. Grants are not
/// deleted along with it: their refresh tokens would stay live at the provider, since only revoking a grant
/// (`DELETE /v1/grants/{id}`) revokes them there too.
pub async fn delete(ctx: &AppContext, scope: &TenantScope, id: TokenConfigId) -> AppResult<()> {
    find(ctx, scope.tenant_id, id).await?;
    scope.require(Role::Admin)?;
    let txn = ctx.db.begin().await?;
    // The row lock keeps a consent from adding a grant between the count and the deletion (its insert takes a key
    // share lock on this row).
    token_config::Entity::in_tenant(scope.tenant_id)
        .filter(token_config::Column::Id.eq(id))
        .lock_exclusive()
        .one(&txn)
        .await?
        .ok_or(AppError::not_found(token_config::Entity::RESOURCE))?;
    let grants = grant::Entity::in_tenant(scope.tenant_id).filter(grant::Column::TokenConfigId.eq(id)).count(&txn).await?;
    if grants > 0 {
        return Err(AppError::Conflict {
            code: "token_config_has_grants",
            message: format!(
                "this configuration still has {grants} grant{} holding tokens it issued; revoke them first \
                 (DELETE /v1/grants/{{id}}, which also revokes them at the provider)",
                if grants == 1 { "" } else { "s" }
            ),
        });
    }
    let result = token_config::Entity::delete_in_tenant(scope.tenant_id).filter(token_config::Column::Id.eq(id)).exec(&txn).await;
    match result {
        Ok(_) => {
            audit::record_in_tenant(&txn, scope, "token_config.deleted", id.into(), audit::Changes::new()).await?;
            txn.commit().await?;
            Ok(())
        }
        Err(e) if is_foreign_key_violation(&e) => Err(AppError::Conflict {
            code: "token_config_in_use",
            message: "email accounts still use this token configuration; delete or re-point them first".to_owned(),
        }),
        Err(e) => Err(e.into()),
    }
}
