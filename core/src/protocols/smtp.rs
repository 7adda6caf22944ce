//! Sending mail over SMTP with lettre's low-level connection API, so every phase is known and timed:
//! TCP through the SSRF guard (the connection goes to a checked address, no second DNS lookup), implicit TLS or
//! STARTTLS (web PKI plus the deployment's extra CA), EHLO, AUTH (XOAUTH2 for OAuth2 accounts, PLAIN then LOGIN for
//! passwords), then MAIL / RCPT / DATA, each under the I/O timeout.
//!
//! The outcome says what a retry may do ([`SendError`]): a `4xx` or a network failure before the message content was
//! sent is [`SendError::Transient`]; a `5xx` is [`SendError::Permanent`]; refused credentials are [`SendError::Auth`];
//! a connection lost or timed out after the content was sent and before the final reply is [`SendError::Unknown`]:
//! the server may have accepted the message, so it must not be resent blindly.
//!
//! Connection reuse: [`SmtpClient`] keeps authenticated connections, per server and credential, in a small pool. A
//! reused connection is checked with `RSET` first (a stale one is dropped and another one, or a new one, is used); a
//! connection whose state is unknown (network error, timeout, `421`) is never put back.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use lettre::address::Address;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;
use sha2::{Digest as _, Sha256};
use tokio_rustls::rustls::ClientConfig;

use crate::config::Settings;
use crate::failure::MailStep;
use crate::model::Security;
use crate::protocols::compose::Composed;
use crate::protocols::error::{server_words, Endpoint, MailAuth, MailError, Timeouts};
use crate::protocols::net::{connect_tcp, start_tls};
use crate::protocols::netguard::NetGuard;
use crate::protocols::smtp_stream::ServerStream;

/// Tuning of an [`SmtpClient`].
#[derive(Clone, Debug)]
pub struct SmtpConfig {
    pub timeouts: Timeouts,
    /// An idle pooled connection older than this is closed instead of reused.
    pub idle_timeout: Duration,
    /// Idle connections kept per server and credential (more are closed with QUIT).
    pub max_idle_per_key: usize,
    /// A connection is closed after this many messages (servers limit messages per session).
    pub max_messages_per_connection: u32,
    /// The EHLO name; default: this host's name (lettre's default), else `[127.0.0.1]`.
    pub hello_name: Option<String>,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            timeouts: Timeouts::default(),
            idle_timeout: Duration::from_secs(30),
            max_idle_per_key: 8,
            max_messages_per_connection: 100,
            hello_name: None,
        }
    }
}

/// The server accepted the message, for at least one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// `reply`: the server's final reply, e.g. `250 2.0.0 OK <queue id>`; `recipients`: each envelope recipient's
    /// answer to its `RCPT TO`, in order (a permanently refused one did not get the message).
    Sent { reply: String, recipients: Vec<RecipientReply> },
}

/// One envelope recipient's answer to `RCPT TO`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientReply {
    pub recipient: String,
    /// `2xx`: the message goes to this recipient. Otherwise a `5xx` refusal (a `4xx` defers the whole message).
    pub accepted: bool,
    /// The server's reply, e.g. `550 5.1.1 no such user`.
    pub reply: String,
}

impl SendOutcome {
    pub fn reply(&self) -> &str {
        match self {
            SendOutcome::Sent { reply, .. } => reply,
        }
    }

    pub fn recipients(&self) -> &[RecipientReply] {
        match self {
            SendOutcome::Sent { recipients, .. } => recipients,
        }
    }

    /// Whether some recipients were refused (the others got the message).
    pub fn is_partial(&self) -> bool {
        self.recipients().iter().any(|r| !r.accepted)
    }
}

/// Why a message was not (or may not have been) sent. `message` holds the server's words (with the command that got
/// them) or the local reason; never a password or a token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Try again later: a `4xx` reply, or a DNS / connection / TLS / timeout failure before the content was sent.
    #[error("temporary failure ({step}): {message}")]
    Transient { step: MailStep, code: Option<u16>, message: String },
    /// Do not retry: a `5xx` reply, or a host the deployment's policy refuses.
    #[error("permanent failure ({step}): {message}")]
    Permanent { step: MailStep, code: Option<u16>, message: String },
    /// The server refused the credentials (`535` and the like, or no usable mechanism): the account needs attention.
    #[error("authentication failed: {message}")]
    Auth { code: Option<u16>, message: String },
    /// The connection was lost or timed out after the message content was sent and before the final reply: the
    /// server may have accepted it. Must not be resent blindly.
    #[error("outcome unknown: {message}")]
    Unknown { message: String },
}

