//! A configuration's settings checked (provider rules, directory, issuer, the mail hosts its credentials may reach)
//! and its client secret sealed.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::RESERVED_AUTH_PARAMS;
use crate::connect::presets;
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::model::{OAuthFlow, Provider};
use crate::secrets;
use crate::store::entities::token_config;
use crate::store::ids::{TenantId, TokenConfigId};
use crate::validate;

/// "Testing" consent screens (7-day refresh tokens) are a Google notion; elsewhere the flag would mislead.
pub(super) fn check_testing_app(provider: Provider, testing_app: Option<bool>) -> AppResult<bool> {
    match testing_app {
        Some(true) if provider != Provider::Google => {
            Err(AppError::validation("testing_app", "not_applicable", "testing_app applies to Google configurations only"))
        }
        other => Ok(other.unwrap_or(false)),
    }
}

/// The effective settings of a configuration, checked as a whole (used by create and update).
pub(super) struct Spec {
    pub(super) name: String,
    pub(super) provider: Provider,
    pub(super) flow: OAuthFlow,
    pub(super) client_id: String,
    pub(super) has_secret: bool,
    pub(super) directory_tenant_id: Option<String>,
    pub(super) auth_url: Option<String>,
    pub(super) token_url: Option<String>,
    pub(super) revocation_url: Option<String>,
    pub(super) issuer: Option<String>,
    pub(super) scopes: Vec<String>,
    pub(super) extra_auth_params: BTreeMap<String, String>,
    pub(super) allowed_mail_hosts: Vec<String>,
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
pub fn allowed_mail_hosts(model: &token_config::Model) -> Vec<String> {
    match presets::provider_mail_hosts(model.provider) {
        Some(hosts) => hosts.iter().map(|h| (*h).to_owned()).collect(),
        None => model.allowed_mail_hosts.0.clone(),
    }
}

/// Refuses a mail host the configuration's tokens may not be sent to (422 naming `field`).
pub fn check_mail_host(model: &token_config::Model, host: &str, field: &str) -> AppResult<()> {
    let allowed = allowed_mail_hosts(model);
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

pub(super) async fn check_spec(ctx: &AppContext, spec: &mut Spec) -> AppResult<()> {
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
    spec.revocation_url = match spec.revocation_url.clone().or(preset.revocation_url) {
        Some(url) => Some(ctx.guard.check_url_for_storage(&url, "revocation_url").await?.to_string()),
        None => None,
    };
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

pub(super) fn encrypt_secret(ctx: &AppContext, tenant_id: TenantId, id: TokenConfigId, secret: &str) -> AppResult<String> {
    let secret = secret.trim();
    if secret.is_empty() {
        return Err(AppError::validation("client_secret", "required", "client_secret must not be empty"));
    }
    if secret.len() > 4096 {
        return Err(AppError::validation("client_secret", "too_long", "client_secret is too long"));
    }
    Ok(secrets::TOKEN_CONFIG_CLIENT_SECRET.seal(&ctx.cipher, tenant_id, id, secret)?)
}

/// Trimmed like the current secret, so a promoted one is sent as the current one would be.
pub(super) fn encrypt_next_secret(ctx: &AppContext, tenant_id: TenantId, id: TokenConfigId, secret: &str) -> AppResult<String> {
    let secret = secret.trim();
    if secret.len() > 4096 {
        return Err(AppError::validation("client_secret_next", "too_long", "client_secret_next is too long"));
    }
    Ok(secrets::TOKEN_CONFIG_CLIENT_SECRET_NEXT.seal(&ctx.cipher, tenant_id, id, secret)?)
}

/// Whether `new` names a host (scheme, host and port) none of the `known` URLs name: one the client secret would
/// reach for the first time. No URL reaches nothing.
pub(super) fn reaches_new_host(known: &[Option<&str>], new: Option<&str>) -> bool {
    let origin = |url: &str| url::Url::parse(url).ok().map(|url| url.origin()).filter(|origin| origin.is_tuple());
    let Some(new) = new else { return false };
    let Some(new) = origin(new) else { return true };
    !known.iter().flatten().any(|known| origin(known).as_ref() == Some(&new))
}
