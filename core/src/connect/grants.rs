//! OAuth grants: "Authenticate account" (user flow with consent, or app flow), the callback, revocation,
//! and the one function that gives a caller a valid access token, refreshing at most once at a time.

use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use rand::RngCore;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, IntoActiveModel, QueryFilter,
    QueryOrder, QuerySelect, Set, Statement, TransactionTrait,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::accounts;
use super::token_configs;
use crate::access::auth::TenantScope;
use crate::connect::account_lifecycle::{self, AccountEvent};
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::failure::FailureKind;
use crate::model::{
    AccountState, AuthMethod, AuthorizeAccount, AuthorizeResult, AuthorizeStatus, Grant, GrantStatus, OAuthFlow, Page,
    PageRequest, Provider, Role,
};
use crate::observe::audit;
use crate::observe::events;
use crate::protocols::oauth::{id_token_identity, OAuthClient, ProviderConfig, TokenError, TokenSet};
use crate::secrets;
use crate::store::entities::{email_account, grant, oauth_state, tenant, token_config};
use crate::store::is_unique_violation;
use crate::store::limit_of;
use crate::store::page_of;

/// The subject of a client-credentials grant: the app itself.
pub const APP_SUBJECT: &str = "app";

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

fn state_ttl() -> chrono::Duration {
    chrono::Duration::minutes(10)
}

fn scopes_of(model: &grant::Model) -> Vec<String> {
    serde_json::from_value(model.scopes.clone()).unwrap_or_default()
}

fn view(model: grant::Model) -> AppResult<Grant> {
    let problem = crate::observe::hints::for_grant(&model);
    Ok(Grant {
        id: model.id,
        tenant_id: model.tenant_id,
        token_config_id: model.token_config_id,
        scopes: scopes_of(&model),
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

fn internal(context: &str, err: impl std::fmt::Display) -> AppError {
    AppError::Internal(anyhow::anyhow!("{context}: {err}"))
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
        scopes: serde_json::from_value(config.scopes.clone()).map_err(|e| internal("token_configs.scopes", e))?,
        redirect_uri: ctx.settings.oauth_redirect_uri(),
    })
}

fn oauth_client(ctx: &AppContext, config: &token_config::Model) -> AppResult<OAuthClient> {
    Ok(OAuthClient::new(ctx.http.clone(), &ctx.guard, provider_config(ctx, config)?))
}

// ---- authorize -------------------------------------------------------------------------------

/// The return URL must be on one of the tenant's allowed origins (open redirects help phishing).
async fn check_return_url(ctx: &AppContext, tenant_id: Uuid, return_url: Option<&str>) -> AppResult<Option<String>> {
    let Some(raw) = return_url else { return Ok(None) };
    let field = "return_url";
    let url = url::Url::parse(raw).map_err(|_| AppError::validation(field, "invalid_url", "return_url is not a valid URL"))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(AppError::validation(field, "invalid_url", "return_url must be an http(s) URL"));
    }
    let origin = url.origin().ascii_serialization();
    let tenant = tenant::Entity::find_by_id(tenant_id).one(&ctx.db).await?.ok_or(AppError::not_found("tenant"))?;
    let allowed: Vec<String> = serde_json::from_value(tenant.allowed_return_origins).unwrap_or_default();
    if !allowed.iter().any(|o| o.trim_end_matches('/') == origin) {
        return Err(AppError::validation(
            field,
            "return_url_not_allowed",
            format!("return_url's origin {origin} is not among the tenant's allowed_return_origins"),
        ));
    }
    Ok(Some(url.to_string()))
}

/// Starts "Authenticate account": for the user flow, the provider URL to send the browser to;
/// for the app flow, a client-credentials request that authorizes the account at once.
pub async fn authorize(
    ctx: &AppContext,
    scope: &TenantScope,
    account_id: Uuid,
    input: AuthorizeAccount,
) -> AppResult<AuthorizeResult> {
    scope.require(Role::Member)?;
    let account = accounts::find_visible(ctx, scope, account_id).await?;
    if account.auth_method != AuthMethod::Oauth2 {
        return Err(AppError::validation("auth", "not_oauth2", "only oauth2 accounts are authorized through a provider"));
    }
    let config_id = account
        .token_config_id
        .ok_or_else(|| AppError::validation("token_config_id", "required", "the account has no token configuration"))?;
    let config = token_configs::find(ctx, scope.tenant_id, config_id).await?;
    let return_url = check_return_url(ctx, scope.tenant_id, input.return_url.as_deref()).await?;
    match config.flow {
        OAuthFlow::App if !accounts::may_approve_app_grants(scope) => Err(AppError::forbidden(
            "an app-flow configuration reaches every mailbox of the directory: only an admin may authorize an account with it",
        )),
        OAuthFlow::App => authorize_app(ctx, scope, &account, &config).await,
        OAuthFlow::User => start_user_flow(ctx, scope, &account, &config, return_url).await,
    }
}