impl SendError {
    pub fn code(&self) -> Option<u16> {
        match self {
            SendError::Transient { code, .. } | SendError::Permanent { code, .. } | SendError::Auth { code, .. } => *code,
            SendError::Unknown { .. } => None,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            SendError::Transient { message, .. }
            | SendError::Permanent { message, .. }
            | SendError::Auth { message, .. }
            | SendError::Unknown { message } => message,
        }
    }

    /// The step that failed (`auth` for [`SendError::Auth`], `unknown` for [`SendError::Unknown`]).
    pub fn step(&self) -> MailStep {
        match self {
            SendError::Transient { step, .. } | SendError::Permanent { step, .. } => *step,
            SendError::Auth { .. } => MailStep::Auth,
            SendError::Unknown { .. } => MailStep::Unknown,
        }
    }

    /// Whether sending the same message again later is safe and may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SendError::Transient { .. })
    }

    /// Classifies a failure that happened before the message content was sent.
    fn before_content(err: MailError) -> SendError {
        let MailError { step, message, code, .. } = err;
        let temporary = code.is_some_and(|c| (400..500).contains(&c));
        match step {
            MailStep::Forbidden => SendError::Permanent { step, code, message },
            MailStep::Auth if temporary => SendError::Transient { step, code, message },
            MailStep::Auth => SendError::Auth { code, message },
            _ if code.is_some_and(|c| c >= 500) => SendError::Permanent { step, code, message },
            _ => SendError::Transient { step, code, message },
        }
    }
}

/// What [`SmtpClient::test_connection`] learnt about the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmtpServerInfo {
    /// The name the server gave in its EHLO reply.
    pub name: String,
    /// Whether the session was encrypted (implicit TLS or STARTTLS).
    pub encrypted: bool,
    /// The SASL mechanism that authenticated (`XOAUTH2`, `PLAIN`, `LOGIN`).
    pub mechanism: String,
}

/// Sends raw messages over SMTP, reusing authenticated connections. Cheap to clone (shared pool).
#[derive(Clone)]
pub struct SmtpClient {
    inner: Arc<Inner>,
}

struct Inner {
    guard: NetGuard,
    /// For implicit TLS (our own handshake before lettre sees the stream).
    tls: Arc<ClientConfig>,
    /// For STARTTLS (lettre upgrades the stream itself and only takes its own `TlsParameters`).
    extra_ca: Option<Certificate>,
    starttls_params: Mutex<HashMap<String, TlsParameters>>,
    hello: ClientId,
    config: SmtpConfig,
    pool: Mutex<Pool>,
    opened: AtomicU64,
}

type PoolKey = [u8; 32];

struct Pool {
    idle: HashMap<PoolKey, Vec<IdleConnection>>,
    last_prune: Instant,
}

struct IdleConnection {
    conn: AsyncSmtpConnection,
    since: Instant,
    messages: u32,
}

/// A connection checked out of the pool (or just opened) for one message.
struct Session {
    conn: AsyncSmtpConnection,
    messages: u32,
}

