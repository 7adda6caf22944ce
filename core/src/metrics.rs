//! Prometheus metrics, one registry per `AppContext` (so tests running side by side do not share counters).
//!
//! Counters count the work of the process that holds them (the API's requests, the worker's jobs). Gauges of
//! state kept in Postgres (queue depth, grants by status, accounts by state) are filled in at scrape time.
//! No label carries a tenant id or anything a tenant typed, so cardinality is bounded by the code.

use std::time::Duration;

use prometheus::{
    exponential_buckets, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// `messages_total{outcome}`.
pub const MESSAGE_OUTCOMES: [&str; 3] = ["sent", "failed", "received"];
/// `token_refreshes_total{outcome}`: new tokens; the grant needs consent again; the token configuration's
/// client was refused (its admin must act); anything else (provider unreachable, 5xx, 429), retried later.
pub const TOKEN_REFRESH_OUTCOMES: [&str; 4] = ["refreshed", "reauth_required", "needs_admin", "failed"];

/// Content type of the text exposition format `render` produces.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub jobs: IntCounterVec,
    pub job_duration: HistogramVec,
    pub token_refreshes: IntCounterVec,
    pub messages: IntCounterVec,
    pub webhook_deliveries: IntCounterVec,
    pub rate_limited: IntCounter,
    /// Credential and tenant look-ups by where they were answered: `hit`, `miss`, `bypass` (no change listener).
    pub auth_cache: IntCounterVec,
    /// Submissions' sender look-ups by where they were answered: `hit`, `miss`, `bypass` (no change listener).
    pub route_cache: IntCounterVec,
    /// Announcements of committed submissions to the workers, by result (`sent`, `failed`).
    pub sends_announced: IntCounterVec,
    pub queue_depth: IntGaugeVec,
    pub queue_oldest_age: GaugeVec,
    pub grants: IntGaugeVec,
    pub accounts: IntGaugeVec,
    /// Live queue consumers of this worker process, per queue.
    pub worker_consumers: IntGaugeVec,
    /// 1 while this worker's Postgres listener of a channel is connected.
    pub worker_listening: IntGaugeVec,
    /// Mailboxes this worker process watches in IDLE.
    pub worker_idle_mailboxes: IntGaugeVec,
    /// Jobs this worker pushed to a queue, by what found them due: its `pass`, or a commit's `notice`.
    pub worker_dispatched: IntCounterVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<HistogramVec> {
    // 1 ms to about 33 s.
    let opts = HistogramOpts::new(name, help).buckets(exponential_buckets(0.001, 2.0, 16)?);
    let metric = HistogramVec::new(opts, labels)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new_custom(Some("postbridge".to_owned()), None)?;
        let rate_limited = IntCounter::new("api_rate_limited_total", "API requests refused with 429 by a tenant rate limit")?;
        registry.register(Box::new(rate_limited.clone()))?;
        let queue_oldest_age = GaugeVec::new(
            Opts::new("queue_oldest_age_seconds", "How long the oldest due job of each kind has been waiting"),
            &["kind"],
        )?;
        registry.register(Box::new(queue_oldest_age.clone()))?;
        let metrics = Metrics {
            http_requests: counter(
                &registry,
                "http_requests_total",
                "HTTP requests by method, route pattern and status",
                &["method", "route", "status"],
            )?,
            http_duration: histogram(
                &registry,
                "http_request_duration_seconds",
                "HTTP request latency by method and route pattern",
                &["method", "route"],
            )?,
            jobs: counter(&registry, "jobs_total", "Worker jobs by kind and outcome", &["kind", "outcome"])?,
            job_duration: histogram(
                &registry,
                "job_duration_seconds",
                "Worker job durations by kind and outcome",
                &["kind", "outcome"],
            )?,
            token_refreshes: counter(&registry, "token_refreshes_total", "OAuth token refreshes by outcome", &["outcome"])?,
            messages: counter(
                &registry,
                "messages_total",
                "Messages by direction and outcome (sent, failed, received)",
                &["outcome"],
            )?,
            webhook_deliveries: counter(
                &registry,
                "webhook_deliveries_total",
                "Webhook delivery attempts by outcome",
                &["outcome"],
            )?,
            rate_limited,
            auth_cache: counter(
                &registry,
                "api_auth_cache_total",
                "Authentication look-ups of keys and tenants by result (hit, miss, bypass: not listening for changes)",
                &["result"],
            )?,
            route_cache: counter(
                &registry,
                "api_route_cache_total",
                "Submissions' look-ups of their sending account by result (hit, miss, bypass: not listening for changes)",
                &["result"],
            )?,
            sends_announced: counter(
                &registry,
                "api_sends_announced_total",
                "Announcements to the workers that submissions committed, by result (sent, failed: the pass sends them)",
                &["result"],
            )?,
            queue_depth: gauge(&registry, "queue_depth", "Due jobs of each kind waiting to run", &["kind"])?,
            queue_oldest_age,
            grants: gauge(&registry, "grants", "OAuth grants by status", &["status"])?,
            accounts: gauge(&registry, "accounts", "Email accounts by state", &["state"])?,
            worker_consumers: gauge(&registry, "worker_consumers", "Live queue consumers of this worker process", &["queue"])?,
            worker_listening: gauge(
                &registry,
                "worker_listening",
                "1 while this worker process listens on a Postgres notification channel",
                &["channel"],
            )?,
            worker_idle_mailboxes: gauge(
                &registry,
                "worker_idle_mailboxes",
                "Mailboxes this worker process watches in IDLE",
                &[],
            )?,
            worker_dispatched: counter(
                &registry,
                "worker_dispatched_total",
                "Jobs this worker process pushed to a queue, by what found them due (pass, notice)",
                &["queue", "trigger"],
            )?,
            registry,
        };
        // Series of closed label sets start at 0, so a first increase shows as one (and `rate()` sees it).
        for outcome in MESSAGE_OUTCOMES {
            metrics.messages.with_label_values(&[outcome]);
        }
        for outcome in TOKEN_REFRESH_OUTCOMES {
            metrics.token_refreshes.with_label_values(&[outcome]);
        }
        Ok(metrics)
    }

    /// Counts one job run and its duration.
    pub fn job(&self, kind: &str, outcome: &str, elapsed: Duration) {
        self.jobs.with_label_values(&[kind, outcome]).inc();
        self.job_duration.with_label_values(&[kind, outcome]).observe(elapsed.as_secs_f64());
    }

    pub fn token_refresh(&self, outcome: &str) {
        self.token_refreshes.with_label_values(&[outcome]).inc();
    }

    /// `outcome`: `sent`, `failed` or `received`.
    pub fn messages(&self, outcome: &str, count: u64) {
        self.messages.with_label_values(&[outcome]).inc_by(count);
    }

    pub fn webhook_delivery(&self, outcome: &str) {
        self.webhook_deliveries.with_label_values(&[outcome]).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec cannot fail for the metric types used here; an error would leave the output partial.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8_lossy(&buffer).into_owned()
    }
}
