//! Authentication and authorization: bearer JWTs (signature, claims, key ids, pinned algorithms), API keys
//! (creation, exchange, revocation, listing), suspended tenants, and what each role may do.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chrono::Utc;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use postbridge_core::access::auth::hash_api_key;
use postbridge_core::model::Role;
use postbridge_tests::{assert_error, graphql_error_code, random_key_b64, spawn_app, spawn_app_with, TestApp, TestEnv};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

const RS_PRIVATE_PEM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/jwt-rs256-private.pem");
const RS_PUBLIC_PEM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/jwt-rs256-public.pem");

const ME: &str = "{ me { subject role tenantId } }";

/// The shared secret of the app's first JWT key (`kid:HS256:BASE64`).
fn hs_secret(app: &TestApp) -> Vec<u8> {
    let keys = app.env.get("JWT_KEYS").expect("JWT_KEYS is set");
    let first = keys.split(',').next().expect("at least one JWT key");
    let value = first.splitn(3, ':').nth(2).expect("JWT key is KID:ALG:VALUE");
    STANDARD.decode(value).expect("HS secret is base64")
}

/// Claims the app accepts as they are: right issuer and audience, valid for ten minutes from now.
fn valid_claims(role: &str, tenant: Option<&str>) -> Value {
    let now = Utc::now().timestamp();
    let mut claims = json!({
        "iss": "postbridge", "aud": "postbridge-api", "sub": "alice@example.com",
        "iat": now, "nbf": now, "exp": now + 600, "role": role,
    });
    if let Some(tenant) = tenant {
        claims["tid"] = json!(tenant);
    }
    claims
}

fn sign(algorithm: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("token signs")
}

/// Signs `claims` exactly as the app would (HS256, kid `j1`, the app's secret).
fn sign_as_app(app: &TestApp, claims: &Value) -> String {
    sign(Algorithm::HS256, Some("j1"), claims, &EncodingKey::from_secret(&hs_secret(app)))
}

fn rsa_private_key() -> EncodingKey {
    let pem = std::fs::read(RS_PRIVATE_PEM).expect("private PEM fixture");
    EncodingKey::from_rsa_pem(&pem).expect("RSA private key")
}

fn b64url(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).expect("json"))
}

/// Asserts `token` is refused with 401 `unauthenticated`, for the reason given.
async fn assert_refused(app: &TestApp, token: &str, reason: &str) {
    let reply = app.get("/v1/accounts", token).await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "unauthenticated");
    let message = reply.body["message"].as_str().unwrap_or("");
    assert!(message.contains(reason), "expected the refusal to say {reason:?}, got {message:?}");
}

/// Asserts `token` is accepted on a tenant route.
async fn assert_accepted(app: &TestApp, token: &str) {
    let reply = app.get("/v1/accounts", token).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
}

/// An app with an HS256 signing key `j1` and an RS256 verification-only key `r1` (the test fixture).
async fn app_with_hs_and_rs_keys() -> TestApp {
    let mut env = TestEnv::new();
    env.set("JWT_KEYS", format!("j1:HS256:{},r1:RS256:{RS_PUBLIC_PEM}", random_key_b64()));
    env.set("JWT_SIGNING_KEY_ID", "j1");
    spawn_app_with(env).await
}

// ---- no or unreadable credentials ----

#[tokio::test]
async fn a_request_without_an_authorization_header_is_unauthenticated() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("acme").await;
    for path in ["/v1/accounts", "/v1/tenants", &format!("/v1/tenants/{tenant}"), "/v1/api-keys"] {
        let reply = app.request(Method::GET, path, None, None, None).await;
        assert_error(&reply, StatusCode::UNAUTHORIZED, "unauthenticated");
    }
    let reply = app.request(Method::POST, "/v1/auth/token", None, None, None).await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "unauthenticated");
    // Naming a tenant is no credential.
    let reply = app.request(Method::GET, "/v1/accounts", None, Some(&tenant), None).await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "unauthenticated");

    let body = app.graphql(None, ME, json!({})).await;
    assert_eq!(graphql_error_code(&body), "unauthenticated", "{body}");
    assert!(body["data"].is_null(), "{body}");
}

#[tokio::test]
async fn a_garbage_bearer_token_is_unauthenticated() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    let operator = app.operator_token();
    let almost_operator = format!("{}x", &operator[..operator.len() - 1]);
    for garbage in [
        "garbage",
        "a.b.c",
        "eyJhbGciOiJIUzI1NiJ9.e30.",
        "pbk_",
        "pbk_nounderscore",
        "pbk_000000000000_not-the-secret",
        almost_operator.as_str(),
    ] {
        assert_refused(&app, garbage, "").await;
    }
    // A non-bearer scheme carrying the real operator token is not a bearer token.
    let reply = app
        .http
        .get(format!("{}/v1/tenants", app.address))
        .header("Authorization", format!("Basic {operator}"))
        .send()
        .await
        .expect("request sent");
    assert_eq!(reply.status(), StatusCode::UNAUTHORIZED);
}

