//! Credential health: for every grant and token configuration, the date it is expected to break and why, soonest
//! first, so operators act before the outage rather than after it.
//!
//! Causes: the client secret's recorded expiry date; Microsoft's 90-day refresh-token inactivity limit (counted from
//! the last refresh, else the grant's creation); Google's 7-day refresh-token lifetime for apps in "Testing"
//! (counted from the last consent: the newest `grant.connected` event, else the grant's creation). The earliest
//! wins per item. Items already broken (a grant needing re-consent, a configuration whose credentials the provider
//! refuses) come first, dated when they broke.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use sea_orm::{ConnectionTrait, DbBackend, QueryResult, Statement};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::events;
use crate::access::auth::{Principal, TenantScope};
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::model::{ExpiringQuery, GrantStatus, OAuthFlow, Provider, Role};
use crate::observe::hints::{self, Facts, Problem, Upcoming};
use crate::store::ids::{AccountId, GrantId, TenantId, TokenConfigId};

/// Microsoft revokes refresh tokens unused for this long.
pub const MICROSOFT_INACTIVITY_DAYS: i64 = 90;
/// Google's refresh tokens of apps in "Testing" live this long after consent.
pub const GOOGLE_TESTING_APP_DAYS: i64 = 7;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema, async_graphql::Enum)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    Grant,
    TokenConfig,
}

/// Why the credential breaks (or broke).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema, async_graphql::Enum)]
#[serde(rename_all = "snake_case")]
pub enum BreakCause {
    ClientSecretExpiry,
    RefreshTokenInactivity,
    TestingAppConsentExpiry,
    /// Broken: the grant needs re-consent.
    ReauthRequired,
    /// Broken: the provider refuses the configuration's client id or secret.
    NeedsAdmin,
}

/// One grant or token configuration and when it is expected to break.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, async_graphql::SimpleObject)]
pub struct CredentialHealth {
    pub kind: CredentialKind,
    /// The grant's or the token configuration's id.
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub tenant_slug: String,
    pub token_config_id: Uuid,
    pub token_config_name: String,
    pub provider: Provider,
    /// Grants: the mailbox login served (`app` for the app flow).
    pub subject: Option<String>,
    /// Grants: an account using it (where re-consent starts).
    pub account_id: Option<Uuid>,
    pub cause: BreakCause,
    /// Already broken (or past the expected date).
    pub broken: bool,
    /// When it breaks, or when it broke.
    pub breaks_at: DateTime<Utc>,
    /// Whole days until `breaks_at` (negative once past).
    pub days_left: i64,
    /// What to do (before the date, or now).
    pub problem: Problem,
}

struct ConfigRow {
    id: TokenConfigId,
    tenant_id: TenantId,
    tenant_slug: String,
    name: String,
    provider: Provider,
    flow: OAuthFlow,
    client_id: String,
    secret_expires_on: Option<NaiveDate>,
    needs_admin: bool,
    testing_app: bool,
    last_error: Option<String>,
    /// When the provider started refusing the credentials (the newest `token_config.needs_admin` event).
    needs_admin_since: DateTime<Utc>,
}

struct GrantRow {
    id: GrantId,
    tenant_id: TenantId,
    token_config_id: TokenConfigId,
    subject: String,
    status: GrantStatus,
    has_refresh_token: bool,
    last_error: Option<String>,
    last_error_kind: Option<crate::failure::FailureKind>,
    last_refreshed_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    consented_at: Option<DateTime<Utc>>,
    account_id: Option<AccountId>,
}

fn config_row(row: &QueryResult) -> AppResult<ConfigRow> {
    let updated_at: DateTime<Utc> = row.try_get("", "updated_at")?;
    Ok(ConfigRow {
        id: row.try_get("", "id")?,
        tenant_id: row.try_get("", "tenant_id")?,
        tenant_slug: row.try_get("", "tenant_slug")?,
        name: row.try_get("", "name")?,
        provider: row.try_get("", "provider")?,
        flow: row.try_get("", "flow")?,
        client_id: row.try_get("", "client_id")?,
        secret_expires_on: row.try_get("", "client_secret_expires_at")?,
        needs_admin: row.try_get("", "needs_admin")?,
        testing_app: row.try_get("", "testing_app")?,
        last_error: row.try_get("", "last_error")?,
        needs_admin_since: row.try_get::<Option<DateTime<Utc>>>("", "needs_admin_since")?.unwrap_or(updated_at),
    })
}

