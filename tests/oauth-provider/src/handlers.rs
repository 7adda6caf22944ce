//! The HTTP endpoints: /authorize, /token, /introspect, /userinfo and the discovery document.

use std::collections::BTreeMap;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::{json, Map, Value};
use url::Url;

use crate::state::{now, random_token, Client, CodeRecord, RefreshStatus, Shared, Subject};
use crate::{pkce_challenge, subject_for, TokenFailure, ID_TOKEN_TTL_SECONDS, PUBLIC_CLIENT_ID_TOKEN_KEY};

const EXPIRED_GRANT: &str = "AADSTS70008: The provided authorization code or refresh token has expired due to inactivity. \
     Send a new interactive authorization request for this user and resource.";
const INVALID_CLIENT_SECRET: &str = "AADSTS7000215: Invalid client secret provided.";
const CODE_REDEEMED: &str = "AADSTS54005: OAuth2 Authorization code was already redeemed, please retry with a new valid \
     code or use an existing refresh token.";
const PKCE_MISMATCH: &str =
    "AADSTS501481: The Code_Verifier does not match the code_challenge supplied in the authorization request.";

/// Registers the endpoints on an actix app.
pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/authorize").route(web::get().to(authorize)))
        .service(web::resource("/token").route(web::post().to(token)))
        .service(web::resource("/introspect").route(web::post().to(introspect)))
        .service(web::resource("/revoke").route(web::post().to(revoke)))
        .service(web::resource("/userinfo").route(web::get().to(userinfo)).route(web::post().to(userinfo)))
        .service(web::resource("/.well-known/openid-configuration").route(web::get().to(discovery)));
}

// ---------------------------------------------------------------------------------------------------------------------
// Parameters and errors
// ---------------------------------------------------------------------------------------------------------------------

/// Form or query parameters in their original order.
struct Params(Vec<(String, String)>);

impl Params {
    /// Parses `application/x-www-form-urlencoded` bytes (a body or a query string).
    fn parse(input: &[u8]) -> Params {
        Params(url::form_urlencoded::parse(input).into_owned().collect())
    }

    /// The value of a parameter; empty values count as omitted (RFC 6749 §3.1).
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(key, value)| key == name && !value.is_empty()).map(|(_, value)| value.as_str())
    }

    /// The first parameter name that occurs more than once (forbidden by RFC 6749 §3.1 and §3.2).
    fn repeated(&self) -> Option<&str> {
        self.0
            .iter()
            .enumerate()
            .find_map(|(index, (key, _))| self.0[..index].iter().any(|(earlier, _)| earlier == key).then_some(key.as_str()))
    }

    /// Whether a name occurs more than once.
    fn is_repeated(&self, name: &str) -> bool {
        self.0.iter().filter(|(key, _)| key == name).count() > 1
    }

    /// The parameters as a map (the last value wins).
    fn to_map(&self) -> BTreeMap<String, String> {
        self.0.iter().cloned().collect()
    }
}

/// An OAuth2 error answered as JSON by the token, introspection and userinfo endpoints (RFC 6749 §5.2).
#[derive(Debug)]
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    /// Adds `WWW-Authenticate: Basic` (the client authenticated with HTTP Basic, RFC 6749 §5.2).
    basic_challenge: bool,
}

impl OAuthError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> OAuthError {
        OAuthError { status, error, description: description.into(), basic_challenge: false }
    }

    fn invalid_request(description: impl Into<String>) -> OAuthError {
        OAuthError::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    fn invalid_grant(description: impl Into<String>) -> OAuthError {
        OAuthError::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }

    fn invalid_client(description: impl Into<String>, basic_challenge: bool) -> OAuthError {
        OAuthError { basic_challenge, ..OAuthError::new(StatusCode::UNAUTHORIZED, "invalid_client", description) }
    }

    fn server_error(description: impl Into<String>) -> OAuthError {
        OAuthError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", description)
    }

    fn response(&self) -> HttpResponse {
        tracing::debug!(error = self.error, description = %self.description, "oauth error");
        let mut builder = HttpResponse::build(self.status);
        no_store(&mut builder);
        if self.basic_challenge {
            builder.insert_header((header::WWW_AUTHENTICATE, "Basic realm=\"postbridge-oauth-provider\""));
        }
        builder.json(json!({ "error": self.error, "error_description": self.description }))
    }
}

