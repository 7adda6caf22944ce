//! One `Settings` tree, loaded from `POSTBRIDGE_*` environment variables.
//!
//! Loading goes through a lookup function so tests can build settings without touching the
//! process environment (and so run in parallel).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use base64::Engine;
use url::Url;

pub const ENV_PREFIX: &str = "POSTBRIDGE_";

/// A setting that is missing or malformed; names the variable so start-up errors are actionable.
#[derive(Debug, thiserror::Error)]
#[error("configuration error in {variable}: {message}")]
pub struct ConfigError {
    pub variable: String,
    pub message: String,
}

fn config_error(name: &str, message: impl Into<String>) -> ConfigError {
    ConfigError { variable: format!("{ENV_PREFIX}{name}"), message: message.into() }
}

#[derive(Clone)]
pub struct Settings {
    /// Postgres connection URL.
    pub database_url: String,
    pub database_max_connections: u32,
    /// The role the API and worker switch to after connecting (`SET ROLE`): it owns no table, so the tenant wall's
    /// row-level security applies. `None` when the connecting user already is such a role (`POSTBRIDGE_DATABASE_ROLE=none`).
    pub database_role: Option<String>,
    /// Redis connection URL; Redis only dispatches jobs, Postgres is the source of truth.
    pub redis_url: String,
    /// Namespace for every Redis key, so several deployments (or tests) share one Redis.
    pub redis_prefix: String,
    /// Address the API listens on; port 0 picks a free port (tests).
    pub listen_addr: SocketAddr,
    /// Externally reachable base URL; the OAuth redirect URI is derived from it.
    pub public_url: Url,
    pub encryption: EncryptionSettings,
    pub jwt: JwtSettings,
    /// Bootstrap operator credential, presented as a bearer token.
    pub operator_token: Option<String>,
    /// Allow tenant-supplied hosts and URLs on loopback/private networks (development and tests only).
    pub allow_private_hosts: bool,
    /// Token requests a worker's background refreshes have in flight at once (they hold no database connection while
    /// the provider answers).
    pub refresh_concurrency: usize,
    /// Poll and send jobs one worker process runs at once.
    pub poll_concurrency: usize,
    pub send_concurrency: usize,
    /// Messages per minute one account may send (0: no limit); Microsoft 365 mailboxes use their own pace.
    pub send_rate_per_minute: u32,
    /// Exchange Online accepts about 30 messages a minute per mailbox.
    pub microsoft_send_rate_per_minute: u32,
    /// Largest message accepted by `POST /v1/messages`, composed, in bytes.
    pub max_message_bytes: usize,
    /// Largest inbound message stored whole; a larger one is stored as a placeholder (headers, size, `oversized`).
    pub max_inbound_message_bytes: u64,
    /// Message bytes one poll fetches and commits at a time (besides at most 1,000 messages).
    pub inbound_batch_bytes: u64,
    /// PEM file of extra CA certificates trusted for mail servers (private CAs; the throwaway CA in tests).
    pub extra_ca_file: Option<String>,
    pub webhooks: WebhookSettings,
    /// API requests per minute one tenant may make (0: no limit); a tenant's own setting overrides it.
    pub api_rate_limit_per_minute: u32,
    /// Requests per minute one client address may make without a valid credential (0: no limit).
    pub anon_rate_limit_per_minute: u32,
    /// Largest request body of every route but `POST /v1/messages` (which takes `max_message_bytes`), in bytes.
    pub max_request_bytes: usize,
    /// Where a worker process serves its own `/metrics`, `/healthz` and `/readyz` (none: not served).
    pub worker_metrics_addr: Option<SocketAddr>,
    /// How long a stopping worker lets its jobs in flight finish before cutting them.
    pub worker_shutdown_grace: std::time::Duration,
    /// Mailboxes one worker process watches in IDLE at most (0: none, every mailbox is polled).
    pub idle_mailboxes: usize,
    /// How long one IDLE connection lives before it is ended and opened again (1 s to 29 min).
    pub idle_reissue: std::time::Duration,
    /// How often a worker's scheduler looks for due work (50 ms to 10 s). Sends are also dispatched the moment
    /// their row commits; this pass is their backstop and the pace of everything else.
    pub dispatch_interval: std::time::Duration,
    /// When set, `/metrics` (API and worker) answers only `Authorization: Bearer <this>`.
    pub metrics_token: Option<String>,
    /// Events (and their webhook deliveries) older than this many days are deleted (0: kept forever).
    pub event_retention_days: u32,
}

