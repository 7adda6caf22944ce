//! Drives the provider stand-in over real HTTP with reqwest.

use std::error::Error;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use postbridge_oauth_provider::{pkce_challenge, subject_for, MockProvider, TokenFailure, PUBLIC_CLIENT_ID_TOKEN_KEY};
use reqwest::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use reqwest::{Response, StatusCode};
use serde_json::Value;
use url::Url;

type TestResult = Result<(), Box<dyn Error>>;

const CLIENT_ID: &str = "postbridge-app";
/// Characters that need form-urlencoding in HTTP Basic credentials (RFC 6749 §2.3.1).
const CLIENT_SECRET: &str = "s3cr+t:with&special=chars %";
const REDIRECT_URI: &str = "http://127.0.0.1:9/oauth/callback?tenant=acme";
const PUBLIC_CLIENT_ID: &str = "postbridge-spa";
const PUBLIC_REDIRECT_URI: &str = "http://localhost:9/spa/callback";
const USER: &str = "alice@example.com";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk-postbridge";
const SCOPE: &str = "openid email offline_access https://outlook.office.com/IMAP.AccessAsUser.All";

async fn provider() -> MockProvider {
    let provider = MockProvider::start().await;
    provider.register_client(CLIENT_ID, Some(CLIENT_SECRET), &[REDIRECT_URI]);
    provider.register_client(PUBLIC_CLIENT_ID, None, &[PUBLIC_REDIRECT_URI]);
    provider.set_consenting_user(USER);
    provider
}

fn http() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()
}

fn urlencode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// `Authorization: Basic` with form-urlencoded id and secret, as RFC 6749 §2.3.1 says.
fn basic(client_id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{}:{}", urlencode(client_id), urlencode(secret))))
}

/// Authorization request parameters for the confidential client.
fn authorize_params<'a>(state: &'a str, challenge: &'a str, scope: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("response_type", "code"),
        ("client_id", CLIENT_ID),
        ("redirect_uri", REDIRECT_URI),
        ("scope", scope),
        ("state", state),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ]
}

async fn get_authorize(provider: &MockProvider, params: &[(&str, &str)]) -> Result<Response, reqwest::Error> {
    http()?.get(provider.authorize_url()).query(params).send().await
}

/// The redirect target of an /authorize response, asserting it is a 302 to the registered redirect URI.
fn redirect_location(response: &Response, redirect_uri: &str) -> Result<Url, Box<dyn Error>> {
    assert_eq!(response.status(), StatusCode::FOUND);
    let location = response.headers().get(LOCATION).ok_or("no Location header")?.to_str()?;
    let location = Url::parse(location)?;
    let registered = Url::parse(redirect_uri)?;
    assert_eq!(location.origin(), registered.origin());
    assert_eq!(location.path(), registered.path());
    Ok(location)
}

fn query_param(url: &Url, name: &str) -> Option<String> {
    url.query_pairs().find(|(key, _)| key == name).map(|(_, value)| value.into_owned())
}

/// Runs /authorize for the confidential client and returns the code.
async fn get_code(provider: &MockProvider, scope: &str) -> Result<String, Box<dyn Error>> {
    let challenge = pkce_challenge(VERIFIER);
    let response = get_authorize(provider, &authorize_params("xyz", &challenge, scope)).await?;
    let location = redirect_location(&response, REDIRECT_URI)?;
    assert_eq!(query_param(&location, "state").as_deref(), Some("xyz"));
    Ok(query_param(&location, "code").ok_or("no code in the redirect")?)
}

async fn post_token_basic(provider: &MockProvider, form: &[(&str, &str)]) -> Result<Response, reqwest::Error> {
    http()?.post(provider.token_url()).header(AUTHORIZATION, basic(CLIENT_ID, CLIENT_SECRET)).form(form).send().await
}

async fn exchange_code(provider: &MockProvider, code: &str, verifier: &str) -> Result<Response, reqwest::Error> {
    post_token_basic(
        provider,
        &[("grant_type", "authorization_code"), ("code", code), ("redirect_uri", REDIRECT_URI), ("code_verifier", verifier)],
    )
    .await
}

async fn refresh(provider: &MockProvider, refresh_token: &str) -> Result<Response, reqwest::Error> {
    post_token_basic(provider, &[("grant_type", "refresh_token"), ("refresh_token", refresh_token)]).await
}

/// Runs the whole code flow and returns the token response body.
async fn tokens(provider: &MockProvider) -> Result<Value, Box<dyn Error>> {
    let code = get_code(provider, SCOPE).await?;
    let response = exchange_code(provider, &code, VERIFIER).await?;
    assert_eq!(response.status(), StatusCode::OK);
    Ok(response.json().await?)
}