/// `Cache-Control: no-store` and `Pragma: no-cache` (RFC 6749 §5.1).
fn no_store(builder: &mut actix_web::HttpResponseBuilder) {
    builder.insert_header((header::CACHE_CONTROL, "no-store")).insert_header((header::PRAGMA, "no-cache"));
}

/// Escapes text for an HTML page.
fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// An HTML error page (what a browser shows when the provider must not redirect).
fn html_page(status: StatusCode, title: &str, message: &str) -> HttpResponse {
    let body = format!(
        "<!DOCTYPE html>\n<html><head><title>{title}</title></head>\
         <body><h1>{title}</h1><p>{message}</p></body></html>\n",
        title = html_escape(title),
        message = html_escape(message),
    );
    HttpResponse::build(status)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .content_type("text/html; charset=utf-8")
        .body(body)
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space, `%XX` a byte).
fn form_decode(input: &str) -> String {
    fn hex(byte: u8) -> Option<u8> {
        match byte {
            b'0'..=b'9' => Some(byte - b'0'),
            b'a'..=b'f' => Some(byte - b'a' + 10),
            b'A'..=b'F' => Some(byte - b'A' + 10),
            _ => None,
        }
    }
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => {
                out.push(b' ');
                index += 1;
            }
            b'%' => match (bytes.get(index + 1).and_then(|b| hex(*b)), bytes.get(index + 2).and_then(|b| hex(*b))) {
                (Some(high), Some(low)) => {
                    out.push(high * 16 + low);
                    index += 3;
                }
                _ => {
                    out.push(b'%');
                    index += 1;
                }
            },
            other => {
                out.push(other);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Credentials from an `Authorization: Basic` header.
enum BasicAuth {
    /// No Basic header.
    Absent,
    /// A Basic header that is not `base64(id:secret)`.
    Malformed,
    /// The raw (still form-urlencoded) client id and secret.
    Present { id: String, secret: String },
}

fn basic_auth(req: &HttpRequest) -> BasicAuth {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return BasicAuth::Absent;
    };
    let Ok(value) = value.to_str() else {
        return BasicAuth::Malformed;
    };
    let (scheme, credentials) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return BasicAuth::Absent;
    }
    let Ok(decoded) = STANDARD.decode(credentials.trim()) else {
        return BasicAuth::Malformed;
    };
    let Ok(decoded) = String::from_utf8(decoded) else {
        return BasicAuth::Malformed;
    };
    match decoded.split_once(':') {
        Some((id, secret)) => BasicAuth::Present { id: id.to_string(), secret: secret.to_string() },
        None => BasicAuth::Malformed,
    }
}

/// The bearer token of an `Authorization: Bearer` header.
fn bearer_token(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_string())
}

fn is_form_content(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
}

fn has_scope(scope: &str, wanted: &str) -> bool {
    scope.split_whitespace().any(|item| item == wanted)
}

// ---------------------------------------------------------------------------------------------------------------------
// /authorize
// ---------------------------------------------------------------------------------------------------------------------