#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// Waits before each retry; a delivery fails after the last one.
    pub retry_schedule: Vec<std::time::Duration>,
    /// An endpoint whose deliveries have all failed for this long is disabled.
    pub disable_after: std::time::Duration,
    /// Deadline of one delivery attempt.
    pub timeout: std::time::Duration,
    /// Deliveries one worker process makes at once.
    pub concurrency: usize,
}

impl fmt::Debug for Settings {
    // Never print key material or the operator token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("listen_addr", &self.listen_addr)
            .field("public_url", &self.public_url.as_str())
            .field("redis_prefix", &self.redis_prefix)
            .field("active_key_id", &self.encryption.active_key_id)
            .field("allow_private_hosts", &self.allow_private_hosts)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub struct EncryptionSettings {
    /// Master keys by key id (32 bytes each).
    pub keys: BTreeMap<String, [u8; 32]>,
    /// The key new values are encrypted with.
    pub active_key_id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwtAlgorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    ES256,
    ES384,
}

impl JwtAlgorithm {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "HS256" => Self::HS256,
            "HS384" => Self::HS384,
            "HS512" => Self::HS512,
            "RS256" => Self::RS256,
            "RS384" => Self::RS384,
            "RS512" => Self::RS512,
            "ES256" => Self::ES256,
            "ES384" => Self::ES384,
            _ => return None,
        })
    }

    pub fn is_symmetric(self) -> bool {
        matches!(self, Self::HS256 | Self::HS384 | Self::HS512)
    }
}

/// Key material of one configured JWT key: a shared secret (HS*) or a public key PEM (RS*/ES*).
#[derive(Clone)]
pub enum JwtKeyMaterial {
    Secret(Vec<u8>),
    PublicPem(Vec<u8>),
}

#[derive(Clone)]
pub struct JwtKeySettings {
    pub kid: String,
    pub algorithm: JwtAlgorithm,
    pub material: JwtKeyMaterial,
    /// `;tenant=<uuid>`: tokens of this key act in that tenant only.
    pub tenant: Option<uuid::Uuid>,
}

#[derive(Clone)]
pub struct JwtSettings {
    pub keys: Vec<JwtKeySettings>,
    /// Key used to issue tokens (must be a symmetric key).
    pub signing_key_id: String,
    pub issuer: String,
    pub audience: String,
    pub ttl_seconds: i64,
    pub leeway_seconds: u64,
}

impl Settings {
    /// Loads settings from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Loads settings through `lookup`, which receives full variable names (`POSTBRIDGE_...`).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(&format!("{ENV_PREFIX}{name}")).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let required = |name: &str| get(name).ok_or_else(|| config_error(name, "is required but not set"));

