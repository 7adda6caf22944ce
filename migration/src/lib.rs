//! Database migrations. Run explicitly (`postbridge-migrate up`), never as a side effect of start-up.

pub use sea_orm_migration::prelude::*;

/// Every migration is plain SQL: its module holds `UP` and `DOWN`, and this writes the `Migration` that runs them,
/// named after the module (its file), as `seaql_migrations` records it.
macro_rules! sql_migration {
    () => {
        pub struct Migration;

        impl ::sea_orm_migration::MigrationName for Migration {
            fn name(&self) -> &str {
                let path = module_path!();
                path.rsplit("::").next().unwrap_or(path)
            }
        }

        #[::sea_orm_migration::prelude::async_trait::async_trait]
        impl ::sea_orm_migration::MigrationTrait for Migration {
            async fn up(&self, manager: &::sea_orm_migration::SchemaManager) -> Result<(), ::sea_orm_migration::DbErr> {
                ::sea_orm_migration::prelude::ConnectionTrait::execute_unprepared(manager.get_connection(), UP).await.map(|_| ())
            }

            async fn down(&self, manager: &::sea_orm_migration::SchemaManager) -> Result<(), ::sea_orm_migration::DbErr> {
                ::sea_orm_migration::prelude::ConnectionTrait::execute_unprepared(manager.get_connection(), DOWN)
                    .await
                    .map(|_| ())
            }
        }
    };
}

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
mod m20261206_000025_sender_lookup;
mod m20261206_000026_route_notify;
mod m20261206_000027_submissions_announced_after_commit;
mod m20261206_000028_live_event_watchers;
mod m20261207_000029_refresh_claim_keyset;

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
            Box::new(m20261206_000025_sender_lookup::Migration),
            Box::new(m20261206_000026_route_notify::Migration),
            Box::new(m20261206_000027_submissions_announced_after_commit::Migration),
            Box::new(m20261206_000028_live_event_watchers::Migration),
            Box::new(m20261207_000029_refresh_claim_keyset::Migration),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_is_named_after_its_file_in_order() {
        // The names are what `seaql_migrations` records: a changed name would run a migration again.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .expect("the migrations' folder")
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.strip_suffix(".rs").map(str::to_owned))
            .filter(|stem| stem.starts_with('m') && stem.as_bytes().get(1).is_some_and(u8::is_ascii_digit))
            .collect();
        files.sort();
        let names: Vec<String> = Migrator::migrations().iter().map(|m| m.name().to_owned()).collect();
        assert_eq!(names, files);
    }
}