/// `redirect_uri` with the given parameters added to its query (existing ones kept, any fragment dropped).
fn redirect_to(target: &Url, params: &[(&str, Option<&str>)]) -> HttpResponse {
    let mut location = target.clone();
    location.set_fragment(None);
    {
        let mut query = location.query_pairs_mut();
        for (name, value) in params {
            if let Some(value) = value {
                query.append_pair(name, value);
            }
        }
    }
    HttpResponse::Found()
        .insert_header((header::LOCATION, location.as_str()))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

/// A redirect carrying an authorization error (RFC 6749 §4.1.2.1).
fn redirect_error(target: &Url, error: &str, description: &str, state: Option<&str>) -> HttpResponse {
    tracing::debug!(error, description, "authorize error");
    redirect_to(target, &[("error", Some(error)), ("error_description", Some(description)), ("state", state)])
}

/// Whether a string can be an S256 `code_challenge` (43 base64url characters, RFC 7636 §4.2).
fn is_s256_challenge(challenge: &str) -> bool {
    challenge.len() == 43 && challenge.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

async fn authorize(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let params = Params::parse(req.query_string().as_bytes());
    let mut state = shared.lock();
    state.last_authorize = Some(params.to_map());

    // Client and redirect URI first: until both are known good, errors must not redirect (RFC 6749 §4.1.2.1).
    if params.is_repeated("client_id") || params.is_repeated("redirect_uri") {
        return html_page(
            StatusCode::BAD_REQUEST,
            "Sign-in error",
            "AADSTS90015: Requested query string is too long or contains repeated client_id / redirect_uri parameters.",
        );
    }
    let Some(client_id) = params.get("client_id") else {
        return html_page(
            StatusCode::BAD_REQUEST,
            "Sign-in error",
            "AADSTS900144: The request body must contain the following parameter: 'client_id'.",
        );
    };
    let Some(client) = state.clients.get(client_id).cloned() else {
        return html_page(
            StatusCode::BAD_REQUEST,
            "Sign-in error",
            &format!("AADSTS700016: Application with identifier '{client_id}' was not found in the directory."),
        );
    };
    let (redirect_uri, redirect_uri_given) = match params.get("redirect_uri") {
        Some(uri) if client.redirect_uris.iter().any(|registered| registered == uri) => (uri.to_string(), true),
        Some(uri) => {
            return html_page(
                StatusCode::BAD_REQUEST,
                "Sign-in error",
                &format!(
                    "AADSTS50011: The redirect URI '{uri}' specified in the request does not match the redirect URIs \
                     configured for the application '{client_id}'."
                ),
            )
        }
        None => match client.redirect_uris.as_slice() {
            [only] => (only.clone(), false),
            _ => {
                return html_page(
                    StatusCode::BAD_REQUEST,
                    "Sign-in error",
                    "AADSTS900144: The request body must contain the following parameter: 'redirect_uri'.",
                )
            }
        },
    };
    let Ok(target) = Url::parse(&redirect_uri) else {
        return html_page(
            StatusCode::BAD_REQUEST,
            "Sign-in error",
            &format!("The registered redirect URI '{redirect_uri}' is not an absolute URL."),
        );
    };

    // From here on errors go back to the client.
    let oauth_state = params.get("state");
    if let Some(name) = params.repeated() {
        return redirect_error(
            &target,
            "invalid_request",
            &format!("AADSTS90015: The parameter '{name}' was included more than once."),
            oauth_state,
        );
    }
    match params.get("response_type") {
        None => {
            return redirect_error(
                &target,
                "invalid_request",
                "AADSTS900144: The request body must contain the following parameter: 'response_type'.",
                oauth_state,
            )
        }
        Some("code") => {}
        Some(other) => {
            return redirect_error(
                &target,
                "unsupported_response_type",
                &format!("AADSTS700054: response_type '{other}' is not enabled for the application."),
                oauth_state,
            )
        }
    }
    let Some(code_challenge) = params.get("code_challenge") else {
        return redirect_error(
            &target,
            "invalid_request",
            "AADSTS9002325: Proof Key for Code Exchange is required: the request must contain 'code_challenge'.",
            oauth_state,
        );
    };
    if params.get("code_challenge_method") != Some("S256") {
        return redirect_error(
            &target,
            "invalid_request",
            "AADSTS501491: Invalid code_challenge_method: only 'S256' is supported.",
            oauth_state,
        );
    }
    if !is_s256_challenge(code_challenge) {
        return redirect_error(
            &target,
            "invalid_request",
            "AADSTS501491: Invalid size of code_challenge parameter: an S256 challenge is 43 base64url characters.",
            oauth_state,
        );
    }
    let iss = state.authorization_response_iss.clone();
    if state.deny_consent {
        let description = "AADSTS65004: User declined to consent to access the app.";
        return redirect_to(
            &target,
            &[
                ("error", Some("access_denied")),
                ("error_description", Some(description)),
                ("state", oauth_state),
                ("iss", iss.as_deref()),
            ],
        );
    }
    let Some(email) = state.consenting_user.clone() else {
        return redirect_error(
            &target,
            "login_required",
            "No user is signed in (the test did not call MockProvider::set_consenting_user).",
            oauth_state,
        );
    };

    let code = random_token();
    let family = state.new_family();
    let expires_at = now().saturating_add(state.code_ttl);
    state.codes.insert(
        code.clone(),
        CodeRecord {
            client_id: client_id.to_string(),
            redirect_uri,
            redirect_uri_given,
            code_challenge: code_challenge.to_string(),
            scope: params.get("scope").unwrap_or_default().to_string(),
            email,
            nonce: params.get("nonce").map(str::to_string),
            expires_at,
            family,
            redeemed: false,
            revoked: false,
        },
    );
    redirect_to(&target, &[("code", Some(&code)), ("state", oauth_state), ("iss", iss.as_deref())])
}

// ---------------------------------------------------------------------------------------------------------------------
// /token
// ---------------------------------------------------------------------------------------------------------------------

/// The answer to an injected failure, or None for [`TokenFailure::Slow`] (handled by the caller).
fn failure_response(failure: &TokenFailure) -> Option<HttpResponse> {
    let response = match failure {
        TokenFailure::InvalidGrant { description } => OAuthError::invalid_grant(description.clone()).response(),
        TokenFailure::InvalidClient { description } => OAuthError::invalid_client(description.clone(), true).response(),
        TokenFailure::InteractionRequired => OAuthError::new(
            StatusCode::BAD_REQUEST,
            "interaction_required",
            "AADSTS50076: Due to a configuration change made by your administrator, or because you moved to a new \
             location, you must use multi-factor authentication to access the resource.",
        )
        .response(),
        TokenFailure::ConsentRequired => OAuthError::new(
            StatusCode::BAD_REQUEST,
            "consent_required",
            "AADSTS65001: The user or administrator has not consented to use the application. Send an interactive \
             authorization request for this user and resource.",
        )
        .response(),
        TokenFailure::ServerError => html_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "500 Internal Server Error",
            "The server encountered an internal error and was unable to complete your request.",
        ),
        TokenFailure::ServiceUnavailable => html_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "503 Service Unavailable",
            "The service is temporarily unavailable. Please try again later.",
        ),
        TokenFailure::RateLimited { retry_after_seconds } => {
            let mut builder = HttpResponse::build(StatusCode::TOO_MANY_REQUESTS);
            no_store(&mut builder);
            builder.insert_header((header::RETRY_AFTER, HeaderValue::from(*retry_after_seconds))).json(json!({
                "error": "temporarily_unavailable",
                "error_description": format!(
                    "AADSTS50196: Too many requests; retry after {retry_after_seconds} seconds."
                ),
            }))
        }
        TokenFailure::Slow(_) => return None,
        TokenFailure::Oversized { bytes } => {
            let mut builder = HttpResponse::Ok();
            no_store(&mut builder);
            builder.json(json!({
                "access_token": "oversized", "token_type": "Bearer", "expires_in": 3600, "padding": "x".repeat(*bytes),
            }))
        }
    };
    Some(response)
}

