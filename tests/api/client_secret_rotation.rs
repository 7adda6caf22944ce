//! Two client secrets per configuration: an admin stores the next secret before rotating it at the provider; when
//! the provider starts refusing the current one, the next is tried, and its first success promotes it. Against the
//! provider stand-in, whose client is re-registered with the new secret as an admin would rotate it at Entra/Google.

use postbridge_core::connect::grants::{self, TokenAccessError};
use postbridge_core::secrets;
use postbridge_tests::oauth::{OAuthSetup, CONSENTING_USER};
use postbridge_tests::TestApp;
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

struct Consented {
    setup: OAuthSetup,
    tenant: Uuid,
    grant: Uuid,
}

async fn consented(app: &TestApp) -> Consented {
    let setup = app.oauth_setup().await;
    let account = app.oauth_account(&setup, "imap", CONSENTING_USER).await;
    let outcome = app.consent(&setup, &account).await;
    assert_eq!(outcome.param("status").as_deref(), Some("success"), "{outcome:?}");
    let grant = app.account_json(&setup, &account).await["grant_id"].as_str().expect("grant").to_owned();
    let tenant = Uuid::parse_str(&setup.tenant).expect("tenant");
    Consented { setup, tenant, grant: Uuid::parse_str(&grant).expect("grant id") }
}

/// The admin rotates the secret at the provider: the old one stops working at once.
fn rotate_at_provider(app: &TestApp, setup: &OAuthSetup, new_secret: &str) {
    setup.provider.register_client(&setup.client_id, Some(new_secret), &[&format!("{}/oauth/callback", app.address)]);
}

async fn expire_access_token(app: &TestApp, grant: Uuid) {
    app.sql_exec(&format!("UPDATE grants SET expires_at = now() - interval '1 minute', refresh_at = now() - interval '2 minutes' WHERE id = '{grant}'")).await;
}

async fn config(app: &TestApp, setup: &OAuthSetup) -> serde_json::Value {
    app.get(&format!("/v1/token-configs/{}", setup.config_id), &setup.admin).await.body
}

async fn promotions(app: &TestApp, setup: &OAuthSetup) -> i64 {
    app.sql_i64(&format!(
        "SELECT count(*) FROM events WHERE event_type = 'token_config.secret_promoted' AND resource_id = '{}'",
        setup.config_id
    ))
    .await
}

#[tokio::test]
async fn a_refused_secret_gives_way_to_the_next_one_which_is_promoted_without_an_outage() {
    let app = postbridge_tests::spawn_app().await;
    let c = consented(&app).await;
    let path = format!("/v1/token-configs/{}", c.setup.config_id);
    let stored = app
        .patch(
            &path,
            &c.setup.admin,
            json!({"client_secret_next": "the-next-secret", "client_secret_next_expires_at": "2027-06-30"}),
        )
        .await;
    assert_eq!(stored.status, StatusCode::OK, "{}", stored.text);
    assert_eq!(
        (stored.body["client_secret_next_set"].clone(), stored.body["client_secret_next_expires_at"].clone()),
        (json!(true), json!("2027-06-30"))
    );
    assert!(!stored.text.contains("the-next-secret"), "write-only: {}", stored.text);

    rotate_at_provider(&app, &c.setup, "the-next-secret");
    expire_access_token(&app, c.grant).await;
    let before = c.setup.provider.token_requests("refresh_token");
    let token = grants::access_token(&app.ctx, c.tenant.into(), c.grant.into()).await.expect("refreshed with the next secret");
    assert!(!token.is_empty());
    assert_eq!(c.setup.provider.token_requests("refresh_token") - before, 2, "refused once, then accepted");

    let now = config(&app, &c.setup).await;
    assert_eq!(
        (
            now["client_secret_set"].clone(),
            now["client_secret_next_set"].clone(),
            now["client_secret_expires_at"].clone(),
            now["needs_admin"].clone()
        ),
        (json!(true), json!(false), json!("2027-06-30"), json!(false)),
        "{now}"
    );
    assert_eq!(promotions(&app, &c.setup).await, 1);
    let sealed = app.stored_value("token_configs", "client_secret", &c.setup.config_id).await.expect("a secret");
    let config_id = Uuid::parse_str(&c.setup.config_id).expect("config id");
    let current = secrets::TOKEN_CONFIG_CLIENT_SECRET.open(&app.ctx.cipher, c.tenant.into(), config_id, &sealed).expect("opens");
    assert_eq!(current, "the-next-secret");

    // From now on the promoted secret goes first: one request per refresh.
    expire_access_token(&app, c.grant).await;
    let before = c.setup.provider.token_requests("refresh_token");
    grants::access_token(&app.ctx, c.tenant.into(), c.grant.into()).await.expect("refreshed");
    assert_eq!(c.setup.provider.token_requests("refresh_token") - before, 1);
    assert_eq!(promotions(&app, &c.setup).await, 1);
}