fn text<'a>(body: &'a Value, field: &str) -> Result<&'a str, Box<dyn Error>> {
    Ok(body[field].as_str().ok_or_else(|| format!("no string field {field} in {body}"))?)
}

/// Asserts an OAuth error response and returns its description.
async fn assert_oauth_error(response: Response, status: StatusCode, error: &str) -> Result<String, Box<dyn Error>> {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers().get(CACHE_CONTROL).map(|v| v.as_bytes()), Some(&b"no-store"[..]));
    let body: Value = response.json().await?;
    assert_eq!(body["error"], error, "body: {body}");
    Ok(body["error_description"].as_str().unwrap_or_default().to_string())
}

async fn introspection(provider: &MockProvider, token: &str) -> Result<Value, Box<dyn Error>> {
    let response = http()?.post(provider.introspection_url()).form(&[("token", token)]).send().await?;
    assert_eq!(response.status(), StatusCode::OK);
    Ok(response.json().await?)
}

#[tokio::test]
async fn code_flow_with_pkce_issues_tokens_and_rejects_a_wrong_verifier_and_code_reuse() -> TestResult {
    let provider = provider().await;
    let state = "tenant=acme&account=42 ünïcode/+";
    let challenge = pkce_challenge(VERIFIER);
    let response = get_authorize(&provider, &authorize_params(state, &challenge, SCOPE)).await?;
    let location = redirect_location(&response, REDIRECT_URI)?;
    assert_eq!(query_param(&location, "tenant").as_deref(), Some("acme"), "kept the redirect URI's own query");
    assert_eq!(query_param(&location, "state").as_deref(), Some(state), "state echoed exactly");
    let code = query_param(&location, "code").ok_or("no code")?;

    let wrong = exchange_code(&provider, &code, "another-verifier-that-is-long-enough-0123456789").await?;
    let description = assert_oauth_error(wrong, StatusCode::BAD_REQUEST, "invalid_grant").await?;
    assert!(description.contains("AADSTS501481"), "{description}");

    let missing =
        post_token_basic(&provider, &[("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", REDIRECT_URI)])
            .await?;
    assert_oauth_error(missing, StatusCode::BAD_REQUEST, "invalid_grant").await?;

    let response = exchange_code(&provider, &code, VERIFIER).await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers().get(CACHE_CONTROL).map(|v| v.as_bytes()), Some(&b"no-store"[..]));
    let body: Value = response.json().await?;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["scope"], SCOPE);
    assert!(body["id_token"].is_string());
    let access_token = text(&body, "access_token")?.to_string();
    let refresh_token = text(&body, "refresh_token")?.to_string();
    assert_ne!(access_token, refresh_token);
    assert!(access_token.len() >= 43);
    assert_eq!(provider.introspect(&access_token).as_deref(), Some(USER));

    let reuse = exchange_code(&provider, &code, VERIFIER).await?;
    let description = assert_oauth_error(reuse, StatusCode::BAD_REQUEST, "invalid_grant").await?;
    assert!(description.contains("AADSTS54005"), "{description}");
    // RFC 6749 §4.1.2: tokens issued from a replayed code are revoked.
    assert_eq!(provider.introspect(&access_token), None);
    assert_oauth_error(refresh(&provider, &refresh_token).await?, StatusCode::BAD_REQUEST, "invalid_grant").await?;
    Ok(())
}

#[tokio::test]
async fn unregistered_redirect_uri_or_client_gets_a_400_page_and_no_redirect() -> TestResult {
    let provider = provider().await;
    let challenge = pkce_challenge(VERIFIER);
    for redirect_uri in [
        "http://127.0.0.1:9/oauth/callback",
        "http://127.0.0.1:9/oauth/callback/?tenant=acme",
        "http://127.0.0.1:9/oauth/callback?tenant=acme&x=1",
        "https://attacker.example/oauth/callback?tenant=acme",
    ] {
        let mut params = authorize_params("s", &challenge, SCOPE);
        params[2] = ("redirect_uri", redirect_uri);
        let response = get_authorize(&provider, &params).await?;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{redirect_uri}");
        assert!(response.headers().get(LOCATION).is_none(), "{redirect_uri}");
        let content_type = response.headers().get(CONTENT_TYPE).ok_or("no content type")?.to_str()?;
        assert!(content_type.starts_with("text/html"), "{content_type}");
        assert!(response.text().await?.contains("AADSTS50011"));
    }
    for client_id in ["unknown-client", ""] {
        let mut params = authorize_params("s", &challenge, SCOPE);
        params[1] = ("client_id", client_id);
        let response = get_authorize(&provider, &params).await?;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{client_id:?}");
        assert!(response.headers().get(LOCATION).is_none());
    }
    Ok(())
}

