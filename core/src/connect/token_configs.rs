//! Token configurations: one OAuth2 app registration at a provider, with presets for Microsoft and Google.

use std::collections::BTreeMap;

use async_graphql::MaybeUndefined;
use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait,
};
use uuid::Uuid;

use crate::access::auth::TenantScope;
use crate::connect::presets;
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::model::{ExpiringQuery, OAuthFlow, Page, PageRequest, Provider, Role, SecretInput};
use crate::observe::audit;
use crate::secrets;
use crate::store::entities::{grant, token_config};
use crate::store::is_foreign_key_violation;
use crate::store::limit_of;
use crate::store::page_of;
use crate::validate;
use async_graphql::{InputObject, SimpleObject};
use chrono::{DateTime, NaiveDate};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

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
    /// Microsoft directory (tenant id, domain, `common` or `organizations`).
    pub directory_tenant_id: Option<String>,
    pub auth_url: Option<String>,
    pub token_url: String,
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
    /// Microsoft only, required there.
    pub directory_tenant_id: Option<String>,
    /// Derived for microsoft/google; required for generic user flow.
    pub auth_url: Option<String>,
    /// Derived for microsoft/google; required for generic.
    pub token_url: Option<String>,
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
    pub directory_tenant_id: Option<String>,
    /// Changing `auth_url` or `token_url` (directly, or through a Microsoft directory) while grants exist needs
    /// `client_secret` in the same request, and sends every grant of the configuration to `reauth_required`.
    pub auth_url: Option<String>,
    pub token_url: Option<String>,
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
    let allowed_mail_hosts = allowed_mail_hosts(&model)?;
    let problem = crate::observe::hints::for_token_config(&model, Utc::now().date_naive());
    let scopes: Vec<String> = serde_json::from_value(model.scopes)
        .map_err(|e| AppError::Internal(anyhow::anyhow!("token_configs.scopes is not a string list: {e}")))?;
    let extra_auth_params: BTreeMap<String, String> = serde_json::from_value(model.extra_auth_params)
        .map_err(|e| AppError::Internal(anyhow::anyhow!("token_configs.extra_auth_params is not a string map: {e}")))?;
    Ok(TokenConfig {
        id: model.id,
        tenant_id: model.tenant_id,
        name: model.name,
        provider: model.provider,
        flow: model.flow,
        client_id: model.client_id,
        client_secret_set: model.client_secret.is_some(),
        client_secret_expires_at: model.client_secret_expires_at,
        directory_tenant_id: model.directory_tenant_id,
        auth_url: model.auth_url,
        token_url: model.token_url,
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
pub async fn find(ctx: &AppContext, tenant_id: Uuid, id: Uuid) -> AppResult<token_config::Model> {
    find_in(&ctx.db, tenant_id, id).await
}

/// `find` on a given connection or transaction (so a caller holding a transaction needs no second connection).
pub async fn find_in<C: sea_orm::ConnectionTrait>(db: &C, tenant_id: Uuid, id: Uuid) -> AppResult<token_config::Model> {
    token_config::Entity::find_by_id(id)
        .filter(token_config::Column::TenantId.eq(tenant_id))
        .one(db)
        .await?
        .ok_or(AppError::not_found("token configuration"))
}

/// "Testing" consent screens (7-day refresh tokens) are a Google notion; elsewhere the flag would mislead.
fn check_testing_app(provider: Provider, testing_app: Option<bool>) -> AppResult<bool> {
    match testing_app {
        Some(true) if provider != Provider::Google => {
            Err(AppError::validation("testing_app", "not_applicable", "testing_app applies to Google configurations only"))
        }
        other => Ok(other.unwrap_or(false)),
    }
}

/// The effective settings of a configuration, checked as a whole (used by create and update).
struct Spec {
    name: String,
    provider: Provider,
    flow: OAuthFlow,
    client_id: String,
    has_secret: bool,
    directory_tenant_id: Option<String>,
    auth_url: Option<String>,
    token_url: Option<String>,
    issuer: Option<String>,
    scopes: Vec<String>,
    extra_auth_params: BTreeMap<String, String>,
    allowed_mail_hosts: Vec<String>,
}

/// At most this many entries in `allowed_mail_hosts`.
const MAX_ALLOWED_MAIL_HOSTS: usize = 50;

/// A generic configuration's allowed mail hosts: host names (or `*.domain`), lower-cased, without duplicates.
/// Microsoft and Google configurations take none: their providers' own hosts are the only ones allowed.
fn check_allowed_mail_hosts(provider: Provider, hosts: Vec<String>) -> AppResult<Vec<String>> {
    let field = "allowed_mail_hosts";
    if provider != Provider::Generic {
        if hosts.is_empty() {
            return Ok(Vec::new());
        }
        return Err(AppError::validation(
            field,
            "not_applicable",
            "Microsoft and Google configurations send tokens only to their providers' mail hosts; allowed_mail_hosts applies to generic configurations",
        ));
    }
    if hosts.len() > MAX_ALLOWED_MAIL_HOSTS {
        return Err(AppError::validation(field, "too_many", format!("{field} lists at most {MAX_ALLOWED_MAIL_HOSTS} hosts")));
    }
    let mut checked: Vec<String> = Vec::with_capacity(hosts.len());
    for host in hosts {
        let trimmed = host.trim();
        let (wildcard, name) = match trimmed.strip_prefix("*.") {
            Some(domain) => (true, domain),
            None => (false, trimmed),
        };
        let name = validate::hostname(field, name.trim_end_matches('.')).map_err(|_| {
            AppError::validation(field, "invalid_host", format!("{field}: each entry must be a host name or *.domain"))
        })?;
        if wildcard && !validate::is_domain(&name) {
            return Err(AppError::validation(
                field,
                "invalid_host",
                format!("{field}: a wildcard needs a domain, as in *.example.com"),
            ));
        }
        let entry = if wildcard { format!("*.{name}") } else { name };
        if !checked.contains(&entry) {
            checked.push(entry);
        }
    }
    Ok(checked)
}

/// The mail hosts the configuration's tokens may be sent to.
pub fn allowed_mail_hosts(model: &token_config::Model) -> AppResult<Vec<String>> {
    match presets::provider_mail_hosts(model.provider) {
        Some(hosts) => Ok(hosts.iter().map(|h| (*h).to_owned()).collect()),
        None => serde_json::from_value(model.allowed_mail_hosts.clone())
            .map_err(|e| AppError::Internal(anyhow::anyhow!("token_configs.allowed_mail_hosts is not a string list: {e}"))),
    }
}

/// Refuses a mail host the configuration's tokens may not be sent to (422 naming `field`).
pub fn check_mail_host(model: &token_config::Model, host: &str, field: &str) -> AppResult<()> {
    let allowed = allowed_mail_hosts(model)?;
    if presets::host_on_list(&allowed, host) {
        return Ok(());
    }
    let fix = if allowed.is_empty() {
        "the token configuration allows no mail host yet: an admin must list it in the configuration's allowed_mail_hosts"
            .to_owned()
    } else {
        format!("the token configuration sends tokens only to {}", allowed.join(", "))
    };
    Err(AppError::validation(field, "mail_host_not_allowed", format!("{host} is not an allowed mail host: {fix}")))
}

fn check_directory(provider: Provider, flow: OAuthFlow, directory: Option<&str>) -> AppResult<Option<String>> {
    let field = "directory_tenant_id";
    match (provider, directory.map(str::trim)) {
        (Provider::Microsoft, None) | (Provider::Microsoft, Some("")) => Err(AppError::validation(
            field,
            "required",
            "directory_tenant_id is required for Microsoft: the Directory (tenant) ID from the app registration's overview",
        )),
        (Provider::Microsoft, Some(dir)) => {
            let is_word = presets::MICROSOFT_MULTI_TENANT_DIRECTORIES.contains(&dir);
            if !(is_word || Uuid::parse_str(dir).is_ok() || validate::is_domain(dir)) {
                return Err(AppError::validation(
                    field,
                    "invalid_directory",
                    "directory_tenant_id must be a tenant GUID, a verified domain, or common/organizations/consumers",
                ));
            }
            if is_word && flow == OAuthFlow::App {
                return Err(AppError::validation(
                    field,
                    "invalid_directory",
                    "the app flow needs the directory's own tenant id; common/organizations/consumers only work for user consent",
                ));
            }
            Ok(Some(dir.to_owned()))
        }
        (_, Some(dir)) if !dir.is_empty() => {
            Err(AppError::validation(field, "not_applicable", "directory_tenant_id applies to Microsoft configurations only"))
        }
        (_, _) => Ok(None),
    }
}

async fn check_spec(ctx: &AppContext, spec: &mut Spec) -> AppResult<()> {
    spec.name = validate::non_empty("name", &spec.name, 200)?;
    spec.client_id = validate::non_empty("client_id", &spec.client_id, 512)?;
    if spec.provider == Provider::Google && spec.flow == OAuthFlow::App {
        return Err(AppError::validation(
            "flow",
            "unsupported_flow",
            "Google offers no client-credentials access to Gmail; use the user flow",
        ));
    }
    let needs_secret = spec.flow == OAuthFlow::App || spec.provider != Provider::Generic;
    if needs_secret && !spec.has_secret {
        return Err(AppError::validation("client_secret", "required", "client_secret is required for this provider and flow"));
    }
    spec.directory_tenant_id = check_directory(spec.provider, spec.flow, spec.directory_tenant_id.as_deref())?;
    let preset = presets::endpoints(spec.provider, spec.flow, spec.directory_tenant_id.as_deref());
    if spec.flow == OAuthFlow::User {
        let auth_url = spec.auth_url.clone().or(preset.auth_url).ok_or_else(|| {
            AppError::validation("auth_url", "required", "auth_url is required for a generic user-flow configuration")
        })?;
        spec.auth_url = Some(ctx.guard.check_url_for_storage(&auth_url, "auth_url").await?.to_string());
    } else {
        spec.auth_url = None;
    }
    let token_url = spec
        .token_url
        .clone()
        .or(preset.token_url)
        .ok_or_else(|| AppError::validation("token_url", "required", "token_url is required for a generic configuration"))?;
    spec.token_url = Some(ctx.guard.check_url_for_storage(&token_url, "token_url").await?.to_string());
    spec.issuer = check_issuer(ctx, spec.provider, spec.issuer.as_deref())?;
    if spec.scopes.is_empty() {
        spec.scopes = preset.scopes;
    }
    if spec.scopes.is_empty() {
        return Err(AppError::validation("scopes", "required", "scopes must list at least one scope"));
    }
    for scope in &spec.scopes {
        if scope.is_empty() || scope.len() > 512 || scope.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(AppError::validation("scopes", "invalid_scope", "each scope must be a non-empty string without spaces"));
        }
    }
    for (key, value) in &spec.extra_auth_params {
        if key.is_empty() || key.len() > 100 || value.len() > 2000 {
            return Err(AppError::validation(
                "extra_auth_params",
                "invalid_param",
                "extra_auth_params keys and values are too long or empty",
            ));
        }
        // Postgres cannot store NUL in jsonb; control characters make no parameter name.
        if key.chars().any(char::is_control) || value.contains('\0') {
            return Err(AppError::validation(
                "extra_auth_params",
                "invalid_param",
                "extra_auth_params keys must not contain control characters, nor values NUL characters",
            ));
        }
        // Parameter names differing only in case reach case-insensitive servers as the same parameter.
        if RESERVED_AUTH_PARAMS.iter().any(|reserved| reserved.eq_ignore_ascii_case(key)) {
            return Err(AppError::validation(
                "extra_auth_params",
                "reserved_param",
                format!("extra_auth_params may not set {key}: Postbridge sets it"),
            ));
        }
    }
    for (key, value) in preset.extra_auth_params {
        spec.extra_auth_params.entry(key).or_insert(value);
    }
    spec.allowed_mail_hosts = check_allowed_mail_hosts(spec.provider, std::mem::take(&mut spec.allowed_mail_hosts))?;
    Ok(())
}

/// A generic configuration's issuer identifier (RFC 8414): an https URL without query or fragment, compared as a
/// string with the `iss` of authorization responses. Presets know their issuer.
fn check_issuer(ctx: &AppContext, provider: Provider, issuer: Option<&str>) -> AppResult<Option<String>> {
    let field = "issuer";
    let Some(issuer) = issuer.map(str::trim).filter(|i| !i.is_empty()) else { return Ok(None) };
    if provider != Provider::Generic {
        return Err(AppError::validation(field, "not_applicable", "Microsoft and Google configurations know their issuer"));
    }
    if issuer.len() > 2000 {
        return Err(AppError::validation(field, "too_long", "issuer is longer than 2000 characters"));
    }
    let parsed = url::Url::parse(issuer).map_err(|_| AppError::validation(field, "invalid_url", "issuer is not a valid URL"))?;
    let scheme_ok = parsed.scheme() == "https" || (parsed.scheme() == "http" && ctx.settings.allow_private_hosts);
    if !scheme_ok || parsed.query().is_some() || parsed.fragment().is_some() || !parsed.username().is_empty() {
        return Err(AppError::validation(
            field,
            "invalid_url",
            "issuer must be an https URL without credentials, query or fragment (the provider's issuer identifier)",
        ));
    }
    Ok(Some(issuer.to_owned()))
}

fn encrypt_secret(ctx: &AppContext, tenant_id: Uuid, id: Uuid, secret: &str) -> AppResult<String> {
    let secret = secret.trim();
    if secret.is_empty() {
        return Err(AppError::validation("client_secret", "required", "client_secret must not be empty"));
    }
    if secret.len() > 4096 {
        return Err(AppError::validation("client_secret", "too_long", "client_secret is too long"));
    }
    Ok(secrets::TOKEN_CONFIG_CLIENT_SECRET.seal(&ctx.cipher, tenant_id, id, secret)?)
}

fn json_of<T: serde::Serialize>(value: &T) -> AppResult<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| AppError::Internal(e.into()))
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
        issuer: input.issuer,
        scopes: input.scopes.unwrap_or_default(),
        extra_auth_params: input.extra_auth_params.unwrap_or_default(),
        allowed_mail_hosts: input.allowed_mail_hosts.unwrap_or_default(),
    };
    check_spec(ctx, &mut spec).await?;
    let testing_app = check_testing_app(spec.provider, input.testing_app)?;
    let id = Uuid::now_v7();
    let client_secret = match &input.client_secret {
        Some(secret) if !secret.expose().trim().is_empty() => Some(encrypt_secret(ctx, scope.tenant_id, id, secret.expose())?),
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
        directory_tenant_id: Set(spec.directory_tenant_id),
        auth_url: Set(spec.auth_url),
        token_url: Set(spec.token_url.unwrap_or_default()),
        issuer: Set(spec.issuer),
        scopes: Set(json_of(&spec.scopes)?),
        extra_auth_params: Set(json_of(&spec.extra_auth_params)?),
        allowed_mail_hosts: Set(json_of(&spec.allowed_mail_hosts)?),
        needs_admin: Set(false),
        testing_app: Set(testing_app),
        last_error: Set(None),
        secret_expiry_notified_days: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    };
    let txn = ctx.db.begin().await?;
    let saved = row.insert(&txn).await?;
    audit::record_in_tenant(&txn, scope, "token_config.created", id, changes).await?;
    txn.commit().await?;
    view(ctx, saved)
}

