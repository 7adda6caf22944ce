//! Everything a service call needs, built once from `Settings` and shared by the API and the worker.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sea_orm::{ConnectOptions, Database, DatabaseConnection};

use crate::access::jwt::JwtKeys;
use crate::config::Settings;
use crate::protocols::netguard::NetGuard;
use crate::secrets::crypto::Cipher;

#[derive(Clone)]
pub struct AppContext {
    pub db: DatabaseConnection,
    pub redis: redis::Client,
    pub cipher: Arc<Cipher>,
    pub jwt: Arc<JwtKeys>,
    pub guard: NetGuard,
    /// HTTP client for tenant-supplied URLs (token endpoints): guarded resolver, no redirects. Shared.
    pub http: reqwest::Client,
    /// TLS client configuration for mail servers (web PKI plus POSTBRIDGE_EXTRA_CA_FILE).
    pub mail_tls: Arc<tokio_rustls::rustls::ClientConfig>,
    /// SMTP client with authenticated connections pooled per server and credential.
    pub smtp: Arc<crate::protocols::smtp::SmtpClient>,
    pub settings: Arc<Settings>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// This process among all API and worker processes: names its leases and its heartbeat row.
    pub instance_id: uuid::Uuid,
    /// Keys and tenants authentication read lately; used only where it listens for changes (API processes).
    pub auth_cache: crate::access::auth_cache::AuthCache,
    /// Outbound accounts routing read lately; used only where it listens for changes (API processes).
    pub route_cache: crate::send::route_cache::RouteCache,
    /// Announces committed submissions to the workers; announces nothing where it was not started (workers).
    pub sends_due: crate::send::announce::SendsDue,
    /// Token requests background refreshes may have in flight in this process (`POSTBRIDGE_REFRESH_CONCURRENCY`).
    pub refresh_slots: Arc<tokio::sync::Semaphore>,
}

impl AppContext {
    /// Connects to Postgres (no migrations: those run explicitly) and prepares the Redis client.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let mut options = ConnectOptions::new(settings.database_url.clone());
        options
            .max_connections(settings.database_max_connections)
            .min_connections(1)
            .connect_timeout(Duration::from_secs(5))
            .acquire_timeout(Duration::from_secs(5))
            .sqlx_logging(false);
        crate::store::tenant_wall::install(&mut options, settings.database_role.clone());
        let db = Database::connect(options).await.context("failed to connect to Postgres (POSTBRIDGE_DATABASE_URL)")?;
        let redis = redis::Client::open(settings.redis_url.as_str()).context("invalid POSTBRIDGE_REDIS_URL")?;
        let jwt = JwtKeys::new(&settings.jwt).context("invalid JWT key material (POSTBRIDGE_JWT_KEYS)")?;
        let guard = NetGuard::new(settings.allow_private_hosts);
        let http = guard.http_client().context("failed to build the HTTP client")?;
        let mail_tls = crate::protocols::tls::client_config(settings.extra_ca_file.as_deref())?;
        let smtp = crate::protocols::smtp::SmtpClient::from_settings(&settings, crate::protocols::smtp::SmtpConfig::default())?;
        let refresh_slots = Arc::new(tokio::sync::Semaphore::new(settings.refresh_concurrency));
        Ok(AppContext {
            db,
            redis,
            cipher: Arc::new(Cipher::new(&settings.encryption)),
            jwt: Arc::new(jwt),
            guard,
            http,
            mail_tls,
            smtp: Arc::new(smtp),
            settings: Arc::new(settings),
            metrics: Arc::new(crate::metrics::Metrics::new().context("failed to register metrics")?),
            instance_id: uuid::Uuid::now_v7(),
            auth_cache: Default::default(),
            route_cache: Default::default(),
            sends_due: Default::default(),
            refresh_slots,
        })
    }

    /// Postgres and Redis both answer; used by `/readyz`.
    pub async fn check_ready(&self) -> Result<(), String> {
        let timeout = Duration::from_secs(2);
        match tokio::time::timeout(timeout, self.db.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err("postgres unreachable".into()),
            Err(_) => return Err("postgres timed out".into()),
        }
        let redis_ping = async {
            let mut conn = self.redis.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        match tokio::time::timeout(timeout, redis_ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err("redis unreachable".into()),
            Err(_) => Err("redis timed out".into()),
        }
    }
}
