//! Test harness shared by every test binary: each test gets its own database (migrated with the real
//! migrations), its own Redis key prefix and its own keys, and the app on a random port.

pub mod mail;
pub mod mailflow;
pub mod oauth;
pub mod processes;
pub mod webhook_receiver;

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine;
use postbridge_api::Application;
use postbridge_core::{AppContext, Settings};
use reqwest::{Method, StatusCode};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use sea_orm_migration::MigratorTrait;
use serde_json::{json, Value};
use uuid::Uuid;

/// `base` with `changes` merged in: a key set to `null` is removed, any other value replaces the key's.
pub fn with(base: Value, changes: Value) -> Value {
    let mut out = base;
    let (Some(target), Some(changes)) = (out.as_object_mut(), changes.as_object()) else {
        panic!("with() merges JSON objects only");
    };
    for (key, value) in changes {
        if value.is_null() {
            target.remove(key);
        } else {
            target.insert(key.clone(), value.clone());
        }
    }
    out
}

/// Checks `done` every 100 ms until it holds; panics naming `what` after `within`.
pub async fn wait_until(what: &str, within: std::time::Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !done().await {
        assert!(std::time::Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The backends of the owner's database listening on `channel` (by pid), as its owner sees them.
pub async fn listening_backends(owner: &DatabaseConnection, channel: &str) -> Vec<i32> {
    use sea_orm::ConnectionTrait as _;
    let sql = format!(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query = 'LISTEN \"{channel}\"' ORDER BY pid"
    );
    let rows = owner.query_all_raw(sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, sql)).await;
    rows.expect("pg_stat_activity").iter().map(|row| row.try_get_by_index::<i32>(0).expect("pid")).collect()
}

/// Admin connection used to create one database per test.
pub fn admin_database_url() -> String {
    std::env::var("POSTBRIDGE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".to_owned())
}

pub fn redis_url() -> String {
    std::env::var("POSTBRIDGE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Test databases are named `{prefix}{uuid}`; `scripts/test.sh` sets a prefix per run to clean up after itself.
pub fn test_database_prefix() -> String {
    std::env::var("POSTBRIDGE_TEST_DB_PREFIX").unwrap_or_else(|_| "pbtest_".to_owned())
}

fn database_url_for(name: &str) -> String {
    let admin = admin_database_url();
    let base = admin.rsplit_once('/').map(|(base, _)| base).unwrap_or(&admin);
    format!("{base}/{name}")
}

/// Every log line of the test process, so tests can prove a secret never reached the logs.
pub fn captured_logs() -> String {
    let buffer = log_buffer().lock().map(|b| b.clone()).unwrap_or_default();
    String::from_utf8_lossy(&buffer).into_owned()
}

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUFFER.get_or_init(|| Arc::new(Mutex::new(Vec::new())))
}

struct CaptureWriter;

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = std::io::stderr().write_all(buf);
        }
        if let Ok(mut b) = log_buffer().lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_logging() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        // Debug level everywhere, so the secrecy test sees everything the app could log.
        let filter = tracing_subscriber::EnvFilter::new("debug,hyper=info,h2=info,rustls=info,tokio_postgres=info");
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(|| CaptureWriter).with_ansi(false).try_init();
    });
}

pub fn random_key_b64() -> String {
    let bytes: [u8; 32] = rand_bytes();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    for chunk in out.chunks_mut(16) {
        let id = Uuid::new_v4();
        chunk.copy_from_slice(&id.as_bytes()[..chunk.len()]);
    }
    out
}

/// Replaced by the app's real address when the app starts.
pub const DEFAULT_PUBLIC_URL: &str = "http://127.0.0.1:8080";

/// The environment a test app starts with; tests may change entries before spawning.
pub struct TestEnv {
    pub vars: HashMap<String, String>,
    pub database_name: String,
}

impl TestEnv {
    pub fn new() -> Self {
        let database_name = format!("{}{}", test_database_prefix(), Uuid::new_v4().simple());
        let mut vars = HashMap::new();
        let mut set = |k: &str, v: String| {
            vars.insert(format!("POSTBRIDGE_{k}"), v);
        };
        set("DATABASE_URL", database_url_for(&database_name));
        set("DATABASE_MAX_CONNECTIONS", "5".to_owned());
        set("REDIS_URL", redis_url());
        set("REDIS_PREFIX", format!("pbtest:{}", Uuid::new_v4().simple()));
        set("LISTEN_ADDR", "127.0.0.1:0".to_owned());
        set("PUBLIC_URL", DEFAULT_PUBLIC_URL.to_owned());
        set("MASTER_KEYS", format!("k1:{}", random_key_b64()));
        set("JWT_KEYS", format!("j1:HS256:{}", random_key_b64()));
        set("OPERATOR_TOKEN", format!("pbo_{}", Uuid::new_v4().simple()));
        set("ALLOW_PRIVATE_HOSTS", "true".to_owned());
        TestEnv { vars, database_name }
    }

