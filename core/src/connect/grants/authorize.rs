//! "Authenticate account": the user flow's consent URL, or the app flow's client-credentials grant.

use chrono::Utc;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set, TransactionTrait};
use serde_json::json;

use super::client_secrets::{request_tokens, TokenRequest};
use super::link::{link_accounts, store_grant, Connection, LinkTo};
use super::{hash_state, oauth_client, random_token, state_ttl, AuthorizeAccount, AuthorizeResult};
use crate::access::auth::TenantScope;
use crate::connect::accounts;
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::model::{AuthorizeStatus, GrantStatus, OAuthFlow, Provider, Role};
use crate::observe::events;
use crate::protocols::oauth::TokenError;
use crate::secrets;
use crate::store::entities::{email_account, grant, oauth_state, tenant, token_config};
use crate::store::ids::{AccountId, OAuthStateId, TenantId};
use crate::store::tenant_owned::TenantOwned;

/// The return URL must be on one of the tenant's allowed origins (open redirects help phishing).
async fn check_return_url(ctx: &AppContext, tenant_id: TenantId, return_url: Option<&str>) -> AppResult<Option<String>> {
    let Some(raw) = return_url else { return Ok(None) };
    let field = "return_url";
    let url = url::Url::parse(raw).map_err(|_| AppError::validation(field, "invalid_url", "return_url is not a valid URL"))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(AppError::validation(field, "invalid_url", "return_url must be an http(s) URL"));
    }
    if let Some((name, _)) = url.query_pairs().find(|(name, _)| super::callback::RESULT_PARAMETERS.contains(&name.as_ref())) {
        return Err(AppError::validation(
            field,
            "return_url_reserved_parameter",
            format!("return_url must not carry {name:?}: the callback sets status, reason and account_id itself"),
        ));
    }
    let origin = url.origin().ascii_serialization();
    let tenant = tenant::Entity::find_by_id(tenant_id).one(&ctx.db).await?.ok_or(AppError::not_found("tenant"))?;
    let allowed = tenant.allowed_return_origins.0;
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
    account_id: AccountId,
    input: AuthorizeAccount,
) -> AppResult<AuthorizeResult> {
    scope.require(Role::Member)?;
    let account = accounts::find_visible(ctx, scope, account_id).await?;
    let config = super::oauth_config_of(ctx, scope, &account).await?;
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
    let mut params: Vec<(String, String)> = config.extra_auth_params.0.clone().into_iter().collect();
    let subject = account.login.to_lowercase();
    let existing = grant::Entity::in_tenant(scope.tenant_id)
        .filter(grant::Column::TokenConfigId.eq(config.id))
        .filter(grant::Column::Subject.eq(subject.clone()))
        .one(&ctx.db)
        .await?;
    // Without a live refresh token (none stored, or the stored one was refused), or with new scopes, only a
    // consent screen yields a refresh token (Google). A mailbox someone else connected gets the screen too: a
    // member who sends the link to the mailbox's user must not have it approved by one silent click.
    let needs_consent = existing.as_ref().is_none_or(|g| {
        g.refresh_token.is_none()
            || g.status != GrantStatus::Valid
            || g.scopes != config.scopes
            || g.connected_by.as_deref() != Some(scope.principal.subject.as_str())
    });
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
    let id = OAuthStateId::new();
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
    let tokens = request_tokens(ctx, config, TokenRequest::ClientCredentials).await?.map_err(|e| provider_error_to_app(&e))?;
    let txn = ctx.db.begin().await?;
    // Authorizing is the admin's approval of this account; other accounts of the configuration are linked only
    // if an admin created or authorized them too.
    email_account::Entity::update_in_tenant(scope.tenant_id)
        .col_expr(email_account::Column::AppGrantApproved, Expr::value(true))
        .filter(email_account::Column::Id.eq(account.id))
        .exec(&txn)
        .await?;
    let connection = Connection { subject: grant::APP_SUBJECT, consented_by: None, connected_by: &scope.principal.subject };
    let grant_id = store_grant(ctx, &txn, scope.tenant_id, config.id, connection, &tokens).await?;
    link_accounts(&txn, scope.tenant_id, config.id, LinkTo::ApprovedAccounts, grant_id.into()).await?;
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
    // Routing in this process sees the change at once; the others hear it announced.
    ctx.route_cache.changed();
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
