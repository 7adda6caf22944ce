//! What the mail-protocol clients (IMAP, POP3, SMTP) share: the server to reach ([`Endpoint`]), the credentials
//! ([`MailAuth`]), the time limits ([`Timeouts`]) and the one error type ([`MailError`]): the step that failed and the
//! server's own words, never a password or a token.

use std::fmt;
use std::time::Duration;

use crate::failure::{FailureKind, MailStep};
use crate::model::Security;
use crate::protocols::net::ConnectError;

/// Server words kept in an error message at most, in bytes.
const MAX_MESSAGE_LEN: usize = 500;

/// A server's words as Postbridge keeps them: cut to [`MAX_MESSAGE_LEN`] bytes (at a character boundary), so a chatty
/// or hostile server cannot flood `last_error`, and with any NUL replaced, which Postgres refuses in text (a write of
/// the outcome that fails would leave the job to be done again).
pub(crate) fn server_words(text: &str) -> String {
    let text = without_nul(text.to_owned());
    if text.len() <= MAX_MESSAGE_LEN {
        return text;
    }
    format!("{}…", cut_at_char(&text, MAX_MESSAGE_LEN))
}

/// `text` as it can be stored: at most `max_bytes` (cut at a character boundary) and with every NUL replaced, since
/// Postgres refuses NUL in `text` and `jsonb` (one such byte from a sender would fail every poll of the mailbox).
pub(crate) fn stored_text(text: &str, max_bytes: usize) -> String {
    // Cut before and after: a replaced NUL takes three bytes instead of one.
    let clean = without_nul(cut_at_char(text, max_bytes).to_owned());
    cut_at_char(&clean, max_bytes).to_owned()
}

/// The longest start of `text` of at most `max` bytes that ends at a character boundary.
pub(crate) fn cut_at_char(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `text` with every NUL replaced by U+FFFD: Postgres stores neither in `text` nor in `jsonb` strings.
pub(crate) fn without_nul(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}

/// A failed mail-protocol step. `message` holds the server's own words (or the local reason); it never holds a
/// password or a token. Displayed as `"{step}: {message}"`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{step}: {message}")]
pub struct MailError {
    pub step: MailStep,
    pub message: String,
    /// The server's numeric reply code where the protocol has one (SMTP). IMAP and POP3 have none; their clients
    /// set `454` (auth step) or `451` (other steps) where the server marks a refusal as temporary (IMAP
    /// `[UNAVAILABLE]` / `[INUSE]`, POP3 `[SYS/TEMP]` / `[IN-USE]` / `[LOGIN-DELAY]`), so [`Self::is_transient`]
    /// and [`Self::is_auth_failure`] read the same for every protocol.
    pub code: Option<u16>,
    /// What lies behind a failure the mail step only carries: a token that could not be had (the grant needs
    /// consent, the provider is down). Recorded as the account's failure kind instead of the step.
    pub cause: Option<FailureKind>,
}

impl MailError {
    pub fn new(step: MailStep, message: impl Into<String>) -> Self {
        MailError { step, message: message.into(), code: None, cause: None }
    }

    /// The same error with the server's reply code (SMTP).
    pub fn with_code(mut self, code: u16) -> Self {
        self.code = Some(code);
        self
    }

    /// The same error, caused by `cause` (see [`MailError::cause`]).
    pub fn caused_by(mut self, cause: FailureKind) -> Self {
        self.cause = Some(cause);
        self
    }

    /// The failure kind recorded for an account this error stopped.
    pub fn kind(&self) -> FailureKind {
        self.cause.clone().unwrap_or(FailureKind::Mail { step: self.step, reply_code: self.code })
    }

    /// No answer to `what` within `after`.
    pub fn timeout(what: &str, after: Duration) -> Self {
        MailError::new(MailStep::Timeout, format!("no answer to {what} within {}s", after.as_secs()))
    }

    /// Whether the server refused the credentials for good (not a temporary `4xx` authentication failure): the
    /// account needs a new password or a new consent, and retrying with the same credentials will not help.
    pub fn is_auth_failure(&self) -> bool {
        self.step == MailStep::Auth && !self.has_temporary_code()
    }

    /// Whether trying again later may succeed: DNS, connect, timeout and greeting failures, and any `4xx` reply.
    /// A `5xx` reply is never transient.
    pub fn is_transient(&self) -> bool {
        match self.code {
            Some(code) if (500..600).contains(&code) => false,
            _ if self.has_temporary_code() => true,
            _ => matches!(self.step, MailStep::Dns | MailStep::Connect | MailStep::Timeout | MailStep::Greeting),
        }
    }

    fn has_temporary_code(&self) -> bool {
        self.code.is_some_and(|code| (400..500).contains(&code))
    }
}

impl From<ConnectError> for MailError {
    fn from(err: ConnectError) -> Self {
        match err {
            ConnectError::Dns(message) => MailError::new(MailStep::Dns, message),
            ConnectError::Forbidden(message) => MailError::new(MailStep::Forbidden, message),
            ConnectError::Connect(message) => MailError::new(MailStep::Connect, message),
            ConnectError::Tls(message) => MailError::new(MailStep::Tls, message),
        }
    }
}

/// How to log in. The `Debug` output never shows the password or the token.
#[derive(Clone, PartialEq, Eq)]
pub enum MailAuth {
    /// IMAP LOGIN, POP3 USER/PASS, SMTP PLAIN / LOGIN.
    Password { login: String, password: String },
    /// SASL XOAUTH2 (`user={login}\x01auth=Bearer {access_token}\x01\x01`).
    XOAuth2 { login: String, access_token: String },
}

impl MailAuth {
    pub fn login(&self) -> &str {
        match self {
            MailAuth::Password { login, .. } | MailAuth::XOAuth2 { login, .. } => login,
        }
    }
}

impl fmt::Debug for MailAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MailAuth::Password { login, .. } => {
                f.debug_struct("Password").field("login", login).field("password", &"<redacted>").finish()
            }
            MailAuth::XOAuth2 { login, .. } => {
                f.debug_struct("XOAuth2").field("login", login).field("access_token", &"<redacted>").finish()
            }
        }
    }
}

