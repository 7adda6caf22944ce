//! OAuth2 client for token configurations, on the `oauth2` crate, with every request going through
//! the `NetGuard` HTTP client. Errors are classified by the OAuth `error` field and the HTTP status,
//! so callers can tell "needs a human" from "try again later".

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use oauth2::basic::{BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse, BasicTokenType};
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet, ExtraTokenFields,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, Scope, StandardRevocableToken,
    StandardTokenResponse, TokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};

use crate::failure::{aadsts_code, FailureKind};
use crate::protocols::error::server_words;
use crate::protocols::netguard::NetGuard;

/// OIDC providers add an `id_token` to the token response; it tells who consented.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct IdTokenFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}

impl ExtraTokenFields for IdTokenFields {}

type ProviderTokenResponse = StandardTokenResponse<IdTokenFields, BasicTokenType>;
type ProviderClient<HasAuthUrl, HasTokenUrl> = oauth2::Client<
    BasicErrorResponse,
    ProviderTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    HasAuthUrl,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    HasTokenUrl,
>;

/// A token configuration with its secret decrypted, ready to talk to the provider.
#[derive(Clone)]
pub struct ProviderConfig {
    pub client_id: String,
    pub client_secret: Option<String>,
    pub auth_url: Option<String>,
    pub token_url: String,
    pub scopes: Vec<String>,
    pub redirect_uri: String,
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("client_id", &self.client_id)
            .field("token_url", &self.token_url)
            .finish_non_exhaustive()
    }
}

/// Tokens from a successful token response.
#[derive(Clone)]
pub struct TokenSet {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub scopes: Vec<String>,
    pub id_token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The provider refused with an OAuth error (`invalid_grant`, `invalid_client`, ...).
    #[error("the provider refused: {error}{}", .description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Rejected { error: String, description: Option<String> },
    /// Network error, timeout, 5xx or 429: try again later, nothing is wrong with the grant.
    #[error("the provider is unavailable: {reason}")]
    Unavailable { reason: String, retry_after: Option<Duration> },
    /// The configuration cannot be used (malformed URL and the like).
    #[error("the token configuration is not usable: {0}")]
    Configuration(String),
    /// The provider answered something that is not OAuth.
    #[error("unexpected answer from the provider: {0}")]
    Protocol(String),
}

impl TokenError {
    /// The kind of this failure, as stored beside its words.
    pub fn failure_kind(&self) -> FailureKind {
        let error = self;
        let (oauth_error, provider_code) = match error {
            TokenError::Rejected { error, description } => {
                (Some(error.clone()), description.as_deref().and_then(aadsts_code).map(str::to_owned))
            }
            TokenError::Unavailable { .. } => return FailureKind::ProviderUnavailable,
            TokenError::Configuration(_) | TokenError::Protocol(_) => (None, None),
        };
        if error.needs_reauth() {
            FailureKind::ReauthRequired { oauth_error, provider_code }
        } else if error.needs_admin() {
            FailureKind::ClientRefused { oauth_error, provider_code }
        } else {
            FailureKind::ProviderAnswer { oauth_error, provider_code }
        }
    }

    pub fn oauth_error(&self) -> Option<&str> {
        match self {
            TokenError::Rejected { error, .. } => Some(error),
            _ => None,
        }
    }

    /// The grant is dead until someone consents again.
    pub fn needs_reauth(&self) -> bool {
        matches!(self.oauth_error(), Some("invalid_grant" | "interaction_required" | "consent_required" | "login_required"))
    }

    /// The app registration itself is broken (wrong or expired secret): its admin must act.
    pub fn needs_admin(&self) -> bool {
        matches!(self.oauth_error(), Some("invalid_client" | "unauthorized_client"))
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, TokenError::Unavailable { .. })
    }
}

/// What the HTTP adapter saw, since `oauth2` does not expose status or headers of error responses.
#[derive(Clone, Copy, Debug, Default)]
struct ResponseMeta {
    status: u16,
    retry_after: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpCallError(String);

/// Talks to one provider for one configuration.
pub struct OAuthClient {
    http: reqwest::Client,
    guard: NetGuard,
    config: ProviderConfig,
}

/// The start of a user-flow authorization: the URL to send the browser to, and the PKCE verifier to keep.
pub struct AuthorizationRequest {
    pub url: String,
    pub pkce_verifier: String,
}

impl OAuthClient {
    /// `http` must come from `NetGuard::http_client` (the context holds one, shared).
    pub fn new(http: reqwest::Client, guard: &NetGuard, config: ProviderConfig) -> Self {
        OAuthClient { http, guard: guard.clone(), config }
    }

