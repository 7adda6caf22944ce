//! Database migrations. Run explicitly (`postbridge-migrate up`), never as a side effect of start-up.

pub use sea_orm_migration::prelude::*;

mod m20261124_000001_foundation;
mod m20261124_000002_oauth_grants;
mod m20261124_000003_mail;
mod m20261124_000004_observability;
mod m20261204_000005_worker_operations;
mod m20261204_000006_member_walls;
mod m20261204_000007_large_mail;
mod m20261204_000008_oauth_hardening;
mod m20261204_000009_api_bounds;
mod m20261204_000010_tenant_wall;
mod m20261205_000011_failure_kinds;
mod m20261205_000012_dead_states;
mod m20261205_000013_cancelled_messages;
mod m20261205_000014_send_due_notify;
mod m20261205_000015_idle_watches;
mod m20261205_000016_message_content;
mod m20261205_000017_auth_notify;
mod m20261205_000018_inbound_health;
mod m20261205_000019_token_revocation;
mod m20261205_000020_next_client_secret;
mod m20261205_000021_recipient_results;
mod m20261205_000022_tenant_branding;
mod m20261206_000023_refresh_lease;
mod m20261206_000024_undispatched_sends;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_foundation::Migration),
            Box::new(m20261124_000002_oauth_grants::Migration),
            Box::new(m20261124_000003_mail::Migration),
            Box::new(m20261124_000004_observability::Migration),
            Box::new(m20261204_000005_worker_operations::Migration),
            Box::new(m20261204_000006_member_walls::Migration),
            Box::new(m20261204_000007_large_mail::Migration),
            Box::new(m20261204_000008_oauth_hardening::Migration),
            Box::new(m20261204_000009_api_bounds::Migration),
            Box::new(m20261204_000010_tenant_wall::Migration),
            Box::new(m20261205_000011_failure_kinds::Migration),
            Box::new(m20261205_000012_dead_states::Migration),
            Box::new(m20261205_000013_cancelled_messages::Migration),
            Box::new(m20261205_000014_send_due_notify::Migration),
            Box::new(m20261205_000015_idle_watches::Migration),
            Box::new(m20261205_000016_message_content::Migration),
            Box::new(m20261205_000017_auth_notify::Migration),
            Box::new(m20261205_000018_inbound_health::Migration),
            Box::new(m20261205_000019_token_revocation::Migration),
            Box::new(m20261205_000020_next_client_secret::Migration),
            Box::new(m20261205_000021_recipient_results::Migration),
            Box::new(m20261205_000022_tenant_branding::Migration),
            Box::new(m20261206_000023_refresh_lease::Migration),
            Box::new(m20261206_000024_undispatched_sends::Migration),
        ]
    }
}