    pub fn set(&mut self, name: &str, value: impl Into<String>) -> &mut Self {
        self.vars.insert(format!("POSTBRIDGE_{name}"), value.into());
        self
    }

    pub fn get(&self, name: &str) -> Option<&String> {
        self.vars.get(&format!("POSTBRIDGE_{name}"))
    }

    pub fn settings(&self) -> Settings {
        Settings::from_lookup(|k| self.vars.get(k).cloned()).expect("test settings are valid")
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

/// Creates the test database and applies the real migrations.
pub async fn create_database(name: &str) -> DatabaseConnection {
    let admin = Database::connect(admin_database_url()).await.expect("connect to admin database (is Postgres running?)");
    admin.execute_unprepared(&format!("CREATE DATABASE \"{name}\"")).await.expect("create test database");
    admin.close().await.ok();
    let db = Database::connect(database_url_for(name)).await.expect("connect to test database");
    postbridge_migration::Migrator::up(&db, None).await.expect("migrations apply");
    db
}

pub struct TestApp {
    pub address: String,
    pub env: TestEnv,
    pub ctx: AppContext,
    pub http: reqwest::Client,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(TestEnv::new()).await
}

pub async fn spawn_app_with(mut env: TestEnv) -> TestApp {
    init_logging();
    create_database(&env.database_name).await;
    // Bind first, so PUBLIC_URL (and with it the OAuth redirect URI) is the app's real address.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a test port");
    let port = listener.local_addr().expect("local address").port();
    if env.get("PUBLIC_URL").is_none_or(|u| u == DEFAULT_PUBLIC_URL) {
        env.set("PUBLIC_URL", format!("http://127.0.0.1:{port}"));
    }
    let context = AppContext::build(env.settings()).await.expect("context builds");
    let app = Application::with_listener(context, listener).expect("application builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let ctx = app.context().clone();
    tokio::spawn(app.run_until_stopped());
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        // Shorter than the server's keep-alive (actix: 5 s), so a test that paused (seeding mail, waiting on a worker)
        // never reuses a connection the server is closing at that moment (hyper's `IncompleteMessage`).
        .pool_idle_timeout(std::time::Duration::from_secs(2))
        .build()
        .expect("http client");
    TestApp { address, env, ctx, http }
}

/// A response: status and JSON body (`Value::Null` when empty or not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    pub fn id(&self) -> String {
        self.body["id"].as_str().unwrap_or_else(|| panic!("no id in {}", self.text)).to_owned()
    }
}

impl TestApp {
    /// A column of a row exactly as stored (e.g. an encrypted secret), read straight from the database.
    pub async fn stored_value(&self, table: &str, column: &str, id: &str) -> Option<String> {
        let sql = format!("SELECT {column}::text AS v FROM {table} WHERE id = '{id}'");
        let row = self.ctx.db.query_one_raw(Statement::from_string(DbBackend::Postgres, sql)).await.expect("query").expect("row");
        row.try_get("", "v").expect("column")
    }

    /// A second context on this app's database with other master keys, as a deployment that rotates keys has.
    pub async fn context_with_master_keys(&self, master_keys: &str, active_key_id: Option<&str>) -> AppContext {
        let mut env = TestEnv::new();
        env.vars = self.env.vars.clone();
        env.set("MASTER_KEYS", master_keys);
        if let Some(kid) = active_key_id {
            env.set("ACTIVE_KEY_ID", kid);
        } else {
            env.vars.remove("POSTBRIDGE_ACTIVE_KEY_ID");
        }
        AppContext::build(env.settings()).await.expect("context with the given keys")
    }

    /// A second API process on this app's database (its own pool, caches and listeners): its address and context.
    pub async fn second_api(&self) -> (String, AppContext) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a test port");
        let context = AppContext::build(self.env.settings()).await.expect("context builds");
        let app = Application::with_listener(context, listener).expect("application builds");
        let address = format!("http://127.0.0.1:{}", app.port());
        let ctx = app.context().clone();
        tokio::spawn(app.run_until_stopped());
        (address, ctx)
    }

