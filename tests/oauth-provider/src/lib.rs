//! A faithful local OAuth2 / OpenID Connect provider stand-in for Postbridge's tests.
//!
//! Microsoft and Google cannot be reached from CI, so tests start a [`MockProvider`]: a real actix-web HTTP server on
//! `127.0.0.1` (port 0) that implements the authorization code grant with PKCE S256 (RFC 6749, RFC 7636), refresh
//! tokens with optional rotation, the client credentials grant, token introspection (RFC 7662), an OIDC `id_token`
//! (HS256), `/userinfo` and a discovery document. Knobs on [`MockProvider`] change its behaviour at run time, and
//! [`TokenFailure`] injects the failures real providers produce (throttling, outages, withdrawn consent).
//!
//! Error descriptions imitate Microsoft Entra ID (`AADSTS…`), so code that shows provider messages sees realistic text.
//!
//! ```no_run
//! use postbridge_oauth_provider::{MockProvider, TokenFailure};
//!
//! # async fn example() {
//! let provider = MockProvider::start().await;
//! provider.register_client("app", Some("secret"), &["http://127.0.0.1:8080/oauth/callback"]);
//! provider.set_consenting_user("alice@example.com");
//! // Point a "generic" token configuration at provider.authorize_url() / provider.token_url(), then:
//! provider.fail_next_token_requests(2, TokenFailure::RateLimited { retry_after_seconds: 1 });
//! assert_eq!(provider.token_requests("refresh_token"), 0);
//! # }
//! ```

mod handlers;
mod state;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpServer};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use state::{Shared, Subject};

/// The HS256 key that signs `id_token`s for public clients (those registered without a secret).
pub const PUBLIC_CLIENT_ID_TOKEN_KEY: &[u8] = b"postbridge-oauth-provider public client id_token key";

/// Default `expires_in` of access tokens, in seconds.
pub const DEFAULT_ACCESS_TOKEN_TTL_SECONDS: i64 = 3600;

/// Default lifetime of authorization codes, in seconds.
pub const DEFAULT_AUTHORIZATION_CODE_TTL_SECONDS: i64 = 60;

/// Lifetime of `id_token`s (`exp - iat`), in seconds.
pub const ID_TOKEN_TTL_SECONDS: i64 = 3600;

/// How the next `/token` requests fail (see [`MockProvider::fail_next_token_requests`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenFailure {
    /// 400 `{"error":"invalid_grant","error_description":description}` (revoked, expired, consent withdrawn).
    InvalidGrant {
        /// The `error_description` to send.
        description: String,
    },
    /// 401 `{"error":"invalid_client","error_description":description}` (e.g. an expired client secret).
    InvalidClient {
        /// The `error_description` to send.
        description: String,
    },
    /// 400 `{"error":"interaction_required"}` with a Microsoft-like MFA description (a human must sign in again).
    InteractionRequired,
    /// 400 `{"error":"consent_required"}` with a Microsoft-like description (a human must consent again).
    ConsentRequired,
    /// 500 with an HTML body, as a failing front end would answer.
    ServerError,
    /// 503 with an HTML body.
    ServiceUnavailable,
    /// 429 with a `Retry-After` header of this many seconds and a JSON body.
    RateLimited {
        /// The value of the `Retry-After` header.
        retry_after_seconds: u64,
    },
    /// Waits this long, then handles the request normally.
    Slow(std::time::Duration),
    /// 200 with a well-formed token response padded to at least this many bytes (a hostile or broken endpoint).
    Oversized {
        /// The body's size.
        bytes: usize,
    },
}

/// Tokens minted directly by [`MockProvider::mint_tokens`], without a browser flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintedTokens {
    /// An opaque access token, active for the configured access token lifetime.
    pub access_token: String,
    /// An opaque refresh token for the same user, client and scope.
    pub refresh_token: String,
    /// The access token lifetime in seconds (`expires_in`).
    pub expires_in: i64,
}

/// A running OAuth2/OIDC provider stand-in; the server stops when this value is dropped.
pub struct MockProvider {
    base_url: String,
    shared: Arc<Shared>,
    handle: ServerHandle,
}

impl MockProvider {
    /// Starts a provider on `127.0.0.1` with a free port (panics only if the loopback interface cannot be bound).
    pub async fn start() -> MockProvider {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        match Self::start_on(addr).await {
            Ok(provider) => provider,
            Err(err) => panic!("postbridge-oauth-provider: cannot listen on 127.0.0.1:0: {err}"),
        }
    }