async fn start_user_flow(
    ctx: &AppContext,
    scope: &TenantScope,
    account: &email_account::Model,
    config: &token_config::Model,
    return_url: Option<String>,
) -> AppResult<AuthorizeResult> {
    let client = oauth_client(ctx, config)?;
    let mut params: Vec<(String, String)> =
        serde_json::from_value::<std::collections::BTreeMap<String, String>>(config.extra_auth_params.clone())
            .map_err(|e| internal("token_configs.extra_auth_params", e))?
            .into_iter()
            .collect();
    let subject = account.login.to_lowercase();
    let existing = grant::Entity::find()
        .filter(grant::Column::TenantId.eq(scope.tenant_id))
        .filter(grant::Column::TokenConfigId.eq(config.id))
        .filter(grant::Column::Subject.eq(subject.clone()))
        .one(&ctx.db)
        .await?;
    let config_scopes: Vec<String> = serde_json::from_value(config.scopes.clone()).unwrap_or_default();
    // Without a live refresh token (none stored, or the stored one was refused), or with new scopes, only a
    // consent screen yields a refresh token (Google).
    let needs_consent = existing
        .as_ref()
        .is_none_or(|g| g.refresh_token.is_none() || g.status != GrantStatus::Valid || scopes_of(g) != config_scopes);
    if needs_consent && !params.iter().any(|(k, _)| k == "prompt") {
        params.push(("prompt".to_owned(), "consent".to_owned()));
    }
    if config.provider == Provider::Microsoft && !account.shared_mailbox && !params.iter().any(|(k, _)| k == "login_hint") {
        params.push(("login_hint".to_owned(), account.login.clone()));
    }
    let state = random_token();
    let request = client
        .authorization_request(&state, &params)
        .map_err(|e| AppError::validation("token_config_id", "token_config_unusable", e.to_string()))?;
    let id = Uuid::now_v7();
    let verifier = secrets::OAUTH_STATE_PKCE_VERIFIER.seal(&ctx.cipher, scope.tenant_id, id, &request.pkce_verifier)?;
    let now = Utc::now();
    let expires_at = now + state_ttl();
    oauth_state::ActiveModel {
        id: Set(id),
        state_hash: Set(hash_state(&state)),
        tenant_id: Set(scope.tenant_id),
        account_id: Set(account.id),
        token_config_id: Set(config.id),
        token_url: Set(config.token_url.clone()),
        pkce_verifier: Set(verifier),
        return_url: Set(return_url),
        created_by: Set(scope.principal.subject.clone()),
        expires_at: Set(expires_at),
        consumed_at: Set(None),
        created_at: Set(now),
    }
    .insert(&ctx.db)
    .await?;
    Ok(AuthorizeResult {
        status: AuthorizeStatus::Redirect,
        authorization_url: Some(request.url),
        expires_at: Some(expires_at),
        account: accounts::view(accounts::find_visible(ctx, scope, account.id).await?)?,
    })
}

/// Client credentials: a successful token request is the authorization.
async fn authorize_app(
    ctx: &AppContext,
    scope: &TenantScope,
    account: &email_account::Model,
    config: &token_config::Model,
) -> AppResult<AuthorizeResult> {
    let tokens = oauth_client(ctx, config)?.client_credentials().await.map_err(|e| provider_error_to_app(&e))?;
    let txn = ctx.db.begin().await?;
    // Authorizing is the admin's approval of this account; other accounts of the configuration are linked only
    // if an admin created or authorized them too.
    email_account::Entity::update_many()
        .col_expr(email_account::Column::AppGrantApproved, Expr::value(true))
        .filter(email_account::Column::Id.eq(account.id))
        .filter(email_account::Column::TenantId.eq(scope.tenant_id))
        .exec(&txn)
        .await?;
    let connection = Connection { subject: APP_SUBJECT, consented_by: None, connected_by: &scope.principal.subject };
    let grant_id = store_grant(ctx, &txn, scope.tenant_id, config.id, connection, &tokens).await?;
    link_accounts(&txn, scope.tenant_id, config.id, LinkTo::ApprovedAccounts, grant_id).await?;
    events::record(
        &txn,
        scope.tenant_id,
        events::GRANT_CONNECTED,
        "grant",
        Some(grant_id),
        json!({"token_config_id": config.id, "flow": "app"}),
    )
    .await?;
    txn.commit().await?;
    Ok(AuthorizeResult {
        status: AuthorizeStatus::Authorized,
        authorization_url: None,
        expires_at: None,
        account: accounts::view(accounts::find_visible(ctx, scope, account.id).await?)?,
    })
}

fn provider_error_to_app(err: &TokenError) -> AppError {
    let (code, hint) = if err.needs_admin() {
        ("provider_rejected_client", "check the token configuration's client id and secret (it may have expired)")
    } else if err.is_transient() {
        ("provider_unavailable", "the provider did not answer; try again")
    } else {
        ("provider_error", "see the provider's message")
    };
    AppError::Conflict { code, message: format!("{err}; {hint}") }
}

/// Whose grant is stored, and by whom.
struct Connection<'a> {
    /// The mailbox login (lower-cased), or `app`.
    subject: &'a str,
    /// Who consented, as the provider said.
    consented_by: Option<String>,
    /// The Postbridge caller that started it.
    connected_by: &'a str,
}