    fn base_client(&self) -> Result<ProviderClient<EndpointNotSet, EndpointSet>, TokenError> {
        let token_url =
            TokenUrl::new(self.config.token_url.clone()).map_err(|e| TokenError::Configuration(format!("token_url: {e}")))?;
        let redirect = RedirectUrl::new(self.config.redirect_uri.clone())
            .map_err(|e| TokenError::Configuration(format!("redirect URI: {e}")))?;
        let mut client = ProviderClient::<EndpointNotSet, EndpointNotSet>::new(ClientId::new(self.config.client_id.clone()))
            .set_token_uri(token_url)
            .set_redirect_uri(redirect);
        if let Some(secret) = &self.config.client_secret {
            client = client.set_client_secret(ClientSecret::new(secret.clone()));
        }
        Ok(client)
    }

    /// Builds the provider's authorization URL with `state`, PKCE S256 and the extra parameters.
    pub fn authorization_request(
        &self,
        state: &str,
        extra_params: &[(String, String)],
    ) -> Result<AuthorizationRequest, TokenError> {
        let auth_url = self.config.auth_url.clone().ok_or_else(|| TokenError::Configuration("no auth_url".to_owned()))?;
        let auth_url = AuthUrl::new(auth_url).map_err(|e| TokenError::Configuration(format!("auth_url: {e}")))?;
        let client = self.base_client()?.set_auth_uri(auth_url);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let state = state.to_owned();
        let mut request = client
            .authorize_url(move || CsrfToken::new(state))
            .add_scopes(self.config.scopes.iter().cloned().map(Scope::new))
            .set_pkce_challenge(challenge);
        for (name, value) in extra_params {
            request = request.add_extra_param(name.clone(), value.clone());
        }
        let (url, _) = request.url();
        Ok(AuthorizationRequest { url: url.to_string(), pkce_verifier: verifier.secret().clone() })
    }