// ---- JWTs ----

#[tokio::test]
async fn a_hand_signed_jwt_with_valid_claims_is_accepted_with_its_role_and_tenant() {
    // The control for every refusal below: the same construction, without the flaw, works.
    let app = spawn_app().await;
    let tenant = app.create_tenant("acme").await;
    let token = sign_as_app(&app, &valid_claims("member", Some(&tenant)));
    assert_accepted(&app, &token).await;
    let me = app.graphql(Some(&token), ME, json!({})).await;
    assert_eq!(me["data"]["me"], json!({"subject": "alice@example.com", "role": "MEMBER", "tenantId": tenant}), "{me}");
}

#[tokio::test]
async fn a_jwt_with_a_bad_signature_is_refused() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("acme").await;
    let claims = valid_claims("admin", Some(&tenant));
    let other_secret = STANDARD.decode(random_key_b64()).expect("base64");
    let forged = sign(Algorithm::HS256, Some("j1"), &claims, &EncodingKey::from_secret(&other_secret));
    assert_refused(&app, &forged, "bad signature").await;

    // A genuine token whose payload was swapped for another role keeps a signature that no longer matches.
    let genuine = sign_as_app(&app, &valid_claims("viewer", Some(&tenant)));
    assert_accepted(&app, &genuine).await;
    let parts: Vec<&str> = genuine.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], b64url(&claims), parts[2]);
    assert_refused(&app, &tampered, "bad signature").await;
    let stripped = format!("{}.{}.", parts[0], parts[1]);
    assert_refused(&app, &stripped, "").await;
}

#[tokio::test]
async fn an_expired_jwt_is_refused_beyond_the_leeway() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("acme").await;
    let now = Utc::now().timestamp();
    let mut claims = valid_claims("admin", Some(&tenant));
    claims["iat"] = json!(now - 3600);
    claims["nbf"] = json!(now - 3600);
    claims["exp"] = json!(now - 120);
    assert_refused(&app, &sign_as_app(&app, &claims), "expired").await;
    // Within the 30 s leeway an expired token still passes (clock skew).
    claims["exp"] = json!(now - 5);
    assert_accepted(&app, &sign_as_app(&app, &claims)).await;
    // The app's own issuer honours the same rule.
    let issued =
        app.ctx.jwt.issue("bob", Role::Admin, Some(Uuid::parse_str(&tenant).expect("uuid").into()), Some(-120)).expect("issue");
    assert_refused(&app, &issued.access_token, "expired").await;
}

#[tokio::test]
async fn a_jwt_whose_not_before_is_in_the_future_is_refused() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("acme").await;
    let mut claims = valid_claims("admin", Some(&tenant));
    claims["nbf"] = json!(Utc::now().timestamp() + 300);
    assert_refused(&app, &sign_as_app(&app, &claims), "not valid yet").await;
}

#[tokio::test]
async fn a_jwt_for_another_audience_is_refused() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("acme").await;
    let mut claims = valid_claims("admin", Some(&tenant));
    claims["aud"] = json!("some-other-api");
    assert_refused(&app, &sign_as_app(&app, &claims), "wrong audience").await;
    claims.as_object_mut().expect("object").remove("aud");
    assert_refused(&app, &sign_as_app(&app, &claims), "").await;
}

#[tokio::test]
async fn a_jwt_from_another_issuer_is_refused() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("acme").await;
    let mut claims = valid_claims("admin", Some(&tenant));
    claims["iss"] = json!("https://evil.example.com");
    assert_refused(&app, &sign_as_app(&app, &claims), "wrong issuer").await;
    claims.as_object_mut().expect("object").remove("iss");
    assert_refused(&app, &sign_as_app(&app, &claims), "").await;
}

#[tokio::test]
async fn a_jwt_naming_an_unknown_key_id_is_refused() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("acme").await;
    let claims = valid_claims("admin", Some(&tenant));
    // Signed with the right secret: only the kid is wrong.
    let token = sign(Algorithm::HS256, Some("j2"), &claims, &EncodingKey::from_secret(&hs_secret(&app)));
    assert_refused(&app, &token, "unknown key id").await;
}

#[tokio::test]
async fn a_jwt_without_a_tenant_for_a_tenant_role_is_refused() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    let token = sign_as_app(&app, &valid_claims("admin", None));
    assert_refused(&app, &token, "no tenant").await;
    let reply = app.get("/v1/tenants", &token).await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "unauthenticated");
}

#[tokio::test]
async fn a_jwt_for_a_tenant_that_does_not_exist_is_refused() {
    let app = spawn_app().await;
    app.create_tenant("acme").await;
    let token = sign_as_app(&app, &valid_claims("admin", Some(&Uuid::new_v4().to_string())));
    assert_refused(&app, &token, "no longer exists").await;
}