/// Creates or replaces (re-consent) the grant of `subject` at `config`, tokens encrypted.
async fn store_grant(
    ctx: &AppContext,
    txn: &DatabaseTransaction,
    tenant_id: Uuid,
    config_id: Uuid,
    connection: Connection<'_>,
    tokens: &TokenSet,
) -> AppResult<Uuid> {
    let Connection { subject, consented_by, connected_by } = connection;
    let existing = grant::Entity::find()
        .filter(grant::Column::TenantId.eq(tenant_id))
        .filter(grant::Column::TokenConfigId.eq(config_id))
        .filter(grant::Column::Subject.eq(subject))
        .lock_exclusive()
        .one(txn)
        .await?;
    let id = existing.as_ref().map(|g| g.id).unwrap_or_else(Uuid::now_v7);
    let access = secrets::GRANT_ACCESS_TOKEN.seal(&ctx.cipher, tenant_id, id, &tokens.access_token)?;
    let refresh =
        tokens.refresh_token.as_deref().map(|t| secrets::GRANT_REFRESH_TOKEN.seal(&ctx.cipher, tenant_id, id, t)).transpose()?;
    let now = Utc::now();
    let scopes = serde_json::to_value(&tokens.scopes).map_err(|e| internal("scopes", e))?;
    match existing {
        Some(model) => {
            let keep_refresh = model.refresh_token.clone();
            let mut active = model.into_active_model();
            active.access_token = Set(Some(access));
            active.refresh_token = Set(refresh.or(keep_refresh));
            active.expires_at = Set(tokens.expires_at);
            active.refresh_at = Set(refresh_at_for(tokens.expires_at, now));
            active.scopes = Set(scopes);
            active.consented_by = Set(consented_by);
            active.connected_by = Set(Some(connected_by.to_owned()));
            mark_fresh(&mut active, now);
            active.update(txn).await?;
        }
        None => {
            let inserted = grant::ActiveModel {
                id: Set(id),
                tenant_id: Set(tenant_id),
                token_config_id: Set(config_id),
                subject: Set(subject.to_owned()),
                consented_by: Set(consented_by),
                connected_by: Set(Some(connected_by.to_owned())),
                access_token: Set(Some(access)),
                refresh_token: Set(refresh),
                expires_at: Set(tokens.expires_at),
                refresh_at: Set(refresh_at_for(tokens.expires_at, now)),
                scopes: Set(scopes),
                status: Set(GrantStatus::Valid),
                last_error: Set(None),
                last_error_kind: Set(None),
                refresh_failures: Set(0),
                next_refresh_at: Set(None),
                last_refreshed_at: Set(Some(now)),
                created_at: Set(now),
                updated_at: Set(now),
            }
            .insert(txn)
            .await;
            match inserted {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => {
                    return Err(AppError::Conflict {
                        code: "concurrent_authorization",
                        message: "another authorization of this mailbox finished at the same moment; try again".to_owned(),
                    })
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(id)
}

/// Which accounts a new grant is linked to.
enum LinkTo<'a> {
    /// User flow: the mailbox's accounts (inbound and outbound) owned by the caller who started the consent or by
    /// the owner of the account it was started for; another member's account of the same login stays unlinked.
    Mailbox { login: &'a str, owners: [&'a str; 2] },
    /// App flow: every account of the configuration an admin created or authorized.
    ApprovedAccounts,
}

/// Points the accounts `to` names at the grant and marks them authorized.
async fn link_accounts(
    txn: &DatabaseTransaction,
    tenant_id: Uuid,
    config_id: Uuid,
    to: LinkTo<'_>,
    grant_id: Uuid,
) -> AppResult<u64> {
    let mut update = email_account::Entity::update_many()
        .col_expr(email_account::Column::GrantId, Expr::value(grant_id))
        .col_expr(email_account::Column::State, Expr::cust(account_lifecycle::sql_after(AccountEvent::GrantLinked)))
        .col_expr(email_account::Column::LastError, Expr::value(Option::<String>::None))
        .col_expr(email_account::Column::LastErrorKind, Expr::value(Option::<FailureKind>::None))
        .col_expr(email_account::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(email_account::Column::TenantId.eq(tenant_id))
        .filter(email_account::Column::TokenConfigId.eq(config_id))
        .filter(email_account::Column::AuthMethod.eq(AuthMethod::Oauth2));
    match to {
        LinkTo::Mailbox { login, owners } => {
            update = update
                .filter(Expr::cust_with_values("lower(login) = $1", [login.to_lowercase()]))
                .filter(email_account::Column::OwnerSubject.is_in(owners));
        }
        LinkTo::ApprovedAccounts => update = update.filter(email_account::Column::AppGrantApproved.eq(true)),
    }
    Ok(update.exec(txn).await?.rows_affected)
}

// ---- callback --------------------------------------------------------------------------------

/// What the provider sent to `/oauth/callback`.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct CallbackParams {
    pub state: Option<String>,
    pub code: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
    /// RFC 9207: the issuer of the authorization response, when the provider names it.
    pub iss: Option<String>,
}

/// How a callback ended; the browser is sent to `return_url` (if any) with `status` and `reason`.
#[derive(Clone, Debug)]
pub struct CallbackOutcome {
    pub success: bool,
    /// Machine-readable: `connected`, `invalid_state`, `state_expired`, `access_denied`, `wrong_mailbox`,
    /// `unknown_identity`, `issuer_mismatch`, `configuration_changed`, ...
    pub reason: String,
    pub message: String,
    pub account_id: Option<Uuid>,
    pub return_url: Option<String>,
}

impl CallbackOutcome {
    fn failure(reason: &str, message: impl Into<String>, state: Option<&oauth_state::Model>) -> Self {
        CallbackOutcome {
            success: false,
            reason: reason.to_owned(),
            message: message.into(),
            account_id: state.map(|s| s.account_id),
            return_url: state.and_then(|s| s.return_url.clone()),
        }
    }

    /// The return URL with `status`, `reason` and `account_id` appended.
    pub fn redirect_url(&self) -> Option<String> {
        let mut url = url::Url::parse(self.return_url.as_deref()?).ok()?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("status", if self.success { "success" } else { "error" });
            query.append_pair("reason", &self.reason);
            if let Some(id) = self.account_id {
                query.append_pair("account_id", &id.to_string());
            }
        }
        Some(url.to_string())
    }
}

/// Completes the user flow. A failed, replayed, expired or forged callback stores nothing, except that a consent by
/// the wrong identity leaves its account's `last_error` naming who consented and who was expected.
pub async fn complete_callback(ctx: &AppContext, params: CallbackParams) -> AppResult<CallbackOutcome> {
    let Some(state) = params.state.as_deref().filter(|s| !s.is_empty()) else {
        return Ok(CallbackOutcome::failure("invalid_state", "the callback carries no state", None));
    };
    // Single use: the first callback consumes the state, any replay finds nothing.
    let consumed = oauth_state::Entity::update_many()
        .col_expr(oauth_state::Column::ConsumedAt, Expr::value(Utc::now()))
        .filter(oauth_state::Column::StateHash.eq(hash_state(state)))
        .filter(oauth_state::Column::ConsumedAt.is_null())
        .exec_with_returning(&ctx.db)
        .await?;
    let Some(state_row) = consumed.into_iter().next() else {
        return Ok(CallbackOutcome::failure(
            "invalid_state",
            "this sign-in link is unknown or was already used; start again",
            None,
        ));
    };
    if state_row.expires_at < Utc::now() {
        return Ok(CallbackOutcome::failure("state_expired", "this sign-in link expired; start again", Some(&state_row)));
    }
    let config = token_configs::find(ctx, state_row.tenant_id, state_row.token_config_id).await?;
    // The code is redeemed only at the token URL the sign-in started with: the configuration's endpoints may have
    // moved since (and its grants been sent to re-consent).
    if config.token_url != state_row.token_url {
        return Ok(CallbackOutcome::failure(
            "configuration_changed",
            "the token configuration's endpoints changed while signing in; start again",
            Some(&state_row),
        ));
    }
    // RFC 9207: an authorization response naming another issuer is a mix-up attack (or a misconfiguration).
    if let Some(iss) = params.iss.as_deref() {
        let provider = config.provider;
        let expected =
            crate::connect::presets::expected_issuer(provider, config.directory_tenant_id.as_deref(), config.issuer.as_deref());
        if !expected.accepts(iss) {
            return Ok(CallbackOutcome::failure(
                "issuer_mismatch",
                "the authorization response came from another issuer than the token configuration's; nothing was stored",
                Some(&state_row),
            ));
        }
    }
    if let Some(error) = params.error.as_deref() {
        let description = params.error_description.as_deref().unwrap_or("no description");
        let reason = if error == "access_denied" { "access_denied" } else { "provider_error" };
        return Ok(CallbackOutcome::failure(reason, format!("the provider answered {error}: {description}"), Some(&state_row)));
    }
    let Some(code) = params.code.as_deref().filter(|c| !c.is_empty()) else {
        return Ok(CallbackOutcome::failure("invalid_request", "the callback carries no code", Some(&state_row)));
    };
    let account = email_account::Entity::find_by_id(state_row.account_id)
        .filter(email_account::Column::TenantId.eq(state_row.tenant_id))
        .one(&ctx.db)
        .await?;
    let Some(account) =
        account.filter(|a| a.token_config_id == Some(state_row.token_config_id) && a.auth_method == AuthMethod::Oauth2)
    else {
        return Ok(CallbackOutcome::failure(
            "account_changed",
            "the account changed while signing in; start again",
            Some(&state_row),
        ));
    };
    let verifier =
        secrets::OAUTH_STATE_PKCE_VERIFIER.open(&ctx.cipher, state_row.tenant_id, state_row.id, &state_row.pkce_verifier)?;

    let tokens = match oauth_client(ctx, &config)?.exchange_code(code, &verifier).await {
        Ok(tokens) => tokens,
        Err(e) => {
            let reason = if e.needs_admin() {
                "invalid_client"
            } else if e.is_transient() {
                "provider_unavailable"
            } else {
                "token_exchange_failed"
            };
            let hint = if e.needs_admin() { " An admin must fix the token configuration's client id or secret." } else { "" };
            return Ok(CallbackOutcome::failure(reason, format!("{e}.{hint}"), Some(&state_row)));
        }
    };
    // Without prompt=consent a provider may return no new refresh token; a live stored one then stays.
    let keeps_refresh_token = grant::Entity::find()
        .filter(grant::Column::TenantId.eq(state_row.tenant_id))
        .filter(grant::Column::TokenConfigId.eq(config.id))
        .filter(grant::Column::Subject.eq(account.login.to_lowercase()))
        .filter(grant::Column::Status.eq(GrantStatus::Valid))
        .filter(grant::Column::RefreshToken.is_not_null())
        .one(&ctx.db)
        .await?
        .is_some();
    if tokens.refresh_token.is_none() && !keeps_refresh_token {
        return Ok(CallbackOutcome::failure(
            "no_refresh_token",
            "the provider returned no refresh token: make sure the configuration asks for offline access (Microsoft: the offline_access scope; Google: access_type=offline with prompt=consent) and sign in again",
            Some(&state_row),
        ));
    }
    let identity = tokens.id_token.as_deref().and_then(id_token_identity).unwrap_or_default();
    let consented_by = identity.username.clone();
    let login = account.login.to_lowercase();
    // The consenting identity must be the mailbox, unless the account is a shared mailbox (delegated access): a
    // consent that names no identity at all proves nothing about whose mailbox the tokens open.
    let refused = match &consented_by {
        _ if account.shared_mailbox => None,
        Some(who) if *who != login => Some((
            "wrong_mailbox",
            crate::observe::hints::wrong_mailbox_message(who, &login),
            FailureKind::WrongMailbox { consented: who.clone(), expected: login.clone() },
        )),
        Some(_) => None,
        None => {
            Some(("unknown_identity", crate::observe::hints::UNKNOWN_IDENTITY_MESSAGE.to_owned(), FailureKind::UnknownIdentity))
        }
    };
    if let Some((reason, message, kind)) = refused {
        // No grant is stored, but the account says why it is still not connected (its state stays).
        email_account::Entity::update_many()
            .col_expr(email_account::Column::LastError, Expr::value(message.clone()))
            .col_expr(email_account::Column::LastErrorKind, Expr::value(kind))
            .col_expr(email_account::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(email_account::Column::Id.eq(account.id))
            .filter(email_account::Column::TenantId.eq(state_row.tenant_id))
            .exec(&ctx.db)
            .await?;
        return Ok(CallbackOutcome::failure(reason, message, Some(&state_row)));
    }

    let txn = ctx.db.begin().await?;
    let connection = Connection { subject: &login, consented_by: consented_by.clone(), connected_by: &state_row.created_by };
    let grant_id = match store_grant(ctx, &txn, state_row.tenant_id, config.id, connection, &tokens).await {
        Ok(id) => id,
        Err(AppError::Conflict { message, .. }) => {
            return Ok(CallbackOutcome::failure("concurrent_authorization", message, Some(&state_row)))
        }
        Err(e) => return Err(e),
    };
    let owners = [state_row.created_by.as_str(), account.owner_subject.as_str()];
    let linked = link_accounts(&txn, state_row.tenant_id, config.id, LinkTo::Mailbox { login: &login, owners }, grant_id).await?;
    events::record(
        &txn,
        state_row.tenant_id,
        events::GRANT_CONNECTED,
        "grant",
        Some(grant_id),
        json!({"token_config_id": config.id, "subject": login, "consented_by": consented_by,
               "consented_by_id": identity.stable_id(), "accounts": linked}),
    )
    .await?;
    txn.commit().await?;
    Ok(CallbackOutcome {
        success: true,
        reason: "connected".to_owned(),
        message: format!("{login} is connected"),
        account_id: Some(account.id),
        return_url: state_row.return_url,
    })
}

// ---- read and revoke -------------------------------------------------------------------------

pub async fn list(ctx: &AppContext, scope: &TenantScope, page: PageRequest) -> AppResult<Page<Grant>> {
    scope.require(Role::Viewer)?;
    let limit = limit_of(&page)?;
    let mut query = grant::Entity::find()
        .filter(grant::Column::TenantId.eq(scope.tenant_id))
        .order_by_asc(grant::Column::Id)
        .limit(limit + 1);
    if let Some(cursor) = page.cursor {
        query = query.filter(grant::Column::Id.gt(cursor));
    }
    page_of(query.all(&ctx.db).await?, limit, |m| m.id, view)
}

async fn find(ctx: &AppContext, tenant_id: Uuid, id: Uuid) -> AppResult<grant::Model> {
    grant::Entity::find_by_id(id)
        .filter(grant::Column::TenantId.eq(tenant_id))
        .one(&ctx.db)
        .await?
        .ok_or(AppError::not_found("grant"))
}

pub async fn get(ctx: &AppContext, scope: &TenantScope, id: Uuid) -> AppResult<Grant> {
    scope.require(Role::Viewer)?;
    view(find(ctx, scope.tenant_id, id).await?)
}

/// Deletes a grant; its accounts go back to draft until someone consents again.
pub async fn revoke(ctx: &AppContext, scope: &TenantScope, id: Uuid) -> AppResult<()> {
    scope.require(Role::Admin)?;
    let model = find(ctx, scope.tenant_id, id).await?;
    let txn = ctx.db.begin().await?;
    email_account::Entity::update_many()
        .col_expr(email_account::Column::State, Expr::cust(account_lifecycle::sql_after(AccountEvent::GrantRevoked)))
        .col_expr(email_account::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(email_account::Column::TenantId.eq(scope.tenant_id))
        .filter(email_account::Column::GrantId.eq(id))
        .exec(&txn)
        .await?;
    grant::Entity::delete_many()
        .filter(grant::Column::Id.eq(id))
        .filter(grant::Column::TenantId.eq(scope.tenant_id))
        .exec(&txn)
        .await?;
    events::record(
        &txn,
        scope.tenant_id,
        events::GRANT_REVOKED,
        "grant",
        Some(id),
        json!({"subject": model.subject, "by": scope.principal.subject}),
    )
    .await?;
    audit::record_in_tenant(&txn, scope, "grant.revoked", id, audit::Changes::new().set("subject", Some(&model.subject))).await?;
    txn.commit().await?;
    Ok(())
}

// ---- access tokens and refresh ---------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum TokenAccessError {
    /// The grant is dead (revoked, expired, consent withdrawn): someone must consent again.
    #[error("the grant needs re-consent: {message}")]
    ReauthRequired { message: String, kind: FailureKind },
    /// The token configuration's client credentials were refused: its admin must fix them.
    #[error("the token configuration needs its admin: {message}")]
    NeedsAdmin { message: String, kind: FailureKind },
    /// The provider could not be reached; nothing changed, try again later.
    #[error("the provider is unavailable: {reason}")]
    Unavailable { reason: String, retry_after: Option<Duration> },
    #[error(transparent)]
    App(#[from] AppError),
}

impl TokenAccessError {
    /// The failure kind recorded for an account this failure stopped.
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            TokenAccessError::ReauthRequired { kind, .. } | TokenAccessError::NeedsAdmin { kind, .. } => kind.clone(),
            TokenAccessError::Unavailable { .. } => FailureKind::ProviderUnavailable,
            TokenAccessError::App(_) => FailureKind::Internal,
        }
    }
}

impl From<sea_orm::DbErr> for TokenAccessError {
    fn from(err: sea_orm::DbErr) -> Self {
        TokenAccessError::App(err.into())
    }
}

/// The stored access token, decrypted, when `usable` says the grant may hand it out.
fn stored_access_token(ctx: &AppContext, model: &grant::Model, usable: bool) -> Result<Option<String>, TokenAccessError> {
    match (&model.access_token, usable) {
        (Some(stored), true) => {
            Ok(Some(secrets::GRANT_ACCESS_TOKEN.open(&ctx.cipher, model.tenant_id, model.id, stored).map_err(AppError::from)?))
        }
        _ => Ok(None),
    }
}

/// The stored token while the grant is valid and its token is not due for refresh.
fn fresh_access_token(ctx: &AppContext, model: &grant::Model, now: DateTime<Utc>) -> Result<Option<String>, TokenAccessError> {
    let usable = model.status == GrantStatus::Valid && !refresh_due_at(model, now);
    stored_access_token(ctx, model, usable)
}

/// The stored access token if it has not expired yet (with a little slack for the request in flight).
fn still_valid_access_token(ctx: &AppContext, model: &grant::Model) -> Result<Option<String>, TokenAccessError> {
    let usable = model.expires_at.is_some_and(|exp| exp > Utc::now() + chrono::Duration::seconds(30));
    stored_access_token(ctx, model, usable)
}

fn dead_grant_error(model: &grant::Model) -> Option<TokenAccessError> {
    (model.status == GrantStatus::ReauthRequired).then(|| TokenAccessError::ReauthRequired {
        message: model.last_error.clone().unwrap_or_else(|| "consent withdrawn".to_owned()),
        kind: model.last_error_kind.clone().unwrap_or(FailureKind::REAUTH_REQUIRED),
    })
}

/// Exponential backoff with jitter for a grant whose refresh failed `failures` times; at least Retry-After.
fn backoff(failures: i32, retry_after: Option<Duration>) -> chrono::Duration {
    let jittered = crate::jobs::backoff::GRANT_REFRESH.seconds(failures);
    // A provider's Retry-After is honoured up to a day, whatever it says.
    let ceiling = crate::protocols::oauth::MAX_RETRY_AFTER.as_secs() as i64;
    let floor = retry_after.map(|d| i64::try_from(d.as_secs()).unwrap_or(ceiling).min(ceiling)).unwrap_or(0);
    chrono::Duration::seconds(jittered.max(floor))
}

/// A valid access token for the grant: the stored one while it has more than the margin left, else a
/// refresh. One refresh per grant at a time across all processes: the row lock makes concurrent callers
/// wait, then they re-read and reuse the new token instead of refreshing again (a provider that rotates
/// refresh tokens would otherwise invalidate the grant).
pub async fn access_token(ctx: &AppContext, tenant_id: Uuid, grant_id: Uuid) -> Result<String, TokenAccessError> {
    let now = Utc::now();
    let model = find(ctx, tenant_id, grant_id).await?;
    if let Some(token) = fresh_access_token(ctx, &model, now)? {
        return Ok(token);
    }
    if let Some(dead) = dead_grant_error(&model) {
        return Err(dead);
    }

    let txn = ctx.db.begin().await?;
    let locked = grant::Entity::find_by_id(grant_id)
        .filter(grant::Column::TenantId.eq(tenant_id))
        .lock_exclusive()
        .one(&txn)
        .await?
        .ok_or(AppError::not_found("grant"))?;
    // Another process may have refreshed (or buried) the grant while we waited for the lock.
    if let Some(token) = fresh_access_token(ctx, &locked, Utc::now())? {
        txn.commit().await?;
        return Ok(token);
    }
    if let Some(dead) = dead_grant_error(&locked) {
        txn.commit().await?;
        return Err(dead);
    }
    // Inside the transaction: a refresh holds one connection, never two (the pool is shared by concurrent refreshes).
    let config = token_configs::find_in(&txn, tenant_id, locked.token_config_id).await?;
    // Backing off after a provider outage: while the stored token still works, use it rather than hammer the
    // provider. (A refused client is not an outage: keep asking, so the admin's fix is seen at once.)
    if !config.needs_admin && locked.next_refresh_at.is_some_and(|next| next > Utc::now()) {
        if let Some(token) = still_valid_access_token(ctx, &locked)? {
            txn.commit().await?;
            return Ok(token);
        }
    }
    let client = oauth_client(ctx, &config)?;
    let result = if config.flow == OAuthFlow::App {
        client.client_credentials().await
    } else {
        match &locked.refresh_token {
            Some(stored) => {
                let refresh =
                    secrets::GRANT_REFRESH_TOKEN.open(&ctx.cipher, tenant_id, grant_id, stored).map_err(AppError::from)?;
                client.refresh(&refresh).await
            }
            None => Err(TokenError::Rejected {
                error: "invalid_grant".to_owned(),
                description: Some("no refresh token stored".to_owned()),
            }),
        }
    };
    // `token_refreshes_total` counts here, where the provider was asked: background and on-demand refreshes alike.
    match result {
        Ok(tokens) => {
            let access = tokens.access_token.clone();
            if let Err(first) = persist_refreshed(ctx, txn, locked, &config, &tokens).await {
                persist_refreshed_again(ctx, tenant_id, grant_id, &config, &tokens, first).await?;
            }
            ctx.metrics.token_refresh("refreshed");
            Ok(access)
        }
        Err(e) if e.needs_reauth() => {
            let message = e.to_string();
            let kind = if locked.refresh_token.is_none() && config.flow != OAuthFlow::App {
                FailureKind::RefreshTokenMissing
            } else {
                FailureKind::of_token_error(&e)
            };
            bury_grant(&txn, &locked, &message, &kind).await?;
            txn.commit().await?;
            ctx.metrics.token_refresh("reauth_required");
            Err(TokenAccessError::ReauthRequired { message, kind })
        }
        Err(e) if e.needs_admin() => {
            let message = e.to_string();
            let kind = FailureKind::of_token_error(&e);
            mark_config(&txn, &config, true, Some(&message)).await?;
            record_failure(&txn, &locked, &message, &kind, None).await?;
            txn.commit().await?;
            ctx.metrics.token_refresh("needs_admin");
            Err(TokenAccessError::NeedsAdmin { message, kind })
        }
        Err(e) => {
            let message = e.to_string();
            let retry_after = match &e {
                TokenError::Unavailable { retry_after, .. } => *retry_after,
                _ => None,
            };
            record_failure(&txn, &locked, &message, &FailureKind::of_token_error(&e), retry_after).await?;
            txn.commit().await?;
            ctx.metrics.token_refresh("failed");
            // An early refresh that failed leaves the current token usable until it really expires.
            match still_valid_access_token(ctx, &locked)? {
                Some(token) => Ok(token),
                None => Err(TokenAccessError::Unavailable { reason: message, retry_after }),
            }
        }
    }
}

/// Stores refreshed tokens (and clears a configuration's `needs_admin`, since its credentials just worked), then
/// commits.
async fn persist_refreshed(
    ctx: &AppContext,
    txn: DatabaseTransaction,
    model: grant::Model,
    config: &token_config::Model,
    tokens: &TokenSet,
) -> AppResult<()> {
    save_refreshed(ctx, &txn, model, tokens).await?;
    if config.needs_admin {
        mark_config(&txn, config, false, None).await?;
    }
    txn.commit().await?;
    Ok(())
}

/// Retries after storing refreshed tokens failed (a failed COMMIT included). The provider may have rotated the
/// refresh token: the old one is dead there and the new one exists only in memory, so giving up at once would
/// lose the grant.
const PERSIST_RETRIES: u32 = 4;

async fn persist_refreshed_again(
    ctx: &AppContext,
    tenant_id: Uuid,
    grant_id: Uuid,
    config: &token_config::Model,
    tokens: &TokenSet,
    first: AppError,
) -> AppResult<()> {
    let mut last = first;
    for attempt in 1..=PERSIST_RETRIES {
        tracing::warn!(%grant_id, attempt, error = %last, "storing refreshed tokens failed; retrying");
        tokio::time::sleep(Duration::from_millis(100u64 << attempt.min(6))).await;
        let retried = async {
            let txn = ctx.db.begin().await?;
            let model = grant::Entity::find_by_id(grant_id)
                .filter(grant::Column::TenantId.eq(tenant_id))
                .lock_exclusive()
                .one(&txn)
                .await?
                .ok_or(AppError::not_found("grant"))?;
            persist_refreshed(ctx, txn, model, config, tokens).await
        }
        .await;
        match retried {
            Ok(()) => return Ok(()),
            // Revoked meanwhile: nothing to keep.
            Err(e @ AppError::NotFound { .. }) => return Err(e),
            Err(e) => last = e,
        }
    }
    tracing::error!(%grant_id, error = %last, "refreshed tokens could not be stored; a rotated refresh token is lost");
    Err(last)
}

/// Stores new tokens; a rotated refresh token goes in the same transaction, a missing one keeps the old.
async fn save_refreshed(ctx: &AppContext, txn: &DatabaseTransaction, model: grant::Model, tokens: &TokenSet) -> AppResult<()> {
    let (tenant_id, id) = (model.tenant_id, model.id);
    let now = Utc::now();
    let mut active = model.into_active_model();
    active.access_token = Set(Some(secrets::GRANT_ACCESS_TOKEN.seal(&ctx.cipher, tenant_id, id, &tokens.access_token)?));
    if let Some(rotated) = &tokens.refresh_token {
        active.refresh_token = Set(Some(secrets::GRANT_REFRESH_TOKEN.seal(&ctx.cipher, tenant_id, id, rotated)?));
    }
    active.expires_at = Set(tokens.expires_at);
    active.refresh_at = Set(refresh_at_for(tokens.expires_at, now));
    mark_fresh(&mut active, now);
    active.update(txn).await?;
    Ok(())
}

/// A grant that just got tokens: valid, no error, no backoff.
fn mark_fresh(active: &mut grant::ActiveModel, now: DateTime<Utc>) {
    active.status = Set(GrantStatus::Valid);
    active.last_error = Set(None);
    active.last_error_kind = Set(None);
    active.refresh_failures = Set(0);
    active.next_refresh_at = Set(None);
    active.last_refreshed_at = Set(Some(now));
    active.updated_at = Set(now);
}

/// `invalid_grant` and friends: the grant needs re-consent, its accounts are in error, an event says so.
async fn bury_grant(txn: &DatabaseTransaction, model: &grant::Model, message: &str, kind: &FailureKind) -> AppResult<()> {
    let now = Utc::now();
    grant::Entity::update_many()
        .col_expr(grant::Column::Status, Expr::value(GrantStatus::ReauthRequired))
        .col_expr(grant::Column::LastError, Expr::value(message))
        .col_expr(grant::Column::LastErrorKind, Expr::value(kind.clone()))
        .col_expr(grant::Column::UpdatedAt, Expr::value(now))
        .filter(grant::Column::Id.eq(model.id))
        .exec(txn)
        .await?;
    email_account::Entity::update_many()
        .col_expr(email_account::Column::State, Expr::cust(account_lifecycle::sql_after(AccountEvent::Failed)))
        .col_expr(email_account::Column::LastError, Expr::value(format!("sign-in needed again: {message}")))
        .col_expr(email_account::Column::LastErrorKind, Expr::value(kind.clone()))
        .col_expr(email_account::Column::UpdatedAt, Expr::value(now))
        .filter(email_account::Column::TenantId.eq(model.tenant_id))
        .filter(email_account::Column::GrantId.eq(model.id))
        .filter(email_account::Column::State.ne(AccountState::Disabled))
        .exec(txn)
        .await?;
    events::record(
        txn,
        model.tenant_id,
        events::GRANT_REAUTH_REQUIRED,
        "grant",
        Some(model.id),
        json!({"subject": model.subject, "error": message}),
    )
    .await?;
    Ok(())
}

/// The configuration's endpoints changed: every grant it holds came from the old ones. Each one still valid needs
/// consent again (its accounts in error, an event each, as after `invalid_grant`), and no grant keeps tokens the
/// new endpoints could be sent. Returns how many grants were sent to re-consent.
pub(crate) async fn require_reauth_for_config(
    txn: &DatabaseTransaction,
    tenant_id: Uuid,
    config_id: Uuid,
    message: &str,
) -> AppResult<u64> {
    let held = grant::Entity::find()
        .filter(grant::Column::TenantId.eq(tenant_id))
        .filter(grant::Column::TokenConfigId.eq(config_id))
        .lock_exclusive()
        .all(txn)
        .await?;
    let mut buried = 0;
    for model in held.iter().filter(|g| g.status == GrantStatus::Valid) {
        bury_grant(txn, model, message, &FailureKind::REAUTH_REQUIRED).await?;
        buried += 1;
    }
    grant::Entity::update_many()
        .col_expr(grant::Column::AccessToken, Expr::value(Option::<String>::None))
        .col_expr(grant::Column::RefreshToken, Expr::value(Option::<String>::None))
        .col_expr(grant::Column::ExpiresAt, Expr::value(Option::<DateTime<Utc>>::None))
        .col_expr(grant::Column::RefreshAt, Expr::value(Option::<DateTime<Utc>>::None))
        .col_expr(grant::Column::NextRefreshAt, Expr::value(Option::<DateTime<Utc>>::None))
        .filter(grant::Column::TenantId.eq(tenant_id))
        .filter(grant::Column::TokenConfigId.eq(config_id))
        .exec(txn)
        .await?;
    Ok(buried)
}

/// A failed refresh that is not the grant's fault: tokens and status stay, the next attempt waits.
async fn record_failure(
    txn: &DatabaseTransaction,
    model: &grant::Model,
    message: &str,
    kind: &FailureKind,
    retry_after: Option<Duration>,
) -> AppResult<()> {
    let failures = model.refresh_failures.saturating_add(1);
    let now = Utc::now();
    grant::Entity::update_many()
        .col_expr(grant::Column::LastError, Expr::value(message))
        .col_expr(grant::Column::LastErrorKind, Expr::value(kind.clone()))
        .col_expr(grant::Column::RefreshFailures, Expr::value(failures))
        .col_expr(
            grant::Column::NextRefreshAt,
            Expr::value(now.checked_add_signed(backoff(failures, retry_after)).unwrap_or(now)),
        )
        .col_expr(grant::Column::UpdatedAt, Expr::value(now))
        .filter(grant::Column::Id.eq(model.id))
        .exec(txn)
        .await?;
    Ok(())
}

async fn mark_config(
    txn: &DatabaseTransaction,
    config: &token_config::Model,
    needs_admin: bool,
    message: Option<&str>,
) -> AppResult<()> {
    token_config::Entity::update_many()
        .col_expr(token_config::Column::NeedsAdmin, Expr::value(needs_admin))
        .col_expr(token_config::Column::LastError, Expr::value(message.map(str::to_owned)))
        .filter(token_config::Column::Id.eq(config.id))
        .exec(txn)
        .await?;
    if needs_admin && !config.needs_admin {
        events::record(
            txn,
            config.tenant_id,
            events::TOKEN_CONFIG_NEEDS_ADMIN,
            "token_config",
            Some(config.id),
            json!({"error": message}),
        )
        .await?;
    }
    Ok(())
}

/// Marks the stored access token as used up (a mail server refused it although it looked valid), so
/// the next `access_token` call refreshes.
pub async fn expire_access_token(ctx: &AppContext, tenant_id: Uuid, grant_id: Uuid) -> AppResult<()> {
    let past = Utc::now() - chrono::Duration::seconds(1);
    grant::Entity::update_many()
        .col_expr(grant::Column::ExpiresAt, Expr::value(past))
        .col_expr(grant::Column::RefreshAt, Expr::value(past))
        .col_expr(grant::Column::NextRefreshAt, Expr::value(Option::<DateTime<Utc>>::None))
        .filter(grant::Column::Id.eq(grant_id))
        .filter(grant::Column::TenantId.eq(tenant_id))
        .exec(&ctx.db)
        .await?;
    Ok(())
}

/// Outcome of one background refresh pass.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RefreshPass {
    pub refreshed: u64,
    pub reauth_required: u64,
    pub failed: u64,
}

