//! Bring your own tokens: an admin imports a refresh token the configuration's client obtained elsewhere (moving from
//! another system); one refresh at the provider checks it, then the account is authorized as after a consent and
//! its tokens refresh like any grant's. Tokens are minted at the provider stand-in, as the old system held them.

use postbridge_core::connect::grants;
use postbridge_tests::oauth::CONSENTING_USER;
use postbridge_tests::{assert_error, graphql_error_code, TestApp};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

const SCOPE: &str = "openid email offline_access mail";

async fn import(app: &TestApp, key: &str, account: &str, refresh_token: &str) -> postbridge_tests::Reply {
    app.post(&format!("/v1/accounts/{account}/grant"), key, json!({"refresh_token": refresh_token})).await
}

#[tokio::test]
async fn an_imported_refresh_token_is_checked_once_and_then_serves_like_a_consented_grant() {
    let app = postbridge_tests::spawn_app().await;
    let setup = app.oauth_setup().await;
    let inbound = app.oauth_account(&setup, "imap", CONSENTING_USER).await;
    let outbound = app.oauth_account(&setup, "smtp", CONSENTING_USER).await;
    let minted = setup.provider.mint_tokens(&setup.client_id, CONSENTING_USER, SCOPE).expect("the client is registered");

    let before = setup.provider.token_requests("refresh_token");
    let imported = import(&app, &setup.admin, &inbound, &minted.refresh_token).await;
    assert_eq!(imported.status, StatusCode::OK, "{}", imported.text);
    assert_eq!(imported.body["state"], "authorized");
    assert_eq!(setup.provider.token_requests("refresh_token") - before, 1, "checked with one refresh");
    assert!(!imported.text.contains(&minted.refresh_token), "never echoed");
    // The mailbox's other account is linked too, as after a consent; the grant is an ordinary one.
    let other = app.account_json(&setup, &outbound).await;
    assert_eq!((other["state"].clone(), other["grant_id"].clone()), (json!("authorized"), imported.body["grant_id"].clone()));
    let grant = imported.body["grant_id"].as_str().expect("grant").to_owned();
    let view = app.get(&format!("/v1/grants/{grant}"), &setup.admin).await;
    assert_eq!(
        (view.body["status"].clone(), view.body["has_refresh_token"].clone()),
        (json!("valid"), json!(true)),
        "{}",
        view.text
    );
    assert_eq!(view.body["consented_by"], json!(CONSENTING_USER), "the refresh's id_token named the mailbox");
    let event = app
        .sql_text(&format!("SELECT data::text FROM events WHERE event_type = 'grant.connected' AND resource_id = '{grant}'"))
        .await
        .expect("grant.connected");
    assert!(event.contains("\"imported\": true"), "{event}");
    // The provider rotated the token at the check: the old system's copy is spent, the stored one refreshes.
    assert!(!setup.provider.refresh_token_active(&minted.refresh_token));
    app.sql_exec(&format!("UPDATE grants SET expires_at = now() - interval '1 minute', refresh_at = now() - interval '2 minutes' WHERE id = '{grant}'")).await;
    let tenant = Uuid::parse_str(&setup.tenant).expect("tenant");
    grants::access_token(&app.ctx, tenant.into(), Uuid::parse_str(&grant).expect("grant").into()).await.expect("refreshes");
}

