//! Real mail servers for the tests: a private Dovecot (IMAP and POP3, each with STARTTLS and implicit TLS) and the
//! Node SMTP server of `tests/mail-servers/smtp-server.js` (STARTTLS submission and implicit TLS), on free loopback
//! ports, with TLS from a throwaway CA and OAuth2 (XOAUTH2 / OAUTHBEARER) checked against a shared
//! [`MockProvider`] through RFC 7662 introspection.
//!
//! [`MailServers::shared`] starts everything once per test process; tests run in parallel and share it, so each test
//! uses its own logins (`user-<uuid>@example.com`). The servers are stopped when the process exits (an `atexit` hook,
//! and the kernel's parent-death signal if the process is killed); a later start also removes what a killed run left.
//!
//! Needs what `scripts/ensure-mail-tools.sh` installs: Dovecot, Node.js with `tests/mail-servers/node_modules`,
//! `openssl` and the system user `pbmail`. Set `POSTBRIDGE_KEEP_MAIL_SERVERS=1` to keep the run folder (configs, logs,
//! Maildirs, SMTP spool) after the process exits; `POSTBRIDGE_MAIL_SERVERS_DIR` chooses where run folders go (default:
//! `postbridge-mail-servers` on the `/dev/shm` tmpfs if it has 2 GiB free, else in the temp folder).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use postbridge_oauth_provider::MockProvider;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use uuid::Uuid;

/// The address every server listens on.
pub const MAIL_HOST: &str = "127.0.0.1";

/// The system user that owns the Maildirs (Dovecot's `mail_uid` / `mail_gid`).
pub const MAIL_USER: &str = "pbmail";

/// The scope [`MailServers::mint_access_token`] asks for (what a Microsoft user flow grants for IMAP and SMTP).
pub const DEFAULT_MAIL_SCOPE: &str =
    "offline_access https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/SMTP.Send";

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// A message the SMTP server accepted (answered 250 after DATA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedMessage {
    /// The message as received after DATA (dot-unstuffed), byte for byte.
    pub raw: Vec<u8>,
    /// The login the session authenticated as.
    pub auth_user: Option<String>,
    /// The MAIL FROM address (empty for the null sender).
    pub mail_from: String,
    /// The RCPT TO addresses that were accepted, in order.
    pub rcpt_to: Vec<String>,
}

/// A message file in a Maildir folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The file's content.
    pub raw: Vec<u8>,
    /// The Maildir flags of the file name (`S` seen, `R` answered, `F` flagged, `T` deleted, `D` draft), sorted;
    /// empty for a message still in `new/`.
    pub flags: String,
    /// Whether the file is still in `new/` (no IMAP/POP3 session has seen it yet).
    pub is_new: bool,
}

/// A successful Dovecot login, as its log tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DovecotLogin {
    /// `imap` or `pop3`.
    pub protocol: String,
    /// The SASL mechanism (`PLAIN` also for IMAP LOGIN and POP3 USER/PASS, `XOAUTH2`, `OAUTHBEARER`, `LOGIN`).
    pub method: String,
    /// Whether the session was TLS (implicit or after STARTTLS / STLS) when it authenticated.
    pub tls: bool,
}

/// The running servers (see the module documentation).
pub struct MailServers {
    run_dir: PathBuf,
    provider: MockProvider,
    provider_lock: tokio::sync::Mutex<()>,
    client_id: String,
    client_secret: String,
    imap_port: u16,
    imaps_port: u16,
    pop3_port: u16,
    pop3s_port: u16,
    smtp_port: u16,
    smtps_port: u16,
    ca_pem: String,
    tls: Arc<ClientConfig>,
    mail_uid: u32,
    mail_gid: u32,
    files: Mutex<()>,
    startup_time: Duration,
    /// Held so the SMTP server's standard input stays open (it exits when it closes).
    _smtp_stdin: Mutex<Option<ChildStdin>>,
}

static SHARED: tokio::sync::OnceCell<Result<MailServers, String>> = tokio::sync::OnceCell::const_new();

