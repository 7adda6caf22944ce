//! Revocation at the provider (RFC 7009): deleting a grant deletes it here at once and revokes its refresh token
//! where it was issued, when the configuration has a revocation endpoint. The provider's refusal or outage is
//! recorded as an event; the local deletion stands either way. Against the provider stand-in's `/revoke`.

use postbridge_core::secrets;
use postbridge_tests::oauth::OAuthSetup;
use postbridge_tests::{assert_error, TestApp};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

/// A consented grant on a configuration that names the stand-in's revocation endpoint: (grant id, its refresh token).
async fn consented_grant(app: &TestApp, setup: &OAuthSetup) -> (String, String) {
    let revocation = app
        .patch(
            &format!("/v1/token-configs/{}", setup.config_id),
            &setup.admin,
            json!({"revocation_url": setup.provider.revocation_url()}),
        )
        .await;
    assert_eq!(revocation.status, StatusCode::OK, "{}", revocation.text);
    assert_eq!(revocation.body["revocation_url"], json!(setup.provider.revocation_url()));
    let account = app.oauth_account(setup, "imap", "user@example.com").await;
    let outcome = app.consent(setup, &account).await;
    assert_eq!(outcome.param("status").as_deref(), Some("success"), "{outcome:?}");
    let grant = app.account_json(setup, &account).await["grant_id"].as_str().expect("a grant").to_owned();
    let stored = app.stored_value("grants", "refresh_token", &grant).await.expect("a refresh token");
    let tenant = Uuid::parse_str(&setup.tenant).expect("tenant id");
    let refresh = secrets::GRANT_REFRESH_TOKEN
        .open(&app.ctx.cipher, tenant.into(), Uuid::parse_str(&grant).expect("grant id"), &stored)
        .expect("decrypts");
    (grant, refresh)
}

async fn event_data(app: &TestApp, event_type: &str, grant: &str) -> Option<serde_json::Value> {
    let filter = format!("FROM events WHERE event_type = '{event_type}' AND resource_id = '{grant}'");
    if app.sql_i64(&format!("SELECT count(*) {filter}")).await == 0 {
        return None;
    }
    app.sql_text(&format!("SELECT data::text {filter}"))
        .await
        .map(|text| serde_json::from_str(&text).expect("event data is JSON"))
}

