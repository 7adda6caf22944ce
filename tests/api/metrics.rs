//! Prometheus `/metrics`: the API's and the worker's endpoints, counters that move when work happens, gauges
//! read from Postgres, the optional scrape token, and no tenant id or secret in any series.

use std::time::Duration;

use postbridge_core::connect::grants;
use postbridge_oauth_provider::TokenFailure;
use postbridge_tests::mailflow::{new_login, password_account, sample_message, spawn_mail_app_with, MAIL_PASSWORD};
use postbridge_tests::oauth::CONSENTING_USER;
use postbridge_tests::{assert_error, spawn_app, spawn_app_with, TestApp, TestEnv};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

/// `GET /metrics` with an optional bearer token: status, content type and body.
async fn scrape_with(app: &TestApp, token: Option<&str>) -> (StatusCode, String, String) {
    let mut request = app.http.get(format!("{}/metrics", app.address));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("scrape");
    let status = response.status();
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    (status, content_type, response.text().await.expect("body"))
}

async fn scrape(app: &TestApp) -> String {
    let (status, _, body) = scrape_with(app, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The value of the series `name` whose labels include every `labels` pair (`None` when there is none).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
        let matches = series_name == name && labels.iter().all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")));
        matches.then(|| value.parse().expect("a number"))
    })
}

#[track_caller]
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(text, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in:\n{text}"))
}