impl MailServers {
    /// The servers of this test process, started on first use (later calls wait for that start and share it).
    /// Panics with the reason (and log excerpts) if they cannot start.
    pub async fn shared() -> &'static MailServers {
        let result = SHARED
            .get_or_init(|| async {
                // Everything runs on a thread of its own that lives as long as the process: the provider's HTTP
                // server needs a runtime that outlives every test's runtime, and the servers' parent-death signal
                // fires when the thread that spawned them ends.
                let (tx, rx) = tokio::sync::oneshot::channel();
                let spawned = std::thread::Builder::new().name("postbridge-mail-servers".into()).spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(runtime) => runtime,
                        Err(err) => {
                            let _ = tx.send(Err(format!("cannot build a tokio runtime: {err}")));
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        let _ = tx.send(MailServers::start().await);
                        std::future::pending::<()>().await;
                    });
                });
                if let Err(err) = spawned {
                    return Err(format!("cannot spawn the mail servers' thread: {err}"));
                }
                rx.await.unwrap_or_else(|_| Err("the mail servers' start panicked (see its output above)".to_owned()))
            })
            .await;
        match result {
            Ok(servers) => servers,
            Err(err) => panic!("mail servers could not start: {err}"),
        }
    }

    // ---- addresses and credentials ----------------------------------------------------------------------------------

    /// `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        MAIL_HOST
    }

    /// IMAP with STARTTLS (authentication only after STARTTLS).
    pub fn imap_port(&self) -> u16 {
        self.imap_port
    }

    /// IMAP over implicit TLS.
    pub fn imaps_port(&self) -> u16 {
        self.imaps_port
    }

    /// POP3 with STARTTLS (`STLS`; authentication only after it).
    pub fn pop3_port(&self) -> u16 {
        self.pop3_port
    }

    /// POP3 over implicit TLS.
    pub fn pop3s_port(&self) -> u16 {
        self.pop3s_port
    }

    /// SMTP submission with STARTTLS (AUTH offered only after STARTTLS).
    pub fn smtp_port(&self) -> u16 {
        self.smtp_port
    }

    /// SMTP over implicit TLS.
    pub fn smtps_port(&self) -> u16 {
        self.smtps_port
    }

    /// PEM of the throwaway CA that signed the servers' certificate (`IP:127.0.0.1`, `DNS:localhost`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The same CA as a file, for code that takes a path.
    pub fn ca_file(&self) -> PathBuf {
        self.run_dir.join("tls/ca.crt")
    }

    /// A rustls client configuration that trusts [`Self::ca_pem`] only.
    pub fn tls_client_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.tls)
    }

    /// The OAuth provider stand-in the servers ask (RFC 7662) whether a bearer token is active and whose it is. It is
    /// shared by every test of the process: mint tokens with [`Self::mint_access_token`] or
    /// `provider().mint_tokens(...)`, register your own clients with unique ids, and hold
    /// [`Self::lock_provider`] while you change its global knobs (consenting user, injected failures, TTLs).
    pub fn provider(&self) -> &MockProvider {
        &self.provider
    }

    /// The client registered at the provider for the servers' introspection calls (also usable to mint tokens).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The secret of [`Self::client_id`].
    pub fn client_secret(&self) -> &str {
        &self.client_secret
    }

    /// Serialises tests that change the shared provider's global settings (e.g. `set_consenting_user`).
    pub async fn lock_provider(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.provider_lock.lock().await
    }

    /// An access token for `email` (client [`Self::client_id`], scope [`DEFAULT_MAIL_SCOPE`]) that the servers accept
    /// with XOAUTH2 / OAUTHBEARER until it expires or `provider().revoke_user(email)` is called.
    pub fn mint_access_token(&self, email: &str) -> String {
        self.provider
            .mint_tokens(&self.client_id, email, DEFAULT_MAIL_SCOPE)
            .expect("the servers' client is registered")
            .access_token
    }

    // ---- accounts -------------------------------------------------------------------------------------------------

    /// A password account on Dovecot (PLAIN / LOGIN) and the SMTP server (PLAIN / LOGIN), with an empty Maildir.
    /// Dovecot lower-cases logins; the password must not contain `:` or a line break. Calling it again for the same
    /// login replaces the password.
    pub fn add_password_user(&self, login: &str, password: &str) {
        assert!(valid_login(login), "unusable login {login:?}");
        assert!(!password.contains([':', '\n', '\r']), "passwords may not contain ':' or line breaks");
        let _guard = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let lower = login.to_lowercase();
        // One passwd-file per login (see dovecot.conf.in); replaced by a rename, so Dovecot never reads half of it.
        let users = self.run_dir.join("dovecot/users");
        write_atomically(&users.join(&lower), format!("{lower}:{{PLAIN}}{password}\n").as_bytes())
            .expect("write Dovecot's passwd-file");
        let smtp_users = self.run_dir.join("smtp/users");
        let mut lines: Vec<String> = std::fs::read_to_string(&smtp_users)
            .unwrap_or_default()
            .lines()
            .filter(|line| !line.split_once(':').is_some_and(|(user, _)| user.eq_ignore_ascii_case(login)))
            .map(str::to_owned)
            .collect();
        lines.push(format!("{login}:{password}\n"));
        write_atomically(&smtp_users, lines.join("\n").as_bytes()).expect("write the SMTP users file");
        drop(_guard);
        self.ensure_folder(login, "INBOX");
    }

    /// An OAuth2 account: nothing to register (any active token whose `email` is the login is accepted), but its empty
    /// Maildir is created.
    pub fn add_oauth_user(&self, email: &str) {
        assert!(valid_login(email), "unusable login {email:?}");
        self.ensure_folder(email, "INBOX");
    }

    /// The SMTP server answers this login's valid credentials with
    /// `535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.`
    pub fn disable_smtp_auth(&self, login: &str) {
        let _guard = self.files.lock().unwrap_or_else(|e| e.into_inner());
        append_line(&self.run_dir.join("smtp/auth-disabled"), login).expect("write the SMTP auth-disabled file");
    }

    /// Lets app-only tokens (client credentials) of `client_id` authenticate at the SMTP server as `login` (`"*"`: any
    /// login), as Exchange Online does for an app granted SMTP.SendAsApp on a mailbox. Dovecot accepts user tokens only.
    pub fn allow_app_sender(&self, client_id: &str, login: &str) {
        assert!(!client_id.contains(char::is_whitespace) && valid_login(login), "unusable client id or login");
        let _guard = self.files.lock().unwrap_or_else(|e| e.into_inner());
        append_line(&self.run_dir.join("smtp/app-senders"), &format!("{client_id} {login}"))
            .expect("write the SMTP app-senders file");
    }

    // ---- mailboxes ------------------------------------------------------------------------------------------------

    /// Writes messages straight into the folder's `new/` (created if needed; `"INBOX"` or e.g. `"Archive/2024"`),
    /// owned by `pbmail`. Dovecot gives them UIDs in slice order when a session next looks at the folder.
    pub fn seed_messages(&self, login: &str, folder: &str, messages: &[Vec<u8>]) {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let dir = self.ensure_folder(login, folder).join("new");
        let base = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let pid = std::process::id();
        for message in messages {
            // Dovecot orders new files by the time in their names (`SECONDS.MMICROS...`): a process-wide sequence
            // keeps that order equal to the seeding order.
            let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
            let name = format!("{}.M{}P{pid}Q{seq}.pbseed", base + seq / 1_000_000, seq % 1_000_000);
            let path = dir.join(name);
            let write = || -> std::io::Result<()> {
                let mut file = std::fs::File::create(&path)?;
                std::io::Write::write_all(&mut file, message)?;
                std::os::unix::fs::fchown(&file, Some(self.mail_uid), Some(self.mail_gid))
            };
            write().unwrap_or_else(|e| panic!("seed {}: {e}", path.display()));
        }
    }

    /// Delivers one message as a mail server does: written in `tmp/`, then renamed into `new/`, so a client watching
    /// the folder (IDLE) never sees half of it.
    pub fn deliver(&self, login: &str, folder: &str, message: &[u8]) {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let dir = self.ensure_folder(login, folder);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let name = format!(
            "{}.M{}P{}Q{}.pbdeliver",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        let (tmp, new) = (dir.join("tmp").join(&name), dir.join("new").join(&name));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut file, message)?;
            std::os::unix::fs::fchown(&file, Some(self.mail_uid), Some(self.mail_gid))?;
            std::fs::rename(&tmp, &new)
        };
        write().unwrap_or_else(|e| panic!("deliver {}: {e}", new.display()));
    }

    /// Cuts every IMAP and POP3 connection of `login` (`doveadm kick`), as a server restart or a network cut would.
    pub fn kick(&self, login: &str) {
        let doveadm = which("doveadm").expect("doveadm (Debian's dovecot-core) is installed with dovecot");
        let conf = self.run_dir.join("dovecot/dovecot.conf");
        let output = std::process::Command::new(doveadm)
            .arg("-c")
            .arg(&conf)
            .arg("kick")
            .arg(login.to_lowercase())
            .output()
            .expect("run doveadm kick");
        assert!(output.status.success(), "doveadm kick: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// How many messages the folder holds on disk (`new/` and `cur/`, expunged ones excluded).
    pub fn mailbox_count(&self, login: &str, folder: &str) -> usize {
        self.mailbox_messages_inner(login, folder, false).len()
    }

    /// The folder's messages on disk with their flags, in no particular order.
    pub fn mailbox_messages(&self, login: &str, folder: &str) -> Vec<StoredMessage> {
        self.mailbox_messages_inner(login, folder, true)
    }

    /// The Maildir of a login (Dovecot lower-cases logins): `RUN/mail/LOGIN/Maildir`.
    pub fn maildir(&self, login: &str) -> PathBuf {
        self.run_dir.join("mail").join(login.to_lowercase()).join("Maildir")
    }

    fn folder_dir(&self, login: &str, folder: &str) -> PathBuf {
        let maildir = self.maildir(login);
        if folder.eq_ignore_ascii_case("INBOX") {
            return maildir;
        }
        assert!(
            !folder.is_empty() && !folder.contains(['.', '\n', '\r']) && !folder.starts_with('/') && !folder.ends_with('/'),
            "unsupported folder name {folder:?} (use '/' between levels; no '.')"
        );
        maildir.join(format!(".{}", folder.replace('/', ".")))
    }

    fn ensure_folder(&self, login: &str, folder: &str) -> PathBuf {
        let mail_root = self.run_dir.join("mail");
        let home = mail_root.join(login.to_lowercase());
        let maildir = self.maildir(login);
        let dir = self.folder_dir(login, folder);
        let mut to_create = vec![home, maildir.clone()];
        for sub in ["cur", "new", "tmp"] {
            to_create.push(maildir.join(sub));
        }
        if dir != maildir {
            to_create.push(dir.clone());
            for sub in ["cur", "new", "tmp"] {
                to_create.push(dir.join(sub));
            }
        }
        for path in to_create {
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).expect("chmod a mail folder");
                    std::os::unix::fs::chown(&path, Some(self.mail_uid), Some(self.mail_gid)).expect("chown a mail folder");
                }
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(err) => panic!("create {}: {err}", path.display()),
            }
        }
        if dir != maildir {
            let marker = dir.join("maildirfolder");
            if !marker.exists() {
                std::fs::write(&marker, b"").expect("write maildirfolder");
                std::os::unix::fs::chown(&marker, Some(self.mail_uid), Some(self.mail_gid)).expect("chown maildirfolder");
            }
        }
        dir
    }

    fn mailbox_messages_inner(&self, login: &str, folder: &str, read: bool) -> Vec<StoredMessage> {
        let dir = self.folder_dir(login, folder);
        let mut out = Vec::new();
        for (sub, is_new) in [("new", true), ("cur", false)] {
            let Ok(entries) = std::fs::read_dir(dir.join(sub)) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let flags = match name.rsplit_once(":2,") {
                    Some((_, flags)) if !is_new => {
                        let mut chars: Vec<char> = flags.chars().filter(|c| c.is_ascii_uppercase()).collect();
                        chars.sort_unstable();
                        chars.into_iter().collect()
                    }
                    _ => String::new(),
                };
                let raw = if read {
                    match std::fs::read(entry.path()) {
                        Ok(raw) => raw,
                        // Dovecot may have moved or expunged it meanwhile.
                        Err(_) => continue,
                    }
                } else {
                    Vec::new()
                };
                out.push(StoredMessage { raw, flags, is_new });
            }
        }
        out
    }

    // ---- SMTP spool -----------------------------------------------------------------------------------------------

    /// Every message the SMTP server accepted in this process, oldest first.
    pub fn accepted_messages(&self) -> Vec<AcceptedMessage> {
        let spool = self.run_dir.join("smtp/spool");
        let mut names: Vec<String> = std::fs::read_dir(&spool)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            let Ok(meta) = std::fs::read(spool.join(&name)) else { continue };
            let Ok(meta) = serde_json::from_slice::<serde_json::Value>(&meta) else { continue };
            let Ok(raw) = std::fs::read(spool.join(name.replace(".json", ".eml"))) else { continue };
            out.push(AcceptedMessage {
                raw,
                auth_user: meta["auth_user"].as_str().map(str::to_owned),
                mail_from: meta["mail_from"].as_str().unwrap_or_default().to_owned(),
                rcpt_to: meta["rcpt_to"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default(),
            });
        }
        out
    }

    /// The accepted messages with `rcpt` (case-insensitive) among their recipients, oldest first.
    pub fn accepted_messages_to(&self, rcpt: &str) -> Vec<AcceptedMessage> {
        self.accepted_messages().into_iter().filter(|m| m.rcpt_to.iter().any(|r| r.eq_ignore_ascii_case(rcpt))).collect()
    }

    /// Waits until at least `count` messages to `rcpt` were accepted (panics after `timeout`), and returns them all.
    pub async fn wait_for_messages_to(&self, rcpt: &str, count: usize, timeout: Duration) -> Vec<AcceptedMessage> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.accepted_messages_to(rcpt);
            if messages.len() >= count {
                return messages;
            }
            if Instant::now() >= deadline {
                panic!("only {} of {count} messages to {rcpt} arrived within {timeout:?}", messages.len());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // ---- diagnostics ----------------------------------------------------------------------------------------------

    /// How long the shared start took (certificates, provider, Dovecot, SMTP server, until all accept connections).
    pub fn startup_time(&self) -> Duration {
        self.startup_time
    }

    /// This process's run folder (configs, `dovecot/dovecot.log`, `smtp/smtp-server.log`, `mail/`, `smtp/spool/`).
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Dovecot's log so far (useful in assertion messages).
    pub fn dovecot_log(&self) -> String {
        std::fs::read_to_string(self.run_dir.join("dovecot/dovecot.log")).unwrap_or_default()
    }

    /// Dovecot's successful logins of `login` (IMAP and POP3, oldest first), waiting up to 5 s until there are at least
    /// `at_least` (the log line is written just after the client sees its OK). On loopback Dovecot also accepts
    /// LOGIN before STARTTLS, so this is how a test proves a client really upgraded: `tls` is false for such a login.
    pub async fn dovecot_logins(&self, login: &str, at_least: usize) -> Vec<DovecotLogin> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let needle = format!("Login: user=<{}>,", login.to_lowercase());
        loop {
            let logins: Vec<DovecotLogin> = self
                .dovecot_log()
                .lines()
                .filter(|line| line.contains(&needle))
                .map(|line| {
                    let protocol =
                        line.split_once("-login:").and_then(|(head, _)| head.rsplit(' ').next()).unwrap_or("").to_owned();
                    let fields: Vec<&str> = line.split(", ").map(str::trim).collect();
                    let method = fields.iter().find_map(|f| f.strip_prefix("method=")).unwrap_or("").to_owned();
                    DovecotLogin { protocol, method, tls: fields.contains(&"TLS") }
                })
                .collect();
            if logins.len() >= at_least || Instant::now() >= deadline {
                return logins;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The SMTP server's log so far.
    pub fn smtp_log(&self) -> String {
        std::fs::read_to_string(self.run_dir.join("smtp/smtp-server.log")).unwrap_or_default()
    }

    // ---- start ----------------------------------------------------------------------------------------------------

    async fn start() -> Result<MailServers, String> {
        let started = Instant::now();
        let tools = Tools::find()?;
        let base = runs_folder()?;
        clean_leftovers(&base);
        let run_dir = create_run_dir(&base)?;
        let result = Self::start_in(&run_dir, &tools, started).await;
        if result.is_err() && std::env::var_os("POSTBRIDGE_KEEP_MAIL_SERVERS").is_none() {
            stop_everything();
            let _ = std::fs::remove_dir_all(&run_dir);
        }
        result
    }

    async fn start_in(run: &Path, tools: &Tools, started: Instant) -> Result<MailServers, String> {
        for sub in ["tls", "dovecot", "smtp", "smtp/spool"] {
            std::fs::create_dir_all(run.join(sub)).map_err(|e| format!("create {sub}: {e}"))?;
        }
        let mail = run.join("mail");
        std::fs::create_dir_all(&mail).map_err(|e| format!("create mail folder: {e}"))?;
        std::os::unix::fs::chown(&mail, Some(tools.mail_uid), Some(tools.mail_gid))
            .map_err(|e| format!("chown mail folder: {e}"))?;
        {
            let mut cleanup = CLEANUP.lock().unwrap_or_else(|e| e.into_inner());
            cleanup.run_dir = Some(run.to_path_buf());
        }
        register_atexit();

        let ca_pem = make_certificates(&tools.openssl, &run.join("tls"))?;
        let tls = client_config(&ca_pem)?;

        let provider = MockProvider::start().await;
        let client_id = format!("postbridge-mail-servers-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let client_secret = Uuid::new_v4().simple().to_string();
        provider.register_client(&client_id, Some(&client_secret), &[]);
        let provider_port =
            provider.base_url().rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).ok_or("provider URL has no port")?;
        let introspection_url = format!("http://{client_id}:{client_secret}@127.0.0.1:{provider_port}/introspect");

        std::fs::create_dir_all(run.join("dovecot/users")).map_err(|e| format!("create dovecot/users: {e}"))?;
        for file in ["smtp/users", "smtp/auth-disabled", "smtp/app-senders"] {
            std::fs::write(run.join(file), b"").map_err(|e| format!("write {file}: {e}"))?;
        }
        let templates = templates_dir();
        let oauth2 = render(
            &templates.join("oauth2.conf.ext.in"),
            &[
                ("CLIENT_ID", client_id.clone()),
                ("CLIENT_SECRET", client_secret.clone()),
                ("PROVIDER_PORT", provider_port.to_string()),
            ],
        )?;
        std::fs::write(run.join("dovecot/oauth2.conf.ext"), oauth2).map_err(|e| format!("write oauth2.conf.ext: {e}"))?;

        let (imap_port, imaps_port, pop3_port, pop3s_port) = start_dovecot(run, tools, &templates).await?;
        let (smtp_port, smtps_port, smtp_stdin) = start_smtp(run, tools, &templates, &introspection_url).await?;

        Ok(MailServers {
            run_dir: run.to_path_buf(),
            provider,
            provider_lock: tokio::sync::Mutex::new(()),
            client_id,
            client_secret,
            imap_port,
            imaps_port,
            pop3_port,
            pop3s_port,
            smtp_port,
            smtps_port,
            ca_pem,
            tls,
            mail_uid: tools.mail_uid,
            mail_gid: tools.mail_gid,
            files: Mutex::new(()),
            startup_time: started.elapsed(),
            _smtp_stdin: Mutex::new(Some(smtp_stdin)),
        })
    }
}

fn valid_login(login: &str) -> bool {
    !login.is_empty() && !login.contains(['/', ':', '\n', '\r', ' ', '\t']) && !login.starts_with('.')
}

/// `tests/mail-servers` of this crate.
fn templates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mail-servers")
}

/// Appends a line by writing a new file and renaming it over the old one, so readers never see half a line.
fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    let mut content = std::fs::read(path).unwrap_or_default();
    if !content.is_empty() && !content.ends_with(b"\n") {
        content.push(b'\n');
    }
    content.extend_from_slice(line.as_bytes());
    content.push(b'\n');
    write_atomically(path, &content)
}

