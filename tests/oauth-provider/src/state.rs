//! The provider's shared, thread-safe state: clients, knobs, codes and tokens.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore as _;

use crate::{TokenFailure, DEFAULT_ACCESS_TOKEN_TTL_SECONDS, DEFAULT_AUTHORIZATION_CODE_TTL_SECONDS};

/// The current time in seconds since the Unix epoch.
pub(crate) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// 32 random bytes, base64url without padding: codes, access tokens and refresh tokens.
pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// State shared by the handlers and the [`crate::MockProvider`] handle.
pub(crate) struct Shared {
    /// `http://127.0.0.1:PORT`, the issuer.
    pub(crate) base_url: String,
    state: Mutex<State>,
}

impl Shared {
    /// Fresh state with the default knobs.
    pub(crate) fn new(base_url: String) -> Shared {
        Shared { base_url, state: Mutex::new(State::default()) }
    }

    /// Locks the state; a panic in another holder does not make the provider unusable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A registered client.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    /// None for a public client.
    pub(crate) secret: Option<String>,
    /// Exact strings accepted as `redirect_uri`.
    pub(crate) redirect_uris: Vec<String>,
}

/// Whom a token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Subject {
    /// A user (authorization code grant), by email.
    User(String),
    /// The client itself (client credentials grant), by client id.
    Client(String),
}

/// A one-time authorization code.
#[derive(Debug, Clone)]
pub(crate) struct CodeRecord {
    pub(crate) client_id: String,
    pub(crate) redirect_uri: String,
    /// Whether `redirect_uri` was sent to /authorize (then /token must send the same).
    pub(crate) redirect_uri_given: bool,
    pub(crate) code_challenge: String,
    pub(crate) scope: String,
    pub(crate) email: String,
    pub(crate) nonce: Option<String>,
    pub(crate) expires_at: i64,
    /// The grant family: every token issued from this code, directly or by refresh.
    pub(crate) family: u64,
    pub(crate) redeemed: bool,
    pub(crate) revoked: bool,
}

/// An issued access token.
#[derive(Debug, Clone)]
pub(crate) struct AccessRecord {
    pub(crate) client_id: String,
    pub(crate) subject: Subject,
    pub(crate) scope: String,
    pub(crate) issued_at: i64,
    pub(crate) expires_at: i64,
    pub(crate) family: Option<u64>,
    pub(crate) revoked: bool,
}

/// Why a refresh token can no longer be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefreshStatus {
    Active,
    RotatedAway,
    Revoked,
}

/// An issued refresh token.
#[derive(Debug, Clone)]
pub(crate) struct RefreshRecord {
    pub(crate) client_id: String,
    pub(crate) email: String,
    /// The scope granted by the user; refreshes may ask for less.
    pub(crate) scope: String,
    pub(crate) family: u64,
    pub(crate) status: RefreshStatus,
}

/// Everything behind the mutex.
pub(crate) struct State {
    pub(crate) clients: HashMap<String, Client>,
    pub(crate) consenting_user: Option<String>,
    pub(crate) deny_consent: bool,
    pub(crate) rotate_refresh_tokens: bool,
    pub(crate) issue_refresh_tokens: bool,
    pub(crate) access_token_ttl: i64,
    pub(crate) code_ttl: i64,
    pub(crate) include_id_token: bool,
    pub(crate) id_token_claims: Option<serde_json::Map<String, serde_json::Value>>,
    pub(crate) authorization_response_iss: Option<String>,
    pub(crate) failures: VecDeque<TokenFailure>,
    pub(crate) token_requests: HashMap<String, usize>,
    pub(crate) last_authorize: Option<BTreeMap<String, String>>,
    pub(crate) codes: HashMap<String, CodeRecord>,
    pub(crate) access_tokens: HashMap<String, AccessRecord>,
    pub(crate) refresh_tokens: HashMap<String, RefreshRecord>,
    /// Every `/revoke` request's `token` and `token_type_hint`, in order.
    pub(crate) revocations: Vec<(String, Option<String>)>,
    /// How many of the next `/revoke` requests fail with 503.
    pub(crate) revocation_failures: usize,
    /// How long every token request waits before it is answered (a remote provider's round trip).
    pub(crate) token_latency: std::time::Duration,
    next_family: u64,
}