#[tokio::test]
async fn authorize_errors_after_a_valid_redirect_uri_go_back_to_the_client_with_state() -> TestResult {
    let provider = provider().await;
    let challenge = pkce_challenge(VERIFIER);
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            {
                let mut params = authorize_params("st", &challenge, SCOPE);
                params[0] = ("response_type", "token");
                params
            },
            "unsupported_response_type",
        ),
        (
            authorize_params("st", &challenge, SCOPE).into_iter().filter(|(name, _)| *name != "code_challenge").collect(),
            "invalid_request",
        ),
        (
            {
                let mut params = authorize_params("st", VERIFIER, SCOPE);
                params[6] = ("code_challenge_method", "plain");
                params
            },
            "invalid_request",
        ),
        (
            authorize_params("st", &challenge, SCOPE).into_iter().filter(|(name, _)| *name != "code_challenge_method").collect(),
            "invalid_request",
        ),
    ];
    for (params, error) in cases {
        let response = get_authorize(&provider, &params).await?;
        let location = redirect_location(&response, REDIRECT_URI)?;
        assert_eq!(query_param(&location, "error").as_deref(), Some(error), "{params:?}");
        assert_eq!(query_param(&location, "state").as_deref(), Some("st"));
        assert_eq!(query_param(&location, "code"), None);
    }

    provider.set_deny_consent(true);
    let response = get_authorize(&provider, &authorize_params("st", &challenge, SCOPE)).await?;
    let location = redirect_location(&response, REDIRECT_URI)?;
    assert_eq!(query_param(&location, "error").as_deref(), Some("access_denied"));
    assert!(query_param(&location, "error_description").is_some_and(|d| !d.is_empty()));
    assert_eq!(query_param(&location, "state").as_deref(), Some("st"));
    assert_eq!(query_param(&location, "tenant").as_deref(), Some("acme"));
    provider.set_deny_consent(false);
    assert!(get_code(&provider, SCOPE).await.is_ok());
    Ok(())
}

#[tokio::test]
async fn authorize_without_a_consenting_user_answers_login_required() -> TestResult {
    let provider = MockProvider::start().await;
    provider.register_client(CLIENT_ID, Some(CLIENT_SECRET), &[REDIRECT_URI]);
    let challenge = pkce_challenge(VERIFIER);
    let response = get_authorize(&provider, &authorize_params("st", &challenge, SCOPE)).await?;
    let location = redirect_location(&response, REDIRECT_URI)?;
    assert_eq!(query_param(&location, "error").as_deref(), Some("login_required"));
    Ok(())
}