/// The server to reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub security: Security,
}

impl Endpoint {
    pub fn new(host: impl Into<String>, port: u16, security: Security) -> Self {
        Endpoint { host: host.into(), port, security }
    }
}

/// Time limits of a session: `connect` for the TCP connection, `io` for every later network step (TLS handshake,
/// greeting, each command's reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub io: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { connect: Duration::from_secs(10), io: Duration::from_secs(60) }
    }
}

/// How long one command may take in all (an IMAP command with its responses, a POP3 multi-line response), each
/// read within the I/O timeout `io`: a server that answers a little before every timeout would otherwise hold a
/// worker's slot for ever.
pub(crate) fn command_time(io: Duration) -> Duration {
    io.saturating_mul(5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_and_auth_failures() {
        assert!(MailError::new(MailStep::Connect, "refused").is_transient());
        assert!(MailError::timeout("the greeting", Duration::from_secs(3)).is_transient());
        assert!(!MailError::new(MailStep::Forbidden, "loopback").is_transient());
        assert!(!MailError::new(MailStep::Tls, "unknown issuer").is_transient());
        assert!(MailError::new(MailStep::Command, "busy").with_code(451).is_transient());
        assert!(!MailError::new(MailStep::Greeting, "no service").with_code(554).is_transient());
        assert!(MailError::new(MailStep::Auth, "bad").with_code(535).is_auth_failure());
        let temporary = MailError::new(MailStep::Auth, "try later").with_code(454);
        assert!(!temporary.is_auth_failure() && temporary.is_transient());
        assert_eq!(MailError::new(MailStep::Folder, "Mailbox doesn't exist").to_string(), "folder: Mailbox doesn't exist");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let password = MailAuth::Password { login: "a@b.c".into(), password: "hunter2".into() };
        let token = MailAuth::XOAuth2 { login: "a@b.c".into(), access_token: "ya29.secret".into() };
        for auth in [password, token] {
            let text = format!("{auth:?}");
            assert!(text.contains("a@b.c") && !text.contains("hunter2") && !text.contains("ya29"), "{text}");
        }
    }

    #[test]
    fn connect_errors_keep_their_step() {
        assert_eq!(MailError::from(ConnectError::Forbidden("x".into())).step, MailStep::Forbidden);
        assert_eq!(MailError::from(ConnectError::Tls("x".into())).step, MailStep::Tls);
        assert_eq!(MailError::from(ConnectError::Dns("x".into())).step, MailStep::Dns);
    }
}