/// Refreshes user-flow grants whose access token is due (`refresh_at`) and whose backoff has passed.
pub async fn refresh_due(ctx: &AppContext, limit: u64) -> AppResult<RefreshPass> {
    let rows = ctx
        .db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!("SELECT id, tenant_id FROM grants WHERE {} ORDER BY refresh_at LIMIT $1", crate::jobs::due::refresh()),
            [(limit as i64).into()],
        ))
        .await?;
    let due = rows
        .iter()
        .map(|row| Ok((row.try_get::<Uuid>("", "id")?, row.try_get::<Uuid>("", "tenant_id")?)))
        .collect::<Result<Vec<_>, sea_orm::DbErr>>()?;
    // Each refresh waits on the provider; run several at once (each holds its own row lock).
    let outcomes: Vec<(Uuid, Result<String, TokenAccessError>)> = futures::stream::iter(due)
        .map(|(id, tenant_id)| async move { (id, access_token(ctx, tenant_id, id).await) })
        .buffer_unordered(ctx.settings.refresh_concurrency)
        .collect()
        .await;
    let mut pass = RefreshPass::default();
    for (id, outcome) in outcomes {
        match outcome {
            Ok(_) => pass.refreshed += 1,
            Err(TokenAccessError::ReauthRequired { .. }) => pass.reauth_required += 1,
            Err(TokenAccessError::App(e)) => {
                record_internal_failure(ctx, id, &e).await;
                pass.failed += 1;
            }
            Err(e) => {
                tracing::warn!(grant_id = %id, error = %e, "grant refresh failed; will retry");
                pass.failed += 1;
            }
        }
    }
    Ok(pass)
}

