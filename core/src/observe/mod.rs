//! What users and operators see happen: events, webhooks, the audit log, fix-it hints, credential health,
//! the ops overview and metrics gauges.

pub mod audit;
pub mod credential_health;
pub mod events;
pub mod hints;
pub mod live_watchers;
pub mod ops_metrics;
pub mod overview;
pub mod webhooks;