/// How long a pooled connection may take to answer the RSET that proves it alive.
const RSET_PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a polite QUIT on a connection being discarded may take.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes per second a slow link must at least manage while the message content is sent (stretches the I/O timeout
/// for large messages).
const MIN_CONTENT_RATE: usize = 50_000;
const MAX_CACHED_TLS_PARAMS: usize = 1024;

impl SmtpClient {
    /// A client that trusts the web PKI plus the certificates of `extra_ca_pem` (PEM, one or more).
    pub fn new(guard: NetGuard, extra_ca_pem: Option<&[u8]>, config: SmtpConfig) -> anyhow::Result<SmtpClient> {
        let roots = crate::protocols::tls::root_store(extra_ca_pem)?;
        let tls = ClientConfig::builder_with_provider(Arc::new(tokio_rustls::rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let extra_ca = extra_ca_pem
            .map(Certificate::from_pem)
            .transpose()
            .map_err(|e| anyhow::anyhow!("extra CA certificates unusable for STARTTLS: {e}"))?;
        let hello = match &config.hello_name {
            Some(name) => ClientId::Domain(name.clone()),
            None => ClientId::default(),
        };
        Ok(SmtpClient {
            inner: Arc::new(Inner {
                guard,
                tls: Arc::new(tls),
                extra_ca,
                starttls_params: Mutex::new(HashMap::new()),
                hello,
                config,
                pool: Mutex::new(Pool { idle: HashMap::new(), last_prune: Instant::now() }),
                opened: AtomicU64::new(0),
            }),
        })
    }

    /// A client with the deployment's guard policy and `POSTBRIDGE_EXTRA_CA_FILE`.
    pub fn from_settings(settings: &Settings, config: SmtpConfig) -> anyhow::Result<SmtpClient> {
        let extra = read_extra_ca(settings)?;
        SmtpClient::new(NetGuard::new(settings.allow_private_hosts), extra.as_deref(), config)
    }

    /// Sends a composed message (its envelope and bytes).
    pub async fn send(&self, endpoint: &Endpoint, auth: &MailAuth, message: &Composed) -> Result<SendOutcome, SendError> {
        self.send_raw(endpoint, auth, &message.envelope_from, &message.envelope_to, &message.raw).await
    }

    /// Sends `raw` (an RFC 5322 message, CRLF line endings) to `envelope_to` with `MAIL FROM:<envelope_from>`, over a
    /// pooled connection for this server and credential when one is idle.
    pub async fn send_raw(
        &self,
        endpoint: &Endpoint,
        auth: &MailAuth,
        envelope_from: &str,
        envelope_to: &[String],
        raw: &[u8],
    ) -> Result<SendOutcome, SendError> {
        let sent = self.send_raw_when(endpoint, auth, envelope_from, envelope_to, raw, async { true }).await?;
        sent.ok_or_else(|| SendError::Permanent { step: MailStep::Command, code: None, message: "not sent".to_owned() })
    }

    /// Like `send_raw`, but awaits `ready` once the connection is open and authenticated, just before `MAIL FROM`:
    /// when it says no, nothing is sent (the connection goes back to the pool) and the answer is `None`. A sender
    /// marks its message handed over there, so a connection or login that never completes never looks like a
    /// message the server may have.
    pub async fn send_raw_when(
        &self,
        endpoint: &Endpoint,
        auth: &MailAuth,
        envelope_from: &str,
        envelope_to: &[String],
        raw: &[u8],
        ready: impl std::future::Future<Output = bool>,
    ) -> Result<Option<SendOutcome>, SendError> {
        let invalid = |field: &str, value: &str| SendError::Permanent {
            step: MailStep::Command,
            code: None,
            message: format!("{field}: {value:?} is not a valid email address"),
        };
        let from: Address = envelope_from.parse().map_err(|_| invalid("envelope sender", envelope_from))?;
        let to = envelope_to
            .iter()
            .map(|rcpt| rcpt.parse::<Address>().map_err(|_| invalid("envelope recipient", rcpt)))
            .collect::<Result<Vec<_>, _>>()?;
        if to.is_empty() {
            return Err(SendError::Permanent { step: MailStep::Command, code: None, message: "no recipient".to_owned() });
        }

        let key = pool_key(endpoint, auth);
        let mut session = self.checkout(&key, endpoint, auth).await.map_err(SendError::before_content)?;
        if !ready.await {
            self.checkin(key, session);
            return Ok(None);
        }
        let (result, reusable) = self.transaction(&mut session.conn, &from, &to, raw).await;
        if result.is_ok() {
            session.messages += 1;
        }
        if reusable {
            self.checkin(key, session);
        }
        result.map(Some)
    }

    /// "Test & confirm": connect, TLS as configured, EHLO, AUTH, QUIT — on a connection of its own (never pooled).
    /// The error names the failing step and carries the server's words and reply code.
    pub async fn test_connection(&self, endpoint: &Endpoint, auth: &MailAuth) -> Result<SmtpServerInfo, MailError> {
        let (mut conn, mechanism) = self.open(endpoint, auth).await?;
        let info = SmtpServerInfo {
            name: conn.server_info().name().to_owned(),
            encrypted: endpoint.security != Security::None,
            mechanism,
        };
        let _ = tokio::time::timeout(QUIT_TIMEOUT.min(self.inner.config.timeouts.io), conn.quit()).await;
        Ok(info)
    }

    /// Idle connections in the pool (all servers).
    pub fn idle_connections(&self) -> usize {
        lock(&self.inner.pool).idle.values().map(Vec::len).sum()
    }

    /// Connections opened (and authenticated) since the client was built.
    pub fn connections_opened(&self) -> u64 {
        self.inner.opened.load(Ordering::Relaxed)
    }

    /// Closes every idle connection (QUIT); e.g. at shutdown. Returns how many there were.
    pub async fn close_idle(&self) -> usize {
        let idle: Vec<IdleConnection> = lock(&self.inner.pool).idle.drain().flat_map(|(_, conns)| conns).collect();
        let count = idle.len();
        for mut idle in idle {
            let _ = tokio::time::timeout(QUIT_TIMEOUT, idle.conn.quit()).await;
        }
        count
    }

    // ---- the pool ---------------------------------------------------------------------------------------------------

    /// An idle connection that answers RSET, else a new one.
    async fn checkout(&self, key: &PoolKey, endpoint: &Endpoint, auth: &MailAuth) -> Result<Session, MailError> {
        loop {
            let candidate = {
                let mut pool = lock(&self.inner.pool);
                let expired = self.prune(&mut pool);
                let candidate = pool.idle.get_mut(key).and_then(Vec::pop);
                drop(pool);
                drop(expired);
                candidate
            };
            let Some(mut idle) = candidate else { break };
            if idle.since.elapsed() >= self.inner.config.idle_timeout {
                continue;
            }
            let probe = RSET_PROBE_TIMEOUT.min(self.inner.config.timeouts.io);
            if let Ok(Ok(_)) = tokio::time::timeout(probe, idle.conn.command(Rset)).await {
                return Ok(Session { conn: idle.conn, messages: idle.messages });
            }
            // Stale (closed by the server, 421, no answer): dropped; try the next one.
        }
        let (conn, _) = self.open(endpoint, auth).await?;
        Ok(Session { conn, messages: 0 })
    }

    fn checkin(&self, key: PoolKey, session: Session) {
        let config = &self.inner.config;
        if session.messages >= config.max_messages_per_connection {
            quit_in_background(session.conn);
            return;
        }
        let mut pool = lock(&self.inner.pool);
        let expired = self.prune(&mut pool);
        let conns = pool.idle.entry(key).or_default();
        let surplus = if conns.len() < config.max_idle_per_key {
            conns.push(IdleConnection { conn: session.conn, since: Instant::now(), messages: session.messages });
            None
        } else {
            Some(session.conn)
        };
        drop(pool);
        drop(expired);
        if let Some(conn) = surplus {
            quit_in_background(conn);
        }
    }

    /// Takes expired connections out of the pool (at most every half idle timeout); the caller drops them after
    /// releasing the lock.
    fn prune(&self, pool: &mut Pool) -> Vec<IdleConnection> {
        let idle_timeout = self.inner.config.idle_timeout;
        if pool.last_prune.elapsed() < (idle_timeout / 2).max(Duration::from_secs(1)) {
            return Vec::new();
        }
        pool.last_prune = Instant::now();
        let mut expired = Vec::new();
        for conns in pool.idle.values_mut() {
            let (keep, old): (Vec<_>, Vec<_>) = conns.drain(..).partition(|c| c.since.elapsed() < idle_timeout);
            *conns = keep;
            expired.extend(old);
        }
        pool.idle.retain(|_, conns| !conns.is_empty());
        expired
    }

    // ---- one connection ---------------------------------------------------------------------------------------------

    /// Connects, secures and authenticates a new connection; returns it with the mechanism that authenticated.
    async fn open(&self, endpoint: &Endpoint, auth: &MailAuth) -> Result<(AsyncSmtpConnection, String), MailError> {
        let inner = &self.inner;
        let io = inner.config.timeouts.io;
        let host = endpoint.host.as_str();
        let tcp = connect_tcp(&inner.guard, host, endpoint.port, inner.config.timeouts.connect).await?;
        let stream: Box<dyn AsyncTokioStream> = match endpoint.security {
            Security::Tls => Box::new(ServerStream::tls(start_tls(Arc::clone(&inner.tls), host, tcp, io).await?)),
            Security::Starttls | Security::None => Box::new(ServerStream::plain(tcp)),
        };
        let mut conn = match tokio::time::timeout(io, AsyncSmtpConnection::connect_with_transport(stream, &inner.hello)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(err)) => return Err(lettre_error(MailStep::Greeting, "greeting / EHLO", &err, MailStep::Greeting)),
            Err(_) => return Err(MailError::timeout("the greeting and EHLO", io)),
        };
        if endpoint.security == Security::Starttls {
            if !conn.can_starttls() {
                return Err(MailError::new(MailStep::Tls, "the server does not offer STARTTLS"));
            }
            let params = self.starttls_params(host)?;
            match tokio::time::timeout(io, conn.starttls(params, &inner.hello)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => return Err(lettre_error(MailStep::Tls, "STARTTLS", &err, MailStep::Tls)),
                Err(_) => return Err(MailError::timeout("STARTTLS", io)),
            }
        }
        let mechanism = match tokio::time::timeout(io, authenticate(&mut conn, auth)).await {
            Ok(result) => result?,
            Err(_) => return Err(MailError::timeout("AUTH", io)),
        };
        inner.opened.fetch_add(1, Ordering::Relaxed);
        Ok((conn, mechanism))
    }

    fn starttls_params(&self, host: &str) -> Result<TlsParameters, MailError> {
        let name = host.trim_start_matches('[').trim_end_matches(']');
        let mut cache = lock(&self.inner.starttls_params);
        if let Some(params) = cache.get(name) {
            return Ok(params.clone());
        }
        let mut builder = TlsParameters::builder(name.to_owned());
        if let Some(ca) = &self.inner.extra_ca {
            builder = builder.add_root_certificate(ca.clone());
        }
        let params = builder.build_rustls().map_err(|e| MailError::new(MailStep::Tls, e.to_string()))?;
        if cache.len() >= MAX_CACHED_TLS_PARAMS {
            cache.clear();
        }
        cache.insert(name.to_owned(), params.clone());
        Ok(params)
    }

    /// MAIL, RCPT, DATA and the content. Returns the outcome and whether the connection may be reused.
    async fn transaction(
        &self,
        conn: &mut AsyncSmtpConnection,
        from: &Address,
        to: &[Address],
        raw: &[u8],
    ) -> (Result<SendOutcome, SendError>, bool) {
        let io = self.inner.config.timeouts.io;
        let mut params = Vec::new();
        let ascii = |address: &Address| AsRef::<str>::as_ref(address).is_ascii();
        let non_ascii_address = !ascii(from) || to.iter().any(|a| !ascii(a));
        if non_ascii_address {
            if !conn.server_info().supports_feature(Extension::SmtpUtfEight) {
                let message = "the addresses need SMTPUTF8, which the server does not offer".to_owned();
                return (Err(SendError::Permanent { step: MailStep::Command, code: None, message }), true);
            }
            params.push(MailParameter::SmtpUtfEight);
        }
        if !raw.is_ascii() {
            if !conn.server_info().supports_feature(Extension::EightBitMime) {
                let message = "the message is not 7-bit clean and the server does not offer 8BITMIME".to_owned();
                return (Err(SendError::Permanent { step: MailStep::Command, code: None, message }), true);
            }
            params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }

        let what = format!("MAIL FROM:<{from}>");
        if let Err(failure) = command_step(io, &what, conn.command(Mail::new(Some(from.clone()), params))).await {
            return failure;
        }
        // A recipient refused for good (5xx) does not stop the others; anything else (4xx, a lost connection)
        // defers the whole message, which is then tried again for every recipient.
        let mut recipients = Vec::with_capacity(to.len());
        for rcpt in to {
            let what = format!("RCPT TO:<{rcpt}>");
            let reply = match tokio::time::timeout(io, conn.command(Rcpt::new(rcpt.clone(), Vec::new()))).await {
                Ok(Ok(response)) => RecipientReply { recipient: rcpt.to_string(), accepted: true, reply: reply_text(&response) },
                Ok(Err(err)) if err.status().is_some_and(|code| u16::from(code) >= 500) => {
                    let code = err.status().map(u16::from).unwrap_or(550);
                    RecipientReply {
                        recipient: rcpt.to_string(),
                        accepted: false,
                        reply: format!("{code} {}", lettre_detail(&err)),
                    }
                }
                Ok(Err(err)) => return command_failure(&what, &err),
                Err(_) => return (Err(SendError::before_content(MailError::timeout(&what, io))), false),
            };
            recipients.push(reply);
        }
        if let Some(refused) = recipients.iter().find(|r| !r.accepted).filter(|_| recipients.iter().all(|r| !r.accepted)) {
            // Nobody would get it: no DATA. The next use of the connection starts with RSET.
            let message = format!("every recipient was refused; RCPT TO:<{}>: {}", refused.recipient, refused.reply);
            let code = refused.reply.get(..3).and_then(|c| c.parse().ok());
            return (Err(SendError::Permanent { step: MailStep::Command, code, message }), true);
        }
        if let Err(failure) = command_step(io, "DATA", conn.command(Data)).await {
            return failure;
        }

        // From here on the server may accept the message at any moment: no reply means "unknown".
        let content = wire_content(raw);
        let content_timeout = io + Duration::from_secs((content.len() / MIN_CONTENT_RATE) as u64);
        match tokio::time::timeout(content_timeout, conn.message(&content)).await {
            Ok(Ok(response)) => (Ok(SendOutcome::Sent { reply: reply_text(&response), recipients }), true),
            Ok(Err(err)) => match err.status() {
                Some(code) => {
                    let code = u16::from(code);
                    let message = format!("end of data: {code} {}", lettre_detail(&err));
                    let error = if code >= 500 {
                        SendError::Permanent { step: MailStep::Command, code: Some(code), message }
                    } else {
                        SendError::Transient { step: MailStep::Command, code: Some(code), message }
                    };
                    (Err(error), code != 421)
                }
                None => {
                    let message = format!("no reply after the message content was sent: {}", describe(&err));
                    (Err(SendError::Unknown { message }), false)
                }
            },
            Err(_) => {
                let message = format!("no reply within {}s after the message content was sent", content_timeout.as_secs());
                (Err(SendError::Unknown { message }), false)
            }
        }
    }
}

impl fmt::Debug for SmtpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpClient")
            .field("config", &self.inner.config)
            .field("idle_connections", &self.idle_connections())
            .finish_non_exhaustive()
    }
}