    pub async fn exchange_code(&self, code: &str, pkce_verifier: &str) -> Result<TokenSet, TokenError> {
        let client = self.base_client()?;
        let capture = Arc::new(Mutex::new(ResponseMeta::default()));
        let call = self.http_adapter(capture.clone());
        let result = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_owned()))
            .request_async(&call)
            .await;
        self.finish(result, &capture)
    }

    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenSet, TokenError> {
        let client = self.base_client()?;
        let capture = Arc::new(Mutex::new(ResponseMeta::default()));
        let call = self.http_adapter(capture.clone());
        let token = RefreshToken::new(refresh_token.to_owned());
        let result = client.exchange_refresh_token(&token).request_async(&call).await;
        self.finish(result, &capture)
    }

    pub async fn client_credentials(&self) -> Result<TokenSet, TokenError> {
        let client = self.base_client()?;
        let capture = Arc::new(Mutex::new(ResponseMeta::default()));
        let call = self.http_adapter(capture.clone());
        let result = client
            .exchange_client_credentials()
            .add_scopes(self.config.scopes.iter().cloned().map(Scope::new))
            .request_async(&call)
            .await;
        self.finish(result, &capture)
    }

    /// RFC 7009: asks the provider to revoke `token` (`token_type_hint` `refresh_token` or `access_token`) at
    /// `revocation_url`, authenticating as at the token endpoint (HTTP Basic with a secret, else `client_id`). Sent by
    /// hand rather than through `oauth2`, which refuses a revocation URL that is not https (the local test provider).
    pub async fn revoke(&self, revocation_url: &str, token: &str, token_type_hint: &str) -> Result<(), TokenError> {
        let mut fields = vec![("token", token), ("token_type_hint", token_type_hint)];
        let mut request = oauth2::http::Request::builder()
            .method(oauth2::http::Method::POST)
            .uri(revocation_url)
            .header(oauth2::http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(oauth2::http::header::ACCEPT, "application/json");
        match &self.config.client_secret {
            Some(secret) => {
                // RFC 6749 §2.3.1: both parts form-urlencoded before Basic encoding.
                let encode = |part: &str| url::form_urlencoded::byte_serialize(part.as_bytes()).collect::<String>();
                let pair = format!("{}:{}", encode(&self.config.client_id), encode(secret));
                let basic = base64::engine::general_purpose::STANDARD.encode(pair);
                request = request.header(oauth2::http::header::AUTHORIZATION, format!("Basic {basic}"));
            }
            None => fields.push(("client_id", &self.config.client_id)),
        }
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
        let request = request.body(body.into_bytes()).map_err(|e| TokenError::Configuration(format!("revocation_url: {e}")))?;
        let capture = Arc::new(Mutex::new(ResponseMeta::default()));
        let response = send(self.http.clone(), self.guard.clone(), request, capture.clone()).await.map_err(|e| {
            TokenError::Unavailable { reason: e.0.replace("token endpoint", "revocation endpoint"), retry_after: None }
        })?;
        let status = response.status().as_u16();
        if response.status().is_success() {
            return Ok(());
        }
        if status >= 500 || status == 429 {
            let retry_after = capture.lock().ok().and_then(|meta| meta.retry_after);
            return Err(TokenError::Unavailable { reason: format!("HTTP {status}"), retry_after });
        }
        // An OAuth error body names the reason; anything else is reported by its status.
        let error: Option<BasicRevocationErrorResponse> = serde_json::from_slice(response.body()).ok();
        Err(TokenError::Rejected {
            error: error.as_ref().map(|e| server_words(e.error().as_ref())).unwrap_or_else(|| format!("HTTP {status}")),
            description: error.and_then(|e| e.error_description().map(|d| server_words(d))),
        })
    }

    fn finish(
        &self,
        result: Result<ProviderTokenResponse, RequestTokenError<HttpCallError, BasicErrorResponse>>,
        capture: &Mutex<ResponseMeta>,
    ) -> Result<TokenSet, TokenError> {
        let meta = capture.lock().map(|m| *m).unwrap_or_default();
        let retryable_status = meta.status >= 500 || meta.status == 429;
        let unavailable = |reason: String| TokenError::Unavailable { reason, retry_after: meta.retry_after };
        match result {
            Ok(response) => Ok(TokenSet {
                access_token: response.access_token().secret().clone(),
                refresh_token: response.refresh_token().map(|t| t.secret().clone()),
                expires_at: response.expires_in().map(expiry_from),
                scopes: response
                    .scopes()
                    .map(|s| s.iter().map(|s| s.to_string()).collect())
                    .unwrap_or_else(|| self.config.scopes.clone()),
                id_token: response.extra_fields().id_token.clone(),
            }),
            Err(RequestTokenError::ServerResponse(err)) => {
                // The provider's words are kept bounded, as a mail server's are: they end up in `last_error` and its kind.
                let error = server_words(err.error().as_ref());
                let description = err.error_description().map(|d| server_words(d));
                if retryable_status || matches!(error.as_str(), "temporarily_unavailable" | "server_error") {
                    Err(unavailable(format!("HTTP {}: {error}", meta.status)))
                } else {
                    Err(TokenError::Rejected { error, description })
                }
            }
            Err(RequestTokenError::Request(e)) => Err(unavailable(e.to_string())),
            Err(RequestTokenError::Parse(_, _)) | Err(RequestTokenError::Other(_)) if retryable_status => {
                Err(unavailable(format!("HTTP {}", meta.status)))
            }
            Err(RequestTokenError::Parse(e, _)) => {
                Err(TokenError::Protocol(format!("HTTP {}: malformed token response: {e}", meta.status)))
            }
            Err(RequestTokenError::Other(e)) => Err(TokenError::Protocol(format!("HTTP {}: {e}", meta.status))),
        }
    }

    /// The HTTP adapter `oauth2` calls; its futures own their (Arc-backed) handles.
    fn http_adapter(
        &self,
        capture: Arc<Mutex<ResponseMeta>>,
    ) -> impl Fn(
        oauth2::HttpRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<oauth2::HttpResponse, HttpCallError>> + Send>> {
        let (http, guard) = (self.http.clone(), self.guard.clone());
        move |request| Box::pin(send(http.clone(), guard.clone(), request, capture.clone()))
    }
}

/// Providers are untrusted: a token's lifetime is taken as at least a minute (an `expires_in` of 0 would make every
/// pass refresh it again) and at most a year, a Retry-After as at most a day, and a token endpoint's answer is read
/// up to 1 MiB.
pub const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);
pub const MAX_TOKEN_RESPONSE_BYTES: usize = 1024 * 1024;

