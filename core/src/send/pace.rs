//! An account's sending pace: at most so many messages a minute, counted in Postgres so that it holds across
//! every worker process (Microsoft 365 mailboxes have their own, lower default).

use rand::Rng;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::context::AppContext;
use crate::error::AppResult;
use crate::jobs::leases::Leased;
use crate::model::OutboundStatus;
use crate::store::entities::email_account;
use crate::store::ids::OutboundMessageId;

/// The account's sending pace in messages per minute (0: none): its own if set, else the deployment's, where
/// Microsoft 365 mailboxes have their own.
pub fn per_minute(ctx: &AppContext, account: &email_account::Model) -> u32 {
    if let Some(own) = account.send_rate_per_minute {
        return u32::try_from(own).unwrap_or(0);
    }
    let microsoft =
        account.host.eq_ignore_ascii_case("smtp.office365.com") || account.host.to_ascii_lowercase().ends_with(".outlook.com");
    if microsoft {
        ctx.settings.microsoft_send_rate_per_minute
    } else {
        ctx.settings.send_rate_per_minute
    }
}

/// Seconds to wait when the account already sent its pace in the last minute (counted in Postgres, so the
/// pace holds across every worker process).
pub async fn wait(ctx: &AppContext, account: &email_account::Model) -> AppResult<Option<f64>> {
    let pace = per_minute(ctx, account);
    if pace == 0 {
        return Ok(None);
    }
    let row = ctx
        .db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT count(*) AS sent, EXTRACT(EPOCH FROM (min(sent_at) + interval '60 seconds' - now()))::float8 AS wait \
             FROM outbound_messages WHERE account_id = $1 AND status IN ($2, $3) AND sent_at > now() - interval '60 seconds'",
            [account.id.into(), OutboundStatus::Sent.into(), OutboundStatus::PartiallySent.into()],
        ))
        .await?;
    let Some(row) = row else { return Ok(None) };
    let sent: i64 = row.try_get("", "sent")?;
    if sent < i64::from(pace) {
        return Ok(None);
    }
    let wait: Option<f64> = row.try_get("", "wait")?;
    Ok(Some(wait.unwrap_or(1.0).max(1.0) + rand::rng().random_range(0.0..1.0)))
}

/// Puts a leased message back in the queue for `wait` seconds, the attempt not counted: it was never tried.
pub async fn postpone(ctx: &AppContext, message_id: OutboundMessageId, lease_token: uuid::Uuid, wait: f64) -> AppResult<()> {
    ctx.db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!(
                "UPDATE outbound_messages SET status = $4, attempts = attempts - 1, {}, dispatched_until = NULL, \
                 next_attempt_at = now() + make_interval(secs => $3), updated_at = now() \
                 WHERE id = $1 AND lease_token = $2 AND status = $5",
                Leased::Messages.released()
            ),
            [message_id.into(), lease_token.into(), wait.into(), OutboundStatus::Queued.into(), OutboundStatus::Sending.into()],
        ))
        .await?;
    Ok(())
}