/// Authenticates the client of a token request (RFC 6749 §2.3.1); returns its id and registration.
fn authenticate_client(req: &HttpRequest, form: &Params, shared: &Shared) -> Result<(String, Client), OAuthError> {
    let form_id = form.get("client_id");
    let form_secret = form.get("client_secret");
    let (client_id, presented_secret, used_basic) = match basic_auth(req) {
        BasicAuth::Malformed => {
            return Err(OAuthError::invalid_client(
                "AADSTS7000216: The Authorization header is not valid HTTP Basic client authentication.",
                true,
            ))
        }
        BasicAuth::Present { id, secret } => {
            if form_secret.is_some() {
                return Err(OAuthError::invalid_request(
                    "AADSTS90014: The client used more than one authentication method (HTTP Basic and client_secret).",
                ));
            }
            let id = form_decode(&id);
            if form_id.is_some_and(|form_id| form_id != id) {
                return Err(OAuthError::invalid_client(
                    "AADSTS700016: The client_id in the body does not match the HTTP Basic credentials.",
                    true,
                ));
            }
            let secret = form_decode(&secret);
            (id, (!secret.is_empty()).then_some(secret), true)
        }
        BasicAuth::Absent => match form_id {
            Some(id) => (id.to_string(), form_secret.map(str::to_string), false),
            None => {
                return Err(OAuthError::invalid_client(
                    "AADSTS900144: The request body must contain the following parameter: 'client_id'.",
                    false,
                ))
            }
        },
    };
    let Some(client) = shared.lock().clients.get(&client_id).cloned() else {
        return Err(OAuthError::invalid_client(
            format!("AADSTS700016: Application with identifier '{client_id}' was not found in the directory."),
            used_basic,
        ));
    };
    match (&client.secret, &presented_secret) {
        (Some(expected), Some(presented)) if expected == presented => Ok((client_id, client)),
        (Some(_), _) => Err(OAuthError::invalid_client(INVALID_CLIENT_SECRET, used_basic)),
        (None, None) => Ok((client_id, client)),
        (None, Some(_)) => Err(OAuthError::invalid_client(
            "AADSTS700025: Client is public so neither 'client_assertion' nor 'client_secret' should be presented.",
            used_basic,
        )),
    }
}