/// Writes a file under a temporary name in the same folder, then renames it into place.
fn write_atomically(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".tmp-{name}-{}", Uuid::new_v4().simple()));
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)
}

/// Fills `@NAME@` placeholders; every placeholder must be known.
fn render(template: &Path, values: &[(&str, String)]) -> Result<String, String> {
    let mut text = std::fs::read_to_string(template).map_err(|e| format!("read {}: {e}", template.display()))?;
    for (name, value) in values {
        text = text.replace(&format!("@{name}@"), value);
    }
    for (at, _) in text.match_indices('@') {
        let name: String = text[at + 1..].chars().take_while(|c| c.is_ascii_uppercase() || *c == '_').collect();
        if !name.is_empty() && text[at + 1 + name.len()..].starts_with('@') {
            return Err(format!("{}: no value for @{name}@", template.display()));
        }
    }
    Ok(text)
}

// ---- tools ----------------------------------------------------------------------------------------------------------

struct Tools {
    dovecot: PathBuf,
    node: PathBuf,
    openssl: PathBuf,
    mail_uid: u32,
    mail_gid: u32,
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

impl Tools {
    fn find() -> Result<Tools, String> {
        let hint = "run scripts/ensure-mail-tools.sh (as root) first";
        if unsafe { libc::geteuid() } != 0 {
            return Err("the mail servers need root (Dovecot's private instance, Maildirs owned by pbmail)".to_owned());
        }
        let dovecot = which("dovecot").ok_or_else(|| format!("dovecot not found; {hint}"))?;
        let node = which("node").or_else(|| which("nodejs")).ok_or_else(|| format!("node not found; {hint}"))?;
        let openssl = which("openssl").ok_or_else(|| format!("openssl not found; {hint}"))?;
        if !templates_dir().join("node_modules/smtp-server/package.json").is_file() {
            return Err(format!("tests/mail-servers/node_modules has no smtp-server; {hint}"));
        }
        let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("read the user database: {e}"))?;
        let (mail_uid, mail_gid) = passwd
            .lines()
            .find_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                (fields.len() >= 4 && fields[0] == MAIL_USER).then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))?
            })
            .ok_or_else(|| format!("the system user {MAIL_USER} does not exist; {hint}"))?;
        Ok(Tools { dovecot, node, openssl, mail_uid, mail_gid })
    }
}