/// What a grant's `last_error` says when refreshing it failed inside Postbridge (the details go to the logs only).
pub const INTERNAL_REFRESH_ERROR: &str =
    "Postbridge could not use this grant's stored tokens (they do not decrypt with the configured master keys, or the \
     database failed); it is retried with backoff, and the worker's logs say more";

/// A refresh that failed on Postbridge's side (stored tokens that do not decrypt, a database error): the grant
/// keeps its tokens and status, backs off like after a provider outage, and the pass goes on with the others.
async fn record_internal_failure(ctx: &AppContext, grant_id: Uuid, err: &AppError) {
    tracing::error!(%grant_id, error = %err, "grant refresh failed inside Postbridge; skipped and retried with backoff");
    ctx.metrics.token_refresh("failed");
    let recorded = async {
        let txn = ctx.db.begin().await?;
        let Some(model) = grant::Entity::find_by_id(grant_id).lock_exclusive().one(&txn).await? else { return Ok(()) };
        record_failure(&txn, &model, INTERNAL_REFRESH_ERROR, &FailureKind::Internal, None).await?;
        txn.commit().await?;
        Ok::<_, AppError>(())
    }
    .await;
    if let Err(e) = recorded {
        tracing::error!(%grant_id, error = %e, "could not record the failed refresh");
    }
}

