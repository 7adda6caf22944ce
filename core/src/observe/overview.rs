//! The operator overview: per tenant, accounts by state, grants needing re-consent, client secrets expiring, the
//! outbox, poll lag; the worst offenders (accounts failing longest) and the mailboxes whose feed looks broken. Two grouped queries whatever the number
//! of tenants, so an ops dashboard needs one call.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, FromQueryResult, QueryResult, Statement};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::credential_health::require_oversight;
use crate::access::auth::Principal;
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::model::{AccountState, Direction, GrantStatus, OutboundStatus, Protocol, TenantStatus};
use crate::observe::hints::{self, Problem};
use crate::receive::feed_health::{self, FeedWarning};
use crate::store::entities::email_account;

/// Client secrets expiring within this many days count as expiring.
pub const SECRET_EXPIRY_WINDOW_DAYS: i32 = 30;

#[derive(Clone, Copy, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OverviewQuery {
    /// How many worst offenders to list, 1 to 200 (default 20).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u64>,
    /// Operators: only this tenant. A tenant credential may name only its own.
    pub tenant_id: Option<Uuid>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, async_graphql::SimpleObject)]
pub struct AccountStateCounts {
    pub draft: i64,
    pub authorized: i64,
    pub confirmed: i64,
    pub error: i64,
    pub disabled: i64,
}

/// One tenant at a glance.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, async_graphql::SimpleObject)]
pub struct TenantOverview {
    pub tenant_id: Uuid,
    pub slug: String,
    pub name: String,
    pub status: TenantStatus,
    pub accounts: AccountStateCounts,
    /// Grants whose provider refused them (reauth_required or revoked): someone must consent again.
    pub grants_needing_reconsent: i64,
    /// Token configurations whose client id or secret the provider refuses.
    pub token_configs_needing_admin: i64,
    /// Client secrets expiring within 30 days (not yet expired).
    pub client_secrets_expiring: i64,
    /// Client secrets past their recorded expiry date.
    pub client_secrets_expired: i64,
    /// Outbound messages waiting to be sent (queued or being sent) now.
    pub messages_queued: i64,
    pub messages_failed_last_24h: i64,
    pub messages_sent_last_24h: i64,
    /// The worst poll lag over enabled, confirmed inbound accounts, in seconds: now minus the last poll, or how far
    /// overdue the first poll is. `null` without such accounts.
    pub poll_lag_seconds: Option<i64>,
}

/// An account in error, for the worst-offenders list.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, async_graphql::SimpleObject)]
pub struct FailingAccount {
    pub account_id: Uuid,
    pub tenant_id: Uuid,
    pub tenant_slug: String,
    pub login: String,
    pub direction: Direction,
    pub protocol: Protocol,
    pub last_error: Option<String>,
    pub problem: Option<Problem>,
    /// In error since then.
    pub failing_since: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, async_graphql::SimpleObject)]
pub struct OpsOverview {
    pub generated_at: DateTime<Utc>,
    /// Every tenant the caller may see (operators: all), by slug.
    pub tenants: Vec<TenantOverview>,
    /// Accounts in error, failing longest first.
    pub worst_offenders: Vec<FailingAccount>,
    /// Queues with work due that no live worker process consumes (operators only; empty for tenants).
    pub queue_warnings: Vec<QueueWarning>,
    /// Mailboxes whose inbound feed looks broken: silent for far longer than usual although polled without error
    /// (`inbound_silent`), or an IDLE connection that keeps dropping (`idle_dropping`); longest silent first.
    pub feed_warnings: Vec<FeedWarning>,
}

/// Work is waiting in a queue nobody takes from: no worker process runs, or every one has lost its consumer.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, async_graphql::SimpleObject)]
pub struct QueueWarning {
    pub queue: String,
    /// Jobs due now.
    pub due: i64,
    /// How long the oldest has waited, in seconds.
    pub oldest_due_seconds: i64,
    pub message: String,
}