/// When a token with this `expires_in` expires: clamped to a minute .. a year from now.
fn expiry_from(expires_in: Duration) -> chrono::DateTime<Utc> {
    let lifetime = expires_in.clamp(MIN_TOKEN_LIFETIME, MAX_TOKEN_LIFETIME);
    let lifetime = chrono::Duration::from_std(lifetime).unwrap_or(chrono::Duration::zero());
    let now = Utc::now();
    now.checked_add_signed(lifetime).unwrap_or(now)
}

/// The body, or an error once it passes `limit` bytes (the rest is never read).
async fn read_bounded(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, HttpCallError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|_| HttpCallError("token endpoint response was cut off".to_owned()))? {
        if body.len().saturating_add(chunk.len()) > limit {
            return Err(HttpCallError(format!("token endpoint response is larger than {limit} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// One token-endpoint request: guarded client, no redirects, status and Retry-After recorded.
async fn send(
    http: reqwest::Client,
    guard: NetGuard,
    request: oauth2::HttpRequest,
    capture: Arc<Mutex<ResponseMeta>>,
) -> Result<oauth2::HttpResponse, HttpCallError> {
    {
        let url = url::Url::parse(&request.uri().to_string()).map_err(|e| HttpCallError(format!("bad URL: {e}")))?;
        // The guard's resolver is not consulted for IP-literal hosts, so check those here.
        if let Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)) = url.host() {
            let host = url.host_str().unwrap_or_default();
            let port = url.port_or_known_default().unwrap_or(443);
            guard.resolve(host, port).await.map_err(|e| HttpCallError(e.to_string()))?;
        }
        let method =
            reqwest::Method::from_bytes(request.method().as_str().as_bytes()).map_err(|e| HttpCallError(e.to_string()))?;
        let mut builder = http.request(method, url);
        for (name, value) in request.headers() {
            builder = builder.header(name.as_str(), value.as_bytes());
        }
        let response = builder.body(request.into_body()).send().await.map_err(|e| {
            let kind = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "could not connect"
            } else {
                "request failed"
            };
            HttpCallError(format!("token endpoint {kind}"))
        })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|seconds| Duration::from_secs(seconds.min(MAX_RETRY_AFTER.as_secs())));
        if let Ok(mut meta) = capture.lock() {
            *meta = ResponseMeta { status, retry_after };
        }
        let mut builder = oauth2::http::Response::builder().status(status);
        for (name, value) in response.headers() {
            builder = builder.header(name.as_str(), value.as_bytes());
        }
        let body = read_bounded(response, MAX_TOKEN_RESPONSE_BYTES).await?;
        builder.body(body).map_err(|e| HttpCallError(e.to_string()))
    }
}

/// Who consented, from an id_token received straight from the token endpoint over TLS (OIDC Core 3.1.3.7 lets
/// TLS stand in for the signature check there).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsentIdentity {
    /// The sign-in name, lower-cased: `preferred_username`, else `upn`, else `email` (unless the provider says it
    /// is unverified). `email` comes last: at Microsoft it is a mutable, unverified attribute a directory admin sets.
    pub username: Option<String>,
    /// Microsoft: the user's directory (`tid`) and object id (`oid`), stable where names change.
    pub directory_id: Option<String>,
    pub object_id: Option<String>,
    /// The token's `sub` (stable per client at most providers).
    pub subject: Option<String>,
    /// Whom the token was issued to (`aud`: the client id, one or a few) and by whom (`iss`), to check.
    pub audiences: Vec<String>,
    pub issuer: Option<String>,
}

impl ConsentIdentity {
    /// The most stable identifier the provider gave: `tid/oid` (Microsoft), else `sub`.
    pub fn stable_id(&self) -> Option<String> {
        match (&self.directory_id, &self.object_id) {
            (Some(tid), Some(oid)) => Some(format!("{tid}/{oid}")),
            _ => self.subject.clone(),
        }
    }
}