#[derive(Serialize)]
struct IdTokenClaims<'a> {
    iss: &'a str,
    sub: String,
    aud: &'a str,
    email: &'a str,
    email_verified: bool,
    preferred_username: &'a str,
    iat: i64,
    exp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
}

/// An HS256 id_token, signed with the client secret (or [`PUBLIC_CLIENT_ID_TOKEN_KEY`] for public clients).
fn id_token(
    issuer: &str,
    client_id: &str,
    client: &Client,
    email: &str,
    nonce: Option<&str>,
    now: i64,
    overrides: Option<Map<String, Value>>,
) -> Result<String, OAuthError> {
    let claims = IdTokenClaims {
        iss: issuer,
        sub: subject_for(email),
        aud: client_id,
        email,
        email_verified: true,
        preferred_username: email,
        iat: now,
        exp: now.saturating_add(ID_TOKEN_TTL_SECONDS),
        nonce,
    };
    let mut claims = match serde_json::to_value(&claims) {
        Ok(Value::Object(map)) => map,
        _ => return Err(OAuthError::server_error("cannot encode the id_token claims")),
    };
    for (name, value) in overrides.into_iter().flatten() {
        if value.is_null() {
            claims.remove(&name);
        } else {
            claims.insert(name, value);
        }
    }
    let key = client.secret.as_deref().map(str::as_bytes).unwrap_or(PUBLIC_CLIENT_ID_TOKEN_KEY);
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(key))
        .map_err(|err| OAuthError::server_error(format!("cannot sign the id_token: {err}")))
}

/// A successful token response (RFC 6749 §5.1).
fn token_success(
    access_token: String,
    expires_in: i64,
    scope: &str,
    refresh_token: Option<String>,
    id_token: Option<String>,
) -> HttpResponse {
    let mut body = Map::new();
    body.insert("access_token".into(), Value::String(access_token));
    body.insert("token_type".into(), Value::String("Bearer".into()));
    body.insert("expires_in".into(), Value::from(expires_in));
    if !scope.is_empty() {
        body.insert("scope".into(), Value::String(scope.to_string()));
    }
    if let Some(refresh_token) = refresh_token {
        body.insert("refresh_token".into(), Value::String(refresh_token));
    }
    if let Some(id_token) = id_token {
        body.insert("id_token".into(), Value::String(id_token));
    }
    let mut builder = HttpResponse::Ok();
    no_store(&mut builder);
    builder.json(Value::Object(body))
}

async fn token(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let form = Params::parse(&body);
    let grant_type = form.get("grant_type").unwrap_or_default().to_string();
    let (failure, latency) = {
        let mut state = shared.lock();
        *state.token_requests.entry(grant_type.clone()).or_default() += 1;
        (state.failures.pop_front(), state.token_latency)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match failure {
        Some(TokenFailure::Slow(delay)) => tokio::time::sleep(delay).await,
        Some(failure) => {
            if let Some(response) = failure_response(&failure) {
                return response;
            }
        }
        None => {}
    }
    match handle_token(&req, &form, &grant_type, &shared) {
        Ok(response) => response,
        Err(error) => error.response(),
    }
}

fn handle_token(req: &HttpRequest, form: &Params, grant_type: &str, shared: &Shared) -> Result<HttpResponse, OAuthError> {
    if !is_form_content(req) {
        return Err(OAuthError::invalid_request(
            "AADSTS900561: The token endpoint only accepts POST requests with Content-Type \
             application/x-www-form-urlencoded.",
        ));
    }
    if let Some(name) = form.repeated() {
        return Err(OAuthError::invalid_request(format!("AADSTS90015: The parameter '{name}' was included more than once.")));
    }
    let (client_id, client) = authenticate_client(req, form, shared)?;
    match grant_type {
        "authorization_code" => authorization_code_grant(shared, &client_id, &client, form),
        "refresh_token" => refresh_token_grant(shared, &client_id, &client, form),
        "client_credentials" => client_credentials_grant(shared, &client_id, &client, form),
        "" => {
            Err(OAuthError::invalid_request("AADSTS900144: The request body must contain the following parameter: 'grant_type'."))
        }
        other => Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!("AADSTS70003: The app requested an unsupported grant type '{other}'."),
        )),
    }
}