        let database_url = required("DATABASE_URL")?;
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(config_error("DATABASE_URL", "must be a postgres:// URL"));
        }
        let database_max_connections = parse_or(get("DATABASE_MAX_CONNECTIONS"), "DATABASE_MAX_CONNECTIONS", 10u32)?;
        let database_role = match get("DATABASE_ROLE") {
            None => Some("postbridge_app".to_owned()),
            Some(role) if role.eq_ignore_ascii_case("none") => None,
            Some(role) if role.len() <= 63 && role.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => Some(role),
            Some(_) => return Err(config_error("DATABASE_ROLE", "must be a role name (letters, digits, _) or none")),
        };
        let redis_url = get("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned());
        if !(redis_url.starts_with("redis://") || redis_url.starts_with("rediss://")) {
            return Err(config_error("REDIS_URL", "must be a redis:// or rediss:// URL"));
        }
        let redis_prefix = get("REDIS_PREFIX").unwrap_or_else(|| "postbridge".to_owned());
        let listen_addr = parse_or(get("LISTEN_ADDR"), "LISTEN_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080)))?;
        let public_url = match get("PUBLIC_URL") {
            Some(v) => Url::parse(&v).map_err(|e| config_error("PUBLIC_URL", format!("is not a URL: {e}")))?,
            None => Url::parse(&format!("http://{listen_addr}")).map_err(|e| config_error("PUBLIC_URL", e.to_string()))?,
        };
        if !matches!(public_url.scheme(), "http" | "https") {
            return Err(config_error("PUBLIC_URL", "must be an http(s) URL"));
        }

        let encryption = parse_master_keys(&required("MASTER_KEYS")?, get("ACTIVE_KEY_ID"))?;
        let jwt = JwtSettings {
            keys: parse_jwt_keys(&required("JWT_KEYS")?)?,
            signing_key_id: String::new(),
            issuer: get("JWT_ISSUER").unwrap_or_else(|| "postbridge".to_owned()),
            audience: get("JWT_AUDIENCE").unwrap_or_else(|| "postbridge-api".to_owned()),
            ttl_seconds: parse_or(get("JWT_TTL_SECONDS"), "JWT_TTL_SECONDS", 3600i64)?,
            leeway_seconds: parse_or(get("JWT_LEEWAY_SECONDS"), "JWT_LEEWAY_SECONDS", 30u64)?,
        };
        let jwt = with_signing_key(jwt, get("JWT_SIGNING_KEY_ID"))?;

        let operator_token = get("OPERATOR_TOKEN");
        if operator_token.as_ref().is_some_and(|t| t.len() < 32) {
            return Err(config_error("OPERATOR_TOKEN", "must be at least 32 characters"));
        }
        let allow_private_hosts = match get("ALLOW_PRIVATE_HOSTS").as_deref() {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(_) => return Err(config_error("ALLOW_PRIVATE_HOSTS", "must be true or false")),
        };

        let refresh_concurrency = parse_or(get("REFRESH_CONCURRENCY"), "REFRESH_CONCURRENCY", 32usize)?;
        if refresh_concurrency == 0 {
            return Err(config_error("REFRESH_CONCURRENCY", "must be at least 1"));
        }

        Ok(Settings {
            database_url,
            database_max_connections,
            database_role,
            redis_url,
            redis_prefix,
            listen_addr,
            public_url,
            encryption,
            jwt,
            operator_token,
            allow_private_hosts,
            refresh_concurrency,
            extra_ca_file: get("EXTRA_CA_FILE"),
            max_message_bytes: within(
                parse_or(get("MAX_MESSAGE_BYTES"), "MAX_MESSAGE_BYTES", 25 * 1024 * 1024usize)?,
                1024..=MAX_MESSAGE_BYTES_CEILING,
                "MAX_MESSAGE_BYTES",
            )?,
            max_request_bytes: within(
                parse_or(get("MAX_REQUEST_BYTES"), "MAX_REQUEST_BYTES", 1024 * 1024usize)?,
                1024..=64 * 1024 * 1024,
                "MAX_REQUEST_BYTES",
            )?,
            max_inbound_message_bytes: within(
                parse_or(get("MAX_INBOUND_MESSAGE_BYTES"), "MAX_INBOUND_MESSAGE_BYTES", 50 * MIB)?,
                64 * 1024..=MAX_INBOUND_LIMIT,
                "MAX_INBOUND_MESSAGE_BYTES",
            )?,
            inbound_batch_bytes: within(
                parse_or(get("INBOUND_BATCH_BYTES"), "INBOUND_BATCH_BYTES", 32 * MIB)?,
                MIB..=MAX_INBOUND_LIMIT,
                "INBOUND_BATCH_BYTES",
            )?,
            poll_concurrency: at_least_one(parse_or(get("POLL_CONCURRENCY"), "POLL_CONCURRENCY", 4usize)?, "POLL_CONCURRENCY")?,
            send_concurrency: at_least_one(parse_or(get("SEND_CONCURRENCY"), "SEND_CONCURRENCY", 16usize)?, "SEND_CONCURRENCY")?,
            send_rate_per_minute: parse_or(get("SEND_RATE_PER_MINUTE"), "SEND_RATE_PER_MINUTE", 0u32)?,
            microsoft_send_rate_per_minute: parse_or(
                get("MICROSOFT_SEND_RATE_PER_MINUTE"),
                "MICROSOFT_SEND_RATE_PER_MINUTE",
                30u32,
            )?,
            webhooks: WebhookSettings {
                retry_schedule: parse_duration_list(
                    get("WEBHOOK_RETRY_SCHEDULE").as_deref().unwrap_or("5s,5m,30m,2h,5h,10h"),
                    "WEBHOOK_RETRY_SCHEDULE",
                )?,
                disable_after: parse_duration(get("WEBHOOK_DISABLE_AFTER").as_deref().unwrap_or("5d"), "WEBHOOK_DISABLE_AFTER")?,
                timeout: parse_duration(get("WEBHOOK_TIMEOUT").as_deref().unwrap_or("15s"), "WEBHOOK_TIMEOUT")?,
                concurrency: at_least_one(
                    parse_or(get("WEBHOOK_CONCURRENCY"), "WEBHOOK_CONCURRENCY", 16usize)?,
                    "WEBHOOK_CONCURRENCY",
                )?,
            },
            api_rate_limit_per_minute: parse_or(get("API_RATE_LIMIT_PER_MINUTE"), "API_RATE_LIMIT_PER_MINUTE", 1200u32)?,
            anon_rate_limit_per_minute: parse_or(get("ANON_RATE_LIMIT_PER_MINUTE"), "ANON_RATE_LIMIT_PER_MINUTE", 120u32)?,
            worker_metrics_addr: match get("WORKER_METRICS_ADDR").as_deref() {
                None | Some("none") => None,
                Some(v) => Some(v.parse().map_err(|e| config_error("WORKER_METRICS_ADDR", format!("is malformed: {e}")))?),
            },
            worker_shutdown_grace: parse_duration(
                get("WORKER_SHUTDOWN_GRACE").as_deref().unwrap_or("30s"),
                "WORKER_SHUTDOWN_GRACE",
            )?,
            idle_mailboxes: parse_or(get("IDLE_MAILBOXES"), "IDLE_MAILBOXES", 1000usize)?,
            idle_reissue: idle_reissue(get("IDLE_REISSUE").as_deref().unwrap_or("25m"))?,
            dispatch_interval: dispatch_interval(get("DISPATCH_INTERVAL").as_deref().unwrap_or("500ms"))?,
            event_retention_days: parse_or(get("EVENT_RETENTION_DAYS"), "EVENT_RETENTION_DAYS", 30u32)?,
            metrics_token: get("METRICS_TOKEN"),
        })
    }

    /// The one OAuth redirect URI of this deployment, pasted at every provider.
    pub fn oauth_redirect_uri(&self) -> String {
        format!("{}/oauth/callback", self.public_url.as_str().trim_end_matches('/'))
    }
}