#[tokio::test]
async fn an_unsigned_alg_none_jwt_is_refused() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("acme").await;
    let payload = b64url(&valid_claims("admin", Some(&tenant)));
    let operator_payload = b64url(&valid_claims("operator", None));
    for header in [
        json!({"alg": "none", "typ": "JWT", "kid": "j1"}),
        json!({"alg": "none", "typ": "JWT"}),
        json!({"alg": "None", "kid": "j1"}),
        json!({"alg": "NONE"}),
    ] {
        for payload in [&payload, &operator_payload] {
            let token = format!("{}.{payload}.", b64url(&header));
            assert_refused(&app, &token, "").await;
            let reply = app.get("/v1/tenants", &token).await;
            assert_error(&reply, StatusCode::UNAUTHORIZED, "unauthenticated");
        }
    }
}

#[tokio::test]
async fn an_rs256_token_signed_with_the_configured_key_pair_is_accepted() {
    let app = app_with_hs_and_rs_keys().await;
    let tenant = app.create_tenant("acme").await;
    let token = sign(Algorithm::RS256, Some("r1"), &valid_claims("viewer", Some(&tenant)), &rsa_private_key());
    assert_accepted(&app, &token).await;
    let me = app.graphql(Some(&token), ME, json!({})).await;
    assert_eq!(me["data"]["me"]["role"], json!("VIEWER"), "{me}");
    // The app still issues and accepts its own HS256 tokens beside the RS key.
    let issued =
        app.ctx.jwt.issue("bob", Role::Admin, Some(Uuid::parse_str(&tenant).expect("uuid").into()), None).expect("issue");
    assert_accepted(&app, &issued.access_token).await;
}

#[tokio::test]
async fn an_hs256_token_signed_with_the_rs_public_key_as_secret_is_refused() {
    let app = app_with_hs_and_rs_keys().await;
    let tenant = app.create_tenant("acme").await;
    let public_pem = std::fs::read(RS_PUBLIC_PEM).expect("public PEM fixture");
    let claims = valid_claims("admin", Some(&tenant));
    let confused = sign(Algorithm::HS256, Some("r1"), &claims, &EncodingKey::from_secret(&public_pem));
    assert_refused(&app, &confused, "algorithm not allowed").await;
    let operator = sign(Algorithm::HS256, Some("r1"), &valid_claims("operator", None), &EncodingKey::from_secret(&public_pem));
    let reply = app.get("/v1/tenants", &operator).await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "unauthenticated");
}

#[tokio::test]
async fn an_rs256_token_claiming_the_hs_key_id_is_refused() {
    let app = app_with_hs_and_rs_keys().await;
    let tenant = app.create_tenant("acme").await;
    let token = sign(Algorithm::RS256, Some("j1"), &valid_claims("admin", Some(&tenant)), &rsa_private_key());
    assert_refused(&app, &token, "algorithm not allowed").await;
}

#[tokio::test]
async fn a_jwt_without_a_key_id_is_refused_when_several_keys_are_configured() {
    let app = app_with_hs_and_rs_keys().await;
    let tenant = app.create_tenant("acme").await;
    let claims = valid_claims("admin", Some(&tenant));
    assert_refused(&app, &sign(Algorithm::RS256, None, &claims, &rsa_private_key()), "missing key id").await;
    assert_refused(&app, &sign(Algorithm::HS256, None, &claims, &EncodingKey::from_secret(&hs_secret(&app))), "missing key id")
        .await;
}

// ---- API keys ----

#[tokio::test]
async fn a_created_api_key_authenticates_as_its_tenant_and_role() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("acme").await;
    let (id, secret) = app.api_key_with_id(&app.operator_token(), Some(&tenant), "member").await;
    assert!(secret.starts_with("pbk_"), "{secret}");
    assert_accepted(&app, &secret).await;
    // The real prefix with any other secret is refused.
    // Split after the hex prefix: the secret part is base64url and may hold '_' itself (splitting at the last one
    // could leave a one-character palindrome, whose "flip" is the key itself).
    let (prefix, rest) = secret["pbk_".len()..]
        .split_once('_')
        .map(|(hex, rest)| (&secret[..hex.len() + "pbk_".len()], rest))
        .expect("pbk_PREFIX_SECRET");
    let flipped: String = rest.chars().rev().collect();
    for wrong in
        [format!("{prefix}_{flipped}"), format!("{prefix}_"), format!("{secret}x"), secret[..secret.len() - 1].to_owned()]
    {
        assert_refused(&app, &wrong, "invalid API key").await;
    }
    let me = app.graphql(Some(&secret), ME, json!({})).await;
    assert_eq!(me["data"]["me"], json!({"subject": format!("apikey:{id}"), "role": "MEMBER", "tenantId": tenant}), "{me}");
    // Using the key is recorded.
    let admin = app.api_key(&tenant, "admin").await;
    let key = app.get(&format!("/v1/api-keys/{id}"), &admin).await;
    assert_eq!(key.status, StatusCode::OK, "{}", key.text);
    assert!(key.body["last_used_at"].is_string(), "{}", key.text);
}

