//! Authentication reads keys and tenants from a short-lived in-process cache, yet a revocation or a suspension made
//! through one API process takes effect in another at once: the database announces the change and every process
//! forgets what it held. Two real API processes on one database.

use std::time::Duration;

use postbridge_core::AppContext;
use postbridge_tests::{listening_backends, spawn_app, wait_until, TestApp};
use reqwest::StatusCode;
use sea_orm::ConnectionTrait;
use serde_json::json;

fn looked_up(ctx: &AppContext, result: &str) -> u64 {
    ctx.metrics.auth_cache.with_label_values(&[result]).get()
}

async fn status_at(app: &TestApp, address: &str, key: &str) -> StatusCode {
    let reply = app.http.get(format!("{address}/v1/accounts")).bearer_auth(key).send().await.expect("request");
    reply.status()
}

/// Both processes listen for changes, so both use their caches.
async fn two_listening_apis() -> (TestApp, String, AppContext) {
    let app = spawn_app().await;
    let (address, other) = app.second_api().await;
    wait_until("both API processes listen for credential changes", Duration::from_secs(10), async || {
        app.ctx.auth_cache.is_listening() && other.auth_cache.is_listening()
    })
    .await;
    (app, address, other)
}

#[tokio::test]
async fn repeated_requests_are_answered_from_the_cache_and_a_revocation_elsewhere_is_heard_at_once() {
    let (app, second, other) = two_listening_apis().await;
    let (_, admin) = app.tenant_with_admin().await;
    let (key_id, member) = app.api_key_with_id(&admin, None, "member").await;

    assert_eq!(status_at(&app, &second, &member).await, StatusCode::OK);
    let hits = looked_up(&other, "hit");
    for _ in 0..5 {
        assert_eq!(status_at(&app, &second, &member).await, StatusCode::OK);
    }
    // Each request looks up its key and its tenant: ten answers from the cache, no database read.
    assert_eq!(looked_up(&other, "hit") - hits, 10);

    // Revoked through the first process; the second refuses the key as soon as the change is announced.
    let revoked = app.delete(&format!("/v1/api-keys/{key_id}"), &admin).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text);
    wait_until("the other process refuses the revoked key", Duration::from_secs(2), async || {
        status_at(&app, &second, &member).await == StatusCode::UNAUTHORIZED
    })
    .await;
    // And the first, which made the change, at once.
    assert_eq!(status_at(&app, &app.address, &member).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status_at(&app, &second, &admin).await, StatusCode::OK, "other keys are untouched");
}

#[tokio::test]
async fn a_suspension_and_a_reactivation_are_heard_by_every_process() {
    let (app, second, _other) = two_listening_apis().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let operator = app.operator_token();
    assert_eq!(status_at(&app, &second, &admin).await, StatusCode::OK);
    assert_eq!(status_at(&app, &second, &admin).await, StatusCode::OK);

    let suspended = app.post(&format!("/v1/tenants/{tenant}/suspend"), &operator, json!({})).await;
    assert_eq!(suspended.status, StatusCode::OK, "{}", suspended.text);
    assert_eq!(status_at(&app, &app.address, &admin).await, StatusCode::FORBIDDEN);
    wait_until("the other process refuses the suspended tenant", Duration::from_secs(2), async || {
        status_at(&app, &second, &admin).await == StatusCode::FORBIDDEN
    })
    .await;

    let resumed = app.post(&format!("/v1/tenants/{tenant}/resume"), &operator, json!({})).await;
    assert_eq!(resumed.status, StatusCode::OK, "{}", resumed.text);
    wait_until("the other process accepts the tenant again", Duration::from_secs(2), async || {
        status_at(&app, &second, &admin).await == StatusCode::OK
    })
    .await;
}

#[tokio::test]
async fn a_process_whose_listener_was_cut_forgets_what_it_held_and_listens_again() {
    let (app, second, other) = two_listening_apis().await;
    let (_, admin) = app.tenant_with_admin().await;
    assert_eq!(status_at(&app, &second, &admin).await, StatusCode::OK);
    let hits = looked_up(&other, "hit");
    assert_eq!(status_at(&app, &second, &admin).await, StatusCode::OK);
    assert!(looked_up(&other, "hit") > hits, "answered from the cache");

    // Cut both processes' listeners (a Postgres restart or a network cut does the same): a change made while a
    // listener is away is never heard, so a process that lost its listener must not trust what it held.
    let owner = app.owner_db().await;
    let before = listening_backends(&owner, "postbridge_auth_changed").await;
    assert_eq!(before.len(), 2, "one listener per API process");
    for pid in &before {
        owner.execute_unprepared(&format!("SELECT pg_terminate_backend({pid})")).await.expect("terminate");
    }
    wait_until("both processes listen again on new connections", Duration::from_secs(10), async || {
        let now = listening_backends(&owner, "postbridge_auth_changed").await;
        now.len() == 2 && now.iter().all(|pid| !before.contains(pid))
    })
    .await;
    wait_until("the cache is in use again", Duration::from_secs(5), async || other.auth_cache.is_listening()).await;

    let misses = looked_up(&other, "miss");
    assert_eq!(status_at(&app, &second, &admin).await, StatusCode::OK);
    assert_eq!(looked_up(&other, "miss") - misses, 2, "key and tenant read afresh after the reconnect");
}
