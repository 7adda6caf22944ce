//! `postbridge-migrate up|down|status|fresh ...` against `POSTBRIDGE_DATABASE_URL`.

use sea_orm_migration::prelude::*;

#[tokio::main]
async fn main() {
    // The migrator CLI reads DATABASE_URL; the rest of Postbridge uses the prefixed name.
    if std::env::var_os("DATABASE_URL").is_none() {
        if let Some(url) = std::env::var_os("POSTBRIDGE_DATABASE_URL") {
            std::env::set_var("DATABASE_URL", url);
        }
    }
    cli::run_cli(postbridge_migration::Migrator).await;
}
