//! One test binary for the API; each module is one area.

mod accounts;
mod audit;
mod auth;
mod cross_tenant;
mod events;
mod health;
mod large_mail;
mod mail_flows;
mod mail_inbound_client;
mod mail_servers;
mod mail_smtp_client;
mod metrics;
mod oauth_flow;
mod oauth_refresh;
mod ops;
mod rate_limits;
mod routing;
mod schema;
mod secrets;
mod tenants;
mod token_configs;
mod webhooks;
mod worker_processes;
mod worker_queue;