#[tokio::test]
async fn an_api_key_exchanged_for_a_jwt_keeps_its_role_and_tenant() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("acme").await;
    let (id, viewer) = app.api_key_with_id(&app.operator_token(), Some(&tenant), "viewer").await;
    let reply = app.request(Method::POST, "/v1/auth/token", Some(&viewer), None, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["token_type"], json!("Bearer"));
    assert_eq!(reply.body["expires_in"], json!(3600));
    let jwt = reply.body["access_token"].as_str().expect("access token").to_owned();
    assert!(!jwt.starts_with("pbk_") && jwt.split('.').count() == 3, "{jwt}");

    let me = app.graphql(Some(&jwt), ME, json!({})).await;
    assert_eq!(me["data"]["me"], json!({"subject": format!("apikey:{id}"), "role": "VIEWER", "tenantId": tenant}), "{me}");
    // It reads like the key and is refused what the key is refused.
    assert_accepted(&app, &jwt).await;
    let create = app.post("/v1/accounts", &jwt, TestApp::smtp_account("a@example.com")).await;
    assert_error(&create, StatusCode::FORBIDDEN, "forbidden");

    // The GraphQL mutation gives an equivalent token.
    let issued = app.graphql(Some(&viewer), "mutation { issueToken { accessToken tokenType } }", json!({})).await;
    let jwt2 = issued["data"]["issueToken"]["accessToken"].as_str().unwrap_or_else(|| panic!("{issued}")).to_owned();
    let me2 = app.graphql(Some(&jwt2), ME, json!({})).await;
    assert_eq!(me2["data"]["me"], me["data"]["me"]);
}

#[tokio::test]
async fn an_api_key_cannot_be_given_the_operator_role() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    for token in [admin.clone(), app.operator_token()] {
        let reply = app
            .request(Method::POST, "/v1/api-keys", Some(&token), Some(&tenant), Some(json!({"name": "root", "role": "operator"})))
            .await;
        assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_role");
        assert_eq!(reply.body["field"], json!("role"), "{}", reply.text);
    }
    let body = app
        .graphql(Some(&admin), "mutation { createApiKey(input: {name: \"root\", role: OPERATOR}) { secret } }", json!({}))
        .await;
    assert_eq!(graphql_error_code(&body), "invalid_role", "{body}");
    let keys = app.get("/v1/api-keys", &admin).await;
    assert_eq!(keys.body["items"].as_array().map(Vec::len), Some(1), "no key was created: {}", keys.text);
}

#[tokio::test]
async fn a_revoked_api_key_is_refused() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("acme").await;
    let admin = app.api_key(&tenant, "admin").await;
    let (id, doomed) = app.api_key_with_id(&admin, None, "member").await;
    assert_accepted(&app, &doomed).await;

    let revoked = app.delete(&format!("/v1/api-keys/{id}"), &admin).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text);
    assert!(revoked.body["revoked_at"].is_string(), "{}", revoked.text);

    let reply = app.get("/v1/accounts", &doomed).await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "unauthenticated");
    assert!(reply.text.contains("revoked"), "{}", reply.text);
    let exchange = app.request(Method::POST, "/v1/auth/token", Some(&doomed), None, None).await;
    assert_error(&exchange, StatusCode::UNAUTHORIZED, "unauthenticated");
    let body = app.graphql(Some(&doomed), ME, json!({})).await;
    assert_eq!(graphql_error_code(&body), "unauthenticated", "{body}");

    // Revoking again keeps the first revocation time; other keys are untouched.
    let again = app.delete(&format!("/v1/api-keys/{id}"), &admin).await;
    assert_eq!((again.status, &again.body["revoked_at"]), (StatusCode::OK, &revoked.body["revoked_at"]), "{}", again.text);
    assert_accepted(&app, &admin).await;
}

#[tokio::test]
async fn a_token_is_not_exchanged_for_a_fresh_one_so_none_outlives_its_source() {
    let app = spawn_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let exchange = async |credential: &str| app.request(Method::POST, "/v1/auth/token", Some(credential), None, None).await;
    let from_key = exchange(&admin).await;
    let from_operator = exchange(&app.operator_token()).await;
    let tokens: Vec<String> = [&from_key, &from_operator]
        .iter()
        .map(|reply| reply.body["access_token"].as_str().unwrap_or_else(|| panic!("{}", reply.text)).to_owned())
        .collect();
    for (token, usable_at) in tokens.iter().zip(["/v1/accounts", "/v1/tenants"]) {
        // Renewed with itself, a token would never expire, and one from the operator token would outlive it.
        assert_error(&exchange(token).await, StatusCode::FORBIDDEN, "forbidden");
        let body = app.graphql(Some(token), "mutation { issueToken { accessToken } }", json!({})).await;
        assert_eq!(graphql_error_code(&body), "forbidden", "{body}");
        assert_eq!(app.get(usable_at, token).await.status, StatusCode::OK, "the token itself still works");
    }
}

