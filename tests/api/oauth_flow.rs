//! The user flow end to end: authorize → provider consent → callback → grant → account authorized.

use std::collections::BTreeMap;

use postbridge_core::secrets::crypto::SecretLocation;
use postbridge_oauth_provider::{pkce_challenge, TokenFailure};
use postbridge_tests::oauth::{ConsentOutcome, OAuthSetup, CONSENTING_USER, RETURN_ORIGIN};
use postbridge_tests::{assert_error, graphql_error_code, spawn_app, TestApp};
use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::{json, Value};
use uuid::Uuid;

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
    // The list (which reads rows by position) shows the grant as GET does.
    assert_eq!(app.get("/v1/grants", &setup.admin).await.body["items"], json!([grant.body]));
}

// ---- helpers ----

const OTHER_USER: &str = "someone.else@example.com";

fn return_url() -> String {
    format!("{RETURN_ORIGIN}/done")
}

/// Rows of a query as JSON (one object per row, in the query's order).
async fn rows(app: &TestApp, sql: &str) -> Vec<Value> {
    let wrapped = format!("SELECT coalesce(jsonb_agg(to_jsonb(r)), '[]'::jsonb)::text AS v FROM ({sql}) r");
    let row = app
        .ctx
        .db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, wrapped))
        .await
        .expect("query runs")
        .expect("one row");
    let text: String = row.try_get("", "v").expect("json text");
    serde_json::from_str::<Vec<Value>>(&text).expect("a JSON array")
}

async fn execute(app: &TestApp, sql: &str) -> u64 {
    app.ctx
        .db
        .execute_raw(Statement::from_string(DbBackend::Postgres, sql.to_owned()))
        .await
        .expect("statement runs")
        .rows_affected()
}

/// What a callback may change: every grant, every account's state and grant, every event.
async fn stored(app: &TestApp) -> Value {
    json!({
        "grants": rows(app, "SELECT * FROM grants ORDER BY id").await,
        "accounts": rows(app, "SELECT id, state, grant_id, last_error FROM email_accounts ORDER BY id").await,
        "events": rows(app, "SELECT * FROM events ORDER BY id").await,
    })
}

#[track_caller]
fn assert_nothing_changed(before: &Value, after: &Value, context: &str) {
    assert_eq!(before, after, "{context}: a failed callback must change nothing stored");
}

async fn events_of(app: &TestApp, tenant: &str) -> Vec<Value> {
    rows(app, &format!("SELECT event_type, resource_type, resource_id, data FROM events WHERE tenant_id = '{tenant}' ORDER BY created_at, id")).await
}

/// `POST .../authorize` as the setup's admin; returns the provider URL.
async fn start(app: &TestApp, setup: &OAuthSetup, account: &str, return_url: Option<&str>) -> String {
    let started = app.authorize(setup, account, return_url).await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.text);
    assert_eq!(started.body["status"], json!("redirect"), "{}", started.text);
    started.body["authorization_url"].as_str().expect("authorization_url").to_owned()
}

/// The browser at the provider: returns where the provider sends it back (the callback URL), without opening it.
async fn at_provider(app: &TestApp, authorization_url: &str) -> String {
    let response = app.http.get(authorization_url).send().await.expect("provider reachable");
    assert_eq!(response.status(), StatusCode::FOUND, "the provider redirects back");
    response.headers().get("location").and_then(|v| v.to_str().ok()).expect("a Location header").to_owned()
}

