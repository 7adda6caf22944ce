//! "Test & confirm": connect with an account's current credentials, and confirm it, or say which step failed.

use chrono::Utc;
use sea_orm::{ConnectionTrait, DbBackend, EntityTrait, Statement};

use super::accounts;
use super::mailbox::{credentials, endpoint, lease, release, CredentialError};
use super::token_configs;
use crate::access::auth::TenantScope;
use crate::connect::account_lifecycle::{self, AccountEvent};
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::failure::MailStep;
use crate::model::{Protocol, Role};
use crate::protocols::error::{MailError, Timeouts};
use crate::store::entities::email_account;
use crate::store::ids::AccountId;

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
pub async fn test_and_confirm(ctx: &AppContext, scope: &TenantScope, account_id: AccountId) -> AppResult<TestResult> {
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
    // Routing in this process sees the change at once; the others hear it announced.
    ctx.route_cache.changed();
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