// ---- run folders and leftovers ----------------------------------------------------------------------------------------

/// Free bytes of the file system holding `path` (0 if unknown).
fn free_bytes(path: &Path) -> u64 {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return 0 };
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return 0;
    }
    (stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64)
}

/// `POSTBRIDGE_MAIL_SERVERS_DIR`, else `postbridge-mail-servers` on the shared-memory tmpfs when it has room (creating
/// and chowning thousands of seeded messages there takes a tenth of the time it takes on a busy disk), else in the
/// temp folder.
fn runs_folder() -> Result<PathBuf, String> {
    const SHM: &str = "/dev/shm";
    let base = std::env::var_os("POSTBRIDGE_MAIL_SERVERS_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let shm = Path::new(SHM);
        if shm.is_dir() && free_bytes(shm) >= 2 << 30 {
            shm.join("postbridge-mail-servers")
        } else {
            std::env::temp_dir().join("postbridge-mail-servers")
        }
    });
    match std::fs::create_dir(&base) {
        Ok(()) => {
            let _ = std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755));
        }
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => {
            std::fs::create_dir_all(&base).map_err(|e| format!("create {}: {e} (first try: {err})", base.display()))?;
            let _ = std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755));
        }
    }
    // Dovecot's unprivileged processes (pbmail, dovenull) must be able to walk down to the run folder.
    let mut dir = base.canonicalize().map_err(|e| format!("{}: {e}", base.display()))?;
    let base = dir.clone();
    loop {
        let mode = std::fs::metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?.permissions().mode();
        if mode & 0o001 == 0 {
            return Err(format!(
                "{} is not searchable by other users (mode {mode:o}); Dovecot's unprivileged processes need that: set \
                 POSTBRIDGE_MAIL_SERVERS_DIR to a folder under a world-searchable path",
                dir.display()
            ));
        }
        if !dir.pop() {
            break;
        }
    }
    // Unix socket paths (base_dir/...) are limited to 107 bytes.
    if base.as_os_str().len() > 60 {
        return Err(format!(
            "{} is too long for Dovecot's sockets; set POSTBRIDGE_MAIL_SERVERS_DIR to a shorter path",
            base.display()
        ));
    }
    Ok(base)
}