/// A stored message is one Postgres value (at most 1 GiB), and the request carrying it is larger still.
const MAX_MESSAGE_BYTES_CEILING: usize = 256 * 1024 * 1024;
const MIB: u64 = 1024 * 1024;
/// Inbound limits stay far below Postgres' 1 GiB per value and per protocol message.
const MAX_INBOUND_LIMIT: u64 = 256 * MIB;

fn within<T: PartialOrd + std::fmt::Display>(value: T, range: std::ops::RangeInclusive<T>, name: &str) -> Result<T, ConfigError> {
    if !range.contains(&value) {
        return Err(config_error(name, format!("must be between {} and {} bytes", range.start(), range.end())));
    }
    Ok(value)
}

fn idle_reissue(raw: &str) -> Result<std::time::Duration, ConfigError> {
    let reissue = parse_duration(raw, "IDLE_REISSUE")?;
    // RFC 2177: servers may end an IDLE after 30 minutes without a word.
    if !(std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(29 * 60)).contains(&reissue) {
        return Err(config_error("IDLE_REISSUE", "must be between 1s and 29m"));
    }
    Ok(reissue)
}

fn dispatch_interval(raw: &str) -> Result<std::time::Duration, ConfigError> {
    let interval = parse_duration(raw, "DISPATCH_INTERVAL")?;
    // Longer than 10 s would also outlast the liveness check of the scheduler loop.
    if !(std::time::Duration::from_millis(50)..=std::time::Duration::from_secs(10)).contains(&interval) {
        return Err(config_error("DISPATCH_INTERVAL", "must be between 50ms and 10s"));
    }
    Ok(interval)
}