/// What one background refresh did (the worker's refresh job).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// Gone, not valid any more, or refreshed meanwhile by someone else.
    Skipped,
    Refreshed,
    ReauthRequired,
    /// The provider or its client settings failed; the grant backs off and keeps its tokens.
    Failed,
}

impl RefreshOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshOutcome::Skipped => "skipped",
            RefreshOutcome::Refreshed => "refreshed",
            RefreshOutcome::ReauthRequired => "reauth_required",
            RefreshOutcome::Failed => "failed",
        }
    }
}

/// Refreshes one grant the scheduler found due, then clears its dispatch mark.
pub async fn refresh_one(ctx: &AppContext, grant_id: Uuid) -> AppResult<RefreshOutcome> {
    let outcome = refresh_if_due(ctx, grant_id).await;
    ctx.db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE grants SET dispatched_until = NULL WHERE id = $1",
            [grant_id.into()],
        ))
        .await?;
    outcome
}

async fn refresh_if_due(ctx: &AppContext, grant_id: Uuid) -> AppResult<RefreshOutcome> {
    let Some(model) = grant::Entity::find_by_id(grant_id).one(&ctx.db).await? else { return Ok(RefreshOutcome::Skipped) };
    let due = model.status == GrantStatus::Valid && refresh_due_at(&model, Utc::now());
    if !due {
        return Ok(RefreshOutcome::Skipped);
    }
    match access_token(ctx, model.tenant_id, grant_id).await {
        Ok(_) => Ok(RefreshOutcome::Refreshed),
        Err(TokenAccessError::ReauthRequired { .. }) => Ok(RefreshOutcome::ReauthRequired),
        Err(TokenAccessError::App(e)) => {
            record_internal_failure(ctx, grant_id, &e).await;
            Ok(RefreshOutcome::Failed)
        }
        Err(e) => {
            tracing::warn!(%grant_id, error = %e, "grant refresh failed; will retry");
            Ok(RefreshOutcome::Failed)
        }
    }
}