fn query_of(url: &str) -> BTreeMap<String, String> {
    url::Url::parse(url).expect("a URL").query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

fn query_count(url: &str, name: &str) -> usize {
    url::Url::parse(url).expect("a URL").query_pairs().filter(|(k, _)| k == name).count()
}

/// Replaces (or with `None` removes) one query parameter of a URL.
fn with_param(url: &str, name: &str, value: Option<&str>) -> String {
    let mut parsed = url::Url::parse(url).expect("a URL");
    let kept: Vec<(String, String)> =
        parsed.query_pairs().filter(|(k, _)| k != name).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    {
        let mut query = parsed.query_pairs_mut();
        query.clear();
        for (k, v) in &kept {
            query.append_pair(k, v);
        }
        if let Some(value) = value {
            query.append_pair(name, value);
        }
    }
    parsed.to_string()
}

#[track_caller]
fn assert_failed_with(outcome: &ConsentOutcome, reason: &str, account: &str) {
    assert_eq!(outcome.status, StatusCode::FOUND, "{outcome:?}");
    assert!(outcome.location.as_deref().is_some_and(|l| l.starts_with(&format!("{RETURN_ORIGIN}/done?"))), "{outcome:?}");
    assert_eq!(outcome.param("status").as_deref(), Some("error"), "{outcome:?}");
    assert_eq!(outcome.param("reason").as_deref(), Some(reason), "{outcome:?}");
    assert_eq!(outcome.param("account_id").as_deref(), Some(account), "{outcome:?}");
}

/// A callback that cannot be tied to any authorization: a 400 page naming the reason, no redirect.
#[track_caller]
fn assert_rejected_page(outcome: &ConsentOutcome, reason: &str) {
    assert_eq!(outcome.status, StatusCode::BAD_REQUEST, "{outcome:?}");
    assert!(outcome.location.is_none(), "no redirect without a known state: {outcome:?}");
    assert!(outcome.body.contains(reason), "the page names the reason {reason}: {}", outcome.body);
}

async fn grant_id_of(app: &TestApp, setup: &OAuthSetup, account: &str) -> String {
    let body = app.account_json(setup, account).await;
    body["grant_id"].as_str().unwrap_or_else(|| panic!("no grant on {body}")).to_owned()
}

fn decrypt(app: &TestApp, tenant: &str, table: &str, column: &str, row: &str, stored: &str) -> String {
    let location = SecretLocation {
        tenant_id: Uuid::parse_str(tenant).expect("tenant uuid").into(),
        table,
        column,
        row_id: Uuid::parse_str(row).expect("row uuid"),
    };
    app.ctx.cipher.decrypt(location, stored).expect("decrypts with the row's location")
}

/// A setup with an inbound and an outbound account of the consenting user's mailbox.
async fn mailbox(app: &TestApp) -> (OAuthSetup, String, String) {
    let setup = app.oauth_setup().await;
    let inbound = app.oauth_account(&setup, "imap", CONSENTING_USER).await;
    let outbound = app.oauth_account(&setup, "smtp", CONSENTING_USER).await;
    (setup, inbound, outbound)
}

// ---- callback failures ----

#[tokio::test]
async fn declined_consent_redirects_with_access_denied_and_stores_nothing() {
    let app = spawn_app().await;
    let (setup, inbound, _) = mailbox(&app).await;
    setup.provider.set_deny_consent(true);
    let before = stored(&app).await;

    let outcome = app.consent(&setup, &inbound).await;
    assert_failed_with(&outcome, "access_denied", &inbound);
    assert_eq!(setup.provider.token_requests("authorization_code"), 0, "nothing to exchange");
    assert_nothing_changed(&before, &stored(&app).await, "access_denied");
    assert_eq!(app.account_json(&setup, &inbound).await["state"], json!("draft"));
}

#[tokio::test]
async fn a_rejected_client_secret_fails_re_consent_with_invalid_client_and_keeps_the_existing_grant() {
    let app = spawn_app().await;
    let (setup, inbound, _) = mailbox(&app).await;
    assert_eq!(app.consent(&setup, &inbound).await.param("status").as_deref(), Some("success"));
    let before = stored(&app).await;

    setup.provider.fail_next_token_requests(
        1,
        TokenFailure::InvalidClient { description: "AADSTS7000222: The provided client secret keys are expired.".to_owned() },
    );
    let outcome = app.consent(&setup, &inbound).await;
    assert_failed_with(&outcome, "invalid_client", &inbound);
    assert_eq!(setup.provider.pending_token_failures(), 0, "the code exchange was attempted");
    assert_nothing_changed(&before, &stored(&app).await, "invalid_client");

    // Without a return URL the page says who must act.
    setup.provider.fail_next_token_requests(
        1,
        TokenFailure::InvalidClient { description: "AADSTS7000215: Invalid client secret provided.".to_owned() },
    );
    let url = start(&app, &setup, &inbound, None).await;
    let page = app.follow_authorization(&url).await;
    assert_rejected_page(&page, "invalid_client");
    assert!(page.body.contains("admin") && page.body.contains("secret"), "tells an admin to fix the secret: {}", page.body);
    assert!(!page.body.contains(&setup.client_secret), "never shows the secret");
    assert_nothing_changed(&before, &stored(&app).await, "invalid_client without return URL");
}

#[tokio::test]
async fn a_token_endpoint_outage_fails_with_provider_unavailable_and_stores_nothing() {
    let app = spawn_app().await;
    let (setup, inbound, _) = mailbox(&app).await;
    let before = stored(&app).await;

    setup.provider.fail_next_token_requests(1, TokenFailure::ServerError);
    let outcome = app.consent(&setup, &inbound).await;
    assert_failed_with(&outcome, "provider_unavailable", &inbound);
    assert_eq!(setup.provider.token_requests("authorization_code"), 1);
    assert_nothing_changed(&before, &stored(&app).await, "provider_unavailable");
    assert_eq!(app.account_json(&setup, &inbound).await["state"], json!("draft"));

    // A new attempt once the provider is back succeeds.
    assert_eq!(app.consent(&setup, &inbound).await.param("status").as_deref(), Some("success"));
}

#[tokio::test]
async fn a_consent_without_refresh_token_fails_with_no_refresh_token_and_says_what_to_do() {
    let app = spawn_app().await;
    let (setup, inbound, _) = mailbox(&app).await;
    setup.provider.set_issue_refresh_token(false);
    let before = stored(&app).await;

    let outcome = app.consent(&setup, &inbound).await;
    assert_failed_with(&outcome, "no_refresh_token", &inbound);
    assert_nothing_changed(&before, &stored(&app).await, "no_refresh_token");

    let url = start(&app, &setup, &inbound, None).await;
    let page = app.follow_authorization(&url).await;
    assert_rejected_page(&page, "no_refresh_token");
    assert!(page.body.contains("offline"), "names offline access: {}", page.body);
    assert!(page.body.contains("sign in again"), "says to sign in again: {}", page.body);
    assert_nothing_changed(&before, &stored(&app).await, "no_refresh_token without return URL");
}

#[tokio::test]
async fn a_callback_without_state_is_refused_and_stores_nothing() {
    let app = spawn_app().await;
    let (setup, inbound, _) = mailbox(&app).await;
    let before = stored(&app).await;

    let callback = at_provider(&app, &start(&app, &setup, &inbound, Some(&return_url())).await).await;
    let stateless = with_param(&callback, "state", None);
    assert!(!stateless.contains("state="), "{stateless}");
    assert_rejected_page(&app.open_callback(&stateless).await, "invalid_state");
    assert_rejected_page(&app.open_callback(&with_param(&callback, "state", Some(""))).await, "invalid_state");
    assert_rejected_page(&app.open_callback(&format!("{}/oauth/callback", app.address)).await, "invalid_state");
    assert_eq!(setup.provider.token_requests("authorization_code"), 0, "no code is exchanged without a state");
    assert_nothing_changed(&before, &stored(&app).await, "no state");
}

#[tokio::test]
async fn a_tampered_state_is_refused_and_stores_nothing() {
    let app = spawn_app().await;
    let (setup, inbound, _) = mailbox(&app).await;
    let before = stored(&app).await;

    let callback = at_provider(&app, &start(&app, &setup, &inbound, Some(&return_url())).await).await;
    let state = query_of(&callback).get("state").cloned().expect("state in the callback");
    let mut tampered = state.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    for forged in [tampered.as_str(), &state[..state.len() - 1], &format!("{state}x"), "not-a-state"] {
        assert_rejected_page(&app.open_callback(&with_param(&callback, "state", Some(forged))).await, "invalid_state");
    }
    assert_eq!(setup.provider.token_requests("authorization_code"), 0, "no code is exchanged for a forged state");
    assert_nothing_changed(&before, &stored(&app).await, "tampered state");

    // The genuine state was not burnt by the forgeries.
    let genuine = app.open_callback(&callback).await;
    assert_eq!(genuine.param("status").as_deref(), Some("success"), "{genuine:?}");
}

#[tokio::test]
async fn a_replayed_callback_goes_back_to_the_app_as_state_used_and_leaves_the_first_grant_unchanged() {
    let app = spawn_app().await;
    let (setup, inbound, _) = mailbox(&app).await;

    let callback = at_provider(&app, &start(&app, &setup, &inbound, Some(&return_url())).await).await;
    let first = app.open_callback(&callback).await;
    assert_eq!(first.param("status").as_deref(), Some("success"), "{first:?}");
    let after_first = stored(&app).await;
    assert_eq!(after_first["grants"].as_array().map(Vec::len), Some(1));

    let replay = app.open_callback(&callback).await;
    assert_failed_with(&replay, "state_used", &inbound);
    assert_eq!(setup.provider.token_requests("authorization_code"), 1, "the replayed code never reaches the provider");
    assert_nothing_changed(&after_first, &stored(&app).await, "replay");
    let grant = app.get(&format!("/v1/grants/{}", grant_id_of(&app, &setup, &inbound).await), &setup.admin).await;
    assert_eq!(grant.body["status"], json!("valid"), "{}", grant.text);
}

#[tokio::test]
async fn an_expired_state_fails_with_state_expired_and_stores_nothing() {
    let app = spawn_app().await;
    let (setup, inbound, _) = mailbox(&app).await;
    let before = stored(&app).await;

    let callback = at_provider(&app, &start(&app, &setup, &inbound, Some(&return_url())).await).await;
    assert_eq!(execute(&app, "UPDATE oauth_states SET expires_at = now() - interval '1 second'").await, 1);
    let outcome = app.open_callback(&callback).await;
    assert_failed_with(&outcome, "state_expired", &inbound);
    assert_eq!(setup.provider.token_requests("authorization_code"), 0, "an expired state exchanges no code");
    assert_nothing_changed(&before, &stored(&app).await, "expired state");
    // Expired is also used up.
    assert_failed_with(&app.open_callback(&callback).await, "state_used", &inbound);
}

#[tokio::test]
async fn sign_in_states_are_deleted_a_day_after_they_expire() {
    let app = spawn_app().await;
    let (setup, inbound, _) = mailbox(&app).await;
    for _ in 0..3 {
        start(&app, &setup, &inbound, None).await;
    }
    let ids = |sql: &str| {
        format!("UPDATE oauth_states SET expires_at = {sql} WHERE id = (SELECT id FROM oauth_states WHERE expires_at > now() LIMIT 1)")
    };
    assert_eq!(execute(&app, &ids("now() - interval '25 hours'")).await, 1);
    assert_eq!(execute(&app, &ids("now() - interval '23 hours'")).await, 1);
    let purged = postbridge_core::connect::grants::purge_ended_states(&app.ctx).await.expect("purges");
    assert_eq!(purged, 1, "only the one that ended over a day ago");
    let left = app.sql_text("SELECT string_agg((expires_at > now())::text, ',' ORDER BY expires_at) FROM oauth_states").await;
    assert_eq!(left.as_deref(), Some("false,true"), "the recently expired one still answers state_expired; the live one works");
}

#[tokio::test]
async fn another_tenants_state_only_ever_affects_that_tenants_account() {
    let app = spawn_app().await;
    let (a, a_inbound, a_outbound) = mailbox(&app).await;
    let (b, b_inbound, b_outbound) = mailbox(&app).await;
    let b_other = app.oauth_account(&b, "imap", OTHER_USER).await;
    let before = stored(&app).await;

    // A code issued in A's flow presented with B's state: B's configuration cannot redeem it; nothing stored.
    let a_callback = at_provider(&app, &start(&app, &a, &a_inbound, Some(&return_url())).await).await;
    let b_callback = at_provider(&app, &start(&app, &b, &b_inbound, Some(&return_url())).await).await;
    let b_state = query_of(&b_callback).get("state").cloned().expect("B's state");
    let swapped = app.open_callback(&with_param(&a_callback, "state", Some(&b_state))).await;
    assert_failed_with(&swapped, "token_exchange_failed", &b_inbound);
    assert_nothing_changed(&before, &stored(&app).await, "A's code with B's state");
    // B's state was spent by that attempt; B's own callback now is a replay, sent back to B's app.
    assert_failed_with(&app.open_callback(&b_callback).await, "state_used", &b_inbound);

    // B consents for real: only B's mailbox is connected.
    let outcome = app.consent(&b, &b_inbound).await;
    assert_eq!(outcome.param("status").as_deref(), Some("success"), "{outcome:?}");
    assert_eq!(outcome.param("account_id").as_deref(), Some(b_inbound.as_str()));
    for account in [&a_inbound, &a_outbound] {
        let body = app.account_json(&a, account).await;
        assert_eq!((body["state"].clone(), body["grant_id"].clone()), (json!("draft"), Value::Null), "A untouched: {body}");
    }
    assert_eq!(app.account_json(&b, &b_other).await["state"], json!("draft"), "another mailbox of B is untouched");
    let b_grant = grant_id_of(&app, &b, &b_outbound).await;
    assert_eq!(grant_id_of(&app, &b, &b_inbound).await, b_grant);
    assert!(events_of(&app, &a.tenant).await.is_empty(), "no event in A");
    assert_eq!(app.get("/v1/grants", &a.admin).await.body["items"], json!([]), "A has no grant");
    assert_error(&app.get(&format!("/v1/grants/{b_grant}"), &a.admin).await, StatusCode::NOT_FOUND, "not_found");
    let grants_of_a = rows(&app, &format!("SELECT id FROM grants WHERE tenant_id = '{}'", a.tenant)).await;
    assert!(grants_of_a.is_empty(), "{grants_of_a:?}");

    // A's own (still unused) callback works and stays in A.
    let a_outcome = app.open_callback(&a_callback).await;
    assert_eq!(a_outcome.param("status").as_deref(), Some("success"), "{a_outcome:?}");
    assert_ne!(grant_id_of(&app, &a, &a_inbound).await, b_grant, "each tenant has its own grant");
    assert_eq!(grant_id_of(&app, &b, &b_inbound).await, b_grant, "B's grant is unchanged by A's consent");
}

// ---- who consented ----

#[tokio::test]
async fn consent_by_another_user_fails_with_wrong_mailbox_naming_both_and_stores_nothing() {
    let app = spawn_app().await;
    let (setup, inbound, _) = mailbox(&app).await;
    setup.provider.set_consenting_user(OTHER_USER);
    let before = stored(&app).await;
    // No grant and no event; only the account's last_error says who consented and who was expected (its state stays).
    let mut expected = before.clone();
    for account in expected["accounts"].as_array_mut().expect("accounts") {
        if account["id"] == json!(inbound) {
            account["last_error"] = json!(postbridge_core::observe::hints::wrong_mailbox_message(OTHER_USER, CONSENTING_USER));
        }
    }

    let outcome = app.consent(&setup, &inbound).await;
    assert_failed_with(&outcome, "wrong_mailbox", &inbound);
    assert_nothing_changed(&expected, &stored(&app).await, "wrong_mailbox");

    let page = app.follow_authorization(&start(&app, &setup, &inbound, None).await).await;
    assert_rejected_page(&page, "wrong_mailbox");
    assert!(page.body.contains(OTHER_USER) && page.body.contains(CONSENTING_USER), "names both identities: {}", page.body);
    assert_nothing_changed(&expected, &stored(&app).await, "wrong_mailbox without return URL");
}

#[tokio::test]
async fn consent_by_another_user_connects_a_shared_mailbox_and_records_who_consented() {
    let app = spawn_app().await;
    let (setup, inbound, outbound) = mailbox(&app).await;
    let shared = app.patch(&format!("/v1/accounts/{inbound}"), &setup.admin, json!({"shared_mailbox": true})).await;
    assert_eq!((shared.status, shared.body["shared_mailbox"].clone()), (StatusCode::OK, json!(true)), "{}", shared.text);
    setup.provider.set_consenting_user(OTHER_USER);

    let outcome = app.consent(&setup, &inbound).await;
    assert_eq!(outcome.param("status").as_deref(), Some("success"), "{outcome:?}");
    let grant_id = grant_id_of(&app, &setup, &inbound).await;
    let grant = app.get(&format!("/v1/grants/{grant_id}"), &setup.admin).await;
    assert_eq!(grant.body["consented_by"], json!(OTHER_USER), "{}", grant.text);
    assert_eq!(grant.body["subject"], json!(CONSENTING_USER), "the grant serves the shared mailbox: {}", grant.text);
    assert_eq!(grant.body["status"], json!("valid"));
    assert_eq!(grant_id_of(&app, &setup, &outbound).await, grant_id, "the mailbox's other account shares the grant");
    let events = events_of(&app, &setup.tenant).await;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event_type"].as_str()).collect();
    assert_eq!(kinds, ["account.authorized", "account.authorized", "grant.connected"], "{events:?}");
    assert_eq!(events[2]["data"]["consented_by"], json!(OTHER_USER));
}

// ---- one grant per mailbox ----

#[tokio::test]
async fn an_account_created_after_consent_is_authorized_at_once_with_the_same_grant() {
    let app = spawn_app().await;
    let setup = app.oauth_setup().await;
    let inbound = app.oauth_account(&setup, "imap", CONSENTING_USER).await;
    let other = app.oauth_account(&setup, "imap", OTHER_USER).await;
    assert_eq!(app.consent(&setup, &inbound).await.param("status").as_deref(), Some("success"));
    let grant_id = grant_id_of(&app, &setup, &inbound).await;
    assert_eq!(app.account_json(&setup, &other).await["state"], json!("draft"), "another mailbox needs its own consent");

    let outbound = app.oauth_account(&setup, "smtp", CONSENTING_USER).await;
    let body = app.account_json(&setup, &outbound).await;
    assert_eq!(body["state"], json!("authorized"), "{body}");
    assert_eq!(body["grant_id"], json!(grant_id), "{body}");
    assert_eq!(rows(&app, "SELECT id FROM grants").await.len(), 1, "no second grant");
    assert_eq!(setup.provider.token_requests("authorization_code"), 1, "one consent serves both");
}

#[tokio::test]
async fn re_consent_replaces_the_grants_tokens_in_place() {
    let app = spawn_app().await;
    let (setup, inbound, outbound) = mailbox(&app).await;
    assert_eq!(app.consent(&setup, &inbound).await.param("status").as_deref(), Some("success"));
    let grant_id = grant_id_of(&app, &setup, &inbound).await;
    let old_refresh = app.stored_value("grants", "refresh_token", &grant_id).await.expect("refresh token");
    let old_access = app.stored_value("grants", "access_token", &grant_id).await.expect("access token");

    // The grant died meanwhile (consent withdrawn at the provider): re-consent brings it back.
    execute(&app, &format!("UPDATE grants SET status = 'reauth_required', last_error = 'invalid_grant' WHERE id = '{grant_id}'"))
        .await;
    execute(
        &app,
        &format!("UPDATE email_accounts SET state = 'error', last_error = 'sign-in needed again' WHERE grant_id = '{grant_id}'"),
    )
    .await;

    let outcome = app.consent(&setup, &outbound).await;
    assert_eq!(outcome.param("status").as_deref(), Some("success"), "{outcome:?}");
    assert_eq!(grant_id_of(&app, &setup, &inbound).await, grant_id, "same grant id");
    assert_eq!(grant_id_of(&app, &setup, &outbound).await, grant_id, "same grant id");
    assert_eq!(rows(&app, "SELECT id FROM grants").await.len(), 1);
    let new_refresh = app.stored_value("grants", "refresh_token", &grant_id).await.expect("refresh token");
    let new_access = app.stored_value("grants", "access_token", &grant_id).await.expect("access token");
    assert_ne!(new_refresh, old_refresh);
    assert!(new_refresh.starts_with("k1:"));
    let plain = |stored: &str, column: &str| decrypt(&app, &setup.tenant, "grants", column, &grant_id, stored);
    assert_ne!(
        plain(&new_refresh, "refresh_token"),
        plain(&old_refresh, "refresh_token"),
        "the new consent's refresh token is stored"
    );
    assert_ne!(
        plain(&new_access, "access_token"),
        plain(&old_access, "access_token"),
        "the new consent's access token is stored"
    );
    let grant = app.get(&format!("/v1/grants/{grant_id}"), &setup.admin).await;
    assert_eq!((grant.body["status"].clone(), grant.body["last_error"].clone()), (json!("valid"), Value::Null), "{}", grant.text);
    for account in [&inbound, &outbound] {
        let body = app.account_json(&setup, account).await;
        assert_eq!((body["state"].clone(), body["last_error"].clone()), (json!("authorized"), Value::Null), "{body}");
    }
    let connected = events_of(&app, &setup.tenant).await.iter().filter(|e| e["event_type"] == json!("grant.connected")).count();
    assert_eq!(connected, 2, "each consent is recorded");
}

// ---- the authorization URL ----

#[tokio::test]
async fn prompt_consent_is_sent_until_a_refresh_token_is_stored() {
    let app = spawn_app().await;
    let (setup, inbound, outbound) = mailbox(&app).await;
    let first = start(&app, &setup, &inbound, None).await;
    assert_eq!(query_of(&first).get("prompt").map(String::as_str), Some("consent"), "{first}");
    assert_eq!(app.follow_authorization(&first).await.status, StatusCode::OK);

    let later = start(&app, &setup, &outbound, None).await;
    assert_eq!(query_of(&later).get("prompt"), None, "a refresh token is stored: {later}");
    for url in [&first, &later] {
        let params = query_of(url);
        assert_eq!(params.get("code_challenge_method").map(String::as_str), Some("S256"), "{url}");
        assert_eq!(params.get("code_challenge").map(String::len), Some(43), "{url}");
        assert!(params.get("state").is_some_and(|s| s.len() >= 32), "{url}");
        assert_eq!(params.get("response_type").map(String::as_str), Some("code"), "{url}");
        assert_eq!(params.get("client_id"), Some(&setup.client_id), "{url}");
        assert_eq!(params.get("redirect_uri"), Some(&format!("{}/oauth/callback", app.address)), "{url}");
    }
    assert_ne!(query_of(&first).get("state"), query_of(&later).get("state"), "a fresh state per attempt");
    assert_ne!(
        query_of(&first).get("code_challenge"),
        query_of(&later).get("code_challenge"),
        "a fresh PKCE verifier per attempt"
    );
    // Without a usable refresh token the consent screen is needed again.
    execute(&app, "UPDATE grants SET refresh_token = NULL").await;
    let again = start(&app, &setup, &outbound, None).await;
    assert_eq!(query_of(&again).get("prompt").map(String::as_str), Some("consent"), "{again}");
}

#[tokio::test]
async fn a_prompt_set_in_the_configuration_is_sent_as_is() {
    let app = spawn_app().await;
    let (setup, inbound, outbound) = mailbox(&app).await;
    let patched = app
        .patch(
            &format!("/v1/token-configs/{}", setup.config_id),
            &setup.admin,
            json!({"extra_auth_params": {"prompt": "select_account"}}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);

    let first = start(&app, &setup, &inbound, None).await;
    assert_eq!(query_count(&first, "prompt"), 1, "{first}");
    assert_eq!(query_of(&first).get("prompt").map(String::as_str), Some("select_account"), "{first}");
    assert_eq!(app.follow_authorization(&first).await.status, StatusCode::OK);
    let later = start(&app, &setup, &outbound, None).await;
    assert_eq!(query_of(&later).get("prompt").map(String::as_str), Some("select_account"), "{later}");
}

#[tokio::test]
async fn a_microsoft_authorization_url_names_the_directory_the_login_and_the_preset_scopes() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let config = app.post("/v1/token-configs", &admin, TestApp::microsoft_config()).await;
    assert_eq!(config.status, StatusCode::CREATED, "{}", config.text);
    let login = "alice@contoso.com";
    let create = |login: &str, shared: bool| json!({"protocol": "imap", "auth": "oauth2", "login": login, "token_config_id": config.id(), "shared_mailbox": shared});
    let account = app.post("/v1/accounts", &admin, create(login, false)).await;
    assert_eq!(account.status, StatusCode::CREATED, "{}", account.text);
    let started = app.post(&format!("/v1/accounts/{}/authorize", account.id()), &admin, json!({})).await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.text);
    let url = started.body["authorization_url"].as_str().expect("authorization_url");

    let parsed = url::Url::parse(url).expect("a URL");
    assert_eq!(parsed.scheme(), "https");
    assert_eq!(parsed.host_str(), Some("login.microsoftonline.com"), "{url}");
    assert_eq!(parsed.path(), "/contoso.onmicrosoft.com/oauth2/v2.0/authorize", "{url}");
    let params = query_of(url);
    assert_eq!(params.get("login_hint").map(String::as_str), Some(login), "{url}");
    let scopes: Vec<&str> = params.get("scope").map(|s| s.split(' ').collect()).unwrap_or_default();
    for preset in postbridge_core::connect::presets::MICROSOFT_USER_SCOPES {
        assert!(scopes.contains(preset), "scope {preset} missing: {url}");
    }
    assert_eq!(params.get("client_id").map(String::as_str), Some("11111111-2222-3333-4444-555555555555"));
    assert_eq!(params.get("code_challenge_method").map(String::as_str), Some("S256"));
    assert!(params.get("state").is_some_and(|s| !s.is_empty()));
    assert_eq!(params.get("prompt").map(String::as_str), Some("consent"), "no refresh token stored yet");
    assert!(!url.contains("ms-client-secret-value"), "the secret never goes to the browser");

    // A shared mailbox is signed into by someone else: no login hint then.
    let shared = app.post("/v1/accounts", &admin, create("shared@contoso.com", true)).await;
    assert_eq!(shared.status, StatusCode::CREATED, "{}", shared.text);
    let started = app.post(&format!("/v1/accounts/{}/authorize", shared.id()), &admin, json!({})).await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.text);
    assert_eq!(query_of(started.body["authorization_url"].as_str().expect("url")).get("login_hint"), None);
    assert_eq!(rows(&app, &format!("SELECT id FROM oauth_states WHERE tenant_id = '{tenant}'")).await.len(), 2);
}