/// The identity an id_token names; `None` when it is not a readable JWT.
pub fn id_token_identity(id_token: &str) -> Option<ConsentIdentity> {
    let payload = id_token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    // Claims are bounded like any provider input: an oversized one is ignored, not stored.
    let text = |name: &str| {
        claims.get(name).and_then(|v| v.as_str()).map(str::trim).filter(|v| !v.is_empty() && v.len() <= 320).map(str::to_owned)
    };
    let address = |name: &str| text(name).filter(|v| v.contains('@')).map(|v| v.to_lowercase());
    let email_unverified = claims.get("email_verified").is_some_and(|v| v == &serde_json::Value::Bool(false) || v == "false");
    let username =
        address("preferred_username")
            .or_else(|| address("upn"))
            .or_else(|| if email_unverified { None } else { address("email") });
    let audiences = match claims.get("aud") {
        Some(serde_json::Value::String(one)) => vec![one.clone()],
        Some(serde_json::Value::Array(many)) => many.iter().take(10).filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    };
    Some(ConsentIdentity {
        username,
        directory_id: text("tid"),
        object_id: text("oid"),
        subject: text("sub"),
        audiences,
        issuer: text("iss"),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_errors_keep_the_providers_codes() {
        let refused = TokenError::Rejected {
            error: "invalid_grant".into(),
            description: Some("AADSTS700082: The refresh token has expired due to inactivity.".into()),
        };
        assert_eq!(
            refused.failure_kind(),
            FailureKind::ReauthRequired { oauth_error: Some("invalid_grant".into()), provider_code: Some("AADSTS700082".into()) }
        );
        let client = TokenError::Rejected { error: "invalid_client".into(), description: None };
        assert!(matches!(client.failure_kind(), FailureKind::ClientRefused { .. }));
        let outage = TokenError::Unavailable { reason: "HTTP 503".into(), retry_after: None };
        assert_eq!(outage.failure_kind(), FailureKind::ProviderUnavailable);
    }

    use super::*;

    #[test]
    fn identity_prefers_stable_names_over_email() {
        let encode = |claims: serde_json::Value| {
            let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
            format!("{}.{}.sig", b64(br#"{"alg":"RS256"}"#), b64(claims.to_string().as_bytes()))
        };
        let name = |claims: serde_json::Value| id_token_identity(&encode(claims)).and_then(|i| i.username);
        assert_eq!(name(serde_json::json!({"email": "Ann@Example.com"})), Some("ann@example.com".into()));
        assert_eq!(
            name(serde_json::json!({"email": "ceo@example.com", "preferred_username": "Bob@Example.com"})),
            Some("bob@example.com".into()),
            "an email attribute does not outrank the sign-in name"
        );
        assert_eq!(
            name(serde_json::json!({"email": "ceo@example.com", "upn": "bob@example.com"})),
            Some("bob@example.com".into())
        );
        assert_eq!(name(serde_json::json!({"email": "ceo@example.com", "email_verified": false})), None, "unverified");
        assert_eq!(name(serde_json::json!({"preferred_username": "not-an-address", "sub": "123"})), None);
        let ms = id_token_identity(&encode(serde_json::json!({"tid": "t-1", "oid": "o-2", "sub": "s"}))).expect("claims");
        assert_eq!(ms.stable_id().as_deref(), Some("t-1/o-2"));
        assert_eq!(id_token_identity(&encode(serde_json::json!({"sub": "s"}))).and_then(|i| i.stable_id()).as_deref(), Some("s"));
        assert_eq!(id_token_identity("not-a-jwt"), None);
    }

    #[test]
    fn errors_are_classified_by_the_oauth_error_field() {
        let rejected = |e: &str| TokenError::Rejected { error: e.to_owned(), description: Some("AADSTS70008: expired".into()) };
        assert!(rejected("invalid_grant").needs_reauth());
        assert!(rejected("interaction_required").needs_reauth());
        assert!(rejected("invalid_client").needs_admin());
        assert!(!rejected("invalid_client").needs_reauth());
        assert!(TokenError::Unavailable { reason: "503".into(), retry_after: None }.is_transient());
    }
}