/// `pid starttime` of this process (the start time tells a live owner from a reused pid).
fn process_identity(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = stat.rsplit_once(')')?.1;
    // Fields after the command: state is field 3, starttime field 22.
    let starttime = after_comm.split_whitespace().nth(19)?;
    Some(format!("{pid} {starttime}"))
}

fn create_run_dir(base: &Path) -> Result<PathBuf, String> {
    let pid = std::process::id();
    let run = base.join(format!("run-{pid}-{}", &Uuid::new_v4().simple().to_string()[..8]));
    std::fs::create_dir(&run).map_err(|e| format!("create {}: {e}", run.display()))?;
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", run.display()))?;
    let identity = process_identity(pid).unwrap_or_else(|| format!("{pid} 0"));
    std::fs::write(run.join("owner"), format!("{identity}\n")).map_err(|e| format!("write owner: {e}"))?;
    Ok(run)
}

/// Stops the servers of run folders whose test process is gone, and removes those folders.
fn clean_leftovers(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for entry in entries.flatten() {
        let run = entry.path();
        if !entry.file_name().to_string_lossy().starts_with("run-") {
            continue;
        }
        match std::fs::read_to_string(run.join("owner")) {
            Ok(owner) => {
                let owner = owner.trim();
                let pid: Option<u32> = owner.split_whitespace().next().and_then(|p| p.parse().ok());
                if pid.and_then(process_identity).as_deref() == Some(owner) {
                    continue; // still running
                }
            }
            Err(_) => {
                // Being created right now, unless it is old.
                let young = entry
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_none_or(|age| age < Duration::from_secs(120));
                if young {
                    continue;
                }
            }
        }
        for pidfile in ["dovecot/run/master.pid", "smtp/smtp-server.pid"] {
            let Some(pid) = std::fs::read_to_string(run.join(pidfile)).ok().and_then(|p| p.trim().parse::<i32>().ok()) else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if pid > 1 && String::from_utf8_lossy(&cmdline).contains(&*run.to_string_lossy()) {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&run);
    }
}

// ---- stopping at exit -------------------------------------------------------------------------------------------------

#[derive(Default)]
struct Cleanup {
    run_dir: Option<PathBuf>,
    pids: Vec<i32>,
}

static CLEANUP: Mutex<Cleanup> = Mutex::new(Cleanup { run_dir: None, pids: Vec::new() });

fn register_atexit() {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| unsafe {
        libc::atexit(at_exit);
    });
}