fn authorization_code_grant(
    shared: &Shared,
    client_id: &str,
    client: &Client,
    form: &Params,
) -> Result<HttpResponse, OAuthError> {
    let code = form.get("code").ok_or_else(|| {
        OAuthError::invalid_request("AADSTS900144: The request body must contain the following parameter: 'code'.")
    })?;
    let now = now();
    let mut state = shared.lock();
    let Some(record) = state.codes.get(code).cloned() else {
        return Err(OAuthError::invalid_grant("AADSTS70000: The provided value for the 'code' parameter is not valid."));
    };
    if record.redeemed {
        // A replayed code: revoke everything issued from it (RFC 6749 §4.1.2).
        state.revoke_family(record.family);
        return Err(OAuthError::invalid_grant(CODE_REDEEMED));
    }
    if record.client_id != client_id {
        return Err(OAuthError::invalid_grant("AADSTS70000: The provided authorization code was issued to a different client."));
    }
    if record.revoked || now >= record.expires_at {
        return Err(OAuthError::invalid_grant(EXPIRED_GRANT));
    }
    match form.get("redirect_uri") {
        Some(uri) if uri == record.redirect_uri => {}
        None if !record.redirect_uri_given => {}
        Some(_) => {
            return Err(OAuthError::invalid_grant(
                "AADSTS500112: The redirect_uri does not match the one used in the authorization request.",
            ))
        }
        None => {
            return Err(OAuthError::invalid_grant(
                "AADSTS900144: The request body must contain the following parameter: 'redirect_uri' \
                 (it was part of the authorization request).",
            ))
        }
    }
    match form.get("code_verifier") {
        Some(verifier) if pkce_challenge(verifier) == record.code_challenge => {}
        Some(_) => return Err(OAuthError::invalid_grant(PKCE_MISMATCH)),
        None => {
            return Err(OAuthError::invalid_grant(
                "AADSTS501481: The request must contain 'code_verifier' (PKCE was used in the authorization request).",
            ))
        }
    }

    if let Some(stored) = state.codes.get_mut(code) {
        stored.redeemed = true;
    }
    let subject = Subject::User(record.email.clone());
    let (access_token, expires_in) = state.issue_access_token(client_id, subject, &record.scope, Some(record.family), now);
    let refresh_token =
        state.issue_refresh_tokens.then(|| state.issue_refresh_token(client_id, &record.email, &record.scope, record.family));
    let id_token = if state.include_id_token && has_scope(&record.scope, "openid") {
        let overrides = state.id_token_claims.clone();
        Some(id_token(&shared.base_url, client_id, client, &record.email, record.nonce.as_deref(), now, overrides)?)
    } else {
        None
    };
    Ok(token_success(access_token, expires_in, &record.scope, refresh_token, id_token))
}