    /// Starts a provider listening on `addr` (port 0 picks a free port); must be called inside a tokio runtime.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<MockProvider> {
        let listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        let host = match local.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
            ip if ip.is_unspecified() => "[::1]".to_string(),
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        };
        let base_url = format!("http://{host}:{}", local.port());
        let shared = Arc::new(Shared::new(base_url.clone()));
        let data = web::Data::from(Arc::clone(&shared));
        let server = HttpServer::new(move || App::new().app_data(data.clone()).configure(handlers::routes))
            .workers(2)
            .disable_signals()
            .listen(listener)?
            .run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(MockProvider { base_url, shared, handle })
    }

    /// Stops the server gracefully and waits until it has stopped.
    pub async fn stop(self) {
        self.handle.stop(true).await;
    }

    /// The provider's base URL (`http://127.0.0.1:PORT`), also the `iss` of its id_tokens.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// `{base}/authorize`, the authorization endpoint.
    pub fn authorize_url(&self) -> String {
        format!("{}/authorize", self.base_url)
    }

    /// `{base}/token`, the token endpoint.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.base_url)
    }

    /// `{base}/revoke`, the RFC 7009 revocation endpoint.
    pub fn revocation_url(&self) -> String {
        format!("{}/revoke", self.base_url)
    }

    /// Every `/revoke` request received: its `token` and `token_type_hint`, in order.
    pub fn revocations(&self) -> Vec<(String, Option<String>)> {
        self.shared.lock().revocations.clone()
    }

    /// The next `count` `/revoke` requests fail with 503 (an outage at the provider).
    pub fn fail_next_revocations(&self, count: usize) {
        self.shared.lock().revocation_failures = count;
    }

    /// Whether a refresh token can still be used (not revoked, rotated away or unknown).
    pub fn refresh_token_active(&self, refresh_token: &str) -> bool {
        self.shared.lock().refresh_tokens.get(refresh_token).is_some_and(|r| r.status == state::RefreshStatus::Active)
    }

    /// `{base}/introspect`, the RFC 7662 introspection endpoint.
    pub fn introspection_url(&self) -> String {
        format!("{}/introspect", self.base_url)
    }

    /// `{base}/userinfo`, the OIDC userinfo endpoint.
    pub fn userinfo_url(&self) -> String {
        format!("{}/userinfo", self.base_url)
    }

    /// `{base}/.well-known/openid-configuration`, the OIDC discovery document.
    pub fn openid_configuration_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.base_url)
    }

    /// Registers (or replaces) a client; `None` as secret makes it a public client; redirect URIs match byte for byte.
    pub fn register_client(&self, client_id: &str, client_secret: Option<&str>, redirect_uris: &[&str]) {
        self.shared.lock().register_client(client_id, client_secret, redirect_uris.iter().map(|uri| uri.to_string()).collect());
    }

    /// Sets who "logs in" and auto-consents at `/authorize` (without one, `/authorize` answers `error=login_required`).
    pub fn set_consenting_user(&self, email: &str) {
        self.shared.lock().consenting_user = Some(email.to_string());
    }

    /// When true, `/authorize` redirects back with `error=access_denied` (the user declined consent).
    pub fn set_deny_consent(&self, deny: bool) {
        self.shared.lock().deny_consent = deny;
    }

    /// Default true: each refresh returns a new refresh token and the old one becomes invalid (reuse → invalid_grant);
    /// false: refresh responses carry no refresh token and the old one stays valid (like Google).
    pub fn set_rotate_refresh_tokens(&self, rotate: bool) {
        self.shared.lock().rotate_refresh_tokens = rotate;
    }

    /// Every token request from now on waits this long before it is answered, like a remote provider (default 0).
    pub fn set_token_latency(&self, latency: std::time::Duration) {
        self.shared.lock().token_latency = latency;
    }

    /// Default true; false = code exchanges return no refresh token (like Google without `prompt=consent`).
    pub fn set_issue_refresh_token(&self, issue: bool) {
        self.shared.lock().issue_refresh_tokens = issue;
    }

    /// Sets `expires_in` of access tokens issued from now on (default 3600; 0 or less issues already expired tokens).
    pub fn set_access_token_ttl(&self, seconds: i64) {
        self.shared.lock().access_token_ttl = seconds;
    }

    /// Sets the lifetime of authorization codes issued from now on (default 60 s; 0 makes them expire at once).
    pub fn set_authorization_code_ttl(&self, seconds: i64) {
        self.shared.lock().code_ttl = seconds;
    }

    /// Default true: token responses carry an `id_token` whenever the granted scope contains `openid` (as OIDC says).
    pub fn set_include_id_token(&self, include: bool) {
        self.shared.lock().include_id_token = include;
    }

    /// With `Some(issuer)`, authorization responses (the redirect back from `/authorize`, success or
    /// `access_denied`) carry `iss=issuer` (RFC 9207); default none. [`MockProvider::base_url`] is the true issuer.
    pub fn set_authorization_response_iss(&self, issuer: Option<&str>) {
        self.shared.lock().authorization_response_iss = issuer.map(str::to_string);
    }

    /// Claims merged over the default `id_token` claims from now on (a `null` value removes that claim), e.g.
    /// `{"email": "x@y", "preferred_username": null, "tid": "…", "oid": "…"}`; `None` restores the defaults.
    pub fn set_id_token_claims(&self, claims: Option<serde_json::Map<String, serde_json::Value>>) {
        self.shared.lock().id_token_claims = claims;
    }

    /// The next `count` `/token` calls fail this way (before any other check); calls append to the queue.
    pub fn fail_next_token_requests(&self, count: usize, failure: TokenFailure) {
        let mut state = self.shared.lock();
        for _ in 0..count {
            state.failures.push_back(failure.clone());
        }
    }

    /// How many injected `/token` failures are still queued.
    pub fn pending_token_failures(&self) -> usize {
        self.shared.lock().failures.len()
    }

    /// Drops all queued `/token` failures.
    pub fn clear_token_failures(&self) {
        self.shared.lock().failures.clear();
    }

    /// Revokes every authorization code, refresh token and access token of that user (→ invalid_grant / inactive).
    pub fn revoke_user(&self, email: &str) {
        self.shared.lock().revoke_user(email);
    }

    /// How many `/token` calls with that `grant_type` were received (including failed ones; "" = no grant_type).
    pub fn token_requests(&self, grant_type: &str) -> usize {
        self.shared.lock().token_requests.get(grant_type).copied().unwrap_or(0)
    }

    /// The token's user email if the access token is active (the client id for client-credentials tokens).
    pub fn introspect(&self, access_token: &str) -> Option<String> {
        let state = self.shared.lock();
        let record = state.active_access_token(access_token, state::now())?;
        Some(match &record.subject {
            Subject::User(email) => email.clone(),
            Subject::Client(client_id) => client_id.clone(),
        })
    }

    /// The query parameters of the last `/authorize` call (the last value wins for repeated names).
    pub fn last_authorize_params(&self) -> Option<BTreeMap<String, String>> {
        self.shared.lock().last_authorize.clone()
    }

    /// Issues access and refresh tokens for `email` as if the user had consented to `client_id` (None: unknown client).
    pub fn mint_tokens(&self, client_id: &str, email: &str, scope: &str) -> Option<MintedTokens> {
        let mut state = self.shared.lock();
        if !state.clients.contains_key(client_id) {
            return None;
        }
        let family = state.new_family();
        let now = state::now();
        let subject = Subject::User(email.to_string());
        let (access_token, expires_in) = state.issue_access_token(client_id, subject, scope, Some(family), now);
        let refresh_token = state.issue_refresh_token(client_id, email, scope, family);
        Some(MintedTokens { access_token, refresh_token, expires_in })
    }
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        // The stop command is sent synchronously; the returned future only waits for completion.
        drop(self.handle.stop(false));
    }
}

/// The PKCE S256 challenge of a verifier: `BASE64URL(SHA256(verifier))` without padding (RFC 7636 §4.2).
pub fn pkce_challenge(code_verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(code_verifier.as_bytes()))
}

/// The stable `sub` this provider gives a user (derived from the lower-cased email).
pub fn subject_for(email: &str) -> String {
    let digest = Sha256::digest(format!("postbridge-oauth-provider:{}", email.to_lowercase()).as_bytes());
    URL_SAFE_NO_PAD.encode(digest)
}