#[tokio::test]
async fn when_both_secrets_are_refused_the_admin_is_told_and_nothing_is_promoted() {
    let app = postbridge_tests::spawn_app().await;
    let c = consented(&app).await;
    let path = format!("/v1/token-configs/{}", c.setup.config_id);
    assert_eq!(app.patch(&path, &c.setup.admin, json!({"client_secret_next": "also-wrong"})).await.status, StatusCode::OK);
    rotate_at_provider(&app, &c.setup, "a-secret-nobody-stored");
    expire_access_token(&app, c.grant).await;

    let err = grants::access_token(&app.ctx, c.tenant.into(), c.grant.into()).await.expect_err("both refused");
    assert!(matches!(err, TokenAccessError::NeedsAdmin { .. }), "{err:?}");
    let now = config(&app, &c.setup).await;
    assert_eq!((now["needs_admin"].clone(), now["client_secret_next_set"].clone()), (json!(true), json!(true)), "{now}");
    assert_eq!(promotions(&app, &c.setup).await, 0);

    // Removing the next secret is a `null`.
    let removed = app.patch(&path, &c.setup.admin, json!({"client_secret_next": null})).await;
    assert_eq!(
        (removed.status, removed.body["client_secret_next_set"].clone()),
        (StatusCode::OK, json!(false)),
        "{}",
        removed.text
    );
    let audit = app.get("/v1/audit-log?resource_type=token_config", &c.setup.admin).await;
    assert!(audit.text.contains("(secret changed)") && !audit.text.contains("also-wrong"), "{}", audit.text);
}

#[tokio::test]
async fn a_consent_after_the_rotation_is_exchanged_with_the_next_secret() {
    let app = postbridge_tests::spawn_app().await;
    let setup = app.oauth_setup().await;
    let path = format!("/v1/token-configs/{}", setup.config_id);
    assert_eq!(app.patch(&path, &setup.admin, json!({"client_secret_next": "rotated"})).await.status, StatusCode::OK);
    rotate_at_provider(&app, &setup, "rotated");

    let account = app.oauth_account(&setup, "imap", CONSENTING_USER).await;
    let outcome = app.consent(&setup, &account).await;
    assert_eq!(outcome.param("status").as_deref(), Some("success"), "{outcome:?}");
    assert_eq!(promotions(&app, &setup).await, 1);
    assert_eq!(config(&app, &setup).await["client_secret_next_set"], json!(false));
}