#[tokio::test]
async fn a_token_exchanged_from_an_api_key_stops_working_when_the_key_is_revoked() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let (id, member) = app.api_key_with_id(&admin, None, "member").await;
    let (_, kept) = app.api_key_with_id(&admin, None, "member").await;
    let exchange = |key: String| {
        let app = &app;
        async move {
            let reply = app.request(Method::POST, "/v1/auth/token", Some(&key), None, None).await;
            reply.body["access_token"].as_str().unwrap_or_else(|| panic!("{}", reply.text)).to_owned()
        }
    };
    let jwt = exchange(member.clone()).await;
    let kept_jwt = exchange(kept).await;
    assert_accepted(&app, &jwt).await;

    let revoked = app.delete(&format!("/v1/api-keys/{id}"), &admin).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text);
    assert_refused(&app, &jwt, "revoked").await;
    let body = app.graphql(Some(&jwt), ME, json!({})).await;
    assert_eq!(graphql_error_code(&body), "unauthenticated", "{body}");
    // A token for a key id that never existed in the tenant is refused the same way.
    let unknown = sign_as_app(&app, &{
        let mut claims = valid_claims("admin", Some(&tenant));
        claims["sub"] = json!(format!("apikey:{}", Uuid::new_v4()));
        claims
    });
    assert_refused(&app, &unknown, "revoked").await;
    // Tokens of other keys, and tokens not issued for a key, are unaffected.
    assert_accepted(&app, &kept_jwt).await;
    assert_accepted(&app, &sign_as_app(&app, &valid_claims("admin", Some(&tenant)))).await;
}

#[tokio::test]
async fn listing_api_keys_never_shows_the_secret_or_its_hash() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("acme").await;
    let (admin_id, admin) = app.api_key_with_id(&app.operator_token(), Some(&tenant), "admin").await;
    let (viewer_id, viewer) = app.api_key_with_id(&admin, None, "viewer").await;
    let secrets = [(admin_id.as_str(), admin.as_str()), (viewer_id.as_str(), viewer.as_str())];

    let list = app.get("/v1/api-keys", &admin).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let items = list.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{}", list.text);
    let single = app.get(&format!("/v1/api-keys/{viewer_id}"), &admin).await;
    assert_eq!(single.status, StatusCode::OK, "{}", single.text);
    let gql = app.graphql(Some(&admin), "{ apiKeys { items { id prefix name role } } }", json!({})).await;
    assert!(gql["errors"].is_null(), "{gql}");

    for text in [&list.text, &single.text, &gql.to_string()] {
        for (_, secret) in secrets {
            let (_, secret_part) = secret["pbk_".len()..].split_once('_').expect("pbk_PREFIX_SECRET");
            assert!(!text.contains(secret_part), "a key secret is listed: {text}");
            assert!(!text.contains(&hash_api_key(secret)), "a key hash is listed: {text}");
        }
    }
    for item in items.iter().chain([&single.body]) {
        let mut fields: Vec<&str> = item.as_object().expect("object").keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(fields, ["created_at", "id", "last_used_at", "name", "prefix", "revoked_at", "role", "tenant_id"]);
        let secret = secrets.iter().find(|(id, _)| item["id"] == json!(id)).map(|(_, s)| *s).expect("known key");
        let prefix = item["prefix"].as_str().expect("prefix");
        assert!(prefix.len() > "pbk_".len() && secret.starts_with(prefix), "{prefix} is not the start of its key");
    }
    // The schema has no field that could carry the secret of a stored key.
    let asks_secret = app.graphql(Some(&admin), "{ apiKeys { items { id secret } } }", json!({})).await;
    assert!(asks_secret["data"].is_null() && !asks_secret["errors"].is_null(), "{asks_secret}");
}

// ---- suspended tenants ----