fn read_extra_ca(settings: &Settings) -> anyhow::Result<Option<Vec<u8>>> {
    settings
        .extra_ca_file
        .as_deref()
        .map(|path| std::fs::read(path).with_context(|| format!("cannot read POSTBRIDGE_EXTRA_CA_FILE {path}")))
        .transpose()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Server, port, security and credential, hashed (the pool never holds a secret in its keys).
fn pool_key(endpoint: &Endpoint, auth: &MailAuth) -> PoolKey {
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    field(endpoint.host.to_ascii_lowercase().as_bytes());
    field(&endpoint.port.to_be_bytes());
    field(endpoint.security.as_str().as_bytes());
    match auth {
        MailAuth::Password { login, password } => {
            field(b"password");
            field(login.as_bytes());
            field(password.as_bytes());
        }
        MailAuth::XOAuth2 { login, access_token } => {
            field(b"xoauth2");
            field(login.as_bytes());
            field(access_token.as_bytes());
        }
    }
    hash.finalize().into()
}

fn quit_in_background(mut conn: AsyncSmtpConnection) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ = tokio::time::timeout(QUIT_TIMEOUT, conn.quit()).await;
        });
    }
}

/// One command of the transaction under the I/O timeout. On failure: the outcome and whether the connection may be
/// reused (the server answered and did not announce it is closing).
async fn command_step<F>(io: Duration, what: &str, command: F) -> Result<Response, (Result<SendOutcome, SendError>, bool)>
where
    F: std::future::Future<Output = Result<Response, lettre::transport::smtp::Error>>,
{
    match tokio::time::timeout(io, command).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(err)) => Err(command_failure(what, &err)),
        Err(_) => Err((Err(SendError::before_content(MailError::timeout(what, io))), false)),
    }
}

