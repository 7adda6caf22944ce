//! Whether this worker process works: its consumers, its scheduler loop, Postgres and Redis. `/readyz` and the
//! heartbeat row both read it, so an operator (or an orchestrator) sees a process that stays up but does nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apalis_redis::ConnectionManager;
use chrono::{DateTime, Utc};
use postbridge_core::jobs::job::Queue;
use postbridge_core::jobs::workers::{self, Heartbeat};
use postbridge_core::AppContext;

/// A loop that has not gone round for this long is stuck.
const LOOP_STALE_AFTER_MS: i64 = 30_000;

pub struct Liveness {
    pub started_at: DateTime<Utc>,
    consumers: HashMap<&'static str, Arc<AtomicBool>>,
    /// Unix milliseconds of the scheduler loop's and the housekeeping loop's last round (0: none yet, so a process
    /// is ready only once its first pass is done).
    scheduler_round: AtomicI64,
    housekeeping_round: AtomicI64,
    idle_round: AtomicI64,
}

impl Liveness {
    pub fn new() -> Arc<Self> {
        Arc::new(Liveness {
            started_at: Utc::now(),
            consumers: Queue::NAMES.iter().map(|q| (*q, Arc::new(AtomicBool::new(false)))).collect(),
            scheduler_round: AtomicI64::new(0),
            housekeeping_round: AtomicI64::new(0),
            idle_round: AtomicI64::new(0),
        })
    }

    /// The flag a queue's consumer sets while it is registered and fetching.
    pub fn consumer_flag(&self, queue: &str) -> Arc<AtomicBool> {
        self.consumers.get(queue).cloned().unwrap_or_default()
    }

    pub fn scheduler_went_round(&self) {
        self.scheduler_round.store(Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    pub fn idle_went_round(&self) {
        self.idle_round.store(Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    pub fn housekeeping_went_round(&self) {
        self.housekeeping_round.store(Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// Live consumers per queue (0 or 1 in one process).
    pub fn consumers(&self) -> BTreeMap<String, i64> {
        Queue::NAMES
            .iter()
            .map(|q| ((*q).to_owned(), i64::from(self.consumers.get(q).is_some_and(|f| f.load(Ordering::Relaxed)))))
            .collect()
    }

    /// What stops this process from working, from its own state (no I/O) and the consumers as `consumers` saw them.
    fn own_problems(&self, consumers: &BTreeMap<String, i64>) -> Vec<String> {
        let mut problems: Vec<String> = consumers
            .iter()
            .filter(|(_, live)| **live == 0)
            .map(|(queue, _)| format!("the {queue} consumer is not running"))
            .collect();
        let now = Utc::now().timestamp_millis();
        let loops =
            [("scheduler", &self.scheduler_round), ("housekeeping", &self.housekeeping_round), ("IDLE", &self.idle_round)];
        for (name, round) in loops {
            let round = round.load(Ordering::Relaxed);
            let age = now.saturating_sub(round);
            if round == 0 {
                problems.push(format!("the {name} loop has not gone round yet"));
            } else if age > LOOP_STALE_AFTER_MS {
                problems.push(format!("the {name} loop has not run for {} s", age / 1000));
            }
        }
        problems
    }

    /// Everything that stops this process from working, checking Postgres and Redis now; `consumers` is the snapshot
    /// the problems must agree with (a heartbeat reports both).
    pub async fn problems(&self, ctx: &AppContext, redis: &ConnectionManager, consumers: &BTreeMap<String, i64>) -> Vec<String> {
        let timeout = Duration::from_secs(2);
        let mut problems = Vec::new();
        match tokio::time::timeout(timeout, ctx.db.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => problems.push("postgres unreachable".to_owned()),
            Err(_) => problems.push("postgres timed out".to_owned()),
        }
        let mut conn = redis.clone();
        match tokio::time::timeout(timeout, redis::cmd("PING").query_async::<String>(&mut conn)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => problems.push("redis unreachable".to_owned()),
            Err(_) => problems.push("redis timed out".to_owned()),
        }
        problems.extend(self.own_problems(consumers));
        problems
    }
}

/// Who this process is, for its heartbeat row and consumer names.
#[derive(Clone, Debug)]
pub struct Identity {
    pub id: uuid::Uuid,
    pub host: String,
    pub pid: u32,
}

impl Identity {
    pub fn of(ctx: &AppContext) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown".to_owned());
        Identity { id: ctx.instance_id, host, pid: std::process::id() }
    }

    /// A consumer name unique to this process and this (re)start of the consumer: apalis refuses a name that is
    /// still registered, so a restarted consumer or a second process never collides.
    pub fn consumer_name(&self, queue: &str) -> String {
        format!("{queue}@{}:{}:{:08x}", self.host, self.pid, rand::random::<u32>())
    }
}

/// Writes the heartbeat row every few seconds and keeps `postbridge_worker_consumers` current, until `stop`.
pub async fn heartbeat(
    ctx: AppContext,
    identity: Identity,
    liveness: Arc<Liveness>,
    redis: ConnectionManager,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(workers::HEARTBEAT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
            _ = every.tick() => {}
        }
        let consumers = liveness.consumers();
        for (queue, live) in &consumers {
            ctx.metrics.worker_consumers.with_label_values(&[queue]).set(*live);
        }
        let problems = liveness.problems(&ctx, &redis, &consumers).await;
        let beat = Heartbeat {
            id: identity.id,
            host: identity.host.clone(),
            pid: identity.pid,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: liveness.started_at,
            consumers,
            ready: problems.is_empty(),
            problems,
        };
        if let Err(e) = workers::record_heartbeat(&ctx, &beat).await {
            tracing::warn!(error = %e.detail(), "could not write the worker heartbeat");
        }
    }
}