#[tokio::test]
async fn a_suspended_tenants_keys_and_tokens_are_refused_until_it_resumes() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let (_, other_admin) = app.tenant_with_admin().await;
    let jwt = app
        .ctx
        .jwt
        .issue("alice", Role::Admin, Some(Uuid::parse_str(&tenant).expect("uuid").into()), None)
        .expect("issue")
        .access_token;
    let exchanged = app.request(Method::POST, "/v1/auth/token", Some(&admin), None, None).await.body["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    for token in [&admin, &jwt, &exchanged] {
        assert_accepted(&app, token).await;
    }

    let suspended = app.post(&format!("/v1/tenants/{tenant}/suspend"), &app.operator_token(), json!({})).await;
    assert_eq!((suspended.status, &suspended.body["status"]), (StatusCode::OK, &json!("suspended")), "{}", suspended.text);

    for token in [&admin, &jwt, &exchanged] {
        let reply = app.get("/v1/accounts", token).await;
        assert_error(&reply, StatusCode::FORBIDDEN, "tenant_suspended");
        let reply = app.get(&format!("/v1/tenants/{tenant}"), token).await;
        assert_error(&reply, StatusCode::FORBIDDEN, "tenant_suspended");
        let body = app.graphql(Some(token), ME, json!({})).await;
        assert_eq!(graphql_error_code(&body), "tenant_suspended", "{body}");
    }
    // No fresh token can be minted while suspended, and other tenants are unaffected.
    let exchange = app.request(Method::POST, "/v1/auth/token", Some(&admin), None, None).await;
    assert_error(&exchange, StatusCode::FORBIDDEN, "tenant_suspended");
    assert_accepted(&app, &other_admin).await;

    let resumed = app.post(&format!("/v1/tenants/{tenant}/resume"), &app.operator_token(), json!({})).await;
    assert_eq!((resumed.status, &resumed.body["status"]), (StatusCode::OK, &json!("active")), "{}", resumed.text);
    for token in [&admin, &jwt, &exchanged] {
        assert_accepted(&app, token).await;
    }
}

// ---- roles ----

#[tokio::test]
async fn a_viewer_reads_accounts_and_token_configs_but_cannot_change_anything() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let viewer = app.api_key(&tenant, "viewer").await;
    let config = app.post("/v1/token-configs", &admin, TestApp::microsoft_config()).await.id();
    let account = app.post("/v1/accounts", &admin, TestApp::smtp_account("sales@example.com")).await.id();

    let accounts = app.get("/v1/accounts", &viewer).await;
    assert_eq!(accounts.status, StatusCode::OK, "{}", accounts.text);
    assert_eq!(accounts.body["items"][0]["id"], json!(account), "viewers see every account of the tenant");
    let configs = app.get("/v1/token-configs", &viewer).await;
    assert_eq!(configs.status, StatusCode::OK, "{}", configs.text);
    assert_eq!(configs.body["items"][0]["id"], json!(config));
    for path in [format!("/v1/accounts/{account}"), format!("/v1/token-configs/{config}"), format!("/v1/tenants/{tenant}")] {
        let reply = app.get(&path, &viewer).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text);
    }

    let before = app.get(&format!("/v1/accounts/{account}"), &admin).await.body;
    let refused = [
        app.post("/v1/accounts", &viewer, TestApp::smtp_account("new@example.com")).await,
        app.patch(&format!("/v1/accounts/{account}"), &viewer, json!({"name": "renamed"})).await,
        app.delete(&format!("/v1/accounts/{account}"), &viewer).await,
        app.post("/v1/token-configs", &viewer, TestApp::microsoft_config()).await,
        app.patch(&format!("/v1/token-configs/{config}"), &viewer, json!({"name": "renamed"})).await,
        app.delete(&format!("/v1/token-configs/{config}"), &viewer).await,
        app.post("/v1/api-keys", &viewer, json!({"name": "mine", "role": "viewer"})).await,
        app.get("/v1/api-keys", &viewer).await,
    ];
    for reply in &refused {
        assert_error(reply, StatusCode::FORBIDDEN, "forbidden");
    }
    let body = app.graphql(Some(&viewer), "mutation($id: UUID!) { deleteAccount(id: $id) }", json!({"id": account})).await;
    assert_eq!(graphql_error_code(&body), "forbidden", "{body}");
    assert_eq!(app.get(&format!("/v1/accounts/{account}"), &admin).await.body, before, "the account is unchanged");
    assert_eq!(app.get("/v1/accounts", &admin).await.body["items"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_member_creates_accounts_but_not_token_configs_or_api_keys() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let (member_id, member) = app.api_key_with_id(&admin, None, "member").await;
    let config = app.post("/v1/token-configs", &admin, TestApp::microsoft_config()).await.id();

    let created = app.post("/v1/accounts", &member, TestApp::smtp_account("me@example.com")).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(created.body["owner"], json!(format!("apikey:{member_id}")));
    assert_eq!(created.body["tenant_id"], json!(tenant));

    let refused = [
        app.post("/v1/token-configs", &member, TestApp::microsoft_config()).await,
        app.patch(&format!("/v1/token-configs/{config}"), &member, json!({"name": "renamed"})).await,
        app.delete(&format!("/v1/token-configs/{config}"), &member).await,
        app.post("/v1/api-keys", &member, json!({"name": "escalate", "role": "admin"})).await,
        app.get("/v1/api-keys", &member).await,
    ];
    for reply in &refused {
        assert_error(reply, StatusCode::FORBIDDEN, "forbidden");
    }
    let body = app
        .graphql(Some(&member), "mutation { createApiKey(input: {name: \"escalate\", role: ADMIN}) { secret } }", json!({}))
        .await;
    assert_eq!(graphql_error_code(&body), "forbidden", "{body}");
    assert_eq!(app.get("/v1/token-configs", &admin).await.body["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(app.get("/v1/api-keys", &admin).await.body["items"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn a_tenant_admin_cannot_list_create_or_manage_tenants() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let refused = [
        app.get("/v1/tenants", &admin).await,
        app.post("/v1/tenants", &admin, json!({"slug": "mine", "name": "Mine"})).await,
        app.patch(&format!("/v1/tenants/{tenant}"), &admin, json!({"name": "Renamed"})).await,
        app.post(&format!("/v1/tenants/{tenant}/suspend"), &admin, json!({})).await,
        app.post(&format!("/v1/tenants/{tenant}/resume"), &admin, json!({})).await,
        app.delete(&format!("/v1/tenants/{tenant}"), &admin).await,
    ];
    for reply in &refused {
        assert_error(reply, StatusCode::FORBIDDEN, "forbidden");
    }
    for query in ["{ tenants { items { id } } }", "mutation { createTenant(input: {slug: \"mine\", name: \"Mine\"}) { id } }"] {
        let body = app.graphql(Some(&admin), query, json!({})).await;
        assert_eq!(graphql_error_code(&body), "forbidden", "{body}");
    }
    let list = app.get("/v1/tenants", &app.operator_token()).await;
    assert_eq!(list.body["items"].as_array().map(Vec::len), Some(1), "no tenant was created: {}", list.text);
    let own = app.get(&format!("/v1/tenants/{tenant}"), &admin).await;
    assert_eq!((own.status, &own.body["status"]), (StatusCode::OK, &json!("active")), "{}", own.text);
    assert!(own.body["name"].as_str().is_some_and(|n| n != "Renamed"), "{}", own.text);
}

#[tokio::test]
async fn an_operator_must_name_the_tenant_on_tenant_routes() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("acme").await;
    let operator = app.operator_token();
    for (method, path, body) in [
        (Method::GET, "/v1/accounts", None),
        (Method::POST, "/v1/accounts", Some(TestApp::smtp_account("ops@example.com"))),
        (Method::GET, "/v1/token-configs", None),
        (Method::GET, "/v1/api-keys", None),
        (Method::POST, "/v1/api-keys", Some(json!({"name": "k", "role": "admin"}))),
    ] {
        let reply = app.request(method.clone(), path, Some(&operator), None, body.clone()).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "tenant_required");
        let reply = app.request(method, path, Some(&operator), Some(&tenant), body).await;
        assert!(reply.status.is_success(), "{path}: {}", reply.text);
    }
    let accounts = app.request(Method::GET, "/v1/accounts", Some(&operator), Some(&tenant), None).await;
    assert_eq!(accounts.body["items"][0]["owner"], json!("operator"), "{}", accounts.text);

    // A tenant that does not exist, and a header that is not an id.
    let missing = Uuid::new_v4().to_string();
    let reply = app.request(Method::GET, "/v1/accounts", Some(&operator), Some(&missing), None).await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found");
    let reply = app.request(Method::GET, "/v1/accounts", Some(&operator), Some("acme"), None).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_tenant_header");

    let query = json!({"query": "{ accounts { items { id } } }"});
    let body = app.request(Method::POST, "/graphql", Some(&operator), None, Some(query.clone())).await.body;
    assert_eq!(graphql_error_code(&body), "tenant_required", "{body}");
    let body = app.request(Method::POST, "/graphql", Some(&operator), Some(&tenant), Some(query)).await.body;
    assert!(body["errors"].is_null() && body["data"]["accounts"]["items"].as_array().map(Vec::len) == Some(1), "{body}");
}

