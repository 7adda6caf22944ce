//! `postbridge-api`: serve the API, and the operator's commands.

use clap::{Parser, Subcommand};
use postbridge_core::model::Role;
use postbridge_core::{AppContext, Settings};
use sea_orm_migration::MigratorTrait;
use utoipa::OpenApi;
use uuid::Uuid;

#[derive(Parser)]
#[command(name = "postbridge-api", version, about = "Postbridge REST + GraphQL API and operator commands")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Apply pending database migrations, then exit.
    Migrate,
    /// Print a signed JWT (e.g. an operator token for the ops dashboard).
    IssueToken {
        #[arg(long, default_value = "operator")]
        role: String,
        #[arg(long)]
        subject: String,
        /// Required for tenant roles (admin, member, viewer).
        #[arg(long)]
        tenant: Option<Uuid>,
        #[arg(long)]
        ttl_seconds: Option<i64>,
    },
    /// Re-encrypt every stored secret with the active master key (POSTBRIDGE_ACTIVE_KEY_ID).
    RotateKeys,
    /// Print the GraphQL schema (SDL); `schema.graphql` is this output.
    PrintSchema,
    /// Print the OpenAPI document the API serves at `/openapi.json`.
    PrintOpenapi,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::PrintSchema) => {
            print!("{}", postbridge_api::graphql::sdl());
            return Ok(());
        }
        Some(Command::PrintOpenapi) => {
            println!("{}", postbridge_api::openapi::ApiDoc::openapi().to_pretty_json()?);
            return Ok(());
        }
        _ => {}
    }
    postbridge_core::telemetry::init("info");
    let settings = Settings::from_env()?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = postbridge_api::Application::build(settings).await?;
            tracing::info!(port = app.port(), "postbridge-api listening");
            app.run_until_stopped().await?;
        }
        Command::Migrate => {
            // As the URL's own user: the app's pool switches to a role that owns nothing and may not change the schema.
            let db = sea_orm::Database::connect(settings.database_url.as_str()).await?;
            postbridge_migration::Migrator::up(&db, None).await?;
            println!("migrations applied");
        }
        Command::IssueToken { role, subject, tenant, ttl_seconds } => {
            let role = Role::parse(&role).ok_or_else(|| anyhow::anyhow!("--role must be operator, admin, member or viewer"))?;
            if role.is_tenant_role() && tenant.is_none() {
                anyhow::bail!("--tenant is required for role {role}");
            }
            let ctx = AppContext::build(settings).await?;
            let token =
                ctx.jwt.issue(&subject, role, if role.is_tenant_role() { tenant.map(Into::into) } else { None }, ttl_seconds)?;
            println!("{}", token.access_token);
        }
        Command::RotateKeys => {
            let ctx = AppContext::build(settings).await?;
            let report = postbridge_core::secrets::rekey::reencrypt_all(&ctx).await?;
            println!("re-encrypted {} secrets; {} could not be decrypted", report.reencrypted, report.failed);
            if report.failed > 0 {
                std::process::exit(1);
            }
        }
        // Need no settings: handled before they are loaded.
        Command::PrintSchema | Command::PrintOpenapi => {}
    }
    Ok(())
}