extern "C" fn at_exit() {
    stop_everything();
    let run = CLEANUP.try_lock().ok().and_then(|mut c| c.run_dir.take());
    if let Some(run) = run {
        if std::env::var_os("POSTBRIDGE_KEEP_MAIL_SERVERS").is_none() {
            let _ = std::fs::remove_dir_all(run);
        }
    }
}

/// SIGTERM to every server started by this process, then waits (at most 3 s) for them to exit.
fn stop_everything() {
    let pids = match CLEANUP.try_lock() {
        Ok(mut cleanup) => std::mem::take(&mut cleanup.pids),
        Err(_) => return,
    };
    for &pid in &pids {
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    for &pid in &pids {
        loop {
            let mut status = 0;
            let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if reaped != 0 || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A child that gets SIGTERM when the thread that spawned it ends (the mail servers' thread lives as long as the
/// process, so: when the process dies, even by SIGKILL).
fn spawn_child(command: &mut Command) -> std::io::Result<Child> {
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    CLEANUP.lock().unwrap_or_else(|e| e.into_inner()).pids.push(child.id() as i32);
    Ok(child)
}

/// Kills (if still running) and reaps a child, and forgets its pid (which another process may get next).
fn kill_and_forget(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
    let pid = child.id() as i32;
    CLEANUP.lock().unwrap_or_else(|e| e.into_inner()).pids.retain(|&p| p != pid);
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(30)..].join("\n");
    format!("--- {} (last lines) ---\n{tail}", path.display())
}

// ---- TLS --------------------------------------------------------------------------------------------------------------

/// A throwaway CA and a server certificate for `IP:127.0.0.1, DNS:localhost` (EC P-256, two days), made with the
/// `openssl` command; returns the CA's PEM.
fn make_certificates(openssl: &Path, dir: &Path) -> Result<String, String> {
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature, keyEncipherment\n\
         extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1, DNS:localhost\n",
    )
    .map_err(|e| format!("write server.ext: {e}"))?;
    std::fs::write(
        dir.join("ca.ext"),
        "[req]\ndistinguished_name = dn\nx509_extensions = v3_ca\n[dn]\n[v3_ca]\nbasicConstraints = critical, CA:TRUE\n\
         keyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\n",
    )
    .map_err(|e| format!("write ca.ext: {e}"))?;
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=Postbridge test CA",
            "-config",
            "ca.ext",
        ],
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
            "-config",
            "ca.ext",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    ];
    for args in steps {
        let out = Command::new(openssl)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run openssl: {e}"))?;
        if !out.status.success() {
            return Err(format!("openssl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)));
        }
    }
    std::fs::read_to_string(dir.join("ca.crt")).map_err(|e| format!("read ca.crt: {e}"))
}

fn client_config(ca_pem: &str) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("CA PEM: {e:?}"))?;
        roots.add(cert).map_err(|e| format!("CA certificate: {e}"))?;
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

// ---- Dovecot ----------------------------------------------------------------------------------------------------------

fn free_ports<const N: usize>() -> Result<[u16; N], String> {
    // All bound at once so they differ; closed before the server binds them (a tiny window another process could use,
    // which shows as a failed start and a retry).
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bind a free port: {e}"))?;
    let mut ports = [0u16; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr().map_err(|e| e.to_string())?.port();
    }
    Ok(ports)
}

async fn start_dovecot(run: &Path, tools: &Tools, templates: &Path) -> Result<(u16, u16, u16, u16), String> {
    let conf = run.join("dovecot/dovecot.conf");
    let log = run.join("dovecot/dovecot.log");
    let mut last_error = String::new();
    for attempt in 1..=3 {
        let [imap, imaps, pop3, pop3s] = free_ports::<4>()?;
        let instance = run.file_name().map(|n| format!("postbridge-{}", n.to_string_lossy())).unwrap_or_default();
        let text = render(
            &templates.join("dovecot.conf.in"),
            &[
                ("RUN", run.display().to_string()),
                ("INSTANCE", instance),
                ("MAIL_USER", MAIL_USER.to_owned()),
                ("MAIL_UID", tools.mail_uid.to_string()),
                ("MAIL_GID", tools.mail_gid.to_string()),
                ("IMAP_PORT", imap.to_string()),
                ("IMAPS_PORT", imaps.to_string()),
                ("POP3_PORT", pop3.to_string()),
                ("POP3S_PORT", pop3s.to_string()),
            ],
        )?;
        std::fs::write(&conf, text).map_err(|e| format!("write dovecot.conf: {e}"))?;
        let output = std::fs::File::create(run.join("dovecot/stdout.log")).map_err(|e| e.to_string())?;
        let mut child = spawn_child(
            Command::new(&tools.dovecot)
                .arg("-F")
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(output.try_clone().map_err(|e| e.to_string())?)
                .stderr(output),
        )
        .map_err(|e| format!("start {}: {e}", tools.dovecot.display()))?;
        // The foreground master writes master.pid itself; the path is also what leftovers are found by.
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut ready = false;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                kill_and_forget(&mut child);
                last_error =
                    format!("dovecot exited ({status})\n{}\n{}", log_tail(&run.join("dovecot/stdout.log")), log_tail(&log));
                break;
            }
            if imap_greets(imap).await && ports_accept(&[imaps, pop3, pop3s]).await {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        if ready {
            return Ok((imap, imaps, pop3, pop3s));
        }
        if last_error.is_empty() {
            kill_and_forget(&mut child);
            return Err(format!("dovecot did not accept connections within {READY_TIMEOUT:?}\n{}", log_tail(&log)));
        }
        let port_clash = last_error.contains("Address already in use");
        if !port_clash || attempt == 3 {
            break;
        }
    }
    Err(last_error)
}

/// Whether the plain IMAP port sends Dovecot's greeting (which waits for the auth process to be up).
async fn imap_greets(port: u16) -> bool {
    let attempt = async {
        let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.ok()?;
        let mut reader = BufReader::new(stream);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await.ok()? == 0 {
                return None;
            }
            if line.starts_with("* OK") && line.contains("ready") {
                return Some(());
            }
        }
    };
    matches!(tokio::time::timeout(Duration::from_secs(5), attempt).await, Ok(Some(())))
}

async fn ports_accept(ports: &[u16]) -> bool {
    for &port in ports {
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.is_err() {
            return false;
        }
    }
    true
}

// ---- SMTP -------------------------------------------------------------------------------------------------------------

async fn start_smtp(
    run: &Path,
    tools: &Tools,
    templates: &Path,
    introspection_url: &str,
) -> Result<(u16, u16, ChildStdin), String> {
    let smtp = run.join("smtp");
    let log = smtp.join("smtp-server.log");
    let log_file = std::fs::File::create(&log).map_err(|e| format!("create smtp-server.log: {e}"))?;
    let mut child = spawn_child(
        Command::new(&tools.node)
            .arg(templates.join("smtp-server.js"))
            .args(["--host", MAIL_HOST, "--port", "0", "--secure-port", "0", "--exit-on-stdin-eof"])
            .arg("--cert")
            .arg(run.join("tls/server.crt"))
            .arg("--key")
            .arg(run.join("tls/server.key"))
            .arg("--users")
            .arg(smtp.join("users"))
            .arg("--auth-disabled")
            .arg(smtp.join("auth-disabled"))
            .arg("--app-senders")
            .arg(smtp.join("app-senders"))
            .arg("--spool")
            .arg(smtp.join("spool"))
            .arg("--introspection-url")
            .arg(introspection_url)
            .current_dir(templates)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file),
    )
    .map_err(|e| format!("start {}: {e}", tools.node.display()))?;
    std::fs::write(smtp.join("smtp-server.pid"), format!("{}\n", child.id()))
        .map_err(|e| format!("write smtp-server.pid: {e}"))?;
    let stdin = child.stdin.take().ok_or("no stdin pipe")?;
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        let _ = tx.send(reader.read_line(&mut line).map(|_| line));
        // Keep draining so the server never blocks on a full pipe.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    let line = match tokio::time::timeout(READY_TIMEOUT, rx).await {
        Ok(Ok(Ok(line))) => line,
        _ => String::new(),
    };
    let ports: BTreeMap<&str, u16> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect();
    match (line.starts_with("ready "), ports.get("smtp"), ports.get("smtps")) {
        (true, Some(&smtp_port), Some(&smtps_port)) => {
            if !ports_accept(&[smtp_port, smtps_port]).await {
                return Err(format!("the SMTP server said ready but does not accept connections\n{}", log_tail(&log)));
            }
            Ok((smtp_port, smtps_port, stdin))
        }
        _ => {
            kill_and_forget(&mut child);
            Err(format!("the SMTP server did not become ready (first line: {line:?})\n{}", log_tail(&log)))
        }
    }
}

