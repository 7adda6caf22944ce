//! Token requests with two client secrets, so a secret is rotated without an outage: the admin stores the new one
//! as `client_secret_next` before the current one expires (or is deleted at the provider). A request the provider
//! refuses for its client credentials is sent once more with the next secret; when that one works it is promoted —
//! it becomes `client_secret` (with its expiry date), the next slot empties, and `token_config.secret_promoted` is
//! recorded — so every later request uses it first.

use chrono::Utc;
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
use serde_json::json;

use super::provider_config;
use crate::context::AppContext;
use crate::error::AppResult;
use crate::observe::events;
use crate::protocols::oauth::{OAuthClient, TokenError, TokenSet};
use crate::secrets;
use crate::store::entities::token_config;

/// What to ask the token endpoint.
pub(super) enum TokenRequest<'a> {
    Refresh(&'a str),
    ClientCredentials,
    ExchangeCode { code: &'a str, verifier: &'a str },
}

async fn send(client: &OAuthClient, request: &TokenRequest<'_>) -> Result<TokenSet, TokenError> {
    match request {
        TokenRequest::Refresh(token) => client.refresh(token).await,
        TokenRequest::ClientCredentials => client.client_credentials().await,
        TokenRequest::ExchangeCode { code, verifier } => client.exchange_code(code, verifier).await,
    }
}

/// Sends `request` with the current secret and, if the provider refuses the client and a next secret is stored,
/// with the next one (promoting it when it works). The outer error is Postbridge's own (a secret that
/// does not decrypt); the inner result is the provider's answer.
pub(super) async fn request_tokens(
    ctx: &AppContext,
    config: &token_config::Model,
    request: TokenRequest<'_>,
) -> AppResult<Result<TokenSet, TokenError>> {
    let mut provider = provider_config(ctx, config)?;
    let first = send(&OAuthClient::new(ctx.http.clone(), &ctx.guard, provider.clone()), &request).await;
    let sealed_next = match (&first, &config.client_secret_next) {
        (Err(refused), Some(next)) if refused.needs_admin() => next,
        _ => return Ok(first),
    };
    let next = secrets::TOKEN_CONFIG_CLIENT_SECRET_NEXT.open(&ctx.cipher, config.tenant_id, config.id, sealed_next)?;
    provider.client_secret = Some(next.clone());
    let second = send(&OAuthClient::new(ctx.http.clone(), &ctx.guard, provider), &request).await;
    match &second {
        Ok(_) => {
            // The tokens just issued matter more than the promotion (a rotated refresh token would be lost with
            // them): a failed promotion is logged, and the next refused request tries the next secret again.
            if let Err(e) = promote(ctx, config, sealed_next, &next).await {
                tracing::warn!(token_config_id = %config.id, error = %e, "the next client secret worked but could not be promoted");
            }
        }
        // Both refused: the admin must act; the current secret's refusal is the one to report.
        Err(e) if e.needs_admin() => return Ok(first),
        Err(_) => {}
    }
    Ok(second)
}

/// The next secret becomes the current one, unless the admin changed either secret meanwhile (a current secret
/// the admin just set is not overwritten by a promotion decided on the old one).
async fn promote(ctx: &AppContext, config: &token_config::Model, sealed_next: &str, next: &str) -> AppResult<()> {
    // Sealed values are bound to their column: the secret is sealed again for `client_secret`.
    let sealed_current = secrets::TOKEN_CONFIG_CLIENT_SECRET.seal(&ctx.cipher, config.tenant_id, config.id, next)?;
    // The promotion and its event are one write: never a promoted secret nobody heard of.
    let txn = ctx.db.begin().await?;
    let promoted = txn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE token_configs SET client_secret = $3, client_secret_expires_at = client_secret_next_expires_at, \
                    client_secret_next = NULL, client_secret_next_expires_at = NULL, secret_expiry_notified_days = NULL, \
                    needs_admin = false, last_error = NULL, updated_at = $5 \
             WHERE id = $1 AND tenant_id = $2 AND client_secret_next = $4 AND client_secret IS NOT DISTINCT FROM $6",
            [
                config.id.into(),
                config.tenant_id.into(),
                sealed_current.into(),
                sealed_next.into(),
                Utc::now().into(),
                config.client_secret.clone().into(),
            ],
        ))
        .await?
        .rows_affected();
    if promoted == 1 {
        tracing::info!(token_config_id = %config.id, "the provider refused the client secret and accepted the next one: promoted");
        events::record(
            &txn,
            config.tenant_id,
            events::TOKEN_CONFIG_SECRET_PROMOTED,
            "token_config",
            Some(config.id.into()),
            json!({"name": config.name, "expires_at": config.client_secret_next_expires_at}),
        )
        .await?;
    }
    txn.commit().await?;
    Ok(())
}
