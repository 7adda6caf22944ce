//! Talking to an account's mail server: its endpoint and credentials (a password, or a fresh access token
//! from its grant), leases so one worker at a time holds a mailbox, and "test & confirm".

use chrono::Utc;
use sea_orm::{ConnectionTrait, DbBackend, EntityTrait, FromQueryResult, Statement};
use uuid::Uuid;

use super::accounts;
use super::grants::{self, TokenAccessError};
use super::token_configs;
use crate::access::auth::TenantScope;
use crate::connect::account_lifecycle::{self, AccountEvent};
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::failure::FailureKind;
use crate::failure::MailStep;
use crate::model::{AuthMethod, Protocol, Role};
use crate::protocols::error::{Endpoint, MailAuth, MailError, Timeouts};
use crate::secrets;
use crate::store::entities::email_account;

pub fn endpoint(account: &email_account::Model) -> AppResult<Endpoint> {
    let security = account.security;
    let port = u16::try_from(account.port).map_err(|_| AppError::Internal(anyhow::anyhow!("stored port out of range")))?;
    Ok(Endpoint::new(account.host.clone(), port, security))
}

/// Why an account's credentials could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The account or its grant is at fault (no password, not authorized, consent withdrawn, provider down).
    #[error(transparent)]
    Mail(#[from] MailError),
    /// Postbridge itself failed (database, pool, decryption): a transient failure that says nothing about the
    /// account or its grant, so neither is touched.
    #[error(transparent)]
    Internal(AppError),
}

/// The account's credentials now: its password, or a valid access token of its grant.
pub async fn credentials(ctx: &AppContext, account: &email_account::Model) -> Result<MailAuth, CredentialError> {
    match account.auth_method {
        AuthMethod::Password => {
            let stored = account.password.as_deref().ok_or_else(|| MailError::new(MailStep::Auth, "no password is stored"))?;
            let password = secrets::ACCOUNT_PASSWORD
                .open(&ctx.cipher, account.tenant_id, account.id, stored)
                .map_err(|e| CredentialError::Internal(e.into()))?;
            Ok(MailAuth::Password { login: account.login.clone(), password })
        }
        AuthMethod::Oauth2 => {
            let grant_id = account
                .grant_id
                .ok_or_else(|| MailError::new(MailStep::Auth, "the account is not authorized yet: authorize it first"))?;
            // Checked again on every use: the configuration's allowed hosts may have changed since the account was saved.
            let config_id = account
                .token_config_id
                .ok_or_else(|| MailError::new(MailStep::Auth, "the account has no token configuration"))?;
            let config = token_configs::find(ctx, account.tenant_id, config_id).await.map_err(CredentialError::Internal)?;
            if let Err(refused) = token_configs::check_mail_host(&config, &account.host, "host") {
                return Err(CredentialError::Mail(MailError::new(MailStep::Auth, refused.to_string())));
            }
            let access_token = grants::access_token(ctx, account.tenant_id, grant_id).await.map_err(|e| match e {
                TokenAccessError::Unavailable { reason, .. } => CredentialError::Mail(
                    MailError::new(MailStep::Timeout, format!("token provider unavailable: {reason}"))
                        .caused_by(FailureKind::ProviderUnavailable),
                ),
                TokenAccessError::App(e) => CredentialError::Internal(e),
                other => {
                    let kind = other.failure_kind();
                    CredentialError::Mail(MailError::new(MailStep::Auth, other.to_string()).caused_by(kind))
                }
            })?;
            Ok(MailAuth::XOAuth2 { login: account.login.clone(), access_token })
        }
    }
}

/// Takes the account for `seconds` unless another worker holds it; `None` when it is held.
pub async fn lease<C: ConnectionTrait>(db: &C, account_id: Uuid, seconds: i64) -> AppResult<Option<email_account::Model>> {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE email_accounts SET lease_until = now() + make_interval(secs => $2) \
             WHERE id = $1 AND (lease_until IS NULL OR lease_until < now()) RETURNING *",
            [account_id.into(), (seconds as f64).into()],
        ))
        .await?;
    row.map(|r| email_account::Model::from_query_result(&r, "")).transpose().map_err(AppError::from)
}

/// Extends a held lease by `seconds` from now; false when the account is not leased any more.
pub async fn renew<C: ConnectionTrait>(db: &C, account_id: Uuid, seconds: i64) -> AppResult<bool> {
    let renewed = db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE email_accounts SET lease_until = now() + make_interval(secs => $2) WHERE id = $1 AND lease_until IS NOT NULL",
            [account_id.into(), (seconds as f64).into()],
        ))
        .await?;
    Ok(renewed.rows_affected() == 1)
}

pub async fn release<C: ConnectionTrait>(db: &C, account_id: Uuid) -> AppResult<()> {
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "UPDATE email_accounts SET lease_until = NULL WHERE id = $1",
        [account_id.into()],
    ))
    .await?;
    Ok(())
}

