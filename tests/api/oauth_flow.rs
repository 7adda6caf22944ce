//! The user flow end to end: authorize → provider consent → callback → grant → account authorized.

use postbridge_tests::oauth::{CONSENTING_USER, RETURN_ORIGIN};
use postbridge_tests::spawn_app;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn consent_stores_an_encrypted_grant_and_authorizes_both_accounts_of_the_mailbox() {
    let app = spawn_app().await;
    let setup = app.oauth_setup().await;
    let inbound = app.oauth_account(&setup, "imap", CONSENTING_USER).await;
    let outbound = app.oauth_account(&setup, "smtp", CONSENTING_USER).await;

    let outcome = app.consent(&setup, &inbound).await;
    assert_eq!(outcome.status, StatusCode::FOUND, "{}", outcome.body);
    assert!(outcome.location.as_deref().is_some_and(|l| l.starts_with(&format!("{RETURN_ORIGIN}/done?"))), "{outcome:?}");
    assert_eq!(outcome.param("status").as_deref(), Some("success"));
    assert_eq!(outcome.param("account_id").as_deref(), Some(inbound.as_str()));

    let params = setup.provider.last_authorize_params().expect("the provider saw /authorize");
    assert_eq!(params.get("code_challenge_method").map(String::as_str), Some("S256"));
    assert_eq!(params.get("prompt").map(String::as_str), Some("consent"), "no refresh token stored yet");

    let (a, b) = (app.account_json(&setup, &inbound).await, app.account_json(&setup, &outbound).await);
    assert_eq!((a["state"].clone(), b["state"].clone()), (json!("authorized"), json!("authorized")));
    assert!(a["grant_id"].is_string() && a["grant_id"] == b["grant_id"], "one grant serves both: {a} {b}");

    let grant_id = a["grant_id"].as_str().expect("grant id");
    let grant = app.get(&format!("/v1/grants/{grant_id}"), &setup.admin).await;
    assert_eq!(grant.body["status"], json!("valid"));
    assert_eq!(grant.body["has_refresh_token"], json!(true));
    assert_eq!(grant.body["consented_by"], json!(CONSENTING_USER));
    let stored = app.stored_value("grants", "refresh_token", grant_id).await.expect("refresh token stored");
    assert!(stored.starts_with("k1:"), "encrypted at rest");
    assert!(!grant.text.contains("access_token\":\""), "tokens never shown: {}", grant.text);
}
