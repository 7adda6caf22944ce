//! Access tokens for the mail sessions, and refreshing them: at most one refresh per grant at a time.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, IntoActiveModel, QueryFilter,
    QuerySelect, Set, Statement, TransactionTrait,
};
use serde_json::json;

use super::client_secrets::{request_tokens, TokenRequest};
use super::reauth::bury_grant;
use super::{find, refresh_at_for, refresh_due_at};
use crate::connect::token_configs;
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::failure::FailureKind;
use crate::model::{GrantStatus, OAuthFlow};
use crate::observe::events;
use crate::protocols::oauth::{TokenError, TokenSet};
use crate::secrets;
use crate::store::entities::{grant, token_config};
use crate::store::ids::{GrantId, TenantId};
use crate::store::tenant_owned::TenantOwned;

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
pub async fn access_token(ctx: &AppContext, tenant_id: TenantId, grant_id: GrantId) -> Result<String, TokenAccessError> {
    let now = Utc::now();
    let model = find(ctx, tenant_id, grant_id).await?;
    if let Some(token) = fresh_access_token(ctx, &model, now)? {
        return Ok(token);
    }
    if let Some(dead) = dead_grant_error(&model) {
        return Err(dead);
    }

    let txn = ctx.db.begin().await?;
    let locked = grant::Entity::in_tenant(tenant_id)
        .filter(grant::Column::Id.eq(grant_id))
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
    let result = if config.flow == OAuthFlow::App {
        request_tokens(ctx, &txn, &config, TokenRequest::ClientCredentials).await?
    } else {
        match &locked.refresh_token {
            Some(stored) => {
                let refresh =
                    secrets::GRANT_REFRESH_TOKEN.open(&ctx.cipher, tenant_id, grant_id, stored).map_err(AppError::from)?;
                request_tokens(ctx, &txn, &config, TokenRequest::Refresh(&refresh)).await?
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
                e.failure_kind()
            };
            bury_grant(&txn, &locked, &message, &kind).await?;
            txn.commit().await?;
            ctx.metrics.token_refresh("reauth_required");
            Err(TokenAccessError::ReauthRequired { message, kind })
        }
        Err(e) if e.needs_admin() => {
            let message = e.to_string();
            let kind = e.failure_kind();
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
            record_failure(&txn, &locked, &message, &e.failure_kind(), retry_after).await?;
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
    tenant_id: TenantId,
    grant_id: GrantId,
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
            let model = grant::Entity::in_tenant(tenant_id)
                .filter(grant::Column::Id.eq(grant_id))
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
pub(super) fn mark_fresh(active: &mut grant::ActiveModel, now: DateTime<Utc>) {
    active.status = Set(GrantStatus::Valid);
    active.last_error = Set(None);
    active.last_error_kind = Set(None);
    active.refresh_failures = Set(0);
    active.next_refresh_at = Set(None);
    active.last_refreshed_at = Set(Some(now));
    active.updated_at = Set(now);
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
            Some(config.id.into()),
            json!({"error": message}),
        )
        .await?;
    }
    Ok(())
}

/// Marks the stored access token as used up (a mail server refused it although it looked valid), so
/// the next `access_token` call refreshes.
pub async fn expire_access_token(ctx: &AppContext, tenant_id: TenantId, grant_id: GrantId) -> AppResult<()> {
    let past = Utc::now() - chrono::Duration::seconds(1);
    grant::Entity::update_in_tenant(tenant_id)
        .col_expr(grant::Column::ExpiresAt, Expr::value(past))
        .col_expr(grant::Column::RefreshAt, Expr::value(past))
        .col_expr(grant::Column::NextRefreshAt, Expr::value(Option::<DateTime<Utc>>::None))
        .filter(grant::Column::Id.eq(grant_id))
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
        .map(|row| Ok((row.try_get::<GrantId>("", "id")?, row.try_get::<TenantId>("", "tenant_id")?)))
        .collect::<Result<Vec<_>, sea_orm::DbErr>>()?;
    // Each refresh waits on the provider; run several at once (each holds its own row lock).
    let outcomes: Vec<(GrantId, Result<String, TokenAccessError>)> = futures::stream::iter(due)
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
async fn record_internal_failure(ctx: &AppContext, grant_id: GrantId, err: &AppError) {
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
pub async fn refresh_one(ctx: &AppContext, grant_id: GrantId) -> AppResult<RefreshOutcome> {
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

async fn refresh_if_due(ctx: &AppContext, grant_id: GrantId) -> AppResult<RefreshOutcome> {
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