/// The outcome of "test & confirm".
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, async_graphql::SimpleObject, utoipa::ToSchema)]
pub struct TestResult {
    pub ok: bool,
    /// The failing step: dns, connect, tls, greeting, auth, folder, command, timeout.
    pub step: Option<String>,
    /// The server's own words on failure.
    pub message: Option<String>,
    pub account: crate::connect::accounts::Account,
}

/// Connects with the account's current credentials (IMAP: log in and select the folder; POP3: log in
/// and STAT; SMTP: EHLO, STARTTLS, AUTH) and moves it to confirmed, or says which step failed and why.
pub async fn test_and_confirm(ctx: &AppContext, scope: &TenantScope, account_id: Uuid) -> AppResult<TestResult> {
    let account = accounts::find_visible(ctx, scope, account_id).await?;
    scope.require(Role::Member)?;
    if !account.enabled {
        return Err(AppError::validation("enabled", "account_disabled", "enable the account before testing it"));
    }
    if let Some(config_id) = account.token_config_id {
        token_configs::find(ctx, scope.tenant_id, config_id).await?;
    }
    // At most one connection per mailbox: an inbound test takes the same lease as a poll.
    let inbound = account.direction == crate::model::Direction::Inbound;
    if inbound && lease(&ctx.db, account.id, 120).await?.is_none() {
        return Err(AppError::Conflict {
            code: "mailbox_busy",
            message: "a poll is using this mailbox right now; test again in a moment".to_owned(),
        });
    }
    let outcome = probe(ctx, &account).await;
    if inbound {
        release(&ctx.db, account.id).await?;
    }
    let now = Utc::now();
    let (sql, values): (String, Vec<sea_orm::Value>) = match &outcome {
        Ok(()) => (
            format!(
                "UPDATE email_accounts SET state = {}, confirmed_at = $2, last_error = NULL, last_error_kind = NULL, \
                 next_poll_at = $2, poll_failures = 0, updated_at = $2 WHERE id = $1",
                account_lifecycle::sql_after(AccountEvent::Confirmed)
            ),
            vec![account.id.into(), now.into()],
        ),
        Err(e) => (
            "UPDATE email_accounts SET last_error = $2, last_error_kind = $3, updated_at = $4 WHERE id = $1".to_owned(),
            vec![account.id.into(), e.to_string().into(), e.kind().into(), now.into()],
        ),
    };
    ctx.db.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
    // Becoming `confirmed` records `account.confirmed` (a database trigger writes every state change's event).
    let refreshed = email_account::Entity::find_by_id(account.id).one(&ctx.db).await?.ok_or(AppError::not_found("account"))?;
    Ok(TestResult {
        ok: outcome.is_ok(),
        step: outcome.as_ref().err().map(|e| e.step.as_str().to_owned()),
        message: outcome.as_ref().err().map(|e| e.message.clone()),
        account: accounts::view(refreshed)?,
    })
}

/// One connection attempt with the current credentials, bounded by the timeouts.
async fn probe(ctx: &AppContext, account: &email_account::Model) -> Result<(), MailError> {
    let endpoint = endpoint(account).map_err(|e| MailError::new(MailStep::Unknown, e.to_string()))?;
    let auth = credentials(ctx, account).await.map_err(|e| match e {
        CredentialError::Mail(e) => e,
        // A person asked for this test: say it failed, without judging the account on Postbridge's own failure.
        CredentialError::Internal(e) => MailError::new(MailStep::Unknown, format!("could not read the stored credentials: {e}")),
    })?;
    let timeouts = Timeouts::default();
    let overall = timeouts.connect + timeouts.io * 3;
    let attempt = async {
        match account.protocol {
            Protocol::Imap => {
                let mut session =
                    crate::protocols::imap::ImapSession::connect(&ctx.guard, &ctx.mail_tls, &endpoint, &auth, timeouts).await?;
                session.select(account.folder.as_deref().unwrap_or("INBOX")).await?;
                let _ = session.logout().await;
                Ok(())
            }
            Protocol::Pop3 => {
                let mut session =
                    crate::protocols::pop3::Pop3Session::connect(&ctx.guard, &ctx.mail_tls, &endpoint, &auth, timeouts).await?;
                session.stat().await?;
                session.quit().await?;
                Ok(())
            }
            Protocol::Smtp => ctx.smtp.test_connection(&endpoint, &auth).await.map(|_| ()),
        }
    };
    match tokio::time::timeout(overall, attempt).await {
        Ok(result) => result,
        Err(_) => Err(MailError::timeout("the test", overall)),
    }
}

/// Marks an account as failing with the server's words; auth failures need a person.
pub async fn record_account_error<C: ConnectionTrait>(
    db: &C,
    account: &email_account::Model,
    error: &MailError,
) -> AppResult<()> {
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        format!(
            "UPDATE email_accounts SET state = {}, last_error = $2, last_error_kind = $3, lease_until = NULL, \
             dispatched_until = NULL, updated_at = now() WHERE id = $1",
            account_lifecycle::sql_after(AccountEvent::Failed)
        ),
        [account.id.into(), error.to_string().into(), error.kind().into()],
    ))
    .await?;
    Ok(())
}