// ---- a raw line-protocol client ---------------------------------------------------------------------------------------

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A CRLF line client for raw IMAP / POP3 / SMTP exchanges over TCP, implicit TLS or STARTTLS, trusting only the
/// test CA. Every read times out after 15 s (an error, never a hang).
pub struct RawConnection {
    reader: BufReader<Box<dyn Stream>>,
    tls: Arc<ClientConfig>,
    secure: bool,
}

impl RawConnection {
    /// A plain TCP connection to `127.0.0.1:port`.
    pub async fn plain(servers: &MailServers, port: u16) -> std::io::Result<RawConnection> {
        let stream = TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
        Ok(RawConnection { reader: BufReader::new(Box::new(stream)), tls: servers.tls_client_config(), secure: false })
    }

    /// An implicit-TLS connection to `127.0.0.1:port`, verifying the certificate for `127.0.0.1`.
    pub async fn tls(servers: &MailServers, port: u16) -> std::io::Result<RawConnection> {
        RawConnection::plain(servers, port).await?.start_tls().await
    }

    /// Upgrades the connection to TLS (after the server's go-ahead to STARTTLS / STLS).
    pub async fn start_tls(self) -> std::io::Result<RawConnection> {
        if !self.reader.buffer().is_empty() {
            return Err(std::io::Error::other("unread data before the TLS handshake"));
        }
        let connector = TlsConnector::from(Arc::clone(&self.tls));
        let name = ServerName::IpAddress(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST).into());
        let stream = tokio::time::timeout(IO_TIMEOUT, connector.connect(name, self.reader.into_inner()))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        Ok(RawConnection { reader: BufReader::new(Box::new(stream)), tls: self.tls, secure: true })
    }

    /// Whether the connection is TLS.
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// Sends `line` followed by CRLF.
    pub async fn send_line(&mut self, line: &str) -> std::io::Result<()> {
        self.send_raw(format!("{line}\r\n").as_bytes()).await
    }

    /// Sends bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let stream = self.reader.get_mut();
        stream.write_all(bytes).await?;
        stream.flush().await
    }

    /// The next line without its line ending; an `UnexpectedEof` error when the server closed the connection.
    pub async fn read_line(&mut self) -> std::io::Result<String> {
        let mut line = Vec::new();
        let read = tokio::time::timeout(IO_TIMEOUT, self.reader.read_until(b'\n', &mut line))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no line from the server within 15 s"))??;
        if read == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the server closed the connection"));
        }
        while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            line.pop();
        }
        Ok(String::from_utf8_lossy(&line).into_owned())
    }

    /// Lines up to and including the first that satisfies `last`.
    pub async fn read_until(&mut self, last: impl Fn(&str) -> bool) -> std::io::Result<Vec<String>> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line().await?;
            let done = last(&line);
            lines.push(line);
            if done {
                return Ok(lines);
            }
        }
    }

    /// Whether the server closed the connection (waits up to 15 s for EOF; data received meanwhile means no).
    pub async fn is_closed_by_server(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(tokio::time::timeout(IO_TIMEOUT, self.reader.read(&mut byte)).await, Ok(Ok(0)) | Ok(Err(_)))
    }

    /// Sends an IMAP command with `tag` and returns every line up to the tagged completion (which is last).
    pub async fn imap(&mut self, tag: &str, command: &str) -> std::io::Result<Vec<String>> {
        self.send_line(&format!("{tag} {command}")).await?;
        let prefix = format!("{tag} ");
        self.read_until(|line| line.starts_with(&prefix)).await
    }

    /// Reads one (possibly multi-line) SMTP reply: its code and its lines' text.
    pub async fn smtp_reply(&mut self) -> std::io::Result<(u16, Vec<String>)> {
        let lines = self.read_until(|line| line.as_bytes().get(3) != Some(&b'-')).await?;
        let code = lines.last().and_then(|l| l.get(..3)).and_then(|c| c.parse().ok()).unwrap_or(0);
        Ok((code, lines.iter().map(|l| l.get(4..).unwrap_or("").to_owned()).collect()))
    }

    /// Sends an SMTP command and reads its reply.
    pub async fn smtp(&mut self, command: &str) -> std::io::Result<(u16, Vec<String>)> {
        self.send_line(command).await?;
        self.smtp_reply().await
    }
}

