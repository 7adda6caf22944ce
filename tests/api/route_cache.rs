//! Submissions find their sending account in a short-lived in-process cache, yet an account changed through one API
//! process (or by a worker, or by hand in the database) routes the next submission in every process by the change:
//! the database announces it and every process forgets its routes. Two real API processes on one database.

use std::time::Duration;

use postbridge_core::AppContext;
use postbridge_tests::{listening_backends, spawn_app, wait_until, TestApp};
use reqwest::StatusCode;
use sea_orm::ConnectionTrait;
use serde_json::{json, Value};

fn looked_up(ctx: &AppContext, result: &str) -> u64 {
    ctx.metrics.route_cache.with_label_values(&[result]).get()
}

/// Both processes listen for account changes, so both use their route caches.
async fn two_listening_apis() -> (TestApp, String, AppContext) {
    let app = spawn_app().await;
    let (address, other) = app.second_api().await;
    wait_until("both API processes listen for account changes", Duration::from_secs(10), async || {
        app.ctx.route_cache.is_listening() && other.route_cache.is_listening()
    })
    .await;
    (app, address, other)
}

/// A confirmed outbound account made through the API (confirming takes a real server; mail_flows tests that).
async fn sender(app: &TestApp, admin: &str, login: &str, extra: Value) -> String {
    let mut body = TestApp::smtp_account(login);
    for (key, value) in extra.as_object().expect("object") {
        body[key] = value.clone();
    }
    let reply = app.post("/v1/accounts", admin, body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let id = reply.id();
    app.ctx
        .db
        .execute_unprepared(&format!("UPDATE email_accounts SET state = 'confirmed' WHERE id = '{id}'"))
        .await
        .expect("state");
    id
}

/// Submits a message from `from` at the API process at `address`; which account it was routed to, and how.
async fn submit_at(app: &TestApp, address: &str, key: &str, from: &str) -> (String, String) {
    let body = json!({"from": from, "to": ["rcpt@example.org"], "subject": "routed", "text": "hello"});
    let reply = app.http.post(format!("{address}/v1/messages")).bearer_auth(key).json(&body).send().await.expect("submit");
    assert_eq!(reply.status(), StatusCode::ACCEPTED);
    let id = reply.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_owned();
    let message = app.get(&format!("/v1/messages/{id}"), key).await;
    let field = |name: &str| message.body[name].as_str().unwrap_or_default().to_owned();
    (field("account_id"), field("routed_by"))
}

/// Submits from `from` at the second process until one is answered from its cache (the notices of the test's own
/// set-up may still be on their way, each emptying the cache once).
async fn until_cached(app: &TestApp, second: &str, other: &AppContext, key: &str, from: &str) -> (String, String) {
    let mut routed = None;
    wait_until("a submission answered from the route cache", Duration::from_secs(5), async || {
        let hits = looked_up(other, "hit");
        routed = Some(submit_at(app, second, key, from).await);
        looked_up(other, "hit") > hits
    })
    .await;
    routed.expect("submitted")
}

#[tokio::test]
async fn repeated_submissions_route_from_the_cache_and_an_account_changed_anywhere_routes_the_next_one() {
    let (app, second, other) = two_listening_apis().await;
    let (_, admin) = app.tenant_with_admin().await;
    let desk = sender(&app, &admin, "desk@cache.test", json!({"is_default": true})).await;
    let sales = sender(&app, &admin, "sales@cache.test", json!({"from_filter": "sales@cache.test"})).await;
    let domain = sender(&app, &admin, "out@cache.test", json!({"from_filter": "cache.test"})).await;
    let routed = |account: &str, how: &str| (account.to_owned(), how.to_owned());

    assert_eq!(until_cached(&app, &second, &other, &admin, "sales@cache.test").await, routed(&sales, "address"));
    let (hits, misses) = (looked_up(&other, "hit"), looked_up(&other, "miss"));
    assert_eq!(submit_at(&app, &second, &admin, "Sales <SALES@cache.test>").await, routed(&sales, "address"));
    assert_eq!((looked_up(&other, "hit") - hits, looked_up(&other, "miss") - misses), (1, 0), "the same sender, cached");

    // A write that changes nothing routing reads (a poll's bookkeeping, a state written again) is not announced.
    let touch = format!("UPDATE email_accounts SET updated_at = now(), state = 'confirmed' WHERE id = '{sales}'");
    app.ctx.db.execute_unprepared(&touch).await.expect("touch");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hits = looked_up(&other, "hit");
    submit_at(&app, &second, &admin, "sales@cache.test").await;
    assert_eq!(looked_up(&other, "hit") - hits, 1, "still cached");

    // Disabled through the first process: the second hears it and routes by the domain.
    let disabled = app.patch(&format!("/v1/accounts/{sales}"), &admin, json!({"enabled": false})).await;
    assert_eq!(disabled.status, StatusCode::OK, "{}", disabled.text);
    wait_until("the second process routes by the change", Duration::from_secs(5), async || {
        submit_at(&app, &second, &admin, "sales@cache.test").await == routed(&domain, "domain")
    })
    .await;

    // The default sender takes the address through the second process, with the announcement switched off: its
    // next submission routes by the change all the same (a process forgets its routes when it changes an account
    // itself, whenever the notice comes).
    let owner = app.owner_db().await;
    owner.execute_unprepared("ALTER TABLE email_accounts DISABLE TRIGGER email_accounts_routes_changed").await.expect("off");
    let refiltered = app
        .http
        .patch(format!("{second}/v1/accounts/{desk}"))
        .bearer_auth(&admin)
        .json(&json!({"from_filter": "sales@cache.test"}))
        .send()
        .await
        .expect("patch");
    assert_eq!(refiltered.status(), StatusCode::OK);
    assert_eq!(submit_at(&app, &second, &admin, "sales@cache.test").await, routed(&desk, "address"));
    owner.execute_unprepared("ALTER TABLE email_accounts ENABLE TRIGGER email_accounts_routes_changed").await.expect("on");

    // A state a worker writes (an SMTP server refusing the credentials), straight in the database: heard too.
    let broken = format!("UPDATE email_accounts SET state = 'error', last_error = '535 refused' WHERE id = '{desk}'");
    app.ctx.db.execute_unprepared(&broken).await.expect("error state");
    wait_until("the second process stops routing to the broken account", Duration::from_secs(5), async || {
        submit_at(&app, &second, &admin, "sales@cache.test").await == routed(&domain, "domain")
    })
    .await;
}

#[tokio::test]
async fn a_process_whose_route_listener_was_cut_forgets_its_routes_and_listens_again() {
    let (app, second, other) = two_listening_apis().await;
    let (_, admin) = app.tenant_with_admin().await;
    let sales = sender(&app, &admin, "sales@cut.test", json!({"from_filter": "sales@cut.test"})).await;
    until_cached(&app, &second, &other, &admin, "sales@cut.test").await;

    // A change made while the listeners are away is never heard: a process that lost its listener must not trust
    // what it held.
    let owner = app.owner_db().await;
    let before = listening_backends(&owner, "postbridge_routes_changed").await;
    assert_eq!(before.len(), 2, "one route listener per API process");
    for pid in &before {
        owner.execute_unprepared(&format!("SELECT pg_terminate_backend({pid})")).await.expect("terminate");
    }
    wait_until("both processes listen again on new connections", Duration::from_secs(10), async || {
        let now = listening_backends(&owner, "postbridge_routes_changed").await;
        now.len() == 2 && now.iter().all(|pid| !before.contains(pid))
    })
    .await;
    wait_until("the route cache is in use again", Duration::from_secs(5), async || other.route_cache.is_listening()).await;

    let misses = looked_up(&other, "miss");
    assert_eq!(submit_at(&app, &second, &admin, "sales@cut.test").await, (sales, "address".to_owned()));
    assert_eq!(looked_up(&other, "miss") - misses, 1, "read afresh after the reconnect");
}