#[tokio::test]
async fn client_secret_basic_and_client_secret_post_both_work_and_a_wrong_secret_is_401() -> TestResult {
    let provider = provider().await;

    // client_secret_basic with form-urlencoded credentials.
    let code = get_code(&provider, SCOPE).await?;
    assert_eq!(exchange_code(&provider, &code, VERIFIER).await?.status(), StatusCode::OK);

    // client_secret_post.
    let code = get_code(&provider, SCOPE).await?;
    let response = http()?
        .post(provider.token_url())
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", VERIFIER),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
        ])
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);

    // Wrong secrets, both ways; the code stays usable afterwards.
    let code = get_code(&provider, SCOPE).await?;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT_URI),
        ("code_verifier", VERIFIER),
    ];
    let response = http()?.post(provider.token_url()).header(AUTHORIZATION, basic(CLIENT_ID, "wrong")).form(&form).send().await?;
    assert!(response.headers().get("www-authenticate").is_some());
    let description = assert_oauth_error(response, StatusCode::UNAUTHORIZED, "invalid_client").await?;
    assert_eq!(description, "AADSTS7000215: Invalid client secret provided.");

    let mut post_form = form.to_vec();
    post_form.extend([("client_id", CLIENT_ID), ("client_secret", "wrong")]);
    let response = http()?.post(provider.token_url()).form(&post_form).send().await?;
    assert_oauth_error(response, StatusCode::UNAUTHORIZED, "invalid_client").await?;

    // Missing secret, and a Basic header whose secret is not form-urlencoded ("+" would mean a space).
    let mut no_secret = form.to_vec();
    no_secret.push(("client_id", CLIENT_ID));
    let response = http()?.post(provider.token_url()).form(&no_secret).send().await?;
    assert_oauth_error(response, StatusCode::UNAUTHORIZED, "invalid_client").await?;
    let raw = format!("Basic {}", STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}")));
    let response = http()?.post(provider.token_url()).header(AUTHORIZATION, raw).form(&form).send().await?;
    assert_oauth_error(response, StatusCode::UNAUTHORIZED, "invalid_client").await?;

    // Two authentication methods at once.
    let mut both = form.to_vec();
    both.push(("client_secret", CLIENT_SECRET));
    let response =
        http()?.post(provider.token_url()).header(AUTHORIZATION, basic(CLIENT_ID, CLIENT_SECRET)).form(&both).send().await?;
    assert_oauth_error(response, StatusCode::BAD_REQUEST, "invalid_request").await?;

    assert_eq!(exchange_code(&provider, &code, VERIFIER).await?.status(), StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn a_public_client_authenticates_with_its_client_id_only() -> TestResult {
    let provider = provider().await;
    let challenge = pkce_challenge(VERIFIER);
    let response = get_authorize(
        &provider,
        &[
            ("response_type", "code"),
            ("client_id", PUBLIC_CLIENT_ID),
            ("redirect_uri", PUBLIC_REDIRECT_URI),
            ("scope", "openid email"),
            ("state", "s"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    )
    .await?;
    let location = redirect_location(&response, PUBLIC_REDIRECT_URI)?;
    let code = query_param(&location, "code").ok_or("no code")?;
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", PUBLIC_REDIRECT_URI),
        ("code_verifier", VERIFIER),
        ("client_id", PUBLIC_CLIENT_ID),
    ];

    let mut with_secret = form.clone();
    with_secret.push(("client_secret", "anything"));
    let response = http()?.post(provider.token_url()).form(&with_secret).send().await?;
    assert_oauth_error(response, StatusCode::UNAUTHORIZED, "invalid_client").await?;

    let response = http()?.post(provider.token_url()).form(&form).send().await?;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&[PUBLIC_CLIENT_ID]);
    validation.set_issuer(&[provider.base_url()]);
    let claims = jsonwebtoken::decode::<Value>(
        text(&body, "id_token")?,
        &DecodingKey::from_secret(PUBLIC_CLIENT_ID_TOKEN_KEY),
        &validation,
    )?
    .claims;
    assert_eq!(claims["email"], USER);

    // client_credentials needs a confidential client.
    form = vec![("grant_type", "client_credentials"), ("client_id", PUBLIC_CLIENT_ID)];
    let response = http()?.post(provider.token_url()).form(&form).send().await?;
    assert_oauth_error(response, StatusCode::BAD_REQUEST, "unauthorized_client").await?;
    Ok(())
}

#[tokio::test]
async fn refresh_rotates_and_the_old_refresh_token_then_gets_invalid_grant() -> TestResult {
    let provider = provider().await;
    let body = tokens(&provider).await?;
    let first = text(&body, "refresh_token")?.to_string();

    let response = refresh(&provider, &first).await?;
    assert_eq!(response.status(), StatusCode::OK);
    let refreshed: Value = response.json().await?;
    let second = text(&refreshed, "refresh_token")?.to_string();
    assert_ne!(second, first);
    assert_ne!(refreshed["access_token"], body["access_token"]);
    assert_eq!(refreshed["scope"], SCOPE);
    assert_eq!(provider.introspect(text(&refreshed, "access_token")?).as_deref(), Some(USER));

    let reuse = refresh(&provider, &first).await?;
    let description = assert_oauth_error(reuse, StatusCode::BAD_REQUEST, "invalid_grant").await?;
    assert!(description.starts_with("AADSTS70008: The provided authorization code or refresh token has expired"));

    assert_eq!(refresh(&provider, &second).await?.status(), StatusCode::OK);
    assert_oauth_error(refresh(&provider, "unknown").await?, StatusCode::BAD_REQUEST, "invalid_grant").await?;
    Ok(())
}

#[tokio::test]
async fn refresh_without_rotation_keeps_the_refresh_token_valid() -> TestResult {
    let provider = provider().await;
    provider.set_rotate_refresh_tokens(false);
    let body = tokens(&provider).await?;
    let refresh_token = text(&body, "refresh_token")?.to_string();
    for _ in 0..3 {
        let response = refresh(&provider, &refresh_token).await?;
        assert_eq!(response.status(), StatusCode::OK);
        let refreshed: Value = response.json().await?;
        assert!(refreshed.get("refresh_token").is_none(), "{refreshed}");
        assert!(refreshed["access_token"].is_string());
    }
    Ok(())
}

#[tokio::test]
async fn refresh_may_narrow_the_scope_but_not_widen_it() -> TestResult {
    let provider = provider().await;
    let body = tokens(&provider).await?;
    let refresh_token = text(&body, "refresh_token")?.to_string();
    let response = post_token_basic(
        &provider,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh_token), ("scope", "https://mail.google.com/")],
    )
    .await?;
    assert_oauth_error(response, StatusCode::BAD_REQUEST, "invalid_scope").await?;

    let response =
        post_token_basic(&provider, &[("grant_type", "refresh_token"), ("refresh_token", &refresh_token), ("scope", "email")])
            .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let refreshed: Value = response.json().await?;
    assert_eq!(refreshed["scope"], "email");
    assert!(refreshed.get("id_token").is_none(), "no openid in the narrowed scope");
    Ok(())
}