/// `base64("user=LOGIN\x01auth=Bearer TOKEN\x01\x01")`, the SASL XOAUTH2 initial response.
pub fn xoauth2_initial_response(login: &str, token: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("user={login}\x01auth=Bearer {token}\x01\x01"))
}

/// `base64("n,a=LOGIN,\x01auth=Bearer TOKEN\x01\x01")`, the SASL OAUTHBEARER initial response (RFC 7628).
pub fn oauthbearer_initial_response(login: &str, token: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("n,a={login},\x01auth=Bearer {token}\x01\x01"))
}

/// `base64("\0LOGIN\0PASSWORD")`, the SASL PLAIN initial response.
pub fn plain_initial_response(login: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{login}\0{password}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_fills_placeholders_and_refuses_unknown_ones() {
        let dir = std::env::temp_dir().join(format!("pb-render-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let template = dir.join("t.in");
        std::fs::write(&template, "url = http://@ID@:@SECRET@@127.0.0.1:@PORT@/x\n").unwrap();
        let out = render(&template, &[("ID", "a".into()), ("SECRET", "b".into()), ("PORT", "1".into())]).unwrap();
        assert_eq!(out, "url = http://a:b@127.0.0.1:1/x\n");
        assert!(render(&template, &[("ID", "a".into())]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn xoauth2_response_is_the_documented_format() {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD.decode(xoauth2_initial_response("a@b.c", "tok")).unwrap();
        assert_eq!(decoded, b"user=a@b.c\x01auth=Bearer tok\x01\x01");
    }
}