#[tokio::test]
async fn a_deleted_grant_is_revoked_at_the_provider_with_the_clients_credentials() {
    let app = postbridge_tests::spawn_app().await;
    let setup = app.oauth_setup().await;
    let (grant, refresh) = consented_grant(&app, &setup).await;
    assert!(setup.provider.refresh_token_active(&refresh));

    let deleted = app.delete(&format!("/v1/grants/{grant}"), &setup.admin).await;
    assert!(deleted.status.is_success(), "{}", deleted.text);
    assert_error(&app.get(&format!("/v1/grants/{grant}"), &setup.admin).await, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(setup.provider.revocations(), vec![(refresh.clone(), Some("refresh_token".to_owned()))]);
    assert!(!setup.provider.refresh_token_active(&refresh), "the provider no longer honours it");
    let data = event_data(&app, "grant.provider_revoked", &grant).await.expect("the outcome is recorded");
    assert_eq!(data["token_type_hint"], "refresh_token");
    assert!(data.get("error").is_none(), "{data}");
}

#[tokio::test]
async fn a_provider_outage_does_not_keep_the_grant_and_is_recorded() {
    let app = postbridge_tests::spawn_app().await;
    let setup = app.oauth_setup().await;
    let (grant, refresh) = consented_grant(&app, &setup).await;
    setup.provider.fail_next_revocations(1);

    let deleted = app.delete(&format!("/v1/grants/{grant}"), &setup.admin).await;
    assert!(deleted.status.is_success(), "{}", deleted.text);
    assert_error(&app.get(&format!("/v1/grants/{grant}"), &setup.admin).await, StatusCode::NOT_FOUND, "not_found");
    let data = event_data(&app, "grant.provider_revocation_failed", &grant).await.expect("the failure is recorded");
    assert!(data["error"].as_str().is_some_and(|e| e.contains("HTTP 503")), "{data}");
    assert!(event_data(&app, "grant.provider_revoked", &grant).await.is_none());
    // Honestly reported: the provider still honours the token, for an admin to revoke there by hand.
    assert!(setup.provider.refresh_token_active(&refresh));
    let events = app.get("/v1/events?types=grant.provider_revocation_failed", &setup.admin).await;
    assert_eq!(events.body["items"].as_array().map(Vec::len), Some(1), "{}", events.text);
}

#[tokio::test]
async fn moving_the_revocation_endpoint_while_grants_exist_needs_the_secret_but_no_new_consent() {
    let app = postbridge_tests::spawn_app().await;
    let setup = app.oauth_setup().await;
    let (grant, _) = consented_grant(&app, &setup).await;
    let path = format!("/v1/token-configs/{}", setup.config_id);
    let elsewhere = format!("{}/revoke-elsewhere", setup.provider.base_url());

    let refused = app.patch(&path, &setup.admin, json!({"revocation_url": elsewhere})).await;
    assert_error(&refused, StatusCode::UNPROCESSABLE_ENTITY, "required");
    assert!(refused.text.contains("client_secret"), "{}", refused.text);
    let moved = app.patch(&path, &setup.admin, json!({"revocation_url": elsewhere, "client_secret": setup.client_secret})).await;
    assert_eq!((moved.status, moved.body["revocation_url"].clone()), (StatusCode::OK, json!(elsewhere)), "{}", moved.text);
    assert_eq!(app.get(&format!("/v1/grants/{grant}"), &setup.admin).await.body["status"], json!("valid"), "no new consent");

    // Clearing it needs nothing: it sends no token anywhere.
    let cleared = app.patch(&path, &setup.admin, json!({"revocation_url": null})).await;
    assert_eq!((cleared.status, cleared.body["revocation_url"].clone()), (StatusCode::OK, json!(null)), "{}", cleared.text);
}

#[tokio::test]
async fn google_configurations_know_their_revocation_endpoint_and_microsoft_has_none() {
    let app = postbridge_tests::spawn_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let google = app
        .post("/v1/token-configs", &admin, json!({"name": "Gmail", "provider": "google", "client_id": "g.apps.googleusercontent.com", "client_secret": "g-secret"}))
        .await;
    assert_eq!(google.status, StatusCode::CREATED, "{}", google.text);
    assert_eq!(google.body["revocation_url"], json!("https://oauth2.googleapis.com/revoke"));
    let microsoft = app.post("/v1/token-configs", &admin, TestApp::microsoft_config()).await;
    assert_eq!(
        (microsoft.status, microsoft.body["revocation_url"].clone()),
        (StatusCode::CREATED, json!(null)),
        "{}",
        microsoft.text
    );
    let bad = app
        .post(
            "/v1/token-configs",
            &admin,
            json!({"name": "x", "provider": "generic", "client_id": "c",
        "token_url": "https://id.example.com/token", "auth_url": "https://id.example.com/authorize", "scopes": ["mail"],
        "revocation_url": "not a url"}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.text);
}

#[tokio::test]
async fn a_configuration_whose_grants_are_still_held_is_not_deleted_under_them() {
    let app = postbridge_tests::spawn_app().await;
    let setup = app.oauth_setup().await;
    let (grant, refresh) = consented_grant(&app, &setup).await;
    let account =
        app.sql_text(&format!("SELECT id::text FROM email_accounts WHERE grant_id = '{grant}'")).await.expect("its account");
    let removed = app.delete(&format!("/v1/accounts/{account}"), &setup.admin).await;
    assert!(removed.status.is_success(), "{}", removed.text);

    // No account uses the configuration, but its grant would go with it, its refresh token live at the provider.
    let config = format!("/v1/token-configs/{}", setup.config_id);
    assert_error(&app.delete(&config, &setup.admin).await, StatusCode::CONFLICT, "token_config_has_grants");
    assert_eq!(app.get(&format!("/v1/grants/{grant}"), &setup.admin).await.status, StatusCode::OK, "the grant stays");
    assert_eq!(app.get(&config, &setup.admin).await.status, StatusCode::OK, "so does its configuration");
    assert!(setup.provider.revocations().is_empty() && setup.provider.refresh_token_active(&refresh));

    // Revoked the way that reaches the provider, the grant no longer holds the configuration.
    assert!(app.delete(&format!("/v1/grants/{grant}"), &setup.admin).await.status.is_success());
    assert!(!setup.provider.refresh_token_active(&refresh));
    let deleted = app.delete(&config, &setup.admin).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
}