#[tokio::test]
async fn without_issue_refresh_token_the_code_exchange_returns_no_refresh_token() -> TestResult {
    let provider = provider().await;
    provider.set_issue_refresh_token(false);
    provider.set_access_token_ttl(120);
    let body = tokens(&provider).await?;
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert_eq!(body["expires_in"], 120);
    assert!(body["access_token"].is_string());
    Ok(())
}

#[tokio::test]
async fn client_credentials_returns_an_access_token_only_for_the_client() -> TestResult {
    let provider = provider().await;
    let scope = "https://outlook.office365.com/.default";
    let response = post_token_basic(&provider, &[("grant_type", "client_credentials"), ("scope", scope)]).await?;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await?;
    assert_eq!(body["scope"], scope);
    assert_eq!(body["token_type"], "Bearer");
    assert!(body.get("refresh_token").is_none());
    assert!(body.get("id_token").is_none());
    let access_token = text(&body, "access_token")?;
    assert_eq!(provider.introspect(access_token).as_deref(), Some(CLIENT_ID));
    let info = introspection(&provider, access_token).await?;
    assert_eq!(info["active"], true);
    assert_eq!(info["sub"], CLIENT_ID);
    assert_eq!(info["client_id"], CLIENT_ID);
    assert!(info.get("email").is_none());
    Ok(())
}

#[tokio::test]
async fn injected_failures_come_first_and_then_the_request_succeeds() -> TestResult {
    let provider = provider().await;
    let body = tokens(&provider).await?;
    let refresh_token = text(&body, "refresh_token")?.to_string();

    provider.fail_next_token_requests(2, TokenFailure::RateLimited { retry_after_seconds: 7 });
    provider.fail_next_token_requests(1, TokenFailure::ServerError);
    provider.fail_next_token_requests(1, TokenFailure::ServiceUnavailable);
    provider.fail_next_token_requests(1, TokenFailure::InvalidGrant { description: "AADSTS50173: grant revoked".into() });
    provider.fail_next_token_requests(1, TokenFailure::InteractionRequired);
    provider.fail_next_token_requests(1, TokenFailure::ConsentRequired);
    provider.fail_next_token_requests(1, TokenFailure::InvalidClient { description: "AADSTS7000222: secret expired".into() });
    assert_eq!(provider.pending_token_failures(), 8);

    for _ in 0..2 {
        let response = refresh(&provider, &refresh_token).await?;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers().get(RETRY_AFTER).map(|v| v.as_bytes()), Some(&b"7"[..]));
    }
    let response = refresh(&provider, &refresh_token).await?;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(response.headers().get(CONTENT_TYPE).ok_or("no content type")?.to_str()?.starts_with("text/html"));
    assert!(response.text().await?.contains("<html>"));
    assert_eq!(refresh(&provider, &refresh_token).await?.status(), StatusCode::SERVICE_UNAVAILABLE);
    let description =
        assert_oauth_error(refresh(&provider, &refresh_token).await?, StatusCode::BAD_REQUEST, "invalid_grant").await?;
    assert_eq!(description, "AADSTS50173: grant revoked");
    assert_oauth_error(refresh(&provider, &refresh_token).await?, StatusCode::BAD_REQUEST, "interaction_required").await?;
    assert_oauth_error(refresh(&provider, &refresh_token).await?, StatusCode::BAD_REQUEST, "consent_required").await?;
    let description =
        assert_oauth_error(refresh(&provider, &refresh_token).await?, StatusCode::UNAUTHORIZED, "invalid_client").await?;
    assert_eq!(description, "AADSTS7000222: secret expired");

    assert_eq!(provider.pending_token_failures(), 0);
    let response = refresh(&provider, &refresh_token).await?;
    assert_eq!(response.status(), StatusCode::OK, "the refresh token survived the failures");
    assert_eq!(provider.token_requests("refresh_token"), 9);

    provider.fail_next_token_requests(3, TokenFailure::ServerError);
    provider.clear_token_failures();
    assert_eq!(provider.pending_token_failures(), 0);
    Ok(())
}