    /// A connection as the database's owner, outside the app's role and its row-level security: for what only the
    /// owner (or a superuser) may do in a test, such as terminating a backend or adding a fault-injecting trigger.
    pub async fn owner_db(&self) -> DatabaseConnection {
        Database::connect(database_url_for(&self.env.database_name)).await.expect("connect as the database owner")
    }

    pub fn operator_token(&self) -> String {
        self.env.get("OPERATOR_TOKEN").cloned().expect("operator token")
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        tenant: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = self.http.request(method, format!("{}{path}", self.address));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(tenant) = tenant {
            req = req.header("X-Postbridge-Tenant", tenant);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, body, text }
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.request(Method::GET, path, Some(token), None, None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.request(Method::POST, path, Some(token), None, Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Reply {
        self.request(Method::PATCH, path, Some(token), None, Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Reply {
        self.request(Method::DELETE, path, Some(token), None, None).await
    }

    /// Sends only the head of a JSON POST announcing a `Content-Length` of `length` bytes, and none of the body:
    /// what a server that refuses large bodies unread answers (status line and the JSON body, if any).
    pub async fn post_announcing(&self, path: &str, token: &str, length: u64) -> (u16, Value) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let address = self.address.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n\
             Content-Length: {length}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("head sent");
        let mut response = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut response)).await;
        assert!(read.is_ok(), "the server waited for the body instead of answering");
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").and_then(|(_, b)| serde_json::from_str(b).ok()).unwrap_or(Value::Null);
        (status, body)
    }

    /// POSTs a GraphQL operation; returns the whole response body (`data` and `errors`).
    pub async fn graphql(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        self.request(Method::POST, "/graphql", token, None, Some(json!({"query": query, "variables": variables}))).await.body
    }

    pub async fn create_tenant(&self, slug: &str) -> String {
        let reply =
            self.post("/v1/tenants", &self.operator_token(), json!({"slug": slug, "name": format!("Tenant {slug}")})).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        reply.id()
    }

    /// Creates an API key through the operator and returns its secret.
    pub async fn api_key(&self, tenant_id: &str, role: &str) -> String {
        let reply = self
            .request(
                Method::POST,
                "/v1/api-keys",
                Some(&self.operator_token()),
                Some(tenant_id),
                Some(json!({"name": format!("{role} key"), "role": role})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        reply.body["secret"].as_str().expect("secret").to_owned()
    }

    /// A fresh tenant and an admin key for it.
    pub async fn tenant_with_admin(&self) -> (String, String) {
        let slug = format!("t-{}", &Uuid::new_v4().simple().to_string()[..12]);
        let tenant = self.create_tenant(&slug).await;
        let key = self.api_key(&tenant, "admin").await;
        (tenant, key)
    }

    /// A generic password SMTP account body (valid as is).
    pub fn smtp_account(login: &str) -> Value {
        json!({"protocol": "smtp", "auth": "password", "login": login, "password": "app-password-1", "host": "smtp.example.com"})
    }

    /// A Microsoft user-flow token configuration body (valid as is).
    pub fn microsoft_config() -> Value {
        json!({"name": "Contoso M365", "provider": "microsoft", "client_id": "11111111-2222-3333-4444-555555555555",
               "client_secret": "ms-client-secret-value", "directory_tenant_id": "contoso.onmicrosoft.com"})
    }
}

// ---- Assertions and set-up shared by the auth, tenant and cross-tenant tests ----

/// Asserts an error reply: its status and its machine-readable `code`.
#[track_caller]
pub fn assert_error(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!((reply.status, reply.code()), (status, code), "unexpected reply: {}", reply.text);
}

/// The `extensions.code` of the first GraphQL error ("" when there is none).
pub fn graphql_error_code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"].as_str().unwrap_or("")
}

impl TestApp {
    /// Creates an API key with `token` (an admin of the tenant, or the operator naming `tenant_id`);
    /// returns its id and its secret.
    pub async fn api_key_with_id(&self, token: &str, tenant_id: Option<&str>, role: &str) -> (String, String) {
        let body = json!({"name": format!("{role} key"), "role": role});
        let reply = self.request(Method::POST, "/v1/api-keys", Some(token), tenant_id, Some(body)).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        let id = reply.body["api_key"]["id"].as_str().expect("api key id").to_owned();
        let secret = reply.body["secret"].as_str().expect("secret").to_owned();
        (id, secret)
    }
}