fn grant_row(row: &QueryResult) -> AppResult<GrantRow> {
    Ok(GrantRow {
        id: row.try_get("", "id")?,
        tenant_id: row.try_get("", "tenant_id")?,
        token_config_id: row.try_get("", "token_config_id")?,
        subject: row.try_get("", "subject")?,
        status: row.try_get("", "status")?,
        has_refresh_token: row.try_get("", "has_refresh_token")?,
        last_error: row.try_get("", "last_error")?,
        last_error_kind: row.try_get("", "last_error_kind")?,
        last_refreshed_at: row.try_get("", "last_refreshed_at")?,
        created_at: row.try_get("", "created_at")?,
        updated_at: row.try_get("", "updated_at")?,
        consented_at: row.try_get("", "consented_at")?,
        account_id: row.try_get("", "account_id")?,
    })
}

/// A secret "expiring on" a date stops working from that day on.
fn start_of(day: NaiveDate) -> DateTime<Utc> {
    day.and_time(chrono::NaiveTime::MIN).and_utc()
}

fn days_until(at: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
    (at - now).num_days()
}

fn facts_of_config(config: &ConfigRow) -> Facts<'_> {
    Facts {
        provider: Some(config.provider),
        token_config_id: Some(config.id),
        client_id: Some(&config.client_id),
        needs_admin: config.needs_admin,
        config_error: config.last_error.as_deref(),
        testing_app: config.testing_app,
        ..Facts::default()
    }
}

/// The problem of a broken configuration (the classifier always answers for `needs_admin`).
fn config_problem(facts: &Facts<'_>) -> AppResult<Problem> {
    hints::classify(facts).ok_or_else(|| AppError::Internal(anyhow::anyhow!("no hint for a broken token configuration")))
}

fn config_item(config: &ConfigRow, now: DateTime<Utc>) -> AppResult<Option<CredentialHealth>> {
    let facts = facts_of_config(config);
    let (cause, breaks_at, problem) = if config.needs_admin {
        (BreakCause::NeedsAdmin, config.needs_admin_since, config_problem(&facts)?)
    } else if let Some(day) = config.secret_expires_on {
        (BreakCause::ClientSecretExpiry, start_of(day), hints::upcoming(Upcoming::ClientSecretExpiry, &facts, day))
    } else {
        return Ok(None);
    };
    Ok(Some(CredentialHealth {
        kind: CredentialKind::TokenConfig,
        id: config.id.into(),
        tenant_id: config.tenant_id.into(),
        tenant_slug: config.tenant_slug.clone(),
        token_config_id: config.id.into(),
        token_config_name: config.name.clone(),
        provider: config.provider,
        subject: None,
        account_id: None,
        cause,
        broken: config.needs_admin || breaks_at <= now,
        breaks_at,
        days_left: days_until(breaks_at, now),
        problem,
    }))
}

fn grant_item(grant: &GrantRow, config: &ConfigRow, now: DateTime<Utc>) -> AppResult<Option<CredentialHealth>> {
    let mut facts = facts_of_config(config);
    facts.account_id = grant.account_id;
    facts.login = Some(grant.subject.as_str()).filter(|s| *s != crate::store::entities::grant::APP_SUBJECT);
    facts.grant_status = Some(grant.status);
    facts.grant_error = grant.last_error.as_deref();
    facts.grant_kind = grant.last_error_kind.as_ref();
    let dead = grant.status == GrantStatus::ReauthRequired;
    let found = if dead {
        // Re-consent is what the grant needs, whatever the configuration's own state.
        facts.needs_admin = false;
        facts.config_error = None;
        Some((BreakCause::ReauthRequired, grant.updated_at, config_problem(&facts)?))
    } else if config.needs_admin {
        Some((BreakCause::NeedsAdmin, config.needs_admin_since, config_problem(&facts)?))
    } else {
        let mut candidates: Vec<(BreakCause, DateTime<Utc>, Upcoming)> = Vec::new();
        if let Some(day) = config.secret_expires_on {
            candidates.push((BreakCause::ClientSecretExpiry, start_of(day), Upcoming::ClientSecretExpiry));
        }
        let user_flow = config.flow == OAuthFlow::User && grant.has_refresh_token;
        if user_flow && config.provider == Provider::Microsoft {
            let last_use = grant.last_refreshed_at.unwrap_or(grant.created_at);
            candidates.push((
                BreakCause::RefreshTokenInactivity,
                last_use + chrono::Duration::days(MICROSOFT_INACTIVITY_DAYS),
                Upcoming::RefreshTokenInactivity,
            ));
        }
        if user_flow && config.provider == Provider::Google && config.testing_app {
            let consented = grant.consented_at.unwrap_or(grant.created_at);
            candidates.push((
                BreakCause::TestingAppConsentExpiry,
                consented + chrono::Duration::days(GOOGLE_TESTING_APP_DAYS),
                Upcoming::TestingAppConsentExpiry,
            ));
        }
        candidates
            .into_iter()
            .min_by_key(|(_, at, _)| *at)
            .map(|(cause, at, kind)| (cause, at, hints::upcoming(kind, &facts, at.date_naive())))
    };
    let Some((cause, breaks_at, problem)) = found else { return Ok(None) };
    Ok(Some(CredentialHealth {
        kind: CredentialKind::Grant,
        id: grant.id.into(),
        tenant_id: grant.tenant_id.into(),
        tenant_slug: config.tenant_slug.clone(),
        token_config_id: config.id.into(),
        token_config_name: config.name.clone(),
        provider: config.provider,
        subject: Some(grant.subject.clone()),
        account_id: grant.account_id.map(Into::into),
        cause,
        broken: dead || config.needs_admin || breaks_at <= now,
        breaks_at,
        days_left: days_until(breaks_at, now),
        problem,
    }))
}

