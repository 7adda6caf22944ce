//! The provider's redirect back (`/oauth/callback`): the state checked once, the code exchanged, the grant stored.

use chrono::Utc;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, TransactionTrait};
use serde_json::json;
use uuid::Uuid;

use super::client_secrets::{request_tokens, TokenRequest};
use super::hash_state;
use super::link::{connect_mailbox, MailboxConsent};
use crate::connect::token_configs;
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::failure::FailureKind;
use crate::model::{AuthMethod, GrantStatus};
use crate::secrets;
use crate::store::entities::{email_account, grant, oauth_state};
use crate::store::ids::TenantId;
use crate::store::tenant_owned::TenantOwned;

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
    /// Machine-readable: `connected`, `invalid_state`, `state_used`, `state_expired`, `access_denied`, `wrong_mailbox`,
    /// `unknown_identity`, `issuer_mismatch`, `configuration_changed`, ...
    pub reason: String,
    pub message: String,
    pub account_id: Option<Uuid>,
    pub return_url: Option<String>,
    /// The tenant the sign-in was for, when the state identifies it (its name and logo go on the result page).
    pub tenant_id: Option<TenantId>,
    /// The mailbox being connected, when known.
    pub mailbox: Option<String>,
    /// Who signed in instead (`wrong_mailbox`).
    pub signed_in_as: Option<String>,
}

impl CallbackOutcome {
    fn failure(reason: &str, message: impl Into<String>, state: Option<&oauth_state::Model>) -> Self {
        CallbackOutcome {
            success: false,
            reason: reason.to_owned(),
            message: message.into(),
            account_id: (state.map(|s| s.account_id)).map(Into::into),
            return_url: state.and_then(|s| s.return_url.clone()),
            tenant_id: state.map(|s| s.tenant_id),
            mailbox: None,
            signed_in_as: None,
        }
    }

    fn for_mailbox(mut self, login: &str) -> Self {
        self.mailbox = Some(login.to_owned());
        self
    }

    /// The return URL with `status`, `reason` and `account_id` set: any the URL carried already are taken out
    /// first, so the app reads Postbridge's answer whichever of repeated parameters it reads.
    pub fn redirect_url(&self) -> Option<String> {
        let mut url = url::Url::parse(self.return_url.as_deref()?).ok()?;
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(name, _)| !RESULT_PARAMETERS.contains(&name.as_ref()))
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect();
        {
            let mut query = url.query_pairs_mut();
            query.clear().extend_pairs(kept);
            query.append_pair("status", if self.success { "success" } else { "error" });
            query.append_pair("reason", &self.reason);
            if let Some(id) = self.account_id {
                query.append_pair("account_id", &id.to_string());
            }
        }
        Some(url.to_string())
    }
}

/// The parameters the callback's redirect sets on the return URL.
pub(crate) const RESULT_PARAMETERS: [&str; 3] = ["status", "reason", "account_id"];

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
        // A replay (the state exists, consumed) goes back to the app it came from; a forged one stays here.
        let used = oauth_state::Entity::find().filter(oauth_state::Column::StateHash.eq(hash_state(state))).one(&ctx.db).await?;
        return Ok(match used {
            Some(used) => CallbackOutcome::failure("state_used", "this sign-in link was already used; start again", Some(&used)),
            None => CallbackOutcome::failure("invalid_state", "this sign-in link is unknown; start again", None),
        });
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
        // Whoever holds the link writes these (they arrive in the browser's query string): bounded, NUL replaced,
        // and only ever shown escaped.
        let description = params.error_description.as_deref().unwrap_or("no description");
        let reason = if error == "access_denied" { "access_denied" } else { "provider_error" };
        let message = crate::protocols::error::server_words(&format!("the provider answered {error}: {description}"));
        return Ok(CallbackOutcome::failure(reason, message, Some(&state_row)));
    }
    let Some(code) = params.code.as_deref().filter(|c| !c.is_empty()) else {
        return Ok(CallbackOutcome::failure("invalid_request", "the callback carries no code", Some(&state_row)));
    };
    let account = email_account::Entity::in_tenant(state_row.tenant_id)
        .filter(email_account::Column::Id.eq(state_row.account_id))
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

    let tokens = match request_tokens(ctx, &config, TokenRequest::ExchangeCode { code, verifier: &verifier }).await? {
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
    let keeps_refresh_token = grant::Entity::in_tenant(state_row.tenant_id)
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
    let identity = match super::consent_identity(&config, tokens.id_token.as_deref()) {
        Ok(identity) => identity,
        Err(why) => {
            return Ok(CallbackOutcome::failure("id_token_mismatch", format!("{why}; nothing was stored"), Some(&state_row)))
        }
    };
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
        let signed_in_as = consented_by.clone();
        // No grant is stored, but the account says why it is still not connected (its state stays).
        email_account::Entity::update_in_tenant(state_row.tenant_id)
            .col_expr(email_account::Column::LastError, Expr::value(message.clone()))
            .col_expr(email_account::Column::LastErrorKind, Expr::value(kind))
            .col_expr(email_account::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(email_account::Column::Id.eq(account.id))
            .exec(&ctx.db)
            .await?;
        let mut outcome = CallbackOutcome::failure(reason, message, Some(&state_row)).for_mailbox(&login);
        outcome.signed_in_as = signed_in_as;
        return Ok(outcome);
    }

    let txn = ctx.db.begin().await?;
    let consent = MailboxConsent {
        login: &login,
        identity: &identity,
        connected_by: &state_row.created_by,
        account_owner: &account.owner_subject,
    };
    match connect_mailbox(ctx, &txn, state_row.tenant_id, config.id, consent, &tokens, json!({})).await {
        Ok(_) => {}
        Err(AppError::Conflict { message, .. }) => {
            return Ok(CallbackOutcome::failure("concurrent_authorization", message, Some(&state_row)))
        }
        Err(e) => return Err(e),
    }
    txn.commit().await?;
    // Routing in this process sees the change at once; the others hear it announced.
    ctx.route_cache.changed();
    Ok(CallbackOutcome {
        success: true,
        reason: "connected".to_owned(),
        message: format!("{login} is connected"),
        account_id: Some(account.id.into()),
        return_url: state_row.return_url,
        tenant_id: Some(state_row.tenant_id),
        mailbox: Some(login),
        signed_in_as: None,
    })
}