/// A command the server refused or the connection failed on, before the content; and whether the connection may
/// be reused (not after `421` or a network failure).
fn command_failure(what: &str, err: &lettre::transport::smtp::Error) -> (Result<SendOutcome, SendError>, bool) {
    let reusable = err.status().is_some_and(|code| u16::from(code) != 421);
    let error = lettre_error(MailStep::Command, what, err, MailStep::Unknown);
    (Err(SendError::before_content(error)), reusable)
}

/// A lettre error as a [`MailError`]: a server reply keeps `step` and its code; a local or network failure becomes
/// `io_step` (a client-side refusal such as "no compatible mechanism" keeps `step`).
fn lettre_error(step: MailStep, what: &str, err: &lettre::transport::smtp::Error, io_step: MailStep) -> MailError {
    match err.status() {
        Some(code) => {
            let code = u16::from(code);
            MailError::new(step, format!("{what}: {code} {}", lettre_detail(err))).with_code(code)
        }
        None if err.is_client() => MailError::new(step, format!("{what}: {}", lettre_detail(err))),
        None => MailError::new(io_step, format!("{what}: {}", describe(err))),
    }
}

/// The text lettre keeps for an error: the server's reply text for a reply, else the underlying cause.
fn lettre_detail(err: &lettre::transport::smtp::Error) -> String {
    server_words(&std::error::Error::source(err).map(ToString::to_string).unwrap_or_else(|| err.to_string()))
}

