//! Liveness and readiness.

use postbridge_tests::{spawn_app, spawn_app_with, TestEnv};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn healthz_and_readyz_answer_when_postgres_and_redis_are_up() {
    let app = spawn_app().await;
    let health = app.request(Method::GET, "/healthz", None, None, None).await;
    assert_eq!((health.status, health.body["status"].clone()), (StatusCode::OK, json!("ok")));
    let ready = app.request(Method::GET, "/readyz", None, None, None).await;
    assert_eq!((ready.status, ready.body["status"].clone()), (StatusCode::OK, json!("ready")));
}

#[tokio::test]
async fn readyz_reports_unavailable_when_redis_is_unreachable() {
    let mut env = TestEnv::new();
    // Nothing listens on port 1.
    env.set("REDIS_URL", "redis://127.0.0.1:1");
    let app = spawn_app_with(env).await;
    let ready = app.request(Method::GET, "/readyz", None, None, None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.body["reason"], json!("redis unreachable"));
    let health = app.request(Method::GET, "/healthz", None, None, None).await;
    assert_eq!(health.status, StatusCode::OK, "liveness does not depend on Redis");
}