pub async fn list(ctx: &AppContext, scope: &TenantScope, page: PageRequest) -> AppResult<Page<TokenConfig>> {
    scope.require(Role::Viewer)?;
    let limit = limit_of(&page)?;
    let mut query = token_config::Entity::find()
        .filter(token_config::Column::TenantId.eq(scope.tenant_id))
        .order_by_asc(token_config::Column::Id)
        .limit(limit + 1);
    if let Some(cursor) = page.cursor {
        query = query.filter(token_config::Column::Id.gt(cursor));
    }
    page_of(query.all(&ctx.db).await?, limit, |m| m.id, |m| view(ctx, m))
}

pub async fn get(ctx: &AppContext, scope: &TenantScope, id: Uuid) -> AppResult<TokenConfig> {
    scope.require(Role::Viewer)?;
    view(ctx, find(ctx, scope.tenant_id, id).await?)
}

pub async fn update(ctx: &AppContext, scope: &TenantScope, id: Uuid, input: UpdateTokenConfig) -> AppResult<TokenConfig> {
    // Look up first: another tenant's id answers 404 whatever the caller's role.
    let model = find(ctx, scope.tenant_id, id).await?;
    scope.require(Role::Admin)?;
    let changes = audit::Changes::of(&input)
        .cleared("client_secret_expires_at", &input.client_secret_expires_at)
        .cleared("issuer", &input.issuer);
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
        client_id: input.client_id.unwrap_or(current.client_id),
        has_secret: current.client_secret_set || new_secret.is_some(),
        directory_tenant_id: input.directory_tenant_id.or(current.directory_tenant_id),
        auth_url: input.auth_url.or(if keep_urls { current.auth_url.clone() } else { None }),
        token_url: input.token_url.or(if keep_urls { Some(current.token_url.clone()) } else { None }),
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
    let urls_changed = spec.auth_url != current.auth_url || spec.token_url.as_deref() != Some(current.token_url.as_str());
    let has_grants = urls_changed
        && grant::Entity::find()
            .filter(grant::Column::TenantId.eq(scope.tenant_id))
            .filter(grant::Column::TokenConfigId.eq(id))
            .one(&ctx.db)
            .await?
            .is_some();
    if has_grants && new_secret.is_none() {
        return Err(AppError::validation(
            "client_secret",
            "required",
            "changing auth_url or token_url while grants exist needs the client secret again in the same request; \
             every grant of the configuration then needs consent again",
        ));
    }
    let mut active = model.into_active_model();
    active.testing_app = Set(testing_app);
    if let Some(secret) = new_secret {
        active.client_secret = Set(Some(encrypt_secret(ctx, scope.tenant_id, id, secret.expose())?));
    }
    // New credentials are the fix for refused ones; let the next token request tell.
    let credentials_changed = new_secret.is_some() || client_id_changed;
    if credentials_changed {
        active.needs_admin = Set(false);
        active.last_error = Set(None);
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
    active.issuer = Set(spec.issuer);
    active.scopes = Set(json_of(&spec.scopes)?);
    active.extra_auth_params = Set(json_of(&spec.extra_auth_params)?);
    active.allowed_mail_hosts = Set(json_of(&spec.allowed_mail_hosts)?);
    active.updated_at = Set(Utc::now());
    let txn = ctx.db.begin().await?;
    let saved = active.update(&txn).await?;
    if credentials_changed {
        // Grants waiting out a backoff caused by the old credentials may try again at once.
        grant::Entity::update_many()
            .col_expr(grant::Column::NextRefreshAt, sea_orm::sea_query::Expr::value(Option::<chrono::DateTime<Utc>>::None))
            .filter(grant::Column::TenantId.eq(scope.tenant_id))
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
    audit::record_in_tenant(&txn, scope, "token_config.updated", id, changes).await?;
    txn.commit().await?;
    view(ctx, saved)
}

/// Deletes a configuration no account uses; one still in use answers 409.
pub async fn delete(ctx: &AppContext, scope: &TenantScope, id: Uuid) -> AppResult<()> {
    find(ctx, scope.tenant_id, id).await?;
    scope.require(Role::Admin)?;
    let txn = ctx.db.begin().await?;
    let result = token_config::Entity::delete_many()
        .filter(token_config::Column::Id.eq(id))
        .filter(token_config::Column::TenantId.eq(scope.tenant_id))
        .exec(&txn)
        .await;
    match result {
        Ok(_) => {
            audit::record_in_tenant(&txn, scope, "token_config.deleted", id, audit::Changes::new()).await?;
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

/// Configurations whose client secret expires within `within_days` (default 30), soonest first: an
/// expired secret stops every grant of that app at once.
pub async fn expiring(ctx: &AppContext, scope: &TenantScope, query: ExpiringQuery) -> AppResult<Vec<TokenConfig>> {
    scope.require(Role::Viewer)?;
    let days = query.within_days.unwrap_or(30);
    if !(0..=365).contains(&days) {
        return Err(AppError::validation("within_days", "invalid_window", "within_days must be between 0 and 365"));
    }
    let horizon = Utc::now().date_naive() + chrono::Duration::days(days);
    let rows = token_config::Entity::find()
        .filter(token_config::Column::TenantId.eq(scope.tenant_id))
        .filter(token_config::Column::ClientSecretExpiresAt.lte(horizon))
        .order_by_asc(token_config::Column::ClientSecretExpiresAt)
        .order_by_asc(token_config::Column::Id)
        .all(&ctx.db)
        .await?;
    rows.into_iter().map(|m| view(ctx, m)).collect()
}

/// Warning windows for an expiring client secret, in days.
pub const SECRET_EXPIRY_WINDOWS: [i32; 3] = [30, 14, 1];

/// The smallest warning window that `days_left` falls in, if any.
pub fn expiry_window(days_left: i64) -> Option<i32> {
    SECRET_EXPIRY_WINDOWS.iter().rev().copied().find(|w| days_left <= i64::from(*w))
}

/// Records `token_config.secret_expiring` once per window (30, 14, 1 days) for every tenant; run periodically.
pub async fn scan_secret_expiry(ctx: &AppContext) -> AppResult<u64> {
    let today = Utc::now().date_naive();
    let horizon = today + chrono::Duration::days(i64::from(SECRET_EXPIRY_WINDOWS[0]));
    let candidates =
        token_config::Entity::find().filter(token_config::Column::ClientSecretExpiresAt.lte(horizon)).all(&ctx.db).await?;
    let mut recorded = 0;
    for config in candidates {
        let Some(expires) = config.client_secret_expires_at else { continue };
        let days_left = (expires - today).num_days();
        let Some(window) = expiry_window(days_left) else { continue };
        if config.secret_expiry_notified_days.is_some_and(|done| done <= window) {
            continue;
        }
        let txn = ctx.db.begin().await?;
        // Compare-and-set, so two workers scanning at once announce a window only once.
        let claimed = token_config::Entity::update_many()
            .col_expr(token_config::Column::SecretExpiryNotifiedDays, sea_orm::sea_query::Expr::value(window))
            .filter(token_config::Column::Id.eq(config.id))
            .filter(
                sea_orm::Condition::any()
                    .add(token_config::Column::SecretExpiryNotifiedDays.is_null())
                    .add(token_config::Column::SecretExpiryNotifiedDays.gt(window)),
            )
            .exec(&txn)
            .await?;
        if claimed.rows_affected == 1 {
            crate::observe::events::record(
                &txn,
                config.tenant_id,
                crate::observe::events::TOKEN_CONFIG_SECRET_EXPIRING,
                "token_config",
                Some(config.id),
                serde_json::json!({"name": config.name, "expires_on": expires, "days_left": days_left, "window_days": window}),
            )
            .await?;
            recorded += 1;
        }
        txn.commit().await?;
    }
    Ok(recorded)
}