/// A local / network failure in plain words.
fn describe(err: &lettre::transport::smtp::Error) -> String {
    let detail = lettre_detail(err);
    if err.is_response() && detail == "incomplete response" {
        "the server closed the connection".to_owned()
    } else {
        server_words(&err.to_string())
    }
}

/// The message as it goes after DATA (lettre dot-stuffs it and appends `CRLF . CRLF`): every line ending made CRLF
/// (a bare CR or LF could be read as the end of the data by some servers, the "SMTP smuggling" trick), and the final
/// CRLF left out, as the terminator's own CRLF ends the last line; otherwise the server would store an extra empty
/// line.
fn wire_content(raw: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let bare = raw.iter().enumerate().any(|(i, &b)| match b {
        b'\r' => raw.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || raw[i - 1] != b'\r',
        _ => false,
    });
    let content: std::borrow::Cow<'_, [u8]> = if bare {
        let mut out = Vec::with_capacity(raw.len() + raw.len() / 40);
        let mut i = 0;
        while i < raw.len() {
            match raw[i] {
                b'\r' if raw.get(i + 1) == Some(&b'\n') => {
                    out.extend_from_slice(b"\r\n");
                    i += 1;
                }
                b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
                b => out.push(b),
            }
            i += 1;
        }
        out.into()
    } else {
        raw.into()
    };
    match content {
        std::borrow::Cow::Borrowed(bytes) => bytes.strip_suffix(b"\r\n").unwrap_or(bytes).into(),
        std::borrow::Cow::Owned(mut bytes) => {
            if bytes.ends_with(b"\r\n") {
                bytes.truncate(bytes.len() - 2);
            }
            bytes.into()
        }
    }
}