fn at_least_one(value: usize, name: &str) -> Result<usize, ConfigError> {
    if value == 0 {
        return Err(config_error(name, "must be at least 1"));
    }
    Ok(value)
}

fn parse_or<T: std::str::FromStr>(value: Option<String>, name: &str, default: T) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    match value {
        None => Ok(default),
        Some(v) => v.parse().map_err(|e| config_error(name, format!("is malformed: {e}"))),
    }
}

/// `90`, `90s`, `5m`, `2h` or `5d`: a duration in seconds, minutes, hours or days.
fn parse_duration(raw: &str, name: &str) -> Result<std::time::Duration, ConfigError> {
    let raw = raw.trim();
    let (number, unit) = raw.find(|c: char| !c.is_ascii_digit()).map_or((raw, ""), |at| raw.split_at(at));
    let value: u64 =
        number.parse().map_err(|_| config_error(name, format!("{raw:?} is not a duration such as 500ms, 30s, 5m, 2h or 5d")))?;
    let seconds_per = match unit {
        "ms" => return Ok(std::time::Duration::from_millis(value)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(config_error(name, format!("{raw:?} has an unknown unit (use ms, s, m, h or d)"))),
    };
    let seconds = value.checked_mul(seconds_per).ok_or_else(|| config_error(name, format!("{raw:?} is too long")))?;
    Ok(std::time::Duration::from_secs(seconds))
}

fn parse_duration_list(raw: &str, name: &str) -> Result<Vec<std::time::Duration>, ConfigError> {
    raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|item| parse_duration(item, name)).collect()
}

/// `kid:BASE64,kid:BASE64` — 32-byte AES-256 keys.
fn parse_master_keys(raw: &str, active: Option<String>) -> Result<EncryptionSettings, ConfigError> {
    let mut keys = BTreeMap::new();
    let mut first = None;
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (kid, b64) =
            item.split_once(':').ok_or_else(|| config_error("MASTER_KEYS", "each entry must be KEY_ID:BASE64_KEY"))?;
        if kid.is_empty() || !kid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(config_error("MASTER_KEYS", "key ids may hold only letters, digits, '-' and '_'"));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| config_error("MASTER_KEYS", format!("key {kid} is not valid base64")))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| config_error("MASTER_KEYS", format!("key {kid} must be 32 bytes (base64 of 32 random bytes)")))?;
        if keys.insert(kid.to_owned(), key).is_some() {
            return Err(config_error("MASTER_KEYS", format!("key id {kid} is listed twice")));
        }
        first.get_or_insert_with(|| kid.to_owned());
    }
    let first = first.ok_or_else(|| config_error("MASTER_KEYS", "must list at least one key"))?;
    let active_key_id = active.unwrap_or(first);
    if !keys.contains_key(&active_key_id) {
        return Err(config_error("ACTIVE_KEY_ID", format!("names {active_key_id}, which is not in POSTBRIDGE_MASTER_KEYS")));
    }
    Ok(EncryptionSettings { keys, active_key_id })
}