#[tokio::test]
async fn members_see_and_change_only_their_own_accounts_while_admins_see_all() {
    let app = spawn_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let member = app.api_key_with_id(&admin, None, "member").await.1;
    let other_member = app.api_key_with_id(&admin, None, "member").await.1;
    let admins = app.post("/v1/accounts", &admin, TestApp::smtp_account("boss@example.com")).await.id();
    let mine = app.post("/v1/accounts", &member, TestApp::smtp_account("me@example.com")).await.id();
    let theirs = app.post("/v1/accounts", &other_member, TestApp::smtp_account("them@example.com")).await.id();

    let ids = |reply: &postbridge_tests::Reply| -> Vec<String> {
        reply.body["items"].as_array().expect("items").iter().map(|a| a["id"].as_str().expect("id").to_owned()).collect()
    };
    assert_eq!(ids(&app.get("/v1/accounts", &member).await), [mine.as_str()]);
    let gql = app.graphql(Some(&member), "{ accounts { items { id } } }", json!({})).await;
    assert_eq!(gql["data"]["accounts"]["items"], json!([{"id": mine}]), "{gql}");
    let mut all = ids(&app.get("/v1/accounts", &admin).await);
    all.sort();
    let mut expected = vec![admins.clone(), mine.clone(), theirs.clone()];
    expected.sort();
    assert_eq!(all, expected, "admins see every account");

    for other in [&admins, &theirs] {
        let before = app.get(&format!("/v1/accounts/{other}"), &admin).await.body;
        let path = format!("/v1/accounts/{other}");
        assert_error(&app.get(&path, &member).await, StatusCode::NOT_FOUND, "not_found");
        assert_error(&app.patch(&path, &member, json!({"name": "mine now"})).await, StatusCode::NOT_FOUND, "not_found");
        assert_error(&app.delete(&path, &member).await, StatusCode::NOT_FOUND, "not_found");
        let body = app.graphql(Some(&member), "query($id: UUID!) { account(id: $id) { id } }", json!({"id": other})).await;
        assert_eq!(graphql_error_code(&body), "not_found", "{body}");
        assert_eq!(app.get(&path, &admin).await.body, before, "another's account is unchanged");
    }

    // The member's own account is theirs to change, also through a token exchanged from their key.
    let jwt = app.request(Method::POST, "/v1/auth/token", Some(&member), None, None).await.body["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let renamed = app.patch(&format!("/v1/accounts/{mine}"), &jwt, json!({"name": "My mailbox"})).await;
    assert_eq!((renamed.status, &renamed.body["name"]), (StatusCode::OK, &json!("My mailbox")), "{}", renamed.text);
    // An admin may change a member's account.
    let by_admin = app.patch(&format!("/v1/accounts/{mine}"), &admin, json!({"name": "Checked"})).await;
    assert_eq!(by_admin.status, StatusCode::OK, "{}", by_admin.text);
    let deleted = app.delete(&format!("/v1/accounts/{mine}"), &member).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    assert_eq!(ids(&app.get("/v1/accounts", &member).await), Vec::<String>::new());
}

#[tokio::test]
async fn a_member_cannot_make_an_account_the_default_sender_or_a_shared_mailbox() {
    let app = spawn_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let member = app.api_key_with_id(&admin, None, "member").await.1;

    let mut default_sender = TestApp::smtp_account("me@example.com");
    default_sender["is_default"] = json!(true);
    let mut shared = TestApp::smtp_account("team@example.com");
    shared["shared_mailbox"] = json!(true);
    for body in [default_sender, shared] {
        assert_error(&app.post("/v1/accounts", &member, body).await, StatusCode::FORBIDDEN, "forbidden");
    }
    assert_eq!(app.get("/v1/accounts", &admin).await.body["items"], json!([]), "nothing was created");

    let mine = app.post("/v1/accounts", &member, TestApp::smtp_account("me@example.com")).await.id();
    let path = format!("/v1/accounts/{mine}");
    for patch in [json!({"is_default": true}), json!({"shared_mailbox": true})] {
        assert_error(&app.patch(&path, &member, patch).await, StatusCode::FORBIDDEN, "forbidden");
    }
    let body = app
        .graphql(
            Some(&member),
            "mutation($id: UUID!) { updateAccount(id: $id, input: {isDefault: true}) { id } }",
            json!({"id": mine}),
        )
        .await;
    assert_eq!(graphql_error_code(&body), "forbidden", "{body}");
    assert_eq!(app.get(&path, &member).await.body["is_default"], json!(false));

    // An admin may make it the default sender; the member may then still edit other fields.
    let promoted = app.patch(&path, &admin, json!({"is_default": true})).await;
    assert_eq!((promoted.status, &promoted.body["is_default"]), (StatusCode::OK, &json!(true)), "{}", promoted.text);
    let renamed = app.patch(&path, &member, json!({"name": "Still mine"})).await;
    assert_eq!((renamed.status, &renamed.body["is_default"]), (StatusCode::OK, &json!(true)), "{}", renamed.text);
}

#[tokio::test]
async fn an_operator_token_issued_through_the_cli_path_can_list_tenants() {
    let app = spawn_app().await;
    let tenant = app.create_tenant("acme").await;
    let token = app.ctx.jwt.issue("ops@example.com", Role::Operator, None, None).expect("issue").access_token;
    let list = app.get("/v1/tenants", &token).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    assert_eq!(list.body["items"][0]["id"], json!(tenant), "{}", list.text);
    let me = app.graphql(Some(&token), ME, json!({})).await;
    assert_eq!(me["data"]["me"], json!({"subject": "ops@example.com", "role": "OPERATOR", "tenantId": null}), "{me}");
    // It acts in a tenant only when it names one, like the bootstrap operator token.
    let reply = app.get("/v1/accounts", &token).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "tenant_required");
    let reply = app.request(Method::GET, "/v1/accounts", Some(&token), Some(&tenant), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);

    // The bootstrap operator token exchanges for an equivalent operator JWT.
    let exchanged = app.request(Method::POST, "/v1/auth/token", Some(&app.operator_token()), None, None).await;
    let jwt = exchanged.body["access_token"].as_str().unwrap_or_else(|| panic!("{}", exchanged.text)).to_owned();
    assert_eq!(app.get("/v1/tenants", &jwt).await.body["items"][0]["id"], json!(tenant));
}