/// Due work per queue against live consumers per queue (from the workers' heartbeats).
async fn queue_warnings(ctx: &AppContext) -> AppResult<Vec<QueueWarning>> {
    let live = crate::jobs::workers::live_consumers(ctx).await?;
    let backlog = super::ops_metrics::backlog(ctx).await?;
    Ok(backlog
        .into_iter()
        .filter(|b| b.due > 0 && live.get(&b.queue).copied().unwrap_or(0) == 0)
        .map(|b| QueueWarning {
            message: format!(
                "{} {} job(s) are due but no live worker consumes the {} queue: start a worker or see GET /v1/ops/workers",
                b.due, b.queue, b.queue
            ),
            oldest_due_seconds: b.oldest_seconds as i64,
            due: b.due,
            queue: b.queue,
        })
        .collect())
}

fn limit_of(query: &OverviewQuery) -> AppResult<i64> {
    match query.limit {
        None => Ok(20),
        Some(n) if (1..=200).contains(&n) => Ok(n as i64),
        Some(_) => Err(AppError::validation("limit", "invalid_limit", "limit must be between 1 and 200")),
    }
}

fn tenant_row(row: &QueryResult) -> AppResult<TenantOverview> {
    let count = |column: &str| -> AppResult<i64> { Ok(row.try_get::<Option<i64>>("", column)?.unwrap_or(0)) };
    Ok(TenantOverview {
        tenant_id: row.try_get("", "id")?,
        slug: row.try_get("", "slug")?,
        name: row.try_get("", "name")?,
        status: row.try_get("", "status")?,
        accounts: AccountStateCounts {
            draft: count("draft")?,
            authorized: count("authorized")?,
            confirmed: count("confirmed")?,
            error: count("error")?,
            disabled: count("disabled")?,
        },
        grants_needing_reconsent: count("grants_needing_reconsent")?,
        token_configs_needing_admin: count("token_configs_needing_admin")?,
        client_secrets_expiring: count("client_secrets_expiring")?,
        client_secrets_expired: count("client_secrets_expired")?,
        messages_queued: count("messages_queued")?,
        messages_failed_last_24h: count("messages_failed_last_24h")?,
        messages_sent_last_24h: count("messages_sent_last_24h")?,
        poll_lag_seconds: row.try_get("", "poll_lag_seconds")?,
    })
}

/// Per tenant in one statement: each table grouped once, joined on the tenant. `$1` the tenant (or NULL), `$2` the
/// secret expiry window, `$3`… the states counted (`tenants_sql_values`).
const TENANTS_SQL: &str = "
WITH acc AS (
    SELECT tenant_id,
           count(*) FILTER (WHERE state = $3) AS draft,
           count(*) FILTER (WHERE state = $4) AS authorized,
           count(*) FILTER (WHERE state = $5) AS confirmed,
           count(*) FILTER (WHERE state = $6) AS error,
           count(*) FILTER (WHERE state = $7) AS disabled,
           max(CASE
                 WHEN direction <> $8 OR NOT enabled OR state <> $5 THEN NULL
                 WHEN last_polled_at IS NOT NULL THEN EXTRACT(EPOCH FROM now() - last_polled_at)
                 WHEN next_poll_at IS NOT NULL THEN GREATEST(EXTRACT(EPOCH FROM now() - next_poll_at), 0)
                 ELSE 0
               END)::bigint AS poll_lag_seconds
    FROM email_accounts WHERE ($1::uuid IS NULL OR tenant_id = $1) GROUP BY tenant_id
), gr AS (
    SELECT tenant_id, count(*) AS grants_needing_reconsent
    FROM grants WHERE status = $9 AND ($1::uuid IS NULL OR tenant_id = $1) GROUP BY tenant_id
), tc AS (
    SELECT tenant_id,
           count(*) FILTER (WHERE needs_admin) AS token_configs_needing_admin,
           count(*) FILTER (WHERE client_secret_expires_at > current_date
                              AND client_secret_expires_at <= current_date + $2::int) AS client_secrets_expiring,
           count(*) FILTER (WHERE client_secret_expires_at <= current_date) AS client_secrets_expired
    FROM token_configs WHERE ($1::uuid IS NULL OR tenant_id = $1) GROUP BY tenant_id
), msg AS (
    SELECT tenant_id,
           count(*) FILTER (WHERE status IN ($10, $11)) AS messages_queued,
           count(*) FILTER (WHERE status = $12 AND updated_at > now() - interval '24 hours') AS messages_failed_last_24h,
           count(*) FILTER (WHERE status IN ($13, $14) AND sent_at > now() - interval '24 hours') AS messages_sent_last_24h
    FROM outbound_messages
    WHERE (status IN ($10, $11) OR updated_at > now() - interval '24 hours')
      AND ($1::uuid IS NULL OR tenant_id = $1)
    GROUP BY tenant_id
)
SELECT t.id, t.slug, t.name, t.status,
       acc.draft, acc.authorized, acc.confirmed, acc.error, acc.disabled, acc.poll_lag_seconds,
       gr.grants_needing_reconsent, tc.token_configs_needing_admin, tc.client_secrets_expiring, tc.client_secrets_expired,
       msg.messages_queued, msg.messages_failed_last_24h, msg.messages_sent_last_24h
