//! Gauges of state kept in Postgres, read at scrape time: queue depth and the oldest due job's age per kind,
//! grants by status, accounts by state. Postgres is the source of truth (Redis only dispatches), so these
//! count what is due there, across every tenant, in one query. Every process serving `/metrics` reports the
//! same values (aggregate with `max`, not `sum`).

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use subtle::ConstantTimeEq;

use crate::context::AppContext;
use crate::error::AppResult;
use crate::jobs::due;
use crate::model::{AccountState, GrantStatus};

/// Queue kinds, as in `jobs_total{kind}`.
pub const QUEUE_KINDS: &[&str] = &["send", "poll", "refresh", "settle", "webhook"];

/// One row per gauge value: `family` (queue / grants / accounts), its label, a count and (queues) an age. The
/// queues count what the scheduler's claims would take (`due`), plus the messages being sent.
fn gauges_sql() -> String {
    format!(
        "\
SELECT 'queue' AS family, 'send' AS label, count(*) AS n, \
       COALESCE(EXTRACT(EPOCH FROM now() - min(next_attempt_at)), 0)::float8 AS age \
  FROM outbound_messages WHERE ({send}) OR {sending} \
UNION ALL \
SELECT 'queue', 'poll', count(*), \
       COALESCE(EXTRACT(EPOCH FROM now() - min(COALESCE(next_poll_at, confirmed_at, created_at))), 0)::float8 \
  FROM email_accounts WHERE {poll} \
UNION ALL \
SELECT 'queue', 'refresh', count(*), \
       COALESCE(EXTRACT(EPOCH FROM now() - min(GREATEST(refresh_at, next_refresh_at))), 0)::float8 \
  FROM grants WHERE {refresh} \
UNION ALL \
SELECT 'queue', 'settle', count(*), \
       COALESCE(EXTRACT(EPOCH FROM now() - min(updated_at + interval '60 seconds')), 0)::float8 \
  FROM outbound_messages WHERE {settle} \
UNION ALL \
SELECT 'queue', 'webhook', count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(next_attempt_at)), 0)::float8 \
  FROM webhook_deliveries WHERE {webhook} \
UNION ALL \
SELECT 'grants', status, count(*), 0::float8 FROM grants GROUP BY status \
UNION ALL \
SELECT 'accounts', state, count(*), 0::float8 FROM email_accounts GROUP BY state",
        send = due::send(),
        sending = due::sending(),
        poll = due::poll(),
        refresh = due::refresh(),
        settle = due::settle(),
        webhook = due::webhook(),
    )
}

/// One row of `gauges_sql()`.
struct GaugeRow {
    family: String,
    label: String,
    count: i64,
    age: f64,
}

/// Reads every Postgres-backed gauge value in one query.
async fn gauge_rows(ctx: &AppContext) -> AppResult<Vec<GaugeRow>> {
    let rows = ctx.db.query_all_raw(Statement::from_string(DbBackend::Postgres, gauges_sql())).await?;
    rows.iter()
        .map(|row| {
            Ok(GaugeRow {
                family: row.try_get("", "family")?,
                label: row.try_get("", "label")?,
                count: row.try_get("", "n")?,
                age: row.try_get::<f64>("", "age")?.max(0.0),
            })
        })
        .collect()
}

/// Due work of one queue, as Postgres says.
#[derive(Clone, Debug, PartialEq)]
pub struct Backlog {
    pub queue: String,
    pub due: i64,
    /// How long the oldest due job has waited, in seconds.
    pub oldest_seconds: f64,
}

/// Due work per queue (every kind of `QUEUE_KINDS`, 0 when none).
pub async fn backlog(ctx: &AppContext) -> AppResult<Vec<Backlog>> {
    let mut backlog: Vec<Backlog> =
        QUEUE_KINDS.iter().map(|q| Backlog { queue: (*q).to_owned(), due: 0, oldest_seconds: 0.0 }).collect();
    for row in gauge_rows(ctx).await?.into_iter().filter(|row| row.family == "queue") {
        if let Some(entry) = backlog.iter_mut().find(|b| b.queue == row.label) {
            entry.due = row.count;
            entry.oldest_seconds = row.age;
        }
    }
    Ok(backlog)
}

/// Fills the Postgres-backed gauges of `ctx.metrics`. Every known label is set (0 when there is none), so a
/// value that drops to nothing reads 0 rather than its last count.
pub async fn refresh_gauges(ctx: &AppContext) -> AppResult<()> {
    let rows = gauge_rows(ctx).await?;
    let metrics = &ctx.metrics;
    for kind in QUEUE_KINDS {
        metrics.queue_depth.with_label_values(&[kind]).set(0);
        metrics.queue_oldest_age.with_label_values(&[kind]).set(0.0);
    }
    for status in GrantStatus::ALL {
        metrics.grants.with_label_values(&[status.as_str()]).set(0);
    }
    for state in AccountState::ALL {
        metrics.accounts.with_label_values(&[state.as_str()]).set(0);
    }
    for GaugeRow { family, label, count, age } in rows {
        // Labels come from the code's own sets; a value the code does not know is skipped, not exported.
        match family.as_str() {
            "queue" if QUEUE_KINDS.contains(&label.as_str()) => {
                metrics.queue_depth.with_label_values(&[&label]).set(count);
                metrics.queue_oldest_age.with_label_values(&[&label]).set(age);
            }
            "grants" if GrantStatus::parse(&label).is_some() => metrics.grants.with_label_values(&[&label]).set(count),
            "accounts" if AccountState::parse(&label).is_some() => metrics.accounts.with_label_values(&[&label]).set(count),
            _ => {}
        }
    }
    Ok(())
}

/// Whether a scrape may read `/metrics`: with `POSTBRIDGE_METRICS_TOKEN` set, only with `Authorization: Bearer <it>`
/// (compared in constant time); without it, only in development (`POSTBRIDGE_ALLOW_PRIVATE_HOSTS`).
pub fn scrape_allowed(ctx: &AppContext, authorization: Option<&str>) -> bool {
    // Without a token, metrics are open only in development (private hosts allowed); in production they are off
    // until an operator sets one, since they describe the whole deployment.
    let Some(expected) = ctx.settings.metrics_token.as_deref() else { return ctx.settings.allow_private_hosts };
    let presented = authorization
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .unwrap_or("");
    bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

/// Fills the gauges and renders the text exposition format; a failed gauge query is logged and the
/// counters are still served.
pub async fn scrape(ctx: &AppContext) -> String {
    if let Err(e) = refresh_gauges(ctx).await {
        tracing::error!(error = %e, "reading metrics gauges from Postgres failed");
    }
    ctx.metrics.render()
}
