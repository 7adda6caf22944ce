//! Access tokens for the mail sessions, and refreshing them: at most one refresh per grant at a time.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, FromQueryResult, QueryFilter, QuerySelect, Set,
    Statement, TransactionTrait,
};
use serde_json::json;

use super::client_secrets::{request_tokens, TokenRequest};
use super::lease::{release_held, RefreshLease, LEASE_SECONDS};
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

/// How often an on-demand caller looks again while another refresh of the grant it needs is under way.
const LEASE_POLL: Duration = Duration::from_millis(100);

/// A valid access token for the grant: the stored one while it has more than the margin left, else a refresh.
/// One refresh per grant at a time across all processes: the refresher holds the grant's lease
/// (`refreshing_until`, as a background batch does), and concurrent callers wait for its answer, then reuse the new
/// token instead of refreshing again (a provider that rotates refresh tokens would otherwise invalidate the grant).
/// While the current token still works it serves them meanwhile. Nobody holds a database connection or a row lock
/// while the provider answers: a slow or hostile provider cannot take the connection pool.
pub async fn access_token(ctx: &AppContext, tenant_id: TenantId, grant_id: GrantId) -> Result<String, TokenAccessError> {
    loop {
        let model = find(ctx, tenant_id, grant_id).await?;
        if let Some(token) = fresh_access_token(ctx, &model, Utc::now())? {
            return Ok(token);
        }
        if let Some(dead) = dead_grant_error(&model) {
            return Err(dead);
        }
        if let Some(until) = model.refreshing_until.filter(|until| *until > Utc::now()) {
            if let Some(token) = still_valid_access_token(ctx, &model)? {
                return Ok(token);
            }
            let left = until.signed_duration_since(Utc::now()).to_std().unwrap_or_default();
            tokio::time::sleep(left.min(LEASE_POLL)).await;
            continue;
        }
        // Read before the grant is leased: a token URL moved in between erases the tokens the lease then reads, so
        // a refresh token only ever goes to the endpoint of the configuration that issued it.
        let config = token_configs::find_in(&ctx.db, model.tenant_id, model.token_config_id).await?;
        // Taken by another caller meanwhile (or refreshed already): the next round reads what it did.
        let Some((leased, until)) = take_lease(ctx, &model).await? else { continue };
        // Dropped with a cancelled caller, it lets the grant go at once; a killed process's runs out.
        let lease = RefreshLease::keep(ctx.db.clone(), vec![leased.id], until);
        let refreshed = refresh_leased(ctx, &leased, &config, &lease).await;
        if matches!(refreshed, Err(TokenAccessError::App(_))) {
            // Postbridge's own failure: the lease goes, so the next caller (or batch) may try at once.
            let _ = lease.release().await;
        } else {
            lease.ended();
        }
        match refreshed? {
            Some(token) => return Ok(token),
            None => continue,
        }
    }
}

/// Leases the grant for an on-demand refresh when nobody holds it and it is as `model` saw it (a refresh or a
/// failure recorded meanwhile changes `updated_at`); the row as leased, and the lease.
async fn take_lease(ctx: &AppContext, model: &grant::Model) -> AppResult<Option<(grant::Model, DateTime<Utc>)>> {
    let row = ctx
        .db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE grants SET refreshing_until = now() + make_interval(secs => $3) \
             WHERE id = $1 AND tenant_id = $2 AND (refreshing_until IS NULL OR refreshing_until <= now()) \
             AND updated_at = $4 RETURNING *",
            [model.id.into(), model.tenant_id.into(), LEASE_SECONDS.into(), model.updated_at.into()],
        ))
        .await?;
    let Some(row) = row else { return Ok(None) };
    let leased = grant::Model::from_query_result(&row, "")?;
    Ok(leased.refreshing_until.map(|until| (leased, until)))
}