#[tokio::test]
async fn a_google_authorization_url_asks_for_offline_access_with_consent() {
    let app = spawn_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let config = app
        .post(
            "/v1/token-configs",
            &admin,
            json!({"name": "Gmail", "provider": "google", "client_id": "1234.apps.googleusercontent.com", "client_secret": "google-secret-value"}),
        )
        .await;
    assert_eq!(config.status, StatusCode::CREATED, "{}", config.text);
    let account = app
        .post(
            "/v1/accounts",
            &admin,
            json!({"protocol": "imap", "auth": "oauth2", "login": "bob@gmail.com", "token_config_id": config.id()}),
        )
        .await;
    assert_eq!(account.status, StatusCode::CREATED, "{}", account.text);
    let started = app.post(&format!("/v1/accounts/{}/authorize", account.id()), &admin, json!({})).await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.text);
    let url = started.body["authorization_url"].as_str().expect("authorization_url");

    assert!(url.starts_with("https://accounts.google.com/o/oauth2/v2/auth?"), "{url}");
    let params = query_of(url);
    assert_eq!(params.get("access_type").map(String::as_str), Some("offline"), "{url}");
    assert_eq!(params.get("prompt").map(String::as_str), Some("consent"), "{url}");
    assert_eq!(query_count(url, "prompt"), 1, "{url}");
    assert!(params.get("scope").is_some_and(|s| s.split(' ').any(|s| s == "https://mail.google.com/")), "{url}");
    assert_eq!(params.get("code_challenge_method").map(String::as_str), Some("S256"));
    assert!(params.get("state").is_some_and(|s| !s.is_empty()));
}