/// `kid:ALG:VALUE[;tenant=UUID],...` — VALUE is a base64 secret for HS*, or a path to a PEM public key for
/// RS*/ES*; `;tenant=` limits the key's tokens to one tenant.
fn parse_jwt_keys(raw: &str) -> Result<Vec<JwtKeySettings>, ConfigError> {
    let mut keys: Vec<JwtKeySettings> = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (item, tenant) = match item.rsplit_once(";tenant=") {
            Some((key, tenant)) => {
                let tenant = uuid::Uuid::parse_str(tenant.trim())
                    .map_err(|_| config_error("JWT_KEYS", format!("{key}: tenant= must be a tenant id (UUID)")))?;
                (key, Some(tenant))
            }
            None => (item, None),
        };
        let mut parts = item.splitn(3, ':');
        let (Some(kid), Some(alg), Some(value)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(config_error("JWT_KEYS", "each entry must be KEY_ID:ALGORITHM:VALUE"));
        };
        let algorithm = JwtAlgorithm::parse(alg)
            .ok_or_else(|| config_error("JWT_KEYS", format!("key {kid}: unsupported algorithm {alg}")))?;
        let material = if algorithm.is_symmetric() {
            let secret = base64::engine::general_purpose::STANDARD
                .decode(value)
                .map_err(|_| config_error("JWT_KEYS", format!("key {kid}: secret is not valid base64")))?;
            if secret.len() < 32 {
                return Err(config_error("JWT_KEYS", format!("key {kid}: secret must be at least 32 bytes")));
            }
            JwtKeyMaterial::Secret(secret)
        } else {
            let pem =
                std::fs::read(value).map_err(|e| config_error("JWT_KEYS", format!("key {kid}: cannot read PEM file: {e}")))?;
            JwtKeyMaterial::PublicPem(pem)
        };
        if keys.iter().any(|k| k.kid == kid) {
            return Err(config_error("JWT_KEYS", format!("key id {kid} is listed twice")));
        }
        keys.push(JwtKeySettings { kid: kid.to_owned(), algorithm, material, tenant });
    }
    if keys.is_empty() {
        return Err(config_error("JWT_KEYS", "must list at least one key"));
    }
    Ok(keys)
}