/// Refreshes a grant whose lease the caller holds. `None` when the lease was lost meanwhile (a new consent
/// replaced the tokens): the caller reads the grant again.
async fn refresh_leased(
    ctx: &AppContext,
    leased: &grant::Model,
    config: &token_config::Model,
    lease: &RefreshLease,
) -> Result<Option<String>, TokenAccessError> {
    // Backing off after a provider outage: while the stored token still works, use it rather than hammer the
    // provider. (A refused client is not an outage: keep asking, so the admin's fix is seen at once.)
    if !config.needs_admin && leased.next_refresh_at.is_some_and(|next| next > Utc::now()) {
        if let Some(token) = still_valid_access_token(ctx, leased)? {
            release_held(&ctx.db, &[leased.id], lease.stop_renewing().await).await?;
            return Ok(Some(token));
        }
    }
    let answer = ask_provider(ctx, config, leased).await;
    // Renewed while the provider took its time; from here on the answer is written under its value.
    let until = lease.stop_renewing().await;
    match answer? {
        Ok(tokens) => {
            let one = Refreshed { model: leased, tokens: &tokens, lease: until };
            let txn = ctx.db.begin().await?;
            if let Err(first) = persist_refreshed(ctx, txn, &[one], &[config]).await {
                persist_refreshed_again(ctx, one, config, first).await?;
            }
            ctx.metrics.token_refresh("refreshed");
            // Stored, or the lease was lost to a new consent whose tokens win: these still work for this caller.
            Ok(Some(tokens.access_token))
        }
        Err(refused) => {
            let txn = ctx.db.begin().await?;
            let current = lock_grant(&txn, leased.tenant_id, leased.id).await?;
            if current.refreshing_until != Some(until) {
                // A new consent meanwhile: the refusal was for tokens that are gone.
                txn.commit().await?;
                return Ok(None);
            }
            let failure = record_refusal(ctx, &txn, &current, config, &refused).await?;
            release_held(&txn, &[leased.id], until).await?;
            txn.commit().await?;
            match failure {
                // An early refresh that failed leaves the current token usable until it really expires.
                TokenAccessError::Unavailable { .. } => match still_valid_access_token(ctx, leased)? {
                    Some(token) => Ok(Some(token)),
                    None => Err(failure),
                },
                other => Err(other),
            }
        }
    }
}

/// The grant's row, locked for `txn`.
async fn lock_grant(txn: &DatabaseTransaction, tenant_id: TenantId, grant_id: GrantId) -> AppResult<grant::Model> {
    grant::Entity::in_tenant(tenant_id)
        .filter(grant::Column::Id.eq(grant_id))
        .lock_exclusive()
        .one(txn)
        .await?
        .ok_or(AppError::not_found("grant"))
}

/// Asks the provider for new tokens for a grant whose lease the caller holds: client credentials for an app
/// grant, else its refresh token. The outer error is Postbridge's own (a secret that does not decrypt, a write).
pub(super) async fn ask_provider(
    ctx: &AppContext,
    config: &token_config::Model,
    locked: &grant::Model,
) -> AppResult<Result<TokenSet, TokenError>> {
    if config.flow == OAuthFlow::App {
        return request_tokens(ctx, config, TokenRequest::ClientCredentials).await;
    }
    match &locked.refresh_token {
        Some(stored) => {
            let refresh = secrets::GRANT_REFRESH_TOKEN.open(&ctx.cipher, locked.tenant_id, locked.id, stored)?;
            request_tokens(ctx, config, TokenRequest::Refresh(&refresh)).await
        }
        None => Ok(Err(TokenError::Rejected {
            error: "invalid_grant".to_owned(),
            description: Some("no refresh token stored".to_owned()),
        })),
    }
}

/// Records in `txn` what a refused or failed refresh of `locked` means: re-consent (`invalid_grant`), the
/// configuration's admin (a refused client), or a backoff (the provider unavailable). Returns the error to report.
/// `token_refreshes_total` counts here and on success, where the provider was asked: background and on-demand
/// refreshes alike.
pub(super) async fn record_refusal(
    ctx: &AppContext,
    txn: &DatabaseTransaction,
    locked: &grant::Model,
    config: &token_config::Model,
    refused: &TokenError,
) -> AppResult<TokenAccessError> {
    let message = refused.to_string();
    if refused.needs_reauth() {
        let kind = if locked.refresh_token.is_none() && config.flow != OAuthFlow::App {
            FailureKind::RefreshTokenMissing
        } else {
            refused.failure_kind()
        };
        bury_grant(txn, locked, &message, &kind).await?;
        ctx.metrics.token_refresh("reauth_required");
        return Ok(TokenAccessError::ReauthRequired { message, kind });
    }
    if refused.needs_admin() {
        let kind = refused.failure_kind();
        mark_config(txn, config, true, Some(&message)).await?;
        record_failure(txn, locked, &message, &kind, None).await?;
        ctx.metrics.token_refresh("needs_admin");
        return Ok(TokenAccessError::NeedsAdmin { message, kind });
    }
    let retry_after = match refused {
        TokenError::Unavailable { retry_after, .. } => *retry_after,
        _ => None,
    };
    record_failure(txn, locked, &message, &refused.failure_kind(), retry_after).await?;
    ctx.metrics.token_refresh("failed");
    Ok(TokenAccessError::Unavailable { reason: message, retry_after })
}