impl Default for State {
    fn default() -> State {
        State {
            clients: HashMap::new(),
            consenting_user: None,
            deny_consent: false,
            token_latency: std::time::Duration::ZERO,
            rotate_refresh_tokens: true,
            issue_refresh_tokens: true,
            access_token_ttl: DEFAULT_ACCESS_TOKEN_TTL_SECONDS,
            code_ttl: DEFAULT_AUTHORIZATION_CODE_TTL_SECONDS,
            include_id_token: true,
            id_token_claims: None,
            authorization_response_iss: None,
            failures: VecDeque::new(),
            token_requests: HashMap::new(),
            last_authorize: None,
            codes: HashMap::new(),
            access_tokens: HashMap::new(),
            refresh_tokens: HashMap::new(),
            revocations: Vec::new(),
            revocation_failures: 0,
            next_family: 1,
        }
    }
}

impl State {
    /// Adds or replaces a client.
    pub(crate) fn register_client(&mut self, client_id: &str, secret: Option<&str>, redirect_uris: Vec<String>) {
        self.clients.insert(client_id.to_string(), Client { secret: secret.map(str::to_string), redirect_uris });
    }

    /// A new grant family id.
    pub(crate) fn new_family(&mut self) -> u64 {
        let family = self.next_family;
        self.next_family += 1;
        family
    }

    /// Issues an access token; returns it with its `expires_in`.
    pub(crate) fn issue_access_token(
        &mut self,
        client_id: &str,
        subject: Subject,
        scope: &str,
        family: Option<u64>,
        now: i64,
    ) -> (String, i64) {
        let token = random_token();
        let ttl = self.access_token_ttl;
        self.access_tokens.insert(
            token.clone(),
            AccessRecord {
                client_id: client_id.to_string(),
                subject,
                scope: scope.to_string(),
                issued_at: now,
                expires_at: now.saturating_add(ttl),
                family,
                revoked: false,
            },
        );
        (token, ttl)
    }

    /// Issues a refresh token in a grant family.
    pub(crate) fn issue_refresh_token(&mut self, client_id: &str, email: &str, scope: &str, family: u64) -> String {
        let token = random_token();
        self.refresh_tokens.insert(
            token.clone(),
            RefreshRecord {
                client_id: client_id.to_string(),
                email: email.to_string(),
                scope: scope.to_string(),
                family,
                status: RefreshStatus::Active,
            },
        );
        token
    }

    /// The access token's record if it exists, is not revoked and has not expired.
    pub(crate) fn active_access_token(&self, token: &str, now: i64) -> Option<&AccessRecord> {
        self.access_tokens.get(token).filter(|record| !record.revoked && now < record.expires_at)
    }

    /// Revokes every token issued from one authorization code (RFC 6749 §4.1.2, code replay).
    pub(crate) fn revoke_family(&mut self, family: u64) {
        for record in self.access_tokens.values_mut() {
            if record.family == Some(family) {
                record.revoked = true;
            }
        }
        for record in self.refresh_tokens.values_mut() {
            if record.family == family {
                record.status = RefreshStatus::Revoked;
            }
        }
    }

    /// Revokes every code and token of a user (emails compare case-insensitively).
    pub(crate) fn revoke_user(&mut self, email: &str) {
        for record in self.codes.values_mut() {
            if record.email.eq_ignore_ascii_case(email) {
                record.revoked = true;
            }
        }
        for record in self.access_tokens.values_mut() {
            if matches!(&record.subject, Subject::User(user) if user.eq_ignore_ascii_case(email)) {
                record.revoked = true;
            }
        }
        for record in self.refresh_tokens.values_mut() {
            if record.email.eq_ignore_ascii_case(email) {
                record.status = RefreshStatus::Revoked;
            }
        }
    }
}
