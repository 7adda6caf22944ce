//! Worker processes as operators see them: each process writes a heartbeat row every few seconds (who it is,
//! its live consumers per queue, whether it is ready and why not); `GET /v1/ops/workers` lists the live ones
//! and those that stopped or died recently, and the ops overview warns when work is due that no live consumer
//! takes.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::access::auth::Principal;
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::jobs::job::Queue;
use crate::model::Role;
use crate::store::json::StringList;

/// How often a worker process writes its heartbeat row.
pub const HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// A process silent for this long (without a clean stop) is dead.
pub const DEAD_AFTER_SECONDS: i64 = 30;

/// The condition that a `worker_processes` row is a live process (it beat within [`DEAD_AFTER_SECONDS`]).
pub fn live() -> String {
    format!("stopped_at IS NULL AND last_seen >= now() - interval '{DEAD_AFTER_SECONDS} seconds'")
}
/// Stopped and dead processes stay listed this long.
pub const LISTED_FOR_HOURS: i64 = 24;
/// Rows older than this are deleted by the housekeeping pass.
pub const KEPT_FOR_DAYS: i64 = 7;

/// What one heartbeat says about its process.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    pub id: Uuid,
    pub host: String,
    pub pid: u32,
    pub version: String,
    pub started_at: DateTime<Utc>,
    /// Live consumers per queue.
    pub consumers: BTreeMap<String, i64>,
    pub ready: bool,
    pub problems: Vec<String>,
}

/// Writes (or refreshes) the process's row.
pub async fn record_heartbeat(ctx: &AppContext, beat: &Heartbeat) -> AppResult<()> {
    ctx.db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO worker_processes (id, host, pid, version, started_at, last_seen, consumers, ready, problems) \
             VALUES ($1, $2, $3, $4, $5, now(), $6, $7, $8) \
             ON CONFLICT (id) DO UPDATE SET last_seen = now(), consumers = $6, ready = $7, problems = $8, stopped_at = NULL",
            [
                beat.id.into(),
                beat.host.clone().into(),
                i32::try_from(beat.pid).unwrap_or(i32::MAX).into(),
                beat.version.clone().into(),
                beat.started_at.into(),
                serde_json::json!(beat.consumers).into(),
                beat.ready.into(),
                serde_json::json!(beat.problems).into(),
            ],
        ))
        .await?;
    Ok(())
}

/// A clean stop: the process is listed as stopped, not dead.
pub async fn record_stopped(ctx: &AppContext, id: Uuid) -> AppResult<()> {
    ctx.db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE worker_processes SET stopped_at = now(), last_seen = now(), consumers = '{}'::jsonb, ready = false \
             WHERE id = $1",
            [id.into()],
        ))
        .await?;
    Ok(())
}

/// Deletes rows of processes gone for longer than `KEPT_FOR_DAYS`.
pub async fn prune(ctx: &AppContext) -> AppResult<u64> {
    let done = ctx
        .db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "DELETE FROM worker_processes WHERE last_seen < now() - make_interval(days => $1)",
            [(KEPT_FOR_DAYS as i32).into()],
        ))
        .await?;
    Ok(done.rows_affected())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema, async_graphql::Enum)]
#[serde(rename_all = "snake_case")]
pub enum WorkerStatus {
    /// Heartbeating.
    Live,
    /// Stopped cleanly (SIGTERM).
    Stopped,
    /// Stopped heartbeating without a clean stop (killed, hung, lost its database).
    Dead,
}

/// One worker process.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, async_graphql::SimpleObject)]
pub struct WorkerProcess {
    pub id: Uuid,
    pub host: String,
    pub pid: i32,
    pub version: String,
    pub status: WorkerStatus,
    /// Ready: Postgres and Redis answer and every consumer runs (as of the last heartbeat).
    pub ready: bool,
    /// Why it is not ready, in words.
    pub problems: Vec<String>,
    /// Live consumers per queue as of the last heartbeat; empty unless live.
    pub consumers: Vec<QueueConsumers>,
    pub started_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub stopped_at: Option<DateTime<Utc>>,
}

/// How many consumers of one queue a process runs.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, async_graphql::SimpleObject)]
pub struct QueueConsumers {
    pub queue: String,
    pub live: i64,
}

fn consumers_of(value: serde_json::Value) -> AppResult<Vec<QueueConsumers>> {
    let map: BTreeMap<String, i64> =
        serde_json::from_value(value).map_err(|e| AppError::Internal(anyhow::anyhow!("worker consumers: {e}")))?;
    Ok(map.into_iter().map(|(queue, live)| QueueConsumers { queue, live }).collect())
}

/// The processes an operator should know about: live ones, and those that stopped or died in the last day.
pub async fn list(ctx: &AppContext, principal: &Principal) -> AppResult<Vec<WorkerProcess>> {
    principal.require(Role::Operator)?;
    let rows = ctx
        .db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT id, host, pid, version, started_at, last_seen, stopped_at, consumers, ready, problems, \
             CASE WHEN stopped_at IS NOT NULL THEN 'stopped' \
                  WHEN last_seen < now() - make_interval(secs => $1) THEN 'dead' ELSE 'live' END AS status \
             FROM worker_processes WHERE last_seen > now() - make_interval(hours => $2) \
             ORDER BY (stopped_at IS NULL AND last_seen >= now() - make_interval(secs => $1)) DESC, started_at DESC",
            [(DEAD_AFTER_SECONDS as f64).into(), (LISTED_FOR_HOURS as i32).into()],
        ))
        .await?;
    rows.iter()
        .map(|row| {
            let status = match row.try_get::<String>("", "status")?.as_str() {
                "live" => WorkerStatus::Live,
                "stopped" => WorkerStatus::Stopped,
                _ => WorkerStatus::Dead,
            };
            let live = status == WorkerStatus::Live;
            let consumers: serde_json::Value = row.try_get("", "consumers")?;
            let problems: StringList = row.try_get("", "problems")?;
            Ok(WorkerProcess {
                id: row.try_get("", "id")?,
                host: row.try_get("", "host")?,
                pid: row.try_get("", "pid")?,
                version: row.try_get("", "version")?,
                status,
                ready: live && row.try_get::<bool>("", "ready")?,
                problems: problems.0,
                consumers: if live { consumers_of(consumers)? } else { Vec::new() },
                started_at: row.try_get("", "started_at")?,
                last_seen: row.try_get("", "last_seen")?,
                stopped_at: row.try_get("", "stopped_at")?,
            })
        })
        .collect()
}

/// Live consumers per queue over every live worker process.
pub async fn live_consumers(ctx: &AppContext) -> AppResult<BTreeMap<String, i64>> {
    let rows = ctx
        .db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT c.key AS queue, sum(CASE WHEN jsonb_typeof(c.value) = 'number' THEN (c.value)::text::bigint ELSE 0 END)::bigint AS n \
             FROM worker_processes w, jsonb_each(w.consumers) c \
             WHERE w.stopped_at IS NULL AND w.last_seen >= now() - make_interval(secs => $1) GROUP BY c.key",
            [(DEAD_AFTER_SECONDS as f64).into()],
        ))
        .await?;
    let mut live: BTreeMap<String, i64> = Queue::NAMES.iter().map(|q| ((*q).to_owned(), 0)).collect();
    for row in rows {
        let queue: String = row.try_get("", "queue")?;
        if let Some(n) = live.get_mut(&queue) {
            *n = row.try_get("", "n")?;
        }
    }
    Ok(live)
}