fn refresh_token_grant(shared: &Shared, client_id: &str, client: &Client, form: &Params) -> Result<HttpResponse, OAuthError> {
    let presented = form.get("refresh_token").ok_or_else(|| {
        OAuthError::invalid_request("AADSTS900144: The request body must contain the following parameter: 'refresh_token'.")
    })?;
    let now = now();
    let mut state = shared.lock();
    let record = match state.refresh_tokens.get(presented) {
        Some(record) if record.status == RefreshStatus::Active => record.clone(),
        _ => return Err(OAuthError::invalid_grant(EXPIRED_GRANT)),
    };
    if record.client_id != client_id {
        return Err(OAuthError::invalid_grant("AADSTS70000: The provided refresh token was issued to a different client."));
    }
    let scope = match form.get("scope") {
        None => record.scope.clone(),
        Some(requested) => {
            if let Some(extra) = requested.split_whitespace().find(|item| !has_scope(&record.scope, item)) {
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    format!(
                        "AADSTS70011: The provided value for the input parameter 'scope' is not valid: \
                         '{extra}' was not granted."
                    ),
                ));
            }
            requested.split_whitespace().collect::<Vec<_>>().join(" ")
        }
    };

    let new_refresh_token = if state.rotate_refresh_tokens {
        if let Some(old) = state.refresh_tokens.get_mut(presented) {
            old.status = RefreshStatus::RotatedAway;
        }
        Some(state.issue_refresh_token(client_id, &record.email, &record.scope, record.family))
    } else {
        None
    };
    let subject = Subject::User(record.email.clone());
    let (access_token, expires_in) = state.issue_access_token(client_id, subject, &scope, Some(record.family), now);
    let id_token = if state.include_id_token && has_scope(&scope, "openid") {
        let overrides = state.id_token_claims.clone();
        Some(id_token(&shared.base_url, client_id, client, &record.email, None, now, overrides)?)
    } else {
        None
    };
    Ok(token_success(access_token, expires_in, &scope, new_refresh_token, id_token))
}

fn client_credentials_grant(
    shared: &Shared,
    client_id: &str,
    client: &Client,
    form: &Params,
) -> Result<HttpResponse, OAuthError> {
    if client.secret.is_none() {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "AADSTS7000218: The client credentials grant needs a confidential client (one with a secret).",
        ));
    }
    let scope = form.get("scope").unwrap_or_default();
    let now = now();
    let (access_token, expires_in) =
        shared.lock().issue_access_token(client_id, Subject::Client(client_id.to_string()), scope, None, now);
    Ok(token_success(access_token, expires_in, scope, None, None))
}

// ---------------------------------------------------------------------------------------------------------------------
// /revoke (RFC 7009)
// ---------------------------------------------------------------------------------------------------------------------

