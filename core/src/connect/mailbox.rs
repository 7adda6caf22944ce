//! Talking to an account's mail server: its endpoint and credentials (a password, or a fresh access token
//! from its grant), the lease that lets one worker at a time hold a mailbox, and recording its failures.

use sea_orm::{ConnectionTrait, DbBackend, FromQueryResult, Statement};

use super::grants::{self, TokenAccessError};
use super::token_configs;
use crate::connect::account_lifecycle::{self, AccountEvent};
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::failure::FailureKind;
use crate::failure::MailStep;
use crate::jobs::leases::{Holder, Leased};
use crate::model::AuthMethod;
use crate::protocols::error::{Endpoint, MailAuth, MailError};
use crate::secrets;
use crate::store::entities::email_account;
use crate::store::ids::AccountId;

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
pub async fn lease<C: ConnectionTrait>(db: &C, account_id: AccountId, seconds: i64) -> AppResult<Option<email_account::Model>> {
    let row = Leased::Mailboxes.take(db, account_id.into(), seconds as f64).await?;
    row.map(|r| email_account::Model::from_query_result(&r, "")).transpose().map_err(AppError::from)
}

/// Extends a held lease by `seconds` from now; false when the account is not leased any more.
pub async fn renew<C: ConnectionTrait>(db: &C, account_id: AccountId, seconds: i64) -> AppResult<bool> {
    Leased::Mailboxes.renew(db, account_id.into(), Holder::Current, seconds as f64).await
}

pub async fn release<C: ConnectionTrait>(db: &C, account_id: AccountId) -> AppResult<()> {
    Leased::Mailboxes.release(db, account_id.into(), Holder::Current).await?;
    Ok(())
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
            "UPDATE email_accounts SET state = {}, last_error = $2, last_error_kind = $3, {}, \
             dispatched_until = NULL, updated_at = now() WHERE id = $1",
            account_lifecycle::sql_after(AccountEvent::Failed),
            Leased::Mailboxes.released()
        ),
        [account.id.into(), error.to_string().into(), error.kind().into()],
    ))
    .await?;
    Ok(())
}