#[tokio::test]
async fn the_authorize_state_is_stored_hashed_with_an_encrypted_pkce_verifier_and_bound_to_the_account() {
    let app = spawn_app().await;
    let (setup, inbound, _) = mailbox(&app).await;
    let url = start(&app, &setup, &inbound, Some(&return_url())).await;
    let params = query_of(&url);
    let state = params.get("state").cloned().expect("state");
    let challenge = params.get("code_challenge").cloned().expect("code_challenge");

    let states = rows(&app, "SELECT * FROM oauth_states").await;
    assert_eq!(states.len(), 1);
    let row = &states[0];
    let whole = row.to_string();
    assert!(!whole.contains(&state), "the state itself is never stored: {whole}");
    let hash = row["state_hash"].as_str().expect("state_hash");
    assert!(hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()), "a SHA-256 hex digest: {hash}");
    assert_eq!(row["tenant_id"], json!(setup.tenant));
    assert_eq!(row["account_id"], json!(inbound));
    assert_eq!(row["token_config_id"], json!(setup.config_id));
    assert_eq!(row["return_url"], json!(return_url()));
    assert_eq!(row["consumed_at"], Value::Null);
    let verifier_stored = row["pkce_verifier"].as_str().expect("pkce_verifier");
    assert!(verifier_stored.starts_with("k1:"), "encrypted: {verifier_stored}");
    let id = row["id"].as_str().expect("id");
    let verifier = decrypt(&app, &setup.tenant, "oauth_states", "pkce_verifier", id, verifier_stored);
    assert!(!whole.contains(&verifier), "the verifier is not stored in clear");
    assert_eq!(pkce_challenge(&verifier), challenge, "the stored verifier is the one behind the URL's challenge");
    let lifetime = rows(&app, "SELECT extract(epoch FROM expires_at - created_at)::int AS s FROM oauth_states").await;
    assert!(lifetime[0]["s"].as_i64().is_some_and(|s| s > 0 && s <= 3600), "short-lived: {lifetime:?}");

    let outcome = app.follow_authorization(&url).await;
    assert_eq!(outcome.param("status").as_deref(), Some("success"), "{outcome:?}");
    let consumed = rows(&app, "SELECT consumed_at FROM oauth_states").await;
    assert!(consumed[0]["consumed_at"].is_string(), "used up: {consumed:?}");
}

