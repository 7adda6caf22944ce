//! Is a mailbox's inbound feed still alive? A mailbox can be polled without error and still receive nothing (mail
//! now delivered elsewhere, a server rule moving it away, the wrong folder), or hold an IDLE connection that keeps
//! dropping. Both show in the ops overview as warnings, so a broken feed is noticed before a customer does.
//!
//! Each mailbox keeps when mail last arrived, how many arrivals it has seen and its usual gap between them (a moving
//! average; messages stored within a minute of each other are one arrival, so a first sync of thousands counts
//! once). It is silent when it has seen enough arrivals to judge and nothing came for [`SILENCE_FACTOR`] times its
//! usual gap, and at least [`MIN_SILENCE`]. Its IDLE keeps dropping when the connection failed [`IDLE_DROPS`] times
//! within an hour.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, QueryResult, Statement};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::context::AppContext;
use crate::error::AppResult;
use crate::model::{AccountState, Direction};
use crate::store::ids::AccountId;

/// Arrivals a mailbox needs before its silence means anything.
pub const MIN_ARRIVALS: i32 = 5;
/// Silent: no arrival for this many usual gaps…
pub const SILENCE_FACTOR: f64 = 10.0;
/// …and for at least a day (weekends and nights are quiet for most mailboxes).
pub const MIN_SILENCE: chrono::Duration = chrono::Duration::days(1);
/// IDLE connection failures within an hour that make a warning.
pub const IDLE_DROPS: i32 = 10;

/// What is wrong with an inbound feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema, async_graphql::Enum)]
#[serde(rename_all = "snake_case")]
pub enum FeedWarningKind {
    /// Polled without error, yet nothing arrived for far longer than usual.
    InboundSilent,
    /// The IDLE connection failed again and again within the last hour.
    IdleDropping,
}

/// One mailbox whose inbound feed looks broken.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, async_graphql::SimpleObject)]
pub struct FeedWarning {
    pub kind: FeedWarningKind,
    pub account_id: Uuid,
    pub tenant_id: Uuid,
    pub tenant_slug: String,
    pub login: String,
    /// When mail last arrived (`null`: never since this was recorded).
    pub last_received_at: Option<DateTime<Utc>>,
    /// The mailbox's usual gap between arrivals, in seconds.
    pub usual_gap_seconds: Option<i64>,
    /// IDLE connection failures in the current hour-long window.
    pub idle_drops_last_hour: i32,
    pub last_polled_at: Option<DateTime<Utc>>,
    pub message: String,
}

/// Records an arrival in the transaction that stored new messages (only call it when some were stored).
pub async fn record_arrival<C: ConnectionTrait>(db: &C, account_id: AccountId) -> AppResult<()> {
    // Every right-hand side reads the row as it was before this statement.
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "UPDATE email_accounts SET
            usual_gap_seconds = CASE
                WHEN last_received_at IS NULL OR now() - last_received_at < interval '1 minute' THEN usual_gap_seconds
                WHEN usual_gap_seconds IS NULL THEN EXTRACT(EPOCH FROM now() - last_received_at)
                ELSE 0.8 * usual_gap_seconds + 0.2 * EXTRACT(EPOCH FROM now() - last_received_at) END,
            arrivals = CASE
                WHEN last_received_at IS NOT NULL AND now() - last_received_at < interval '1 minute' THEN arrivals
                ELSE LEAST(arrivals, 1000000) + 1 END,
            last_received_at = now()
         WHERE id = $1",
        [account_id.into()],
    ))
    .await?;
    Ok(())
}

/// Records that a mailbox's IDLE connection failed (counted per hour-long window).
pub async fn record_idle_drop<C: ConnectionTrait>(db: &C, account_id: AccountId) -> AppResult<()> {
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "UPDATE email_accounts SET
            idle_drops = CASE WHEN idle_drops_since > now() - interval '1 hour' THEN LEAST(idle_drops, 1000000) + 1 ELSE 1 END,
            idle_drops_since = CASE WHEN idle_drops_since > now() - interval '1 hour' THEN idle_drops_since ELSE now() END
         WHERE id = $1",
        [account_id.into()],
    ))
    .await?;
    Ok(())
}

/// Enabled, confirmed inbound mailboxes whose feed looks broken, longest silent first; `tenant = None`: all tenants.
pub async fn warnings(ctx: &AppContext, tenant: Option<Uuid>, limit: i64) -> AppResult<Vec<FeedWarning>> {
    let rows = ctx
        .db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            // Each condition is written once, in the inner query; the outer one keeps the rows either holds for.
            "SELECT * FROM (
                SELECT a.id, a.tenant_id, t.slug AS tenant_slug, a.login, a.last_received_at, a.usual_gap_seconds,
                       a.last_polled_at,
                       CASE WHEN a.idle_drops_since > now() - interval '1 hour' THEN a.idle_drops ELSE 0 END AS idle_drops,
                       (a.arrivals >= $4 AND a.last_received_at < now() - make_interval(
                           secs => GREATEST(COALESCE(a.usual_gap_seconds, 0) * $5, $6))) AS silent
                FROM email_accounts a JOIN tenants t ON t.id = a.tenant_id
                WHERE a.direction = $2 AND a.enabled AND a.state = $3 AND ($1::uuid IS NULL OR a.tenant_id = $1)
             ) w
             WHERE w.silent OR w.idle_drops >= $7
             ORDER BY w.last_received_at ASC NULLS FIRST, w.id LIMIT $8",
            [
                tenant.into(),
                Direction::Inbound.into(),
                AccountState::Confirmed.into(),
                MIN_ARRIVALS.into(),
                SILENCE_FACTOR.into(),
                (MIN_SILENCE.num_seconds() as f64).into(),
                IDLE_DROPS.into(),
                limit.into(),
            ],
        ))
        .await?;
    rows.iter().map(warning_of).collect()
}

fn warning_of(row: &QueryResult) -> AppResult<FeedWarning> {
    let silent: bool = row.try_get("", "silent")?;
    let last_received_at: Option<DateTime<Utc>> = row.try_get("", "last_received_at")?;
    let usual_gap: Option<f64> = row.try_get("", "usual_gap_seconds")?;
    let idle_drops: i32 = row.try_get("", "idle_drops")?;
    let (kind, message) = if silent {
        let hours = last_received_at.map(|at| (Utc::now() - at).num_hours()).unwrap_or_default();
        (
            FeedWarningKind::InboundSilent,
            format!(
                "no mail has arrived for {hours} hours, far longer than usual for this mailbox, although it is polled \
                 without error: check that mail is still delivered to it (forwarding, server rules moving mail out of the \
                 folder, the folder configured)"
            ),
        )
    } else {
        (
            FeedWarningKind::IdleDropping,
            format!(
                "its IDLE connection failed {idle_drops} times within the last hour: check the server's connection \
                 limits and timeouts (an IDLE timeout shorter than POSTBRIDGE_IDLE_REISSUE drops every cycle)"
            ),
        )
    };
    Ok(FeedWarning {
        kind,
        account_id: row.try_get("", "id")?,
        tenant_id: row.try_get("", "tenant_id")?,
        tenant_slug: row.try_get("", "tenant_slug")?,
        login: row.try_get("", "login")?,
        last_received_at,
        usual_gap_seconds: usual_gap.map(|gap| gap.round() as i64),
        idle_drops_last_hour: idle_drops,
        last_polled_at: row.try_get("", "last_polled_at")?,
        message,
    })
}