FROM tenants t
LEFT JOIN acc ON acc.tenant_id = t.id
LEFT JOIN gr ON gr.tenant_id = t.id
LEFT JOIN tc ON tc.tenant_id = t.id
LEFT JOIN msg ON msg.tenant_id = t.id
WHERE ($1::uuid IS NULL OR t.id = $1)
ORDER BY t.slug";

/// The values of `TENANTS_SQL`, in the order of its parameters.
fn tenants_sql_values(tenant: Option<Uuid>) -> Vec<sea_orm::Value> {
    let mut values = vec![tenant.into(), SECRET_EXPIRY_WINDOW_DAYS.into()];
    values.extend([
        AccountState::Draft.into(),
        AccountState::Authorized.into(),
        AccountState::Confirmed.into(),
        AccountState::Error.into(),
        AccountState::Disabled.into(),
        Direction::Inbound.into(),
        GrantStatus::ReauthRequired.into(),
        OutboundStatus::Queued.into(),
        OutboundStatus::Sending.into(),
        OutboundStatus::Failed.into(),
        OutboundStatus::Sent.into(),
        OutboundStatus::PartiallySent.into(),
    ]);
    values
}

/// Operators see every tenant (or the one they name); a tenant admin or viewer sees only their own tenant.
pub async fn overview(ctx: &AppContext, principal: &Principal, query: OverviewQuery) -> AppResult<OpsOverview> {
    require_oversight(principal)?;
    let limit = limit_of(&query)?;
    let tenant = match (principal.tenant_id, query.tenant_id) {
        // Another tenant's id is indistinguishable from a missing one.
        (Some(own), Some(other)) if own != other => return Err(AppError::not_found("tenant")),
        (Some(own), _) => Some(own),
        (None, requested) => requested.map(Into::into),
    };
    let generated_at = Utc::now();
    let tenants = ctx
        .db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            TENANTS_SQL,
            tenants_sql_values(tenant.map(Into::into)),
        ))
        .await?
        .iter()
        .map(tenant_row)
        .collect::<AppResult<Vec<_>>>()?;
    if tenant.is_some() && tenants.is_empty() {
        return Err(AppError::not_found("tenant"));
    }
    let offenders = ctx
        .db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT a.*, t.slug AS tenant_slug FROM email_accounts a JOIN tenants t ON t.id = a.tenant_id \
             WHERE a.state = $3 AND ($1::uuid IS NULL OR a.tenant_id = $1) \
             ORDER BY a.failing_since ASC NULLS LAST, a.id LIMIT $2",
            [tenant.into(), limit.into(), AccountState::Error.into()],
        ))
        .await?
        .iter()
        .map(|row| {
            let account = email_account::Model::from_query_result(row, "")?;
            Ok(FailingAccount {
                account_id: account.id.into(),
                tenant_id: account.tenant_id.into(),
                tenant_slug: row.try_get("", "tenant_slug")?,
                direction: account.direction,
                protocol: account.protocol,
                problem: hints::for_account(&account),
                failing_since: account.failing_since,
                last_error: account.last_error,
                login: account.login,
            })
        })
        .collect::<AppResult<Vec<_>>>()?;
    // Deployment-wide, so only operators see it: the due counts span every tenant.
    let queue_warnings = if principal.is_operator() { queue_warnings(ctx).await? } else { Vec::new() };
    let feed_warnings = feed_health::warnings(ctx, tenant.map(Into::into), limit).await?;
    Ok(OpsOverview { generated_at, tenants, worst_offenders: offenders, queue_warnings, feed_warnings })
}