#[tokio::test]
async fn a_slow_failure_delays_the_response_and_then_succeeds() -> TestResult {
    let provider = provider().await;
    provider.fail_next_token_requests(1, TokenFailure::Slow(Duration::from_millis(400)));
    let started = Instant::now();
    let response = post_token_basic(&provider, &[("grant_type", "client_credentials"), ("scope", "x")]).await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(provider.token_requests("client_credentials"), 1);
    Ok(())
}

#[tokio::test]
async fn revoke_user_makes_refresh_invalid_grant_and_introspection_inactive() -> TestResult {
    let provider = provider().await;
    let body = tokens(&provider).await?;
    let access_token = text(&body, "access_token")?.to_string();
    let refresh_token = text(&body, "refresh_token")?.to_string();
    let other = provider.mint_tokens(CLIENT_ID, "bob@example.com", "openid").ok_or("client unknown")?;
    let pending_code = get_code(&provider, SCOPE).await?;
    assert_eq!(introspection(&provider, &access_token).await?["active"], true);

    provider.revoke_user(USER);

    assert_oauth_error(refresh(&provider, &refresh_token).await?, StatusCode::BAD_REQUEST, "invalid_grant").await?;
    assert_eq!(introspection(&provider, &access_token).await?, serde_json::json!({ "active": false }));
    assert_eq!(provider.introspect(&access_token), None);
    assert_oauth_error(exchange_code(&provider, &pending_code, VERIFIER).await?, StatusCode::BAD_REQUEST, "invalid_grant")
        .await?;
    // Other users keep their grants; a new consent works again.
    assert_eq!(provider.introspect(&other.access_token).as_deref(), Some("bob@example.com"));
    assert_eq!(refresh(&provider, &other.refresh_token).await?.status(), StatusCode::OK);
    let fresh = tokens(&provider).await?;
    assert_eq!(provider.introspect(text(&fresh, "access_token")?).as_deref(), Some(USER));
    Ok(())
}

#[tokio::test]
async fn introspection_describes_active_tokens_and_checks_caller_credentials() -> TestResult {
    let provider = provider().await;
    let body = tokens(&provider).await?;
    let access_token = text(&body, "access_token")?.to_string();

    let info = introspection(&provider, &access_token).await?;
    assert_eq!(info["active"], true);
    assert_eq!(info["email"], USER);
    assert_eq!(info["username"], USER);
    assert_eq!(info["sub"], subject_for(USER));
    assert_eq!(info["scope"], SCOPE);
    assert_eq!(info["client_id"], CLIENT_ID);
    assert_eq!(info["token_type"], "Bearer");
    assert!(info["exp"].as_i64().is_some_and(|exp| exp > chrono::Utc::now().timestamp()));

    // Dovecot sends the user:password of its introspection_url as they are; encoded ones work too.
    for authorization in
        [format!("Basic {}", STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))), basic(CLIENT_ID, CLIENT_SECRET)]
    {
        let response = http()?
            .post(provider.introspection_url())
            .header(AUTHORIZATION, authorization)
            .form(&[("token", access_token.as_str())])
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.json::<Value>().await?["active"], true);
    }
    let response = http()?
        .post(provider.introspection_url())
        .header(AUTHORIZATION, basic(CLIENT_ID, "wrong"))
        .form(&[("token", access_token.as_str())])
        .send()
        .await?;
    assert_oauth_error(response, StatusCode::UNAUTHORIZED, "invalid_client").await?;

    let response = http()?.post(provider.introspection_url()).form(&[("token_type_hint", "access_token")]).send().await?;
    assert_oauth_error(response, StatusCode::BAD_REQUEST, "invalid_request").await?;
    assert_eq!(introspection(&provider, "not-a-token").await?, serde_json::json!({ "active": false }));
    // A refresh token is not an access token.
    assert_eq!(introspection(&provider, text(&body, "refresh_token")?).await?["active"], false);

    provider.set_access_token_ttl(0);
    let expired = tokens(&provider).await?;
    assert_eq!(expired["expires_in"], 0);
    assert_eq!(introspection(&provider, text(&expired, "access_token")?).await?["active"], false);
    Ok(())
}

#[tokio::test]
async fn token_requests_counts_calls_per_grant_type_including_failures() -> TestResult {
    let provider = provider().await;
    assert_eq!(provider.token_requests("authorization_code"), 0);
    let body = tokens(&provider).await?;
    let refresh_token = text(&body, "refresh_token")?.to_string();
    refresh(&provider, &refresh_token).await?;
    refresh(&provider, "bogus").await?;
    provider.fail_next_token_requests(1, TokenFailure::ServiceUnavailable);
    refresh(&provider, "bogus").await?;
    post_token_basic(&provider, &[("grant_type", "client_credentials")]).await?;
    post_token_basic(&provider, &[("grant_type", "password"), ("username", "u"), ("password", "p")]).await?;
    post_token_basic(&provider, &[("scope", "x")]).await?;

    assert_eq!(provider.token_requests("authorization_code"), 1);
    assert_eq!(provider.token_requests("refresh_token"), 3);
    assert_eq!(provider.token_requests("client_credentials"), 1);
    assert_eq!(provider.token_requests("password"), 1);
    assert_eq!(provider.token_requests(""), 1);
    assert_eq!(provider.token_requests("device_code"), 0);
    Ok(())
}