/// A reply as it is kept (a recipient's, the message's): the server's words, bounded and storable.
fn reply_text(response: &Response) -> String {
    let lines: Vec<&str> = response.message().collect();
    server_words(&format!("{} {}", u16::from(response.code()), lines.join(" ")))
}

/// The mechanisms among those lettre knows that the server offers, for error messages.
fn offered_mechanisms(conn: &AsyncSmtpConnection) -> String {
    let offered: Vec<String> = [Mechanism::Xoauth2, Mechanism::Plain, Mechanism::Login]
        .into_iter()
        .filter(|m| conn.server_info().supports_auth_mechanism(*m))
        .map(|m| m.to_string())
        .collect();
    if offered.is_empty() {
        "none".to_owned()
    } else {
        offered.join(", ")
    }
}

/// AUTH with the account's credentials; returns the mechanism used.
async fn authenticate(conn: &mut AsyncSmtpConnection, auth: &MailAuth) -> Result<String, MailError> {
    match auth {
        MailAuth::Password { login, password } => {
            let wanted = [Mechanism::Plain, Mechanism::Login];
            let Some(mechanism) = conn.server_info().get_auth_mechanism(&wanted) else {
                return Err(MailError::new(
                    MailStep::Auth,
                    format!("the server offers no password mechanism (PLAIN, LOGIN); it offers: {}", offered_mechanisms(conn)),
                ));
            };
            let credentials = Credentials::new(login.clone(), password.clone());
            let what = format!("AUTH {mechanism}");
            match conn.auth(&[mechanism], &credentials).await {
                Ok(response) if response.has_code(235) => Ok(mechanism.to_string()),
                Ok(response) => Err(unexpected_auth_reply(&what, &response)),
                Err(err) => Err(lettre_error(MailStep::Auth, &what, &err, MailStep::Unknown)),
            }
        }
        MailAuth::XOAuth2 { login, access_token } => {
            if !conn.server_info().supports_auth_mechanism(Mechanism::Xoauth2) {
                return Err(MailError::new(
                    MailStep::Auth,
                    format!("the server does not offer XOAUTH2; it offers: {}", offered_mechanisms(conn)),
                ));
            }
            xoauth2(conn, login, access_token).await.map(|()| "XOAUTH2".to_owned())
        }
    }
}

