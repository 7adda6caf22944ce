//! Per-tenant API rate limits (429 with Retry-After, recovery, other tenants and operators unaffected, Redis down
//! lets requests through) and per-account sending limits.

use std::time::Duration;

use postbridge_core::send::delivery::{self, Delivery};
use postbridge_tests::mailflow::{new_login, password_account, spawn_mail_app, MAIL_PASSWORD};
use postbridge_tests::{assert_error, graphql_error_code, spawn_app, spawn_app_with, TestApp, TestEnv};
use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

/// A tenant with an admin key and, set by the operator, its own limit.
async fn tenant_limited_to(app: &TestApp, per_minute: i64) -> (String, String) {
    let (tenant, key) = app.tenant_with_admin().await;
    let reply = app
        .patch(&format!("/v1/tenants/{tenant}"), &app.operator_token(), json!({"api_rate_limit_per_minute": per_minute}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["api_rate_limit_per_minute"], json!(per_minute));
    (tenant, key)
}

/// `GET /v1/accounts` with `key`: status and the Retry-After header, if any.
async fn list_accounts(app: &TestApp, key: &str) -> (StatusCode, Option<u64>, serde_json::Value) {
    let response = app.http.get(format!("{}/v1/accounts", app.address)).bearer_auth(key).send().await.expect("request");
    let status = response.status();
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().expect("ascii").parse().expect("whole seconds"));
    (status, retry_after, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn a_tenant_over_its_limit_gets_429_with_retry_after_while_others_and_operators_go_on() {
    let app = spawn_app().await;
    let (tenant, key) = tenant_limited_to(&app, 5).await;
    let (_, other_key) = app.tenant_with_admin().await;
    for i in 1..=5 {
        let (status, _, body) = list_accounts(&app, &key).await;
        assert_eq!(status, StatusCode::OK, "request {i}: {body}");
    }
    let (status, retry_after, body) = list_accounts(&app, &key).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["code"], json!("rate_limited"), "{body}");
    assert!(retry_after.is_some_and(|s| (1..=12).contains(&s)), "one request every 12 s: {retry_after:?}");

    // GraphQL counts against the same limit.
    let graphql = app.graphql(Some(&key), "{ __typename }", json!({})).await;
    assert_eq!(graphql["code"], json!("rate_limited"), "{graphql}");

    // Another tenant, the operator acting in this tenant and unauthenticated routes are not held back.
    assert_eq!(list_accounts(&app, &other_key).await.0, StatusCode::OK);
    for _ in 0..10 {
        let reply = app.request(Method::GET, "/v1/accounts", Some(&app.operator_token()), Some(&tenant), None).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    }
    assert_eq!(app.request(Method::GET, "/healthz", None, None, None).await.status, StatusCode::OK);
    // A request without a credential is answered 401, not 429: it is not the tenant's.
    assert_error(&app.request(Method::GET, "/v1/accounts", None, None, None).await, StatusCode::UNAUTHORIZED, "unauthenticated");

    let metrics = app.request(Method::GET, "/metrics", None, None, None).await.text;
    assert!(metrics.contains("postbridge_api_rate_limited_total 2"), "{metrics}");
    assert!(metrics.contains(r#"postbridge_http_requests_total{method="GET",route="/v1/accounts",status="429"} 1"#), "{metrics}");
    // A path spelled with percent-escapes, which the router decodes to the same route, counts the same.
    for path in ["/%76%31/accounts", "/v1/%61ccounts", "/graphq%6C"] {
        let reply = app.request(Method::GET, path, Some(&key), None, None).await;
        assert_error(&reply, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    }
}

#[tokio::test]
async fn a_limited_tenant_is_served_again_once_retry_after_has_passed() {
    let app = spawn_app().await;
    // 60 a minute: one request a second once the burst (a minute's worth) is spent.
    let (_, key) = tenant_limited_to(&app, 60).await;
    let mut served = 0;
    let retry_after = loop {
        let (status, retry_after, body) = list_accounts(&app, &key).await;
        match status {
            StatusCode::OK => served += 1,
            StatusCode::TOO_MANY_REQUESTS => break retry_after.expect("Retry-After"),
            other => panic!("unexpected {other}: {body}"),
        }
        assert!(served <= 200, "the limit never applied");
    };
    assert!(served >= 60, "the whole burst is served first: {served}");
    assert_eq!(retry_after, 1);
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let (status, _, body) = list_accounts(&app, &key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn with_redis_unreachable_requests_are_let_through() {
    let mut env = TestEnv::new();
    env.set("REDIS_URL", "redis://127.0.0.1:1");
    let app = spawn_app_with(env).await;
    let (_, key) = tenant_limited_to(&app, 1).await;
    for _ in 0..3 {
        assert_eq!(list_accounts(&app, &key).await.0, StatusCode::OK, "fails open");
    }
}

#[tokio::test]
async fn only_operators_set_a_tenant_limit_and_it_must_be_between_1_and_1000000() {
    let app = spawn_app().await;
    let operator = app.operator_token();
    let created = app
        .post("/v1/tenants", &operator, json!({"slug": format!("rl-{}", &Uuid::new_v4().simple().to_string()[..8]), "name": "Limited", "api_rate_limit_per_minute": 300}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(created.body["api_rate_limit_per_minute"], json!(300));
    let tenant = created.id();
    for bad in [json!(0), json!(-5), json!(1_000_001)] {
        let reply = app.patch(&format!("/v1/tenants/{tenant}"), &operator, json!({"api_rate_limit_per_minute": bad})).await;
        assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_rate_limit");
        assert_eq!(reply.body["field"], json!("api_rate_limit_per_minute"));
    }
    let admin = app.api_key(&tenant, "admin").await;
    let own = app.patch(&format!("/v1/tenants/{tenant}"), &admin, json!({"api_rate_limit_per_minute": 1_000_000})).await;
    assert_error(&own, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(app.get(&format!("/v1/tenants/{tenant}"), &admin).await.body["api_rate_limit_per_minute"], json!(300));
    // Null returns the tenant to the deployment's default; other fields leave it alone.
    let renamed = app.patch(&format!("/v1/tenants/{tenant}"), &operator, json!({"name": "Renamed"})).await;
    assert_eq!(renamed.body["api_rate_limit_per_minute"], json!(300));
    let cleared = app.patch(&format!("/v1/tenants/{tenant}"), &operator, json!({"api_rate_limit_per_minute": null})).await;
    assert_eq!(cleared.status, StatusCode::OK, "{}", cleared.text);
    assert_eq!(cleared.body["api_rate_limit_per_minute"], json!(null));

    let gql = app
        .graphql(
            Some(&operator),
            "mutation($id: UUID!) { updateTenant(id: $id, input: {apiRateLimitPerMinute: 0}) { id } }",
            json!({"id": tenant}),
        )
        .await;
    assert_eq!(graphql_error_code(&gql), "invalid_rate_limit", "{gql}");
}

#[tokio::test]
async fn an_accounts_own_send_rate_paces_it_before_the_deployments() {
    // The deployment sets no pace; the account's own one message a minute holds the second message back.
    let (app, servers) = spawn_mail_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    let body = password_account(servers, "smtp", "starttls", &login, json!({"from_filter": login, "send_rate_per_minute": 1}));
    let account = app.confirmed_mail_account(&key, body).await;
    assert_eq!(app.get(&format!("/v1/accounts/{account}"), &key).await.body["send_rate_per_minute"], json!(1));
    let rcpt = format!("own-pace-{}@example.org", Uuid::new_v4().simple());
    let mut ids = Vec::new();
    for i in 0..2 {
        let reply =
            app.post("/v1/messages", &key, json!({"from": login, "to": [rcpt], "subject": format!("p{i}"), "text": "hi"})).await;
        ids.push(Uuid::parse_str(&reply.id()).expect("id"));
    }
    assert_eq!(delivery::deliver(&app.ctx, ids[0].into()).await.expect("first"), Delivery::Sent);
    assert_eq!(delivery::deliver(&app.ctx, ids[1].into()).await.expect("second"), Delivery::Paced);
    let second = app.get(&format!("/v1/messages/{}", ids[1]), &key).await;
    assert_eq!((second.body["status"].clone(), second.body["attempts"].clone()), (json!("queued"), json!(0)));
    let wait = app
        .sql_i64(&format!(
            "SELECT EXTRACT(EPOCH FROM next_attempt_at - now())::bigint FROM outbound_messages WHERE id = '{}'",
            ids[1]
        ))
        .await;
    assert!((30..=62).contains(&wait), "waits for the minute to pass: {wait}s");

    // Back to the deployment's pace (none): the message goes as soon as it is due.
    let cleared = app.patch(&format!("/v1/accounts/{account}"), &key, json!({"send_rate_per_minute": null})).await;
    assert_eq!(cleared.body["send_rate_per_minute"], json!(null), "{}", cleared.text);
    app.sql_exec(&format!("UPDATE outbound_messages SET next_attempt_at = now() WHERE id = '{}'", ids[1])).await;
    assert_eq!(delivery::deliver(&app.ctx, ids[1].into()).await.expect("third"), Delivery::Sent);
    assert_eq!(servers.wait_for_messages_to(&rcpt, 2, Duration::from_secs(10)).await.len(), 2);
}

#[tokio::test]
async fn an_accounts_send_rate_is_validated_outbound_only_and_set_by_admins() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let member = app.api_key(&tenant, "member").await;
    for bad in [json!(-1), json!(100_001)] {
        let body = postbridge_tests::with(TestApp::smtp_account("rate@example.com"), json!({"send_rate_per_minute": bad}));
        let reply = app.post("/v1/accounts", &admin, body).await;
        assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_rate");
        assert_eq!(reply.body["field"], json!("send_rate_per_minute"));
    }
    let inbound = json!({"protocol": "imap", "auth": "password", "login": "in@example.com", "password": "pw-123456",
                         "host": "imap.example.com", "send_rate_per_minute": 5});
    assert_error(&app.post("/v1/accounts", &admin, inbound).await, StatusCode::UNPROCESSABLE_ENTITY, "not_applicable");
    let by_member = postbridge_tests::with(TestApp::smtp_account("m@example.com"), json!({"send_rate_per_minute": 0}));
    assert_error(&app.post("/v1/accounts", &member, by_member).await, StatusCode::FORBIDDEN, "forbidden");

    // Unlimited (0) is a value of its own, distinct from "the deployment's" (null).
    let created = app
        .post(
            "/v1/accounts",
            &admin,
            postbridge_tests::with(TestApp::smtp_account("z@example.com"), json!({"send_rate_per_minute": 0})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(created.body["send_rate_per_minute"], json!(0));
    let mine = app.post("/v1/accounts", &member, TestApp::smtp_account("mine@example.com")).await;
    assert_eq!(mine.body["send_rate_per_minute"], json!(null));
    let lift = app.patch(&format!("/v1/accounts/{}", mine.id()), &member, json!({"send_rate_per_minute": 1000})).await;
    assert_error(&lift, StatusCode::FORBIDDEN, "forbidden");
    let renamed = app.patch(&format!("/v1/accounts/{}", mine.id()), &member, json!({"name": "Mine"})).await;
    assert_eq!(renamed.status, StatusCode::OK, "members change the rest: {}", renamed.text);
}