#[tokio::test]
async fn metrics_are_served_in_the_text_format_with_every_gauge_family() {
    let app = spawn_app().await;
    let (status, content_type, body) = scrape_with(&app, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    for family in [
        "postbridge_queue_depth",
        "postbridge_queue_oldest_age_seconds",
        "postbridge_grants",
        "postbridge_accounts",
        "postbridge_api_rate_limited_total",
        "postbridge_messages_total",
        "postbridge_token_refreshes_total",
    ] {
        assert!(body.contains(&format!("# TYPE {family} ")), "{family} missing:\n{body}");
    }
    for kind in ["send", "poll", "refresh", "webhook"] {
        assert_eq!(value(&body, "postbridge_queue_depth", &[("kind", kind)]), 0.0);
    }
    // The scrape itself is counted once it has been answered.
    let again = scrape(&app).await;
    assert!(value(&again, "postbridge_http_requests_total", &[("route", "/metrics"), ("status", "200")]) >= 1.0);
    assert!(value(&again, "postbridge_http_request_duration_seconds_count", &[("route", "/metrics")]) >= 1.0);
}

#[tokio::test]
async fn a_request_is_counted_under_its_route_pattern_and_status_never_its_path() {
    let app = spawn_app().await;
    let (tenant, key) = app.tenant_with_admin().await;
    let missing = Uuid::new_v4();
    for _ in 0..2 {
        assert_eq!(app.get(&format!("/v1/accounts/{missing}"), &key).await.status, StatusCode::NOT_FOUND);
    }
    assert_eq!(app.get("/v1/accounts", &key).await.status, StatusCode::OK);
    assert_eq!(app.get(&format!("/no-such-route/{missing}"), &key).await.status, StatusCode::NOT_FOUND);
    let body = scrape(&app).await;
    let labels = [("method", "GET"), ("route", "/v1/accounts/{id}"), ("status", "404")];
    assert_eq!(value(&body, "postbridge_http_requests_total", &labels), 2.0);
    assert_eq!(value(&body, "postbridge_http_requests_total", &[("route", "/v1/accounts"), ("status", "200")]), 1.0);
    assert_eq!(value(&body, "postbridge_http_requests_total", &[("route", "unmatched"), ("status", "404")]), 1.0);
    assert_eq!(
        value(&body, "postbridge_http_request_duration_seconds_count", &[("method", "GET"), ("route", "/v1/accounts/{id}")]),
        2.0
    );
    assert!(!body.contains(&missing.to_string()), "a raw path reached a label");
    assert!(!body.contains(&tenant), "a tenant id reached a label");
}

#[tokio::test]
async fn sends_and_polls_through_the_worker_move_jobs_messages_and_queue_gauges() {
    // Polls, not IDLE watches (which `idle_watches` tests), so the poll job is counted.
    let mut env = TestEnv::new();
    env.set("IDLE_MAILBOXES", "0");
    let (app, servers) = spawn_mail_app_with(env).await;
    let (_, key) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    app.confirmed_mail_account(&key, password_account(servers, "smtp", "starttls", &login, json!({"from_filter": login}))).await;
    let inbound = app.confirmed_mail_account(&key, password_account(servers, "imap", "tls", &login, json!({}))).await;
    let seeded: Vec<Vec<u8>> = (0..3).map(|i| sample_message(&login, &format!("in {i}")).1).collect();
    servers.seed_messages(&login, "INBOX", &seeded);
    let rcpt = format!("metrics-{}@example.org", Uuid::new_v4().simple());
    let sent = app.post("/v1/messages", &key, json!({"from": login, "to": [rcpt], "subject": "counted", "text": "hi"})).await;
    assert_eq!(sent.status.as_u16(), 202, "{}", sent.text);
    app.sql_exec(&format!("UPDATE email_accounts SET next_poll_at = now() - interval '30 seconds' WHERE id = '{inbound}'")).await;

    // Before the worker runs, the due work is in the queue gauges.
    let before = scrape(&app).await;
    assert_eq!(value(&before, "postbridge_queue_depth", &[("kind", "send")]), 1.0);
    assert_eq!(value(&before, "postbridge_queue_depth", &[("kind", "poll")]), 1.0);
    assert!(value(&before, "postbridge_queue_oldest_age_seconds", &[("kind", "poll")]) >= 30.0);
    assert_eq!(value(&before, "postbridge_accounts", &[("state", "confirmed")]), 2.0);
    assert_eq!(value(&before, "postbridge_messages_total", &[("outcome", "sent")]), 0.0);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(postbridge_worker::run(app.ctx.clone(), stop_rx));
    servers.wait_for_messages_to(&rcpt, 1, Duration::from_secs(30)).await;
    for _ in 0..300 {
        let stored = app.sql_i64(&format!("SELECT count(*) FROM inbound_messages WHERE account_id = '{inbound}'")).await;
        let status = app.sql_text("SELECT status FROM outbound_messages").await;
        if stored == 3 && status.as_deref() == Some("sent") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(true);
    worker.await.expect("worker task").expect("worker stops cleanly");

    let after = scrape(&app).await;
    assert_eq!(value(&after, "postbridge_messages_total", &[("outcome", "sent")]), 1.0);
    assert_eq!(value(&after, "postbridge_messages_total", &[("outcome", "received")]), 3.0);
    assert_eq!(value(&after, "postbridge_jobs_total", &[("kind", "send"), ("outcome", "sent")]), 1.0);
    assert!(value(&after, "postbridge_jobs_total", &[("kind", "poll"), ("outcome", "completed")]) >= 1.0);
    assert!(value(&after, "postbridge_job_duration_seconds_count", &[("kind", "send"), ("outcome", "sent")]) >= 1.0);
    assert_eq!(value(&after, "postbridge_queue_depth", &[("kind", "send")]), 0.0);
    assert_eq!(value(&after, "postbridge_queue_depth", &[("kind", "poll")]), 0.0, "the poll moved the next one into the future");
}

#[tokio::test]
async fn refreshes_are_counted_by_outcome_and_grants_by_status() {
    let app = spawn_app().await;
    let setup = app.oauth_setup().await;
    let account = app.oauth_account(&setup, "imap", CONSENTING_USER).await;
    let outcome = app.consent(&setup, &account).await;
    assert_eq!(outcome.param("status").as_deref(), Some("success"), "{outcome:?}");
    app.sql_exec("UPDATE grants SET expires_at = now() + interval '10 seconds', refresh_at = now()").await;

    let due = scrape(&app).await;
    assert_eq!(value(&due, "postbridge_grants", &[("status", "valid")]), 1.0);
    assert_eq!(value(&due, "postbridge_queue_depth", &[("kind", "refresh")]), 1.0);
    assert!(value(&due, "postbridge_queue_oldest_age_seconds", &[("kind", "refresh")]) > 0.0, "due since the margin began");

    let pass = grants::refresh_due(&app.ctx, 10).await.expect("refresh pass");
    assert_eq!(pass.refreshed, 1);
    let refreshed = scrape(&app).await;
    assert_eq!(value(&refreshed, "postbridge_token_refreshes_total", &[("outcome", "refreshed")]), 1.0);
    assert_eq!(value(&refreshed, "postbridge_queue_depth", &[("kind", "refresh")]), 0.0);

    // The provider refuses the refresh token: the grant needs consent again.
    app.sql_exec("UPDATE grants SET expires_at = now() + interval '10 seconds', refresh_at = now()").await;
    setup.provider.fail_next_token_requests(1, TokenFailure::InvalidGrant { description: "revoked".to_owned() });
    assert_eq!(grants::refresh_due(&app.ctx, 10).await.expect("second pass").reauth_required, 1);
    let buried = scrape(&app).await;
    assert_eq!(value(&buried, "postbridge_token_refreshes_total", &[("outcome", "reauth_required")]), 1.0);
    assert_eq!(value(&buried, "postbridge_grants", &[("status", "reauth_required")]), 1.0);
    assert_eq!(value(&buried, "postbridge_grants", &[("status", "valid")]), 0.0);
    assert_eq!(value(&buried, "postbridge_accounts", &[("state", "error")]), 1.0);
}

#[tokio::test]
async fn accounts_are_counted_by_state_with_every_state_present() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    for (login, enabled) in [("a@example.com", true), ("b@example.com", true), ("c@example.com", false)] {
        let body = postbridge_tests::with(TestApp::smtp_account(login), json!({"enabled": enabled}));
        assert_eq!(app.post("/v1/accounts", &key, body).await.status, StatusCode::CREATED);
    }
    let body = scrape(&app).await;
    assert_eq!(value(&body, "postbridge_accounts", &[("state", "draft")]), 2.0);
    assert_eq!(value(&body, "postbridge_accounts", &[("state", "disabled")]), 1.0);
    for state in ["authorized", "confirmed", "error"] {
        assert_eq!(value(&body, "postbridge_accounts", &[("state", state)]), 0.0, "{state}");
    }
}

#[tokio::test]
async fn with_a_metrics_token_set_the_api_and_the_worker_serve_metrics_only_to_its_bearer() {
    let token = format!("metrics-{}", Uuid::new_v4().simple());
    let mut env = TestEnv::new();
    env.set("METRICS_TOKEN", token.clone());
    let app = spawn_app_with(env).await;
    let (status, _, body) = scrape_with(&app, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let wrong = app.request(reqwest::Method::GET, "/metrics", Some("not-the-token"), None, None).await;
    assert_error(&wrong, StatusCode::UNAUTHORIZED, "unauthenticated");
    let (status, _, body) = scrape_with(&app, Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("postbridge_queue_depth"));

    // The worker's endpoint: same token, GET /metrics only.
    let listener = postbridge_worker::http::bind("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
    let worker_url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let probes = postbridge_worker::http::Probes {
        liveness: postbridge_worker::liveness::Liveness::new(),
        redis: postbridge_worker::queue::connect(app.ctx.settings.redis_url.as_str()).expect("redis"),
    };
    let server = tokio::spawn(postbridge_worker::http::serve(app.ctx.clone(), probes, listener, stop_rx));
    let get = |path: &str, bearer: Option<&str>| {
        let mut request = app.http.get(format!("{worker_url}{path}"));
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        request.send()
    };
    assert_eq!(get("/metrics", None).await.expect("scrape").status(), StatusCode::UNAUTHORIZED);
    let served = get("/metrics", Some(&token)).await.expect("scrape");
    assert_eq!(served.status(), StatusCode::OK);
    assert!(served.headers()["content-type"].to_str().expect("ascii").starts_with("text/plain; version=0.0.4"));
    assert!(served.text().await.expect("body").contains("# TYPE postbridge_queue_depth gauge"));
    assert_eq!(get("/other", Some(&token)).await.expect("request").status(), StatusCode::NOT_FOUND);
    let post = app.http.post(format!("{worker_url}/metrics")).bearer_auth(&token).send().await.expect("request");
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    let _ = stop_tx.send(true);
    server.await.expect("metrics server stops");
}

#[tokio::test]
async fn no_tenant_id_slug_or_secret_appears_in_the_metrics() {
    let app = spawn_app().await;
    let slug = format!("secretive-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let tenant = app.create_tenant(&slug).await;
    let key = app.api_key(&tenant, "admin").await;
    let config = app.post("/v1/token-configs", &key, TestApp::microsoft_config()).await;
    assert_eq!(config.status, StatusCode::CREATED, "{}", config.text);
    app.post("/v1/accounts", &key, TestApp::smtp_account("someone@example.com")).await;
    app.get("/v1/accounts", "pbk_nothere_wrong").await;
    let body = scrape(&app).await;
    let key_prefix = key.split('_').nth(1).expect("key prefix");
    for secret in [
        tenant.as_str(),
        slug.as_str(),
        key.as_str(),
        key_prefix,
        &app.operator_token(),
        "ms-client-secret-value",
        "app-password-1",
        "someone@example.com",
    ] {
        assert!(!body.contains(secret), "{secret} appears in the metrics");
    }
}

#[tokio::test]
async fn without_a_metrics_token_metrics_are_closed_unless_private_hosts_are_allowed() {
    let mut env = TestEnv::new();
    env.set("ALLOW_PRIVATE_HOSTS", "false");
    let app = spawn_app_with(env).await;
    let (status, _, body) = scrape_with(&app, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "production without a token: closed ({body})");
    let (status, _, _) = scrape_with(&app, Some("anything")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let development = spawn_app().await;
    let (status, _, body) = scrape_with(&development, None).await;
    assert_eq!(status, StatusCode::OK, "development: open");
    assert!(body.contains("postbridge_queue_depth"));
}