/// Stores refreshed tokens (and clears `needs_admin` on the configurations among `configs` that had it, since
/// their credentials just worked), then commits.
pub(super) async fn persist_refreshed(
    ctx: &AppContext,
    txn: DatabaseTransaction,
    refreshed: &[Refreshed<'_>],
    configs: &[&token_config::Model],
) -> AppResult<u64> {
    let stored = save_refreshed(ctx, &txn, refreshed).await?;
    for config in configs.iter().filter(|config| config.needs_admin) {
        mark_config(&txn, config, false, None).await?;
    }
    txn.commit().await?;
    Ok(stored)
}

/// New tokens for a grant, and the lease (`refreshing_until`) they are written under: they are stored only while
/// the row still carries it.
#[derive(Clone, Copy)]
pub(super) struct Refreshed<'a> {
    pub model: &'a grant::Model,
    pub tokens: &'a TokenSet,
    pub lease: DateTime<Utc>,
}

/// Retries after storing refreshed tokens failed (a failed COMMIT included). The provider may have rotated the
/// refresh token: the old one is dead there and the new one exists only in memory, so giving up at once would
/// lose the grant.
const PERSIST_RETRIES: u32 = 4;

pub(super) async fn persist_refreshed_again(
    ctx: &AppContext,
    refreshed: Refreshed<'_>,
    config: &token_config::Model,
    first: AppError,
) -> AppResult<()> {
    let (tenant_id, grant_id) = (refreshed.model.tenant_id, refreshed.model.id);
    let mut last = first;
    for attempt in 1..=PERSIST_RETRIES {
        tracing::warn!(%grant_id, attempt, error = %last, "storing refreshed tokens failed; retrying");
        tokio::time::sleep(Duration::from_millis(100u64 << attempt.min(6))).await;
        let retried = async {
            let txn = ctx.db.begin().await?;
            let model = lock_grant(&txn, tenant_id, grant_id).await?;
            persist_refreshed(ctx, txn, &[Refreshed { model: &model, ..refreshed }], &[config]).await.map(|_| ())
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

/// Stores new tokens for every grant in `refreshed` in one statement: each valid again, without error, backoff or
/// lease (as `mark_fresh` says). A rotated refresh token goes in the same transaction, a missing one keeps the
/// old. An answer is stored only while its lease holds (a new consent meanwhile replaced the tokens).
/// Returns how many grants were stored.
async fn save_refreshed(ctx: &AppContext, txn: &DatabaseTransaction, refreshed: &[Refreshed<'_>]) -> AppResult<u64> {
    if refreshed.is_empty() {
        return Ok(0);
    }
    let now = Utc::now();
    let mut rows = Vec::with_capacity(refreshed.len());
    for Refreshed { model, tokens, lease } in refreshed {
        let (tenant_id, id) = (model.tenant_id, model.id);
        let rotated = match &tokens.refresh_token {
            Some(rotated) => Some(secrets::GRANT_REFRESH_TOKEN.seal(&ctx.cipher, tenant_id, id, rotated)?),
            None => None,
        };
        rows.push(json!({
            "id": id,
            "access_token": secrets::GRANT_ACCESS_TOKEN.seal(&ctx.cipher, tenant_id, id, &tokens.access_token)?,
            "refresh_token": rotated,
            "expires_at": tokens.expires_at,
            "refresh_at": refresh_at_for(tokens.expires_at, now),
            "lease": lease,
        }));
    }
    let stored = txn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!(
                "UPDATE grants AS g SET access_token = t.access_token, \
                        refresh_token = COALESCE(t.refresh_token, g.refresh_token), \
                        expires_at = t.expires_at, refresh_at = t.refresh_at, status = '{valid}', last_error = NULL, \
                        last_error_kind = NULL, refresh_failures = 0, next_refresh_at = NULL, refreshing_until = NULL, \
                        last_refreshed_at = $2, updated_at = $2 \
                 FROM jsonb_to_recordset($1) AS t(id uuid, access_token text, refresh_token text, \
                                                  expires_at timestamptz, refresh_at timestamptz, lease timestamptz) \
                 WHERE g.id = t.id AND g.refreshing_until = t.lease",
                valid = GrantStatus::Valid.as_str()
            ),
            [serde_json::Value::Array(rows).into(), now.into()],
        ))
        .await?;
    Ok(stored.rows_affected())
}

/// A grant that just got tokens: valid, no error, no backoff.
pub(super) fn mark_fresh(active: &mut grant::ActiveModel, now: DateTime<Utc>) {
    active.status = Set(GrantStatus::Valid);
    active.last_error = Set(None);
    active.last_error_kind = Set(None);
    active.refresh_failures = Set(0);
    active.next_refresh_at = Set(None);
    // A background batch refreshing the grant meanwhile finds its lease gone and drops its answer.
    active.refreshing_until = Set(None);
    active.last_refreshed_at = Set(Some(now));
    active.updated_at = Set(now);
}

/// A failed refresh that is not the grant's fault: tokens and status stay, the next attempt waits.
pub(super) async fn record_failure(
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
