//! Bring your own tokens: an admin moving mailboxes from another system imports each mailbox's refresh token
//! (`POST /v1/accounts/{id}/grant`) instead of asking every user to consent again. The token is checked with one
//! refresh at the provider (which also proves the configuration's client owns it); from then on the grant is like
//! a consented one. A refresh that names who the token belongs to (an OIDC `id_token`) must name the mailbox, as at
//! consent; a provider that names nobody leaves the admin's word for it (the event says the grant was imported).

use async_graphql::InputObject;
use sea_orm::TransactionTrait;
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

use super::client_secrets::{request_tokens, TokenRequest};
use super::link::{connect_mailbox, MailboxConsent};
use crate::access::auth::TenantScope;
use crate::connect::accounts::{self, Account};
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::model::{OAuthFlow, Role, SecretInput};
use crate::store::ids::AccountId;

/// The longest refresh token accepted (providers' are well under 2 KiB).
const MAX_REFRESH_TOKEN_BYTES: usize = 8 * 1024;

#[derive(Clone, Debug, Deserialize, InputObject, ToSchema)]
pub struct ImportGrant {
    /// A refresh token the configuration's client obtained elsewhere, for this account's mailbox. Write-only.
    #[schema(value_type = String, format = Password)]
    pub refresh_token: SecretInput,
}

/// Imports a refresh token for an oauth2 account of a user-flow configuration (admins only): one refresh at the
/// provider, then the grant is stored and the mailbox's accounts are linked to it, as after a consent.
pub async fn import(ctx: &AppContext, scope: &TenantScope, account_id: AccountId, input: ImportGrant) -> AppResult<Account> {
    let account = accounts::find_visible(ctx, scope, account_id).await?;
    scope.require(Role::Admin)?;
    let field = "refresh_token";
    let refresh_token = input.refresh_token.expose().trim();
    if refresh_token.is_empty() || refresh_token.len() > MAX_REFRESH_TOKEN_BYTES {
        return Err(AppError::validation(field, "invalid_refresh_token", "refresh_token must be 1 to 8192 bytes"));
    }
    let config = super::oauth_config_of(ctx, scope, &account).await?;
    if config.flow != OAuthFlow::User {
        return Err(AppError::validation(
            "token_config_id",
            "not_user_flow",
            "an app-flow configuration needs no refresh token: authorize the account instead",
        ));
    }
    let mut tokens = request_tokens(ctx, &config, TokenRequest::Refresh(refresh_token))
        .await?
        .map_err(|e| AppError::validation(field, "refresh_token_rejected", format!("the provider did not accept it: {e}")))?;
    // A provider that rotates answered with a new refresh token: the one sent is spent. A refused import stores
    // nothing, so the admin must be told it needs a new one. (The new token is not revoked: at Google that revokes
    // the user's whole grant to the client, which may be another account's that works.)
    let rotated = tokens.refresh_token.as_deref().is_some_and(|new| new != refresh_token);
    let refused = |code: &'static str, why: String| {
        let why = if rotated {
            format!(
                "{why}. The provider replaced the refresh token when Postbridge checked it, so the one sent no longer \
                 works: obtain a new one"
            )
        } else {
            why
        };
        AppError::validation(field, code, why)
    };
    // A provider that does not rotate keeps the imported token valid.
    if tokens.refresh_token.is_none() {
        tokens.refresh_token = Some(refresh_token.to_owned());
    }
    let login = account.login.to_lowercase();
    let identity =
        super::consent_identity(&config, tokens.id_token.as_deref()).map_err(|why| refused("id_token_mismatch", why))?;
    if let Some(owner) = identity.username.as_deref().filter(|who| *who != login && !account.shared_mailbox) {
        return Err(refused("wrong_mailbox", crate::observe::hints::wrong_mailbox_message(owner, &login)));
    }

    let txn = ctx.db.begin().await?;
    let consent = MailboxConsent {
        login: &login,
        identity: &identity,
        connected_by: &scope.principal.subject,
        account_owner: &account.owner_subject,
    };
    connect_mailbox(ctx, &txn, scope.tenant_id, config.id, consent, &tokens, json!({"imported": true})).await?;
    txn.commit().await?;
    // Routing in this process sees the change at once; the others hear it announced.
    ctx.route_cache.changed();
    accounts::view(accounts::find_visible(ctx, scope, account.id).await?)
}