#[tokio::test]
async fn a_spent_foreign_or_wrong_mailbox_token_is_refused_and_nothing_is_stored() {
    let app = postbridge_tests::spawn_app().await;
    let setup = app.oauth_setup().await;
    let account = app.oauth_account(&setup, "imap", CONSENTING_USER).await;

    let refused = import(&app, &setup.admin, &account, "not-a-token-the-provider-issued").await;
    assert_error(&refused, StatusCode::UNPROCESSABLE_ENTITY, "refresh_token_rejected");
    assert!(refused.text.contains("invalid_grant"), "the provider's words: {}", refused.text);

    // Another user's token for this mailbox's account: the id_token names someone else.
    let someone_else = setup.provider.mint_tokens(&setup.client_id, "mallory@example.com", SCOPE).expect("minted");
    let wrong = import(&app, &setup.admin, &account, &someone_else.refresh_token).await;
    assert_error(&wrong, StatusCode::UNPROCESSABLE_ENTITY, "wrong_mailbox");
    // The check's refresh rotated it at the provider: the admin is told the token sent is spent, and it is.
    assert!(wrong.text.contains("the one sent no longer works: obtain a new one"), "{}", wrong.text);
    assert!(!setup.provider.refresh_token_active(&someone_else.refresh_token), "the provider rotated it");
    assert!(!refused.text.contains("no longer works"), "a token the provider refused was not replaced: {}", refused.text);
    // A provider that does not rotate leaves the token sent working, and the refusal says nothing of the kind.
    setup.provider.set_rotate_refresh_tokens(false);
    let kept = setup.provider.mint_tokens(&setup.client_id, "eve@example.com", SCOPE).expect("minted");
    let wrong_but_kept = import(&app, &setup.admin, &account, &kept.refresh_token).await;
    assert_error(&wrong_but_kept, StatusCode::UNPROCESSABLE_ENTITY, "wrong_mailbox");
    assert!(!wrong_but_kept.text.contains("no longer works"), "{}", wrong_but_kept.text);
    assert!(setup.provider.refresh_token_active(&kept.refresh_token), "not rotated, still good");
    setup.provider.set_rotate_refresh_tokens(true);

    // An id_token issued to another client names nobody this configuration may trust.
    setup.provider.set_id_token_claims(json!({"aud": "someone-elses-client"}).as_object().cloned());
    let mine = setup.provider.mint_tokens(&setup.client_id, CONSENTING_USER, SCOPE).expect("minted");
    let mismatch = import(&app, &setup.admin, &account, &mine.refresh_token).await;
    assert_error(&mismatch, StatusCode::UNPROCESSABLE_ENTITY, "id_token_mismatch");
    assert!(mismatch.text.contains("no longer works"), "{}", mismatch.text);
    setup.provider.set_id_token_claims(None);

    // A token issued to another client is the provider's to refuse.
    setup.provider.register_client("another-client", Some("x"), &["https://elsewhere.example.com/cb"]);
    let foreign = setup.provider.mint_tokens("another-client", CONSENTING_USER, SCOPE).expect("minted");
    assert_error(
        &import(&app, &setup.admin, &account, &foreign.refresh_token).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "refresh_token_rejected",
    );

    assert_error(&import(&app, &setup.admin, &account, "").await, StatusCode::UNPROCESSABLE_ENTITY, "invalid_refresh_token");
    assert_error(
        &import(&app, &setup.admin, &account, &"x".repeat(9000)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_refresh_token",
    );
    assert_eq!(app.sql_i64("SELECT count(*) FROM grants").await, 0);
    assert_eq!(app.account_json(&setup, &account).await["state"], "draft");
}

#[tokio::test]
async fn only_an_admin_imports_and_only_into_their_tenants_oauth_accounts() {
    let app = postbridge_tests::spawn_app().await;
    let setup = app.oauth_setup().await;
    let account = app.oauth_account(&setup, "imap", CONSENTING_USER).await;
    let minted = setup.provider.mint_tokens(&setup.client_id, CONSENTING_USER, SCOPE).expect("minted");

    let member = app.api_key_with_id(&setup.admin, None, "member").await.1;
    assert_error(&import(&app, &member, &account, &minted.refresh_token).await, StatusCode::NOT_FOUND, "not_found");
    let viewer = app.api_key_with_id(&setup.admin, None, "viewer").await.1;
    assert_error(&import(&app, &viewer, &account, &minted.refresh_token).await, StatusCode::FORBIDDEN, "forbidden");
    let (_, stranger) = app.tenant_with_admin().await;
    assert_error(&import(&app, &stranger, &account, &minted.refresh_token).await, StatusCode::NOT_FOUND, "not_found");
    let password = app.post("/v1/accounts", &setup.admin, TestApp::smtp_account("pw@example.com")).await.id();
    assert_error(
        &import(&app, &setup.admin, &password, &minted.refresh_token).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "not_oauth2",
    );
    assert!(setup.provider.refresh_token_active(&minted.refresh_token), "nothing was sent to the provider");

    // GraphQL does the same.
    let body = app
        .graphql(
            Some(&setup.admin),
            "mutation($id: UUID!, $t: String!) { importGrant(id: $id, input: {refreshToken: $t}) { state } }",
            json!({"id": account, "t": minted.refresh_token}),
        )
        .await;
    assert_eq!(body["data"]["importGrant"]["state"], "AUTHORIZED", "{body}");
    let again = app
        .graphql(
            Some(&setup.admin),
            "mutation($id: UUID!) { importGrant(id: $id, input: {refreshToken: \"spent\"}) { state } }",
            json!({"id": account}),
        )
        .await;
    assert_eq!(graphql_error_code(&again), "refresh_token_rejected", "{again}");
}