fn with_signing_key(mut jwt: JwtSettings, chosen: Option<String>) -> Result<JwtSettings, ConfigError> {
    let signing = match chosen {
        Some(kid) => jwt
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or_else(|| config_error("JWT_SIGNING_KEY_ID", format!("names {kid}, which is not in POSTBRIDGE_JWT_KEYS")))?,
        None => jwt
            .keys
            .iter()
            .find(|k| k.algorithm.is_symmetric())
            .ok_or_else(|| config_error("JWT_KEYS", "at least one HS256/HS384/HS512 key is needed to issue tokens"))?,
    };
    if !signing.algorithm.is_symmetric() {
        return Err(config_error("JWT_SIGNING_KEY_ID", "must name an HS256/HS384/HS512 key"));
    }
    jwt.signing_key_id = signing.kid.clone();
    Ok(jwt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> BTreeMap<&'static str, String> {
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        BTreeMap::from([
            ("POSTBRIDGE_DATABASE_URL", "postgres://postgres@127.0.0.1/postbridge".to_owned()),
            ("POSTBRIDGE_MASTER_KEYS", format!("k1:{key}")),
            ("POSTBRIDGE_JWT_KEYS", format!("j1:HS256:{key}")),
        ])
    }

    fn load(vars: &BTreeMap<&'static str, String>) -> Result<Settings, ConfigError> {
        Settings::from_lookup(|k| vars.get(k).cloned())
    }

    #[test]
    fn minimal_environment_loads_with_defaults() {
        let s = load(&base()).expect("valid settings");
        assert_eq!(s.encryption.active_key_id, "k1");
        assert_eq!(s.jwt.signing_key_id, "j1");
        assert_eq!(s.oauth_redirect_uri(), "http://127.0.0.1:8080/oauth/callback");
        assert!(!s.allow_private_hosts);
        let minutes = |m: u64| std::time::Duration::from_secs(m * 60);
        assert_eq!(
            s.webhooks.retry_schedule,
            [std::time::Duration::from_secs(5), minutes(5), minutes(30), minutes(120), minutes(300), minutes(600)]
        );
        assert_eq!(s.webhooks.disable_after, minutes(5 * 24 * 60));
        assert_eq!((s.max_inbound_message_bytes, s.inbound_batch_bytes), (50 * MIB, 32 * MIB));
    }

    #[test]
    fn inbound_byte_limits_outside_their_range_are_refused_by_name() {
        for (name, value) in [
            ("POSTBRIDGE_MAX_INBOUND_MESSAGE_BYTES", "0"),
            ("POSTBRIDGE_MAX_INBOUND_MESSAGE_BYTES", "2000000000"),
            ("POSTBRIDGE_INBOUND_BATCH_BYTES", "1024"),
            ("POSTBRIDGE_INBOUND_BATCH_BYTES", "-5"),
        ] {
            let mut vars = base();
            vars.insert(name, value.to_owned());
            let err = load(&vars).err().unwrap_or_else(|| panic!("{name}={value} must be refused"));
            assert_eq!(err.variable, name);
        }
        let mut vars = base();
        vars.insert("POSTBRIDGE_MAX_INBOUND_MESSAGE_BYTES", "1048576".to_owned());
        assert_eq!(load(&vars).expect("valid").max_inbound_message_bytes, MIB);
    }

    #[test]
    fn durations_take_milliseconds_to_days() {
        let mut vars = base();
        assert_eq!(load(&vars).expect("defaults").dispatch_interval, std::time::Duration::from_millis(500));
        vars.insert("POSTBRIDGE_DISPATCH_INTERVAL", "2s".to_owned());
        vars.insert("POSTBRIDGE_WORKER_SHUTDOWN_GRACE", "1500ms".to_owned());
        let settings = load(&vars).expect("valid");
        assert_eq!(settings.dispatch_interval, std::time::Duration::from_secs(2));
        assert_eq!(settings.worker_shutdown_grace, std::time::Duration::from_millis(1500));
    }

    #[test]
    fn jwt_keys_may_be_limited_to_one_tenant() {
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let tenant = uuid::Uuid::now_v7();
        let mut vars = base();
        vars.insert("POSTBRIDGE_JWT_KEYS", format!("j1:HS256:{key},idp:HS256:{key};tenant={tenant}"));
        let s = load(&vars).expect("valid settings");
        assert_eq!(s.jwt.keys[0].tenant, None);
        assert_eq!(s.jwt.keys[1].tenant, Some(tenant));
        vars.insert("POSTBRIDGE_JWT_KEYS", format!("j1:HS256:{key};tenant=acme"));
        assert_eq!(load(&vars).expect_err("not a uuid").variable, "POSTBRIDGE_JWT_KEYS");
    }

    #[test]
    fn missing_or_malformed_variables_are_named() {
        for (name, value) in [
            ("POSTBRIDGE_DATABASE_URL", None),
            ("POSTBRIDGE_MASTER_KEYS", Some("k1:short")),
            ("POSTBRIDGE_MASTER_KEYS", None),
            ("POSTBRIDGE_JWT_KEYS", Some("j1:none:abc")),
            ("POSTBRIDGE_LISTEN_ADDR", Some("not-an-address")),
            ("POSTBRIDGE_ALLOW_PRIVATE_HOSTS", Some("maybe")),
            ("POSTBRIDGE_OPERATOR_TOKEN", Some("short")),
            ("POSTBRIDGE_ACTIVE_KEY_ID", Some("k9")),
            ("POSTBRIDGE_WEBHOOK_RETRY_SCHEDULE", Some("5s,soon")),
            ("POSTBRIDGE_WEBHOOK_DISABLE_AFTER", Some("5w")),
            ("POSTBRIDGE_WORKER_METRICS_ADDR", Some("port nine")),
            ("POSTBRIDGE_DISPATCH_INTERVAL", Some("10ms")),
            ("POSTBRIDGE_DISPATCH_INTERVAL", Some("1m")),
            ("POSTBRIDGE_IDLE_REISSUE", Some("30m")),
            ("POSTBRIDGE_IDLE_MAILBOXES", Some("-1")),
            ("POSTBRIDGE_WORKER_SHUTDOWN_GRACE", Some("99999999999999999d")),
        ] {
            let mut vars = base();
            match value {
                Some(v) => vars.insert(name, v.to_owned()),
                None => vars.remove(name),
            };
            let err = load(&vars).expect_err(name);
            let expected = if name == "POSTBRIDGE_ACTIVE_KEY_ID" { "POSTBRIDGE_ACTIVE_KEY_ID" } else { name };
            assert_eq!(err.variable, expected, "{err}");
        }
    }
}