#[tokio::test]
async fn a_next_secret_never_follows_the_endpoints_or_the_client_to_somewhere_new() {
    let app = postbridge_tests::spawn_app().await;
    let setup = app.oauth_setup().await;
    let path = format!("/v1/token-configs/{}", setup.config_id);
    let store_next = json!({"client_secret_next": "the-next-secret", "client_secret_next_expires_at": "2027-06-30"});
    assert_eq!(app.patch(&path, &setup.admin, store_next.clone()).await.status, StatusCode::OK);

    // Someone who does not know the secrets moves the token endpoint to a host they run, with a guessed secret. Their
    // host refuses the client, which used to make Postbridge try the next secret there too.
    let elsewhere = postbridge_oauth_provider::MockProvider::start().await;
    let moved = app.patch(&path, &setup.admin, json!({"token_url": elsewhere.token_url(), "client_secret": "guessed"})).await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.text);
    assert_eq!(
        (moved.body["client_secret_next_set"].clone(), moved.body["client_secret_next_expires_at"].clone()),
        (json!(false), json!(null)),
        "{}",
        moved.text
    );
    let account = app.oauth_account(&setup, "imap", CONSENTING_USER).await;
    let outcome = app.consent(&setup, &account).await;
    assert_ne!(outcome.param("status").as_deref(), Some("success"), "{outcome:?}");
    assert_eq!(elsewhere.token_requests("authorization_code"), 1, "one request, with the guessed secret only");
    assert_eq!(promotions(&app, &setup).await, 0);
    let audit = app.get("/v1/audit-log?resource_type=token_config", &setup.admin).await;
    assert!(audit.text.contains("client_secret_next_dropped"), "{}", audit.text);

    // A new client id drops it too; a next secret given in the same request is the admin's and stays.
    assert_eq!(app.patch(&path, &setup.admin, store_next.clone()).await.status, StatusCode::OK);
    let renamed = app.patch(&path, &setup.admin, json!({"client_id": "another-client"})).await;
    assert_eq!(
        (renamed.status, renamed.body["client_secret_next_set"].clone()),
        (StatusCode::OK, json!(false)),
        "{}",
        renamed.text
    );
    let body = json!({"client_id": setup.client_id, "client_secret_next": "for-the-old-client"});
    let both = app.patch(&path, &setup.admin, body).await;
    assert_eq!((both.status, both.body["client_secret_next_set"].clone()), (StatusCode::OK, json!(true)), "{}", both.text);
    // Changes that do not touch the client or its endpoints keep it.
    let kept = app.patch(&path, &setup.admin, json!({"name": "Renamed", "scopes": ["mail", "offline_access"]})).await;
    assert_eq!((kept.status, kept.body["client_secret_next_set"].clone()), (StatusCode::OK, json!(true)), "{}", kept.text);
}

/// The current secret as stored.
async fn current_secret(app: &TestApp, c: &Consented) -> String {
    let sealed = app.stored_value("token_configs", "client_secret", &c.setup.config_id).await.expect("a secret");
    let config_id = Uuid::parse_str(&c.setup.config_id).expect("config id");
    secrets::TOKEN_CONFIG_CLIENT_SECRET.open(&app.ctx.cipher, c.tenant.into(), config_id, &sealed).expect("opens")
}

#[tokio::test]
async fn a_secret_the_admin_sets_while_a_promotion_is_decided_is_not_overwritten() {
    let app = postbridge_tests::spawn_app().await;
    let c = consented(&app).await;
    let path = format!("/v1/token-configs/{}", c.setup.config_id);
    c.setup.provider.set_token_latency(std::time::Duration::from_millis(400));

    // An on-demand refresh is at the slow provider, refused with the current secret and about to succeed with the
    // next one, when the admin sets a current secret of their own: the write goes through (it once deadlocked with
    // the refresh's row lock and answered 500) and stands.
    assert_eq!(app.patch(&path, &c.setup.admin, json!({"client_secret_next": "the-next-secret"})).await.status, StatusCode::OK);
    rotate_at_provider(&app, &c.setup, "the-next-secret");
    expire_access_token(&app, c.grant).await;
    let ctx = app.ctx.clone();
    let (tenant, grant) = (c.tenant, c.grant);
    let refresh = tokio::spawn(async move { grants::access_token(&ctx, tenant.into(), grant.into()).await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let set = app.patch(&path, &c.setup.admin, json!({"client_secret": "the-admins-own"})).await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.text);
    refresh.await.expect("task").expect("refreshed with the next secret");
    assert_eq!(current_secret(&app, &c).await, "the-admins-own");
    let promoted_before = promotions(&app, &c.setup).await;

    // The same from a background batch.
    assert_eq!(app.patch(&path, &c.setup.admin, json!({"client_secret_next": "another-next"})).await.status, StatusCode::OK);
    rotate_at_provider(&app, &c.setup, "another-next");
    expire_access_token(&app, c.grant).await;
    let ctx = app.ctx.clone();
    let batch = tokio::spawn(async move { grants::refresh_grants(&ctx, &[grant.into()]).await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let set = app.patch(&path, &c.setup.admin, json!({"client_secret": "the-admins-second"})).await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.text);
    assert_eq!(batch.await.expect("task").expect("the batch runs").refreshed, 1, "the next secret worked");
    assert_eq!(current_secret(&app, &c).await, "the-admins-second", "the admin's change wins");
    assert_eq!(promotions(&app, &c.setup).await, promoted_before, "nothing promoted over it");
}
