//! One test binary for the API; each module is one area.

mod accounts;
mod auth;
mod cross_tenant;
mod health;
mod mail_flows;
mod mail_inbound_client;
mod mail_servers;
mod mail_smtp_client;
mod oauth_flow;
mod oauth_refresh;
mod schema;
mod secrets;
mod tenants;
mod token_configs;
mod worker_queue;