fn unexpected_auth_reply(what: &str, response: &Response) -> MailError {
    let code = u16::from(response.code());
    MailError::new(MailStep::Auth, format!("{what}: unexpected reply {}", reply_text(response))).with_code(code)
}

/// SASL XOAUTH2 by hand: lettre's own answers a failure's `334` error challenge with a client error instead of the
/// empty line the mechanism expects, losing the server's final `535` (Gmail and Exchange Online send that challenge).
async fn xoauth2(conn: &mut AsyncSmtpConnection, login: &str, token: &str) -> Result<(), MailError> {
    let what = "AUTH XOAUTH2";
    let initial = base64::engine::general_purpose::STANDARD.encode(format!("user={login}\x01auth=Bearer {token}\x01\x01"));
    let response = match conn.command(Line(format!("AUTH XOAUTH2 {initial}"))).await {
        Ok(response) => response,
        Err(err) => return Err(lettre_error(MailStep::Auth, what, &err, MailStep::Unknown)),
    };
    if response.has_code(235) {
        return Ok(());
    }
    if !response.has_code(334) {
        return Err(unexpected_auth_reply(what, &response));
    }
    // The challenge is base64 JSON describing the failure (e.g. {"status":"401","schemes":"bearer",...}).
    let challenge = response
        .first_line()
        .and_then(|line| base64::engine::general_purpose::STANDARD.decode(line.trim()).ok())
        .map(|bytes| server_words(&String::from_utf8_lossy(&bytes)))
        .unwrap_or_default();
    let with_challenge = |mut error: MailError| {
        if !challenge.is_empty() {
            error.message = format!("{} ({challenge})", error.message);
        }
        error
    };
    match conn.command(Line(String::new())).await {
        Ok(final_reply) if final_reply.has_code(235) => Ok(()),
        Ok(final_reply) => Err(with_challenge(unexpected_auth_reply(what, &final_reply))),
        Err(err) => Err(with_challenge(lettre_error(MailStep::Auth, what, &err, MailStep::Unknown))),
    }
}

/// A raw command line (CRLF appended).
struct Line(String);

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\r\n", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_before_content() {
        let reply = |step, code| SendError::before_content(MailError::new(step, "x").with_code(code));
        assert!(matches!(reply(MailStep::Command, 451), SendError::Transient { code: Some(451), .. }));
        assert!(matches!(reply(MailStep::Command, 550), SendError::Permanent { code: Some(550), .. }));
        assert!(matches!(reply(MailStep::Auth, 535), SendError::Auth { code: Some(535), .. }));
        assert!(matches!(reply(MailStep::Auth, 454), SendError::Transient { step: MailStep::Auth, .. }));
        let local = |step| SendError::before_content(MailError::new(step, "x"));
        assert!(matches!(local(MailStep::Forbidden), SendError::Permanent { .. }));
        assert!(matches!(local(MailStep::Connect), SendError::Transient { .. }));
        assert!(matches!(local(MailStep::Tls), SendError::Transient { .. }));
        assert!(matches!(local(MailStep::Unknown), SendError::Transient { .. }));
        assert!(matches!(local(MailStep::Auth), SendError::Auth { code: None, .. }));
    }

    #[test]
    fn wire_content_normalises_line_endings_and_drops_the_last_crlf() {
        assert_eq!(&*wire_content(b"a\r\nb\r\n"), b"a\r\nb");
        assert_eq!(&*wire_content(b"a\nb\rc\r\n"), b"a\r\nb\r\nc");
        assert_eq!(&*wire_content(b"a"), b"a");
        assert_eq!(&*wire_content(b"\n.\n"), b"\r\n.");
    }

    #[test]
    fn pool_keys_differ_by_credential_and_never_equal_for_other_servers() {
        let endpoint = Endpoint::new("smtp.example.com", 587, Security::Starttls);
        let a = MailAuth::Password { login: "a@example.com".into(), password: "one".into() };
        let b = MailAuth::Password { login: "a@example.com".into(), password: "two".into() };
        assert_ne!(pool_key(&endpoint, &a), pool_key(&endpoint, &b));
        assert_eq!(pool_key(&endpoint, &a), pool_key(&Endpoint::new("SMTP.example.com", 587, Security::Starttls), &a));
        assert_ne!(pool_key(&endpoint, &a), pool_key(&Endpoint::new("smtp.example.com", 465, Security::Tls), &a));
    }
}
