//! One test binary for the API; each module is one area.

mod accounts;
mod audit;
mod auth;
mod bounds;
mod cross_tenant;
mod events;
mod health;
mod mail_flows;
mod mail_inbound_client;
mod mail_servers;
mod mail_smtp_client;
mod member_walls;
mod metrics;
mod oauth_flow;
mod oauth_refresh;
mod ops;
mod rate_limits;
mod routing;
mod schema;
mod secrets;
mod tenant_wall;
mod tenants;
mod token_configs;
mod webhooks;
mod worker_processes;
mod worker_queue;