#[tokio::test]
async fn id_token_carries_email_aud_issuer_and_nonce() -> TestResult {
    let provider = provider().await;
    let challenge = pkce_challenge(VERIFIER);
    let mut params = authorize_params("s", &challenge, SCOPE);
    params.push(("nonce", "n-0S6_WzA2Mj"));
    let location = redirect_location(&get_authorize(&provider, &params).await?, REDIRECT_URI)?;
    let code = query_param(&location, "code").ok_or("no code")?;
    let body: Value = exchange_code(&provider, &code, VERIFIER).await?.json().await?;

    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&[CLIENT_ID]);
    validation.set_issuer(&[provider.base_url()]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<Value>(
        text(&body, "id_token")?,
        &DecodingKey::from_secret(CLIENT_SECRET.as_bytes()),
        &validation,
    )?
    .claims;
    assert_eq!(claims["email"], USER);
    assert_eq!(claims["preferred_username"], USER);
    assert_eq!(claims["aud"], CLIENT_ID);
    assert_eq!(claims["sub"], subject_for(USER));
    assert_eq!(claims["nonce"], "n-0S6_WzA2Mj");
    assert!(claims["exp"].as_i64() > claims["iat"].as_i64());

    // The refreshed response carries one too, with the same subject.
    let refreshed: Value = refresh(&provider, text(&body, "refresh_token")?).await?.json().await?;
    let claims = jsonwebtoken::decode::<Value>(
        text(&refreshed, "id_token")?,
        &DecodingKey::from_secret(CLIENT_SECRET.as_bytes()),
        &validation,
    )?
    .claims;
    assert_eq!(claims["sub"], subject_for(USER));

    // No `openid` scope, or the knob off: no id_token.
    let code = get_code(&provider, "https://mail.google.com/").await?;
    let body: Value = exchange_code(&provider, &code, VERIFIER).await?.json().await?;
    assert!(body.get("id_token").is_none(), "{body}");
    provider.set_include_id_token(false);
    let body = tokens(&provider).await?;
    assert!(body.get("id_token").is_none(), "{body}");
    Ok(())
}