// ---- return URLs ----

#[tokio::test]
async fn a_return_url_outside_the_allowed_origins_is_refused_and_stores_nothing() {
    let app = spawn_app().await;
    let (setup, inbound, _) = mailbox(&app).await;
    let before = stored(&app).await;
    for bad in [
        "https://evil.example.net/done",
        "https://app.example.com.evil.net/done",
        "http://app.example.com/done",
        "https://app.example.com:8443/done",
        "javascript:alert(1)",
    ] {
        let reply = app.authorize(&setup, &inbound, Some(bad)).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {}", reply.text);
        assert!(matches!(reply.code(), "return_url_not_allowed" | "invalid_url"), "{bad}: {}", reply.text);
        assert_eq!(reply.body["field"], json!("return_url"), "{}", reply.text);
    }
    assert_error(
        &app.authorize(&setup, &inbound, Some("https://evil.example.net/done")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "return_url_not_allowed",
    );
    assert!(rows(&app, "SELECT id FROM oauth_states").await.is_empty(), "no state was issued");
    assert!(setup.provider.last_authorize_params().is_none());
    assert_nothing_changed(&before, &stored(&app).await, "refused return URL");
    // Allowed: any path on the allowed origin.
    assert_eq!(
        app.authorize(&setup, &inbound, Some(&format!("{RETURN_ORIGIN}/settings/mail?tab=1"))).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_app_reads_only_postbridges_answer_on_its_return_url() {
    let app = spawn_app().await;
    let (setup, inbound, _) = mailbox(&app).await;
    // A caller may not plant an answer of its own for the app to read first.
    let planted = format!("{RETURN_ORIGIN}/done?status=success&reason=connected");
    assert_error(
        &app.authorize(&setup, &inbound, Some(&planted)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "return_url_reserved_parameter",
    );
    assert!(rows(&app, "SELECT id FROM oauth_states").await.is_empty(), "no state was issued");

    // A state stored with one before that rule (or written by hand) still gets only Postbridge's answer back.
    let url = start(&app, &setup, &inbound, Some(&format!("{RETURN_ORIGIN}/done?tab=1"))).await;
    app.sql_exec(&format!("UPDATE oauth_states SET return_url = '{RETURN_ORIGIN}/done?status=success&tab=1&account_id=someone'"))
        .await;
    setup.provider.set_deny_consent(true);
    let denied = app.follow_authorization(&url).await;
    let location = url::Url::parse(denied.location.as_deref().expect("back to the app")).expect("a URL");
    let pairs: Vec<(String, String)> = location.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let expected = [("tab", "1"), ("status", "error"), ("reason", "access_denied"), ("account_id", inbound.as_str())];
    assert_eq!(
        pairs,
        expected.map(|(k, v)| (k.to_owned(), v.to_owned())),
        "the app's own parameter kept, each answer once: {location}"
    );
}

#[tokio::test]
async fn without_a_return_url_the_callback_answers_an_html_page() {
    let app = spawn_app().await;
    let (setup, inbound, _) = mailbox(&app).await;

    setup.provider.set_deny_consent(true);
    let denied = app.follow_authorization(&start(&app, &setup, &inbound, None).await).await;
    assert_rejected_page(&denied, "access_denied");
    assert!(denied.body.starts_with("<!doctype html>"), "{}", denied.body);

    setup.provider.set_deny_consent(false);
    let connected = app.follow_authorization(&start(&app, &setup, &inbound, None).await).await;
    assert_eq!(connected.status, StatusCode::OK, "{connected:?}");
    assert!(connected.location.is_none());
    assert!(connected.body.starts_with("<!doctype html>") && connected.body.contains("connected"), "{}", connected.body);
    assert!(!connected.body.contains("<script"), "{}", connected.body);
    assert_eq!(app.account_json(&setup, &inbound).await["state"], json!("authorized"));
}

#[tokio::test]
async fn an_error_description_in_the_callback_link_is_shown_bounded_and_clean() {
    let app = spawn_app().await;
    let (setup, inbound, _) = mailbox(&app).await;
    let authorization = start(&app, &setup, &inbound, None).await;
    let state = query_of(&authorization).get("state").expect("state").clone();
    // Whoever holds a sign-in's link can write its error description: a NUL and 4 KiB of text.
    let written = format!("call%2001234%00{}", "x".repeat(4096));
    let link = format!("{}/oauth/callback?state={state}&error=server_error&error_description={written}", app.address);
    let page = app.open_callback(&link).await;
    assert_rejected_page(&page, "provider_error");
    assert!(!page.body.contains('\0') && page.body.contains("call 01234\u{fffd}"), "{}", page.body);
    assert!(!page.body.contains(&"x".repeat(600)), "cut to a few hundred bytes");
    assert_eq!(app.account_json(&setup, &inbound).await["state"], json!("draft"));
}

#[tokio::test]
async fn allowed_return_origins_must_be_bare_origins() {
    let app = spawn_app().await;
    let setup = app.oauth_setup().await;
    let path = format!("/v1/tenants/{}", setup.tenant);
    for bad in ["https://app.example.com/done", "app.example.com", "ftp://app.example.com", "https://app.example.com/?x=1"] {
        let reply = app.patch(&path, &app.operator_token(), json!({"allowed_return_origins": [RETURN_ORIGIN, bad]})).await;
        assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_origin");
        assert_eq!(reply.body["field"], json!("allowed_return_origins"), "{}", reply.text);
    }
    let tenant = app.get(&path, &app.operator_token()).await;
    assert_eq!(tenant.body["allowed_return_origins"], json!([RETURN_ORIGIN]), "unchanged: {}", tenant.text);
}

// ---- who may authorize ----

#[tokio::test]
async fn only_oauth2_accounts_can_be_authorized() {
    let app = spawn_app().await;
    let setup = app.oauth_setup().await;
    let password = app.post("/v1/accounts", &setup.admin, TestApp::smtp_account("pw@example.com")).await;
    assert_eq!(password.status, StatusCode::CREATED, "{}", password.text);
    let reply = app.authorize(&setup, &password.id(), Some(&return_url())).await;
    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "not_oauth2");
    assert!(rows(&app, "SELECT id FROM oauth_states").await.is_empty());
}

#[tokio::test]
async fn viewers_cannot_authorize_and_members_only_their_own_accounts() {
    let app = spawn_app().await;
    let setup = app.oauth_setup().await;
    let admins = app.oauth_account(&setup, "imap", CONSENTING_USER).await;
    let viewer = app.api_key(&setup.tenant, "viewer").await;
    let member = app.api_key(&setup.tenant, "member").await;
    let other_member = app.api_key(&setup.tenant, "member").await;
    let body = json!({"return_url": return_url()});
    let authorize = |account: &str| format!("/v1/accounts/{account}/authorize");

    assert_error(&app.post(&authorize(&admins), &viewer, body.clone()).await, StatusCode::FORBIDDEN, "forbidden");

    let own = app
        .post("/v1/accounts", &member, json!({"protocol": "imap", "auth": "oauth2", "login": "member@example.com", "token_config_id": setup.config_id, "host": "mail.example.com"}))
        .await;
    assert_eq!(own.status, StatusCode::CREATED, "{}", own.text);
    let own = own.id();
    let started = app.post(&authorize(&own), &member, body.clone()).await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.text);
    assert!(started.body["authorization_url"].as_str().is_some_and(|u| u.starts_with(&setup.provider.authorize_url())));

    assert_error(&app.post(&authorize(&admins), &member, body.clone()).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(&app.post(&authorize(&own), &other_member, body.clone()).await, StatusCode::NOT_FOUND, "not_found");
    let states = rows(&app, "SELECT account_id FROM oauth_states").await;
    assert_eq!(states, vec![json!({"account_id": own})], "only the member's own authorization started");

    // Another tenant's account is unknown here.
    let other = app.oauth_setup().await;
    let foreign = app.oauth_account(&other, "imap", CONSENTING_USER).await;
    assert_error(&app.post(&authorize(&foreign), &setup.admin, body.clone()).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(
        &app.post(&authorize(&Uuid::now_v7().to_string()), &setup.admin, body).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(rows(&app, "SELECT id FROM oauth_states").await.len(), 1);
}

// ---- revoking ----

#[tokio::test]
async fn revoking_a_grant_sends_its_accounts_back_to_draft_and_records_an_event() {
    let app = spawn_app().await;
    let (setup, inbound, outbound) = mailbox(&app).await;
    assert_eq!(app.consent(&setup, &inbound).await.param("status").as_deref(), Some("success"));
    let grant_id = grant_id_of(&app, &setup, &inbound).await;
    let path = format!("/v1/grants/{grant_id}");

    let member = app.api_key(&setup.tenant, "member").await;
    let viewer = app.api_key(&setup.tenant, "viewer").await;
    let before = stored(&app).await;
    assert_error(&app.delete(&path, &member).await, StatusCode::FORBIDDEN, "forbidden");
    assert_error(&app.delete(&path, &viewer).await, StatusCode::FORBIDDEN, "forbidden");
    let other = app.oauth_setup().await;
    assert_error(&app.delete(&path, &other.admin).await, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(before, stored(&app).await, "refused revocations change nothing");

    let revoked = app.delete(&path, &setup.admin).await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT, "{}", revoked.text);
    for account in [&inbound, &outbound] {
        let body = app.account_json(&setup, account).await;
        assert_eq!((body["state"].clone(), body["grant_id"].clone()), (json!("draft"), Value::Null), "{body}");
    }
    assert_error(&app.get(&path, &setup.admin).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(&app.delete(&path, &setup.admin).await, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(app.get("/v1/grants", &setup.admin).await.body["items"], json!([]));
    assert!(rows(&app, "SELECT id FROM grants").await.is_empty(), "the tokens are gone");
    let events = events_of(&app, &setup.tenant).await;
    let last = events.last().expect("events");
    assert_eq!(last["event_type"], json!("grant.revoked"), "{events:?}");
    assert_eq!(last["resource_type"], json!("grant"));
    assert_eq!(last["resource_id"], json!(grant_id));
    assert_eq!(last["data"]["subject"], json!(CONSENTING_USER));

    // Consent again: a new grant.
    assert_eq!(app.consent(&setup, &outbound).await.param("status").as_deref(), Some("success"));
    assert_ne!(grant_id_of(&app, &setup, &inbound).await, grant_id);
}

#[tokio::test]
async fn grants_are_authorized_listed_read_and_revoked_over_graphql() {
    let app = spawn_app().await;
    let (setup, inbound, outbound) = mailbox(&app).await;
    let started = app
        .graphql(
            Some(&setup.admin),
            "mutation($id: UUID!, $input: AuthorizeAccount) { authorizeAccount(id: $id, input: $input) { status authorizationUrl expiresAt account { id state } } }",
            json!({"id": inbound, "input": {"returnUrl": return_url()}}),
        )
        .await;
    let result = &started["data"]["authorizeAccount"];
    assert_eq!(result["status"], json!("REDIRECT"), "{started}");
    assert_eq!(result["account"]["state"], json!("DRAFT"), "{started}");
    assert!(result["expiresAt"].is_string(), "{started}");
    let url = result["authorizationUrl"].as_str().expect("authorizationUrl");
    let outcome = app.follow_authorization(url).await;
    assert_eq!(outcome.param("status").as_deref(), Some("success"), "{outcome:?}");

    let refused = app
        .graphql(
            Some(&setup.admin),
            "mutation($id: UUID!, $input: AuthorizeAccount) { authorizeAccount(id: $id, input: $input) { status } }",
            json!({"id": inbound, "input": {"returnUrl": "https://evil.example.net/"}}),
        )
        .await;
    assert_eq!(graphql_error_code(&refused), "return_url_not_allowed", "{refused}");

    let grant_id = grant_id_of(&app, &setup, &outbound).await;
    let list = app
        .graphql(
            Some(&setup.admin),
            "{ grants { items { id subject consentedBy status hasRefreshToken } nextCursor } }",
            json!({}),
        )
        .await;
    assert_eq!(
        list["data"]["grants"]["items"],
        json!([{"id": grant_id, "subject": CONSENTING_USER, "consentedBy": CONSENTING_USER, "status": "VALID", "hasRefreshToken": true}]),
        "{list}"
    );
    let one_query = "query($id: UUID!) { grant(id: $id) { id status scopes } }";
    let one = app.graphql(Some(&setup.admin), one_query, json!({"id": grant_id})).await;
    assert_eq!(one["data"]["grant"]["id"], json!(grant_id), "{one}");
    assert!(!one.to_string().contains("accessToken"), "{one}");

    let revoke = "mutation($id: UUID!) { revokeGrant(id: $id) }";
    let member = app.api_key(&setup.tenant, "member").await;
    let forbidden = app.graphql(Some(&member), revoke, json!({"id": grant_id})).await;
    assert_eq!(graphql_error_code(&forbidden), "forbidden", "{forbidden}");
    let other = app.oauth_setup().await;
    let foreign = app.graphql(Some(&other.admin), revoke, json!({"id": grant_id})).await;
    assert_eq!(graphql_error_code(&foreign), "not_found", "{foreign}");
    assert_eq!(app.account_json(&setup, &inbound).await["state"], json!("authorized"), "refused revocations change nothing");

    let revoked = app.graphql(Some(&setup.admin), revoke, json!({"id": grant_id})).await;
    assert_eq!(revoked["data"]["revokeGrant"], json!(grant_id), "{revoked}");
    let gone = app.graphql(Some(&setup.admin), one_query, json!({"id": grant_id})).await;
    assert_eq!(graphql_error_code(&gone), "not_found", "{gone}");
    for account in [&inbound, &outbound] {
        let body = app.account_json(&setup, account).await;
        assert_eq!((body["state"].clone(), body["grant_id"].clone()), (json!("draft"), Value::Null), "{body}");
    }
    let events = events_of(&app, &setup.tenant).await;
    assert_eq!(events.last().map(|e| e["event_type"].clone()), Some(json!("grant.revoked")), "{events:?}");
}

// ---- consent after a refresh token is stored ----

#[tokio::test]
async fn a_later_consent_without_a_new_refresh_token_keeps_the_stored_one() {
    let app = spawn_app().await;
    let (setup, inbound, outbound) = mailbox(&app).await;
    assert_eq!(app.consent(&setup, &inbound).await.param("status").as_deref(), Some("success"));
    let grant_id = grant_id_of(&app, &setup, &inbound).await;
    let refresh = app.stored_value("grants", "refresh_token", &grant_id).await.expect("refresh token");
    let access = app.stored_value("grants", "access_token", &grant_id).await.expect("access token");

    // Like Google without prompt=consent: the provider returns no refresh token, since one was given before.
    setup.provider.set_issue_refresh_token(false);
    let url = start(&app, &setup, &outbound, Some(&return_url())).await;
    assert_eq!(query_of(&url).get("prompt"), None, "a refresh token is stored: {url}");
    let outcome = app.follow_authorization(&url).await;
    assert_eq!(outcome.param("status").as_deref(), Some("success"), "{outcome:?}");
    assert_eq!(outcome.param("account_id").as_deref(), Some(outbound.as_str()));
    assert_eq!(grant_id_of(&app, &setup, &outbound).await, grant_id, "same grant");
    assert_eq!(
        app.stored_value("grants", "refresh_token", &grant_id).await.as_deref(),
        Some(refresh.as_str()),
        "the stored refresh token is kept"
    );
    assert_ne!(
        app.stored_value("grants", "access_token", &grant_id).await.as_deref(),
        Some(access.as_str()),
        "the new access token is stored"
    );
    let grant = app.get(&format!("/v1/grants/{grant_id}"), &setup.admin).await;
    assert_eq!(
        (grant.body["status"].clone(), grant.body["has_refresh_token"].clone()),
        (json!("valid"), json!(true)),
        "{}",
        grant.text
    );
}

#[tokio::test]
async fn a_grant_that_needs_re_consent_asks_for_the_consent_screen_and_a_new_refresh_token() {
    let app = spawn_app().await;
    let (setup, inbound, _) = mailbox(&app).await;
    assert_eq!(app.consent(&setup, &inbound).await.param("status").as_deref(), Some("success"));
    let grant_id = grant_id_of(&app, &setup, &inbound).await;
    // The refresh token was refused (consent withdrawn): it is still stored, but dead.
    execute(&app, &format!("UPDATE grants SET status = 'reauth_required', last_error = 'invalid_grant' WHERE id = '{grant_id}'"))
        .await;
    execute(&app, &format!("UPDATE email_accounts SET state = 'error' WHERE grant_id = '{grant_id}'")).await;

    let url = start(&app, &setup, &inbound, Some(&return_url())).await;
    assert_eq!(
        query_of(&url).get("prompt").map(String::as_str),
        Some("consent"),
        "the dead refresh token must be replaced: {url}"
    );

    // A consent that brings no new refresh token cannot revive the grant with the dead one.
    setup.provider.set_issue_refresh_token(false);
    let before = stored(&app).await;
    let outcome = app.follow_authorization(&url).await;
    assert_failed_with(&outcome, "no_refresh_token", &inbound);
    assert_nothing_changed(&before, &stored(&app).await, "no refresh token for a dead grant");
    let grant = app.get(&format!("/v1/grants/{grant_id}"), &setup.admin).await;
    assert_eq!(grant.body["status"], json!("reauth_required"), "{}", grant.text);
}

#[tokio::test]
async fn the_access_log_never_records_the_callbacks_code_or_state() {
    let app = spawn_app().await;
    let code = format!("code{}", uuid::Uuid::new_v4().simple());
    let state = format!("state{}", uuid::Uuid::new_v4().simple());
    let marker = format!("marker{}", uuid::Uuid::new_v4().simple());
    let reply = app.request(reqwest::Method::GET, &format!("/oauth/callback?code={code}&state={state}"), None, None, None).await;
    assert!(reply.status.is_client_error() || reply.status.is_success(), "{}", reply.status);
    // A request that is logged with its query, to know the log was written and captured.
    app.request(reqwest::Method::GET, &format!("/healthz?{marker}"), None, None, None).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !postbridge_tests::captured_logs().contains(&marker) {
        assert!(std::time::Instant::now() < deadline, "the access log was not captured");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let logs = postbridge_tests::captured_logs();
    assert!(logs.contains("GET /oauth/callback "), "the callback itself is logged");
    assert!(!logs.contains(&code) && !logs.contains(&state), "the code and the state are never logged");
}

// ---- endpoints, issuer and identity ----

#[tokio::test]
async fn a_sign_in_started_before_the_token_url_moved_fails_at_the_callback_and_redeems_its_code_nowhere() {
    let app = spawn_app().await;
    let (setup, inbound, _) = mailbox(&app).await;
    let callback = at_provider(&app, &start(&app, &setup, &inbound, Some(&return_url())).await).await;
    // No grant exists yet, so the move sends no one to consent again (the secret comes along: it is a new host).
    let elsewhere = postbridge_oauth_provider::MockProvider::start().await;
    let body = json!({"token_url": elsewhere.token_url(), "client_secret": setup.client_secret});
    let moved = app.patch(&format!("/v1/token-configs/{}", setup.config_id), &setup.admin, body).await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.text);
    let before = stored(&app).await;

    let outcome = app.open_callback(&callback).await;
    assert_failed_with(&outcome, "configuration_changed", &inbound);
    assert_eq!(setup.provider.token_requests("authorization_code"), 0, "not redeemed at the old URL");
    assert_eq!(elsewhere.token_requests("authorization_code"), 0, "nor at the new one");
    assert_nothing_changed(&before, &stored(&app).await, "configuration_changed");
}

#[tokio::test]
async fn an_authorization_response_naming_another_issuer_is_refused_before_its_code_is_redeemed() {
    let app = spawn_app().await;
    let (setup, inbound, _) = mailbox(&app).await;
    let issuer = setup.provider.base_url();
    let named = app.patch(&format!("/v1/token-configs/{}", setup.config_id), &setup.admin, json!({"issuer": issuer})).await;
    assert_eq!((named.status, named.body["issuer"].clone()), (StatusCode::OK, json!(issuer)), "{}", named.text);
    let before = stored(&app).await;

    // A mix-up: the response says another authorization server issued it.
    setup.provider.set_authorization_response_iss(Some("https://attacker.example"));
    assert_failed_with(&app.consent(&setup, &inbound).await, "issuer_mismatch", &inbound);
    // An error response from another issuer is not believed either.
    setup.provider.set_deny_consent(true);
    assert_failed_with(&app.consent(&setup, &inbound).await, "issuer_mismatch", &inbound);
    setup.provider.set_deny_consent(false);
    assert_eq!(setup.provider.token_requests("authorization_code"), 0, "no code was redeemed");
    assert_nothing_changed(&before, &stored(&app).await, "issuer_mismatch");

    // The configuration's own issuer passes, and so does a response that names none.
    setup.provider.set_authorization_response_iss(Some(&issuer));
    assert_eq!(app.consent(&setup, &inbound).await.param("status").as_deref(), Some("success"));
    setup.provider.set_authorization_response_iss(None);
    assert_eq!(app.consent(&setup, &inbound).await.param("status").as_deref(), Some("success"));
}

/// id_token claims merged over the stand-in's defaults (which name the consenting user everywhere).
fn claims(value: Value) -> Option<serde_json::Map<String, Value>> {
    value.as_object().cloned()
}

#[tokio::test]
async fn the_consenting_identity_is_the_sign_in_name_and_not_an_email_attribute() {
    let app = spawn_app().await;
    let (setup, inbound, _) = mailbox(&app).await;
    let before = stored(&app).await;

    // Someone else signed in whose directory entry carries the mailbox's address as `email` (any directory admin
    // can set that attribute): refused.
    setup.provider.set_consenting_user(OTHER_USER);
    setup.provider.set_id_token_claims(claims(json!({"email": CONSENTING_USER})));
    assert_failed_with(&app.consent(&setup, &inbound).await, "wrong_mailbox", &inbound);
    assert_eq!(stored(&app).await["grants"], before["grants"], "no grant");

    // The mailbox's user whose `email` attribute says something else: connected, by `upn` when there is no
    // preferred_username, and the grant names the stable Microsoft ids in its event.
    setup.provider.set_consenting_user(CONSENTING_USER);
    setup.provider.set_id_token_claims(claims(
        json!({"email": OTHER_USER, "preferred_username": null, "upn": CONSENTING_USER, "tid": "tenant-1", "oid": "object-2"}),
    ));
    assert_eq!(app.consent(&setup, &inbound).await.param("status").as_deref(), Some("success"));
    let grant_id = grant_id_of(&app, &setup, &inbound).await;
    let grant = app.get(&format!("/v1/grants/{grant_id}"), &setup.admin).await;
    assert_eq!(grant.body["consented_by"], json!(CONSENTING_USER), "{}", grant.text);
    let connected = events_of(&app, &setup.tenant).await.into_iter().find(|e| e["event_type"] == json!("grant.connected"));
    assert_eq!(connected.expect("grant.connected")["data"]["consented_by_id"], json!("tenant-1/object-2"));
}

#[tokio::test]
async fn an_id_token_issued_to_another_client_or_by_another_issuer_connects_nothing() {
    let app = spawn_app().await;
    let (setup, inbound, _) = mailbox(&app).await;
    let before = stored(&app).await;

    // Tokens (and an id_token naming the right mailbox) issued to someone else's client prove nothing about ours.
    setup.provider.set_id_token_claims(claims(json!({"aud": "someone-elses-client"})));
    assert_failed_with(&app.consent(&setup, &inbound).await, "id_token_mismatch", &inbound);
    assert_eq!(stored(&app).await["grants"], before["grants"], "no grant");

    // Once the configuration knows its issuer, an id_token from another one is refused too.
    let issuer = setup.provider.base_url();
    let named = app.patch(&format!("/v1/token-configs/{}", setup.config_id), &setup.admin, json!({"issuer": issuer})).await;
    assert_eq!(named.status, StatusCode::OK, "{}", named.text);
    setup.provider.set_id_token_claims(claims(json!({"iss": "https://attacker.example"})));
    assert_failed_with(&app.consent(&setup, &inbound).await, "id_token_mismatch", &inbound);
    assert_eq!(stored(&app).await["grants"], before["grants"], "no grant");

    // Several audiences, ours among them, from the configured issuer: connected.
    setup.provider.set_id_token_claims(claims(json!({"aud": ["another-api", setup.client_id]})));
    assert_eq!(app.consent(&setup, &inbound).await.param("status").as_deref(), Some("success"));
}

#[tokio::test]
async fn a_consent_naming_nobody_is_refused_unless_the_account_is_a_shared_mailbox() {
    let app = spawn_app().await;
    let (setup, inbound, outbound) = mailbox(&app).await;
    setup.provider.set_include_id_token(false);
    let before = stored(&app).await;
    let mut expected = before.clone();
    for account in expected["accounts"].as_array_mut().expect("accounts") {
        if account["id"] == json!(inbound) {
            account["last_error"] = json!(postbridge_core::observe::hints::UNKNOWN_IDENTITY_MESSAGE);
        }
    }

    assert_failed_with(&app.consent(&setup, &inbound).await, "unknown_identity", &inbound);
    assert_nothing_changed(&expected, &stored(&app).await, "unknown_identity");
    // An id_token naming no address is no identity either (an unverified email does not count).
    setup.provider.set_include_id_token(true);
    setup.provider.set_id_token_claims(claims(json!({"preferred_username": null, "email_verified": false})));
    assert_failed_with(&app.consent(&setup, &inbound).await, "unknown_identity", &inbound);
    assert_nothing_changed(&expected, &stored(&app).await, "unknown_identity with an unverified email");

    // A shared mailbox is consented to by a delegate; the provider need not name anyone.
    setup.provider.set_include_id_token(false);
    let shared = app.patch(&format!("/v1/accounts/{inbound}"), &setup.admin, json!({"shared_mailbox": true})).await;
    assert_eq!(shared.status, StatusCode::OK, "{}", shared.text);
    assert_eq!(app.consent(&setup, &inbound).await.param("status").as_deref(), Some("success"));
    let grant_id = grant_id_of(&app, &setup, &inbound).await;
    assert_eq!(app.get(&format!("/v1/grants/{grant_id}"), &setup.admin).await.body["consented_by"], Value::Null);
    assert_eq!(grant_id_of(&app, &setup, &outbound).await, grant_id);
}