fn window(query: &ExpiringQuery) -> AppResult<i64> {
    let days = query.within_days.unwrap_or(30);
    if !(0..=365).contains(&days) {
        return Err(AppError::validation("within_days", "invalid_window", "within_days must be between 0 and 365"));
    }
    Ok(days)
}

/// Two queries (configurations, grants), whatever the number of items. `tenant = None`: every tenant.
async fn collect(ctx: &AppContext, tenant: Option<Uuid>, query: ExpiringQuery) -> AppResult<Vec<CredentialHealth>> {
    let horizon = Utc::now() + chrono::Duration::days(window(&query)?);
    let now = Utc::now();
    let configs = ctx
        .db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT c.id, c.tenant_id, t.slug AS tenant_slug, c.name, c.provider, c.flow, c.client_id, \
                    c.client_secret_expires_at, c.needs_admin, c.testing_app, c.last_error, c.updated_at, \
                    (SELECT max(e.created_at) FROM events e WHERE e.tenant_id = c.tenant_id AND e.resource_id = c.id \
                       AND e.event_type = $2) AS needs_admin_since \
             FROM token_configs c JOIN tenants t ON t.id = c.tenant_id \
             WHERE ($1::uuid IS NULL OR c.tenant_id = $1)",
            [tenant.into(), events::TOKEN_CONFIG_NEEDS_ADMIN.into()],
        ))
        .await?
        .iter()
        .map(config_row)
        .collect::<AppResult<Vec<_>>>()?;
    let grants = ctx
        .db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT g.id, g.tenant_id, g.token_config_id, g.subject, g.status, g.refresh_token IS NOT NULL AS has_refresh_token, \
                    g.last_error, g.last_error_kind, g.last_refreshed_at, g.created_at, g.updated_at, \
                    (SELECT max(e.created_at) FROM events e WHERE e.tenant_id = g.tenant_id AND e.resource_id = g.id \
                       AND e.event_type = $2) AS consented_at, \
                    (SELECT a.id FROM email_accounts a WHERE a.tenant_id = g.tenant_id AND a.grant_id = g.id \
                       ORDER BY a.id LIMIT 1) AS account_id \
             FROM grants g WHERE ($1::uuid IS NULL OR g.tenant_id = $1)",
            [tenant.into(), events::GRANT_CONNECTED.into()],
        ))
        .await?
        .iter()
        .map(grant_row)
        .collect::<AppResult<Vec<_>>>()?;

    let by_id: HashMap<TokenConfigId, &ConfigRow> = configs.iter().map(|c| (c.id, c)).collect();
    let mut items = Vec::new();
    for config in &configs {
        items.extend(config_item(config, now)?);
    }
    for grant in &grants {
        if let Some(config) = by_id.get(&grant.token_config_id) {
            items.extend(grant_item(grant, config, now)?);
        }
    }
    items.retain(|item| item.broken || item.breaks_at <= horizon);
    // Broken first, then soonest; ids keep equal dates in a stable order.
    items.sort_by_key(|item| (!item.broken, item.breaks_at, item.id));
    Ok(items)
}

/// The tenant's credentials that are broken or break within `within_days` (default 30) — admins and viewers.
pub async fn for_tenant(ctx: &AppContext, scope: &TenantScope, query: ExpiringQuery) -> AppResult<Vec<CredentialHealth>> {
    require_oversight(&scope.principal)?;
    collect(ctx, Some(scope.tenant_id.into()), query).await
}

/// Every tenant's credentials (operator).
pub async fn for_operator(ctx: &AppContext, principal: &Principal, query: ExpiringQuery) -> AppResult<Vec<CredentialHealth>> {
    principal.require(Role::Operator)?;
    collect(ctx, None, query).await
}

/// Tenant-wide oversight (credential health, the overview) is for operators, admins and viewers; members see only
/// their own accounts elsewhere, so a tenant-wide view would show them other members' mailboxes.
pub(crate) fn require_oversight(principal: &Principal) -> AppResult<()> {
    if principal.role == Role::Member {
        return Err(AppError::forbidden("this overview needs the admin or viewer role; members see only their own accounts"));
    }
    principal.require(Role::Viewer)
}