#[tokio::test]
async fn code_is_bound_to_its_client_and_redirect_uri_and_expires() -> TestResult {
    let provider = provider().await;
    provider.register_client("other-app", Some("other-secret"), &[REDIRECT_URI]);
    let code = get_code(&provider, SCOPE).await?;

    let response = http()?
        .post(provider.token_url())
        .header(AUTHORIZATION, basic("other-app", "other-secret"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await?;
    assert_oauth_error(response, StatusCode::BAD_REQUEST, "invalid_grant").await?;

    let response = post_token_basic(
        &provider,
        &[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", "http://127.0.0.1:9/oauth/callback"),
            ("code_verifier", VERIFIER),
        ],
    )
    .await?;
    assert_oauth_error(response, StatusCode::BAD_REQUEST, "invalid_grant").await?;

    assert_eq!(exchange_code(&provider, &code, VERIFIER).await?.status(), StatusCode::OK);

    provider.set_authorization_code_ttl(0);
    let code = get_code(&provider, SCOPE).await?;
    let description =
        assert_oauth_error(exchange_code(&provider, &code, VERIFIER).await?, StatusCode::BAD_REQUEST, "invalid_grant").await?;
    assert!(description.starts_with("AADSTS70008"), "{description}");
    Ok(())
}

#[tokio::test]
async fn token_endpoint_answers_bad_requests_with_oauth_errors() -> TestResult {
    let provider = provider().await;
    let response = post_token_basic(&provider, &[("grant_type", "urn:ietf:params:oauth:grant-type:device_code")]).await?;
    assert_oauth_error(response, StatusCode::BAD_REQUEST, "unsupported_grant_type").await?;
    let response = post_token_basic(&provider, &[("scope", "x")]).await?;
    assert_oauth_error(response, StatusCode::BAD_REQUEST, "invalid_request").await?;
    let response = post_token_basic(&provider, &[("grant_type", "client_credentials"), ("grant_type", "refresh_token")]).await?;
    assert_oauth_error(response, StatusCode::BAD_REQUEST, "invalid_request").await?;
    let response = post_token_basic(&provider, &[("grant_type", "authorization_code")]).await?;
    assert_oauth_error(response, StatusCode::BAD_REQUEST, "invalid_request").await?;
    let response = http()?
        .post(provider.token_url())
        .header(AUTHORIZATION, basic(CLIENT_ID, CLIENT_SECRET))
        .json(&serde_json::json!({ "grant_type": "client_credentials" }))
        .send()
        .await?;
    assert_oauth_error(response, StatusCode::BAD_REQUEST, "invalid_request").await?;
    let response = http()?
        .post(provider.token_url())
        .header(AUTHORIZATION, basic("nobody", "x"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await?;
    assert_oauth_error(response, StatusCode::UNAUTHORIZED, "invalid_client").await?;
    let response = http()?.post(provider.token_url()).form(&[("grant_type", "client_credentials")]).send().await?;
    assert_oauth_error(response, StatusCode::UNAUTHORIZED, "invalid_client").await?;
    assert_eq!(http()?.get(provider.token_url()).send().await?.status(), StatusCode::METHOD_NOT_ALLOWED);
    Ok(())
}

#[tokio::test]
async fn userinfo_returns_the_user_of_a_valid_access_token() -> TestResult {
    let provider = provider().await;
    let body = tokens(&provider).await?;
    let response = http()?.get(provider.userinfo_url()).bearer_auth(text(&body, "access_token")?).send().await?;
    assert_eq!(response.status(), StatusCode::OK);
    let info: Value = response.json().await?;
    assert_eq!(info, serde_json::json!({ "sub": subject_for(USER), "email": USER, "email_verified": true }));

    let response = http()?.get(provider.userinfo_url()).send().await?;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().get("www-authenticate").is_some());
    let response = http()?.get(provider.userinfo_url()).bearer_auth("bogus").send().await?;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = http()?.get(provider.userinfo_url()).bearer_auth(text(&body, "refresh_token")?).send().await?;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    Ok(())
}

#[tokio::test]
async fn discovery_document_and_last_authorize_params_describe_the_provider() -> TestResult {
    let provider = provider().await;
    let base = provider.base_url();
    assert!(base.starts_with("http://127.0.0.1:"));
    assert_eq!(provider.authorize_url(), format!("{base}/authorize"));
    assert_eq!(provider.token_url(), format!("{base}/token"));
    assert_eq!(provider.introspection_url(), format!("{base}/introspect"));
    assert_eq!(provider.userinfo_url(), format!("{base}/userinfo"));

    let document: Value = http()?.get(provider.openid_configuration_url()).send().await?.json().await?;
    assert_eq!(document["issuer"], base);
    assert_eq!(document["token_endpoint"], provider.token_url());
    assert_eq!(document["introspection_endpoint"], provider.introspection_url());
    assert_eq!(document["code_challenge_methods_supported"], serde_json::json!(["S256"]));

    assert_eq!(provider.last_authorize_params(), None);
    let challenge = pkce_challenge(VERIFIER);
    let mut params = authorize_params("s", &challenge, SCOPE);
    params.extend([("login_hint", USER), ("prompt", "consent"), ("access_type", "offline")]);
    get_authorize(&provider, &params).await?;
    let recorded = provider.last_authorize_params().ok_or("nothing recorded")?;
    assert_eq!(recorded.get("login_hint").map(String::as_str), Some(USER));
    assert_eq!(recorded.get("prompt").map(String::as_str), Some("consent"));
    assert_eq!(recorded.get("access_type").map(String::as_str), Some("offline"));
    assert_eq!(recorded.get("redirect_uri").map(String::as_str), Some(REDIRECT_URI));
    assert_eq!(recorded.get("code_challenge"), Some(&challenge));
    Ok(())
}

#[tokio::test]
async fn minted_tokens_work_like_issued_ones() -> TestResult {
    let provider = provider().await;
    assert!(provider.mint_tokens("unknown", USER, "openid").is_none());
    let minted = provider.mint_tokens(CLIENT_ID, USER, "openid email").ok_or("client unknown")?;
    assert_eq!(minted.expires_in, 3600);
    assert_eq!(provider.introspect(&minted.access_token).as_deref(), Some(USER));
    let response = refresh(&provider, &minted.refresh_token).await?;
    assert_eq!(response.status(), StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn stop_shuts_the_server_down() -> TestResult {
    let provider = provider().await;
    let url = provider.openid_configuration_url();
    assert_eq!(http()?.get(&url).send().await?.status(), StatusCode::OK);
    provider.stop().await;
    assert!(http()?.get(&url).send().await.is_err());
    Ok(())
}