/// Token revocation: the client authenticates as at `/token`; a refresh token ends its whole grant (every token of
/// the family), an access token just itself. An unknown or foreign token is answered 200 all the same (§2.2).
async fn revoke(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let form = Params::parse(&body);
    {
        let mut state = shared.lock();
        state
            .revocations
            .push((form.get("token").unwrap_or_default().to_owned(), form.get("token_type_hint").map(str::to_owned)));
        if state.revocation_failures > 0 {
            state.revocation_failures -= 1;
            return html_page(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable", "The service is temporarily unavailable.");
        }
    }
    let client_id = match authenticate_client(&req, &form, &shared) {
        Ok((client_id, _)) => client_id,
        Err(error) => return error.response(),
    };
    let Some(token) = form.get("token") else {
        return OAuthError::invalid_request("The request must contain the parameter 'token'.").response();
    };
    let mut state = shared.lock();
    let family = state.refresh_tokens.get(token).filter(|r| r.client_id == client_id).map(|r| r.family);
    match family {
        Some(family) => state.revoke_family(family),
        None => {
            if let Some(record) = state.access_tokens.get_mut(token).filter(|r| r.client_id == client_id) {
                record.revoked = true;
            }
        }
    }
    HttpResponse::Ok().finish()
}

// ---------------------------------------------------------------------------------------------------------------------
// /introspect, /userinfo, discovery
// ---------------------------------------------------------------------------------------------------------------------

/// Whether HTTP Basic credentials belong to a registered client; accepts form-urlencoded and raw values (Dovecot sends
/// the credentials of its `introspection_url` raw).
fn introspection_caller_ok(shared: &Shared, raw_id: &str, raw_secret: &str) -> bool {
    let state = shared.lock();
    let ids = [form_decode(raw_id), raw_id.to_string()];
    let secrets = [form_decode(raw_secret), raw_secret.to_string()];
    ids.iter().any(|id| match state.clients.get(id) {
        Some(Client { secret: Some(expected), .. }) => secrets.iter().any(|secret| secret == expected),
        Some(Client { secret: None, .. }) => raw_secret.is_empty(),
        None => false,
    })
}

async fn introspect(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    match basic_auth(&req) {
        BasicAuth::Absent => {}
        BasicAuth::Malformed => {
            return OAuthError::invalid_client("The Authorization header is not valid HTTP Basic client authentication.", true)
                .response()
        }
        BasicAuth::Present { id, secret } => {
            if !introspection_caller_ok(&shared, &id, &secret) {
                return OAuthError::invalid_client(INVALID_CLIENT_SECRET, true).response();
            }
        }
    }
    let form = Params::parse(&body);
    let Some(token) = form.get("token") else {
        return OAuthError::invalid_request("The request must contain the parameter 'token'.").response();
    };
    let state = shared.lock();
    let body = match state.active_access_token(token, now()) {
        None => json!({ "active": false }),
        Some(record) => {
            let mut body = Map::new();
            body.insert("active".into(), Value::Bool(true));
            match &record.subject {
                Subject::User(email) => {
                    body.insert("sub".into(), Value::String(subject_for(email)));
                    body.insert("email".into(), Value::String(email.clone()));
                    body.insert("username".into(), Value::String(email.clone()));
                }
                Subject::Client(client_id) => {
                    body.insert("sub".into(), Value::String(client_id.clone()));
                    body.insert("username".into(), Value::String(client_id.clone()));
                }
            }
            body.insert("scope".into(), Value::String(record.scope.clone()));
            body.insert("client_id".into(), Value::String(record.client_id.clone()));
            body.insert("exp".into(), Value::from(record.expires_at));
            body.insert("iat".into(), Value::from(record.issued_at));
            body.insert("iss".into(), Value::String(shared.base_url.clone()));
            body.insert("token_type".into(), Value::String("Bearer".into()));
            Value::Object(body)
        }
    };
    let mut builder = HttpResponse::Ok();
    no_store(&mut builder);
    builder.json(body)
}

async fn userinfo(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let unauthorized = |challenge: &str, description: &str| {
        HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, challenge.to_string()))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(json!({ "error": "invalid_token", "error_description": description }))
    };
    let Some(token) = bearer_token(&req) else {
        return unauthorized("Bearer realm=\"postbridge-oauth-provider\"", "The request has no Bearer access token.");
    };
    let state = shared.lock();
    match state.active_access_token(&token, now()).map(|record| &record.subject) {
        Some(Subject::User(email)) => {
            let mut builder = HttpResponse::Ok();
            no_store(&mut builder);
            builder.json(json!({ "sub": subject_for(email), "email": email, "email_verified": true }))
        }
        Some(Subject::Client(_)) => unauthorized(
            "Bearer error=\"invalid_token\", error_description=\"an app-only token has no user\"",
            "An app-only (client credentials) token has no user.",
        ),
        None => unauthorized(
            "Bearer error=\"invalid_token\", error_description=\"the access token is invalid or expired\"",
            "The access token is invalid, revoked or expired.",
        ),
    }
}

async fn discovery(shared: web::Data<Shared>) -> HttpResponse {
    let base = &shared.base_url;
    HttpResponse::Ok().json(json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "introspection_endpoint": format!("{base}/introspect"),
        "revocation_endpoint": format!("{base}/revoke"),
        "userinfo_endpoint": format!("{base}/userinfo"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "none"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["HS256"],
        "scopes_supported": ["openid", "email", "profile", "offline_access"],
        "claims_supported": [
            "iss", "sub", "aud", "exp", "iat", "email", "email_verified", "preferred_username", "nonce"
        ],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decode_handles_plus_and_percent() {
        assert_eq!(form_decode("a+b%3Ac%25d%2"), "a b:c%d%2");
    }

    #[test]
    fn repeated_parameters_are_found() {
        let params = Params::parse(b"a=1&b=2&a=3");
        assert_eq!(params.repeated(), Some("a"));
        assert!(params.is_repeated("a"));
        assert!(!params.is_repeated("b"));
        assert_eq!(Params::parse(b"a=1&b=").get("b"), None);
    }

    #[test]
    fn s256_challenges_are_43_base64url_characters() {
        assert!(is_s256_challenge(&pkce_challenge("verifier")));
        assert!(!is_s256_challenge("short"));
        assert!(!is_s256_challenge(&"+".repeat(43)));
    }
}
