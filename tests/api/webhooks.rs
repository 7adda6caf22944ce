//! Webhooks: endpoints and their secrets, signed deliveries checked with the official Standard Webhooks
//! verifier (an implementation independent of ours), retries, the delivery log, redelivery and disabling.

use std::time::Duration;

use postbridge_core::jobs::job::Job;
use postbridge_core::jobs::marks;
use postbridge_core::observe::events;
use postbridge_core::observe::webhooks::{self, WebhookOutcome};
use postbridge_core::secrets::crypto::SecretLocation;
use postbridge_tests::webhook_receiver::{Received, WebhookReceiver};
use postbridge_tests::{assert_error, graphql_error_code, spawn_app, spawn_app_with, TestApp, TestEnv};
use reqwest::StatusCode;
use sea_orm::TransactionTrait;
use serde_json::{json, Value};
use standardwebhooks::Webhook;
use uuid::Uuid;

/// Creates an endpoint; returns its id and its secret.
async fn endpoint(app: &TestApp, key: &str, body: Value) -> (Uuid, String) {
    let reply = app.post("/v1/webhooks", key, body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let id = reply.body["endpoint"]["id"].as_str().expect("endpoint id");
    (Uuid::parse_str(id).expect("uuid"), reply.body["secret"].as_str().expect("secret").to_owned())
}

/// Records an event the way the services do; returns its id.
async fn record_event(app: &TestApp, tenant: &str, event_type: &str, resource_id: Uuid) -> Uuid {
    let tenant_id = Uuid::parse_str(tenant).expect("tenant id");
    events::record(&app.ctx.db, tenant_id.into(), event_type, "message", Some(resource_id), json!({"subject": "hello"}))
        .await
        .expect("event recorded");
    let id = app
        .sql_text(&format!(
            "SELECT id::text FROM events WHERE tenant_id = '{tenant}' AND resource_id = '{resource_id}' ORDER BY id DESC LIMIT 1"
        ))
        .await
        .expect("event id");
    Uuid::parse_str(&id).expect("uuid")
}

async fn deliveries(app: &TestApp, key: &str, endpoint_id: Uuid) -> Vec<Value> {
    let reply = app.get(&format!("/v1/webhooks/{endpoint_id}/deliveries"), key).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body["items"].as_array().expect("items").clone()
}

/// The delivery log, oldest attempt first.
async fn attempts(app: &TestApp, key: &str, endpoint_id: Uuid) -> Vec<Value> {
    let reply = app.get(&format!("/v1/webhooks/{endpoint_id}/attempts"), key).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let mut items = reply.body["items"].as_array().expect("items").clone();
    items.reverse();
    items
}

fn verify(secret: &str, request: &Received) -> Result<(), standardwebhooks::WebhookError> {
    Webhook::new(secret).expect("secret is whsec_ base64").verify(request.body.as_bytes(), &request.headers)
}

#[tokio::test]
async fn creating_an_endpoint_shows_its_secret_once_and_stores_it_encrypted() {
    let app = spawn_app().await;
    let (tenant, key) = app.tenant_with_admin().await;
    let receiver = WebhookReceiver::start().await;
    let reply = app
        .post("/v1/webhooks", &key, json!({"url": receiver.url, "description": "CRM", "event_types": ["message.received"]}))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let secret = reply.body["secret"].as_str().expect("secret").to_owned();
    let raw_key = secret.strip_prefix("whsec_").expect("whsec_ prefix");
    use base64::Engine;
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(raw_key).expect("base64").len(), 32);
    let created = &reply.body["endpoint"];
    assert_eq!(created["url"], json!(receiver.url));
    assert_eq!(created["event_types"], json!(["message.received"]));
    assert_eq!(created["enabled"], json!(true));
    assert!(created.get("secret").is_none(), "{}", reply.text);
    let id = created["id"].as_str().expect("id").to_owned();

    let got = app.get(&format!("/v1/webhooks/{id}"), &key).await;
    assert_eq!(got.status, StatusCode::OK);
    let listed = app.get("/v1/webhooks", &key).await;
    assert_eq!(listed.body["items"].as_array().map(Vec::len), Some(1));
    for text in [&got.text, &listed.text] {
        assert!(!text.contains(&secret) && !text.contains(raw_key) && !text.contains("\"secret\""), "{text}");
    }

    let stored = app.stored_value("webhook_endpoints", "secret", &id).await.expect("stored secret");
    assert!(!stored.contains(raw_key), "the secret is stored encrypted");
    let tenant_id = Uuid::parse_str(&tenant).expect("uuid");
    let location = SecretLocation {
        tenant_id: tenant_id.into(),
        table: "webhook_endpoints",
        column: "secret",
        row_id: Uuid::parse_str(&id).expect("uuid"),
    };
    assert_eq!(app.ctx.cipher.decrypt(location, &stored).expect("decrypts at its own row"), secret);

    let audit = app
        .sql_text(&format!(
            "SELECT changes::text FROM audit_log WHERE action = 'webhook_endpoint.created' AND resource_id = '{id}'"
        ))
        .await
        .expect("audit entry");
    assert!(audit.contains("(secret changed)") && audit.contains(&receiver.url) && !audit.contains(raw_key), "{audit}");

    let viewer = app.api_key(&tenant, "viewer").await;
    assert_eq!(app.get(&format!("/v1/webhooks/{id}"), &viewer).await.status, StatusCode::OK, "viewers read");
    let refused = app.post("/v1/webhooks", &viewer, json!({"url": receiver.url})).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "forbidden");
    let refused = app.post(&format!("/v1/webhooks/{id}/rotate-secret"), &viewer, json!({})).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "forbidden");
}

#[tokio::test]
async fn webhook_urls_obey_the_ssrf_rules_when_private_hosts_are_not_allowed() {
    let mut env = TestEnv::new();
    env.set("ALLOW_PRIVATE_HOSTS", "false");
    let app = spawn_app_with(env).await;
    let (_, key) = app.tenant_with_admin().await;
    for (url, code) in [
        ("http://hooks.example.com/in", "insecure_url"),
        ("https://127.0.0.1/hook", "forbidden_address"),
        ("https://10.1.2.3/hook", "forbidden_address"),
        ("https://169.254.169.254/latest", "forbidden_address"),
        ("https://localhost/hook", "forbidden_address"),
        ("not a url", "invalid_url"),
    ] {
        let reply = app.post("/v1/webhooks", &key, json!({"url": url})).await;
        assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, code);
        assert_eq!(reply.body["field"], json!("url"), "{url}");
    }
    assert_eq!(app.get("/v1/webhooks", &key).await.body["items"], json!([]), "nothing was half-written");

    let (id, _) = endpoint(&app, &key, json!({"url": "https://hooks.example.com/in"})).await;
    let reply = app.patch(&format!("/v1/webhooks/{id}"), &key, json!({"url": "https://192.168.0.10/in"})).await;
    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "forbidden_address");
    assert_eq!(app.get(&format!("/v1/webhooks/{id}"), &key).await.body["url"], json!("https://hooks.example.com/in"));
}

#[tokio::test]
async fn unknown_event_types_are_refused_naming_the_field() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let reply = app
        .post(
            "/v1/webhooks",
            &key,
            json!({"url": "https://hooks.example.com/in", "event_types": ["message.sent", "mail.exploded"]}),
        )
        .await;
    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "unknown_event_type");
    assert_eq!(reply.body["field"], json!("event_types"));
    assert!(reply.body["message"].as_str().is_some_and(|m| m.contains("mail.exploded")), "{}", reply.text);

    let (id, _) = endpoint(&app, &key, json!({"url": "https://hooks.example.com/in"})).await;
    let reply = app.patch(&format!("/v1/webhooks/{id}"), &key, json!({"event_types": ["nope"]})).await;
    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "unknown_event_type");
}

#[tokio::test]
async fn a_tenant_has_at_most_fifty_endpoints_even_when_created_all_at_once() {
    let app = spawn_app().await;
    let (tenant, key) = app.tenant_with_admin().await;
    let body = |i: usize| json!({"url": format!("https://hooks.example.com/in/{i}")});
    let replies = futures::future::join_all((0..55).map(|i| app.post("/v1/webhooks", &key, body(i)))).await;
    let created = replies.iter().filter(|r| r.status == StatusCode::CREATED).count();
    let refused: Vec<_> = replies.iter().filter(|r| r.status != StatusCode::CREATED).collect();
    assert_eq!(created, 50, "{:?}", refused.first().map(|r| &r.text));
    for reply in &refused {
        assert_error(reply, StatusCode::UNPROCESSABLE_ENTITY, "too_many_webhook_endpoints");
    }
    let stored = app.sql_i64(&format!("SELECT count(*) FROM webhook_endpoints WHERE tenant_id = '{tenant}'")).await;
    assert_eq!(stored, 50, "none past the bound was written");
    // At the bound, the endpoints the tenant has are still its to change.
    let created = replies.iter().find(|r| r.status == StatusCode::CREATED).expect("a created one");
    let some = created.body["endpoint"]["id"].as_str().expect("an id");
    let changed = app.patch(&format!("/v1/webhooks/{some}"), &key, json!({"description": "still editable"})).await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text);
    // The bound is the tenant's own: another tenant creates its first.
    let (_, other) = app.tenant_with_admin().await;
    assert_eq!(app.post("/v1/webhooks", &other, body(0)).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn an_event_is_delivered_signed_so_that_the_official_verifier_accepts_it() {
    let app = spawn_app().await;
    let (tenant, key) = app.tenant_with_admin().await;
    let receiver = WebhookReceiver::start().await;
    let (endpoint_id, secret) = endpoint(&app, &key, json!({"url": receiver.url})).await;
    let message_id = Uuid::now_v7();
    let event_id = record_event(&app, &tenant, events::MESSAGE_RECEIVED, message_id).await;

    let outcome = webhooks::attempt(&app.ctx, endpoint_id.into(), event_id).await.expect("delivery");
    assert_eq!(outcome, WebhookOutcome::Delivered);
    let received = receiver.received();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", "/hook"));
    assert_eq!(request.header("webhook-id"), event_id.to_string(), "the webhook id is the event id");
    assert!(request.header("content-type").starts_with("application/json"));
    verify(&secret, request).expect("the official Standard Webhooks verifier accepts the signature");
    let other = format!("whsec_{}", {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([7u8; 32])
    });
    assert!(verify(&other, request).is_err(), "another secret does not verify");
    let mut tampered = request.clone();
    tampered.body = tampered.body.replace("hello", "HELLO");
    assert!(verify(&secret, &tampered).is_err(), "a changed body does not verify");

    let body = request.json();
    assert_eq!(body["type"], json!("message.received"));
    assert!(body["timestamp"].as_str().is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()), "{body}");
    assert_eq!(body["data"]["resource_id"], json!(message_id));
    assert_eq!(body["data"]["resource_type"], json!("message"));
    assert_eq!(body["data"]["tenant_id"], json!(tenant));
    assert_eq!(body["data"]["subject"], json!("hello"));

    let delivered = deliveries(&app, &key, endpoint_id).await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0]["event_id"], json!(event_id));
    assert_eq!(delivered[0]["status"], json!("delivered"));
    assert_eq!(delivered[0]["attempts"], json!(1));
    assert_eq!(delivered[0]["last_status_code"], json!(200));
    let log = attempts(&app, &key, endpoint_id).await;
    assert_eq!(log.len(), 1);
    assert_eq!((log[0]["attempt"].clone(), log[0]["status_code"].clone()), (json!(1), json!(200)));
    assert!(log[0]["latency_ms"].as_i64().is_some_and(|ms| ms >= 0));
    assert_eq!(
        webhooks::attempt(&app.ctx, endpoint_id.into(), event_id).await.expect("again"),
        WebhookOutcome::Skipped,
        "a delivered event is not sent again by a second job"
    );
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn the_worker_retries_a_receiver_that_fails_twice_until_it_succeeds() {
    let mut env = TestEnv::new();
    env.set("WEBHOOK_RETRY_SCHEDULE", "0s,0s,0s");
    let app = spawn_app_with(env).await;
    let (tenant, key) = app.tenant_with_admin().await;
    let receiver = WebhookReceiver::answering(&[500, 503], 200).await;
    let (endpoint_id, secret) = endpoint(&app, &key, json!({"url": receiver.url})).await;
    let event_id = record_event(&app, &tenant, events::MESSAGE_SENT, Uuid::now_v7()).await;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(postbridge_worker::run(app.ctx.clone(), stop_rx));
    let received = receiver.wait_for(3, Duration::from_secs(30)).await;
    // The third answer is a success; wait for the worker to record it before stopping.
    let mut delivered = Value::Null;
    for _ in 0..100 {
        delivered = deliveries(&app, &key, endpoint_id).await[0].clone();
        if delivered["status"] == json!("delivered") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
    worker.await.expect("worker task").expect("worker stops cleanly");

    assert_eq!(received.len(), 3, "no request after the success");
    for request in &received {
        assert_eq!(request.header("webhook-id"), event_id.to_string(), "the same id on every attempt");
        verify(&secret, request).expect("every attempt is signed");
    }
    assert_eq!(delivered["status"], json!("delivered"), "{delivered}");
    assert_eq!(delivered["attempts"], json!(3));
    let log = attempts(&app, &key, endpoint_id).await;
    let summary: Vec<(Value, Value)> = log.iter().map(|a| (a["attempt"].clone(), a["status_code"].clone())).collect();
    assert_eq!(summary, vec![(json!(1), json!(500)), (json!(2), json!(503)), (json!(3), json!(200))]);
    assert!(log[0]["error"].as_str().is_some_and(|e| e.contains("500")), "{}", log[0]);
    assert_eq!(log[2]["error"], Value::Null);
    let got = app.get(&format!("/v1/webhooks/{endpoint_id}"), &key).await;
    assert_eq!(got.body["failing_since"], Value::Null, "a success ends the failure streak");
    assert!(app.ctx.metrics.render().contains("postbridge_webhook_deliveries_total{outcome=\"retrying\"} 2"));
}

#[tokio::test]
async fn a_delivery_whose_every_attempt_fails_is_failed_and_a_manual_redelivery_delivers_it() {
    let mut env = TestEnv::new();
    env.set("WEBHOOK_RETRY_SCHEDULE", "0s,0s");
    let app = spawn_app_with(env).await;
    let (tenant, key) = app.tenant_with_admin().await;
    let receiver = WebhookReceiver::answering(&[500, 500, 502], 200).await;
    let (endpoint_id, secret) = endpoint(&app, &key, json!({"url": receiver.url})).await;
    let event_id = record_event(&app, &tenant, events::MESSAGE_FAILED, Uuid::now_v7()).await;

    let mut outcomes = Vec::new();
    for _ in 0..4 {
        outcomes.push(webhooks::attempt(&app.ctx, endpoint_id.into(), event_id).await.expect("attempt"));
    }
    assert_eq!(
        outcomes,
        [WebhookOutcome::Retrying, WebhookOutcome::Retrying, WebhookOutcome::Failed, WebhookOutcome::Skipped],
        "one attempt and one per scheduled retry, then nothing"
    );
    assert_eq!(receiver.received().len(), 3);
    let failed = deliveries(&app, &key, endpoint_id).await;
    assert_eq!(failed[0]["status"], json!("failed"));
    assert_eq!(failed[0]["attempts"], json!(3));
    assert_eq!(failed[0]["last_status_code"], json!(502));
    assert_eq!(failed[0]["next_attempt_at"], Value::Null);
    let got = app.get(&format!("/v1/webhooks/{endpoint_id}"), &key).await;
    assert!(got.body["failing_since"].is_string(), "{}", got.text);
    assert_eq!(got.body["enabled"], json!(true), "a few failures do not disable an endpoint");
    assert!(webhooks::claim_due_webhooks(&app.ctx, 10).await.expect("claim").is_empty(), "nothing is due");

    let reply = app.post(&format!("/v1/webhooks/{endpoint_id}/deliveries/{event_id}/redeliver"), &key, json!({})).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(reply.body["status"], json!("pending"));
    let claimed = webhooks::claim_due_webhooks(&app.ctx, 10).await.expect("claim");
    assert_eq!(claimed, vec![(endpoint_id.into(), event_id)], "the redelivery is due at once");
    assert_eq!(webhooks::attempt(&app.ctx, endpoint_id.into(), event_id).await.expect("redelivery"), WebhookOutcome::Delivered);
    let received = receiver.received();
    assert_eq!(received.len(), 4);
    verify(&secret, &received[3]).expect("the redelivery is signed");
    assert_eq!(received[3].header("webhook-id"), event_id.to_string());
    let delivered = deliveries(&app, &key, endpoint_id).await;
    assert_eq!((delivered[0]["status"].clone(), delivered[0]["attempts"].clone()), (json!("delivered"), json!(4)));
    let log = attempts(&app, &key, endpoint_id).await;
    let codes: Vec<Value> = log.iter().map(|a| a["status_code"].clone()).collect();
    assert_eq!(codes, vec![json!(500), json!(500), json!(502), json!(200)]);
    assert_eq!(log[3]["attempt"], json!(4));

    let unknown = app.post(&format!("/v1/webhooks/{endpoint_id}/deliveries/{}/redeliver", Uuid::now_v7()), &key, json!({})).await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn an_endpoint_failing_for_longer_than_disable_after_is_disabled_and_an_event_says_so() {
    let app = spawn_app().await;
    let (tenant, key) = app.tenant_with_admin().await;
    let failing = WebhookReceiver::answering(&[], 500).await;
    let watcher = WebhookReceiver::start().await;
    let (failing_id, _) = endpoint(&app, &key, json!({"url": failing.url, "event_types": ["message.received"]})).await;
    let (watcher_id, watcher_secret) =
        endpoint(&app, &key, json!({"url": watcher.url, "event_types": ["webhook_endpoint.disabled"]})).await;

    // A first failure starts the streak but does not disable anything.
    let first = record_event(&app, &tenant, events::MESSAGE_RECEIVED, Uuid::now_v7()).await;
    assert_eq!(webhooks::attempt(&app.ctx, failing_id.into(), first).await.expect("attempt"), WebhookOutcome::Retrying);
    assert_eq!(app.get(&format!("/v1/webhooks/{failing_id}"), &key).await.body["enabled"], json!(true));

    // Every attempt has failed for six days (the default limit is five) when the next one fails.
    app.sql_exec(&format!("UPDATE webhook_endpoints SET failing_since = now() - interval '6 days' WHERE id = '{failing_id}'"))
        .await;
    let second = record_event(&app, &tenant, events::MESSAGE_RECEIVED, Uuid::now_v7()).await;
    assert_eq!(webhooks::attempt(&app.ctx, failing_id.into(), second).await.expect("attempt"), WebhookOutcome::Failed);

    let got = app.get(&format!("/v1/webhooks/{failing_id}"), &key).await;
    assert_eq!(got.body["enabled"], json!(false), "{}", got.text);
    assert!(got.body["disabled_reason"].as_str().is_some_and(|r| r.contains("failed")), "{}", got.text);
    assert_eq!(app.event_count(events::WEBHOOK_ENDPOINT_DISABLED, &failing_id.to_string()).await, 1);
    let statuses: Vec<Value> = deliveries(&app, &key, failing_id).await.iter().map(|d| d["status"].clone()).collect();
    assert_eq!(statuses, vec![json!("failed"), json!("failed")], "pending deliveries fail with the endpoint");

    // The event reaches the tenant's other endpoints.
    let watched = deliveries(&app, &key, watcher_id).await;
    assert_eq!(watched.len(), 1);
    assert_eq!(watched[0]["event_type"], json!("webhook_endpoint.disabled"));
    let event_id = Uuid::parse_str(watched[0]["event_id"].as_str().expect("event id")).expect("uuid");
    assert_eq!(webhooks::attempt(&app.ctx, watcher_id.into(), event_id).await.expect("delivery"), WebhookOutcome::Delivered);
    let notice = &watcher.received()[0];
    verify(&watcher_secret, notice).expect("signed");
    assert_eq!(notice.json()["type"], json!("webhook_endpoint.disabled"));
    assert_eq!(notice.json()["data"]["resource_id"], json!(failing_id));
    // A receiver's URL may carry a secret: events (readable by viewers, fanned out to receivers) show its origin only.
    let origin = failing.url.trim_end_matches("/hook");
    let disabled = app.get(&format!("/v1/events?types=webhook_endpoint.disabled&resource_id={failing_id}"), &key).await;
    assert_eq!(disabled.body["items"][0]["data"]["url"], json!(format!("{origin}/…")), "{}", disabled.text);
    assert!(!notice.body.contains("/hook"), "{}", notice.body);

    // A disabled endpoint gets no new deliveries and cannot be redelivered to until enabled again.
    record_event(&app, &tenant, events::MESSAGE_RECEIVED, Uuid::now_v7()).await;
    assert_eq!(deliveries(&app, &key, failing_id).await.len(), 2);
    let refused = app.post(&format!("/v1/webhooks/{failing_id}/deliveries/{second}/redeliver"), &key, json!({})).await;
    assert_error(&refused, StatusCode::CONFLICT, "webhook_endpoint_disabled");
    let enabled = app.patch(&format!("/v1/webhooks/{failing_id}"), &key, json!({"enabled": true})).await;
    assert_eq!(enabled.status, StatusCode::OK, "{}", enabled.text);
    assert_eq!(enabled.body["enabled"], json!(true));
    assert_eq!(enabled.body["disabled_reason"], Value::Null);
    assert_eq!(enabled.body["failing_since"], Value::Null, "enabling starts the streak afresh");
    let audit = app
        .sql_i64(&format!(
            "SELECT count(*) FROM audit_log WHERE action = 'webhook_endpoint.updated' AND resource_id = '{failing_id}' AND changes->>'enabled' = 'true'"
        ))
        .await;
    assert_eq!(audit, 1);
}

#[tokio::test]
async fn after_a_rotation_deliveries_carry_both_signatures_and_each_secret_verifies() {
    let app = spawn_app().await;
    let (tenant, key) = app.tenant_with_admin().await;
    let receiver = WebhookReceiver::start().await;
    let (endpoint_id, old_secret) = endpoint(&app, &key, json!({"url": receiver.url})).await;
    let rotated = app.post(&format!("/v1/webhooks/{endpoint_id}/rotate-secret"), &key, json!({})).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text);
    let new_secret = rotated.body["secret"].as_str().expect("new secret").to_owned();
    assert_ne!(new_secret, old_secret);
    assert!(rotated.body["endpoint"]["previous_secret_expires_at"].is_string(), "{}", rotated.text);
    let stored = app.stored_value("webhook_endpoints", "previous_secret", &endpoint_id.to_string()).await.expect("stored");
    assert!(!stored.contains(old_secret.trim_start_matches("whsec_")), "the previous secret is stored encrypted");

    let event_id = record_event(&app, &tenant, events::MESSAGE_RECEIVED, Uuid::now_v7()).await;
    assert_eq!(webhooks::attempt(&app.ctx, endpoint_id.into(), event_id).await.expect("delivery"), WebhookOutcome::Delivered);
    let request = &receiver.received()[0];
    let signatures: Vec<&str> = request.header("webhook-signature").split(' ').collect();
    assert_eq!(signatures.len(), 2, "{signatures:?}");
    assert!(signatures.iter().all(|s| s.starts_with("v1,")));
    verify(&new_secret, request).expect("the new secret verifies");
    verify(&old_secret, request).expect("the previous secret still verifies");
    // Each signature alone: each one is made with one of the two secrets.
    for signature in &signatures {
        let mut single = request.clone();
        single.headers.insert("webhook-signature", signature.parse().expect("header value"));
        assert!(verify(&new_secret, &single).is_ok() ^ verify(&old_secret, &single).is_ok(), "{signature}");
    }

    // Once the grace period is over only the new secret signs.
    app.sql_exec(&format!(
        "UPDATE webhook_endpoints SET previous_secret_expires_at = now() - interval '1 second' WHERE id = '{endpoint_id}'"
    ))
    .await;
    let later = record_event(&app, &tenant, events::MESSAGE_RECEIVED, Uuid::now_v7()).await;
    webhooks::attempt(&app.ctx, endpoint_id.into(), later).await.expect("delivery");
    let request = &receiver.received()[1];
    assert_eq!(request.header("webhook-signature").split(' ').count(), 1);
    verify(&new_secret, request).expect("the new secret verifies");
    assert!(verify(&old_secret, request).is_err(), "the expired secret no longer signs");
    let audit = app
        .sql_i64(&format!(
            "SELECT count(*) FROM audit_log WHERE action = 'webhook_endpoint.secret_rotated' AND resource_id = '{endpoint_id}'"
        ))
        .await;
    assert_eq!(audit, 1);
}

#[tokio::test]
async fn endpoints_get_only_the_event_types_they_subscribed_to() {
    let app = spawn_app().await;
    let (tenant, key) = app.tenant_with_admin().await;
    let (sent_only, _) =
        endpoint(&app, &key, json!({"url": "https://hooks.example.com/sent", "event_types": ["message.sent"]})).await;
    let (everything, _) = endpoint(&app, &key, json!({"url": "https://hooks.example.com/all"})).await;
    let (disabled, _) = endpoint(&app, &key, json!({"url": "https://hooks.example.com/off", "enabled": false})).await;

    let received = record_event(&app, &tenant, events::MESSAGE_RECEIVED, Uuid::now_v7()).await;
    let sent = record_event(&app, &tenant, events::MESSAGE_SENT, Uuid::now_v7()).await;
    let ids = |items: Vec<Value>| items.iter().map(|d| d["event_id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(deliveries(&app, &key, sent_only).await), vec![json!(sent)]);
    assert_eq!(ids(deliveries(&app, &key, everything).await), vec![json!(sent), json!(received)]);
    assert!(deliveries(&app, &key, disabled).await.is_empty(), "a disabled endpoint gets nothing");

    let changed = app.patch(&format!("/v1/webhooks/{sent_only}"), &key, json!({"event_types": ["message.received"]})).await;
    assert_eq!(changed.body["event_types"], json!(["message.received"]), "{}", changed.text);
    let later = record_event(&app, &tenant, events::MESSAGE_RECEIVED, Uuid::now_v7()).await;
    assert_eq!(ids(deliveries(&app, &key, sent_only).await), vec![json!(later), json!(sent)]);
    let pending = app.get(&format!("/v1/webhooks/{everything}/deliveries?status=pending&limit=1"), &key).await;
    assert_eq!(pending.body["items"].as_array().map(Vec::len), Some(1));
    assert!(pending.body["next_cursor"].is_string(), "{}", pending.text);
}

#[tokio::test]
async fn another_tenants_endpoints_answer_not_found() {
    let app = spawn_app().await;
    let (tenant, key) = app.tenant_with_admin().await;
    let (_, intruder) = app.tenant_with_admin().await;
    let (id, _) = endpoint(&app, &key, json!({"url": "https://hooks.example.com/in"})).await;
    let event_id = record_event(&app, &tenant, events::MESSAGE_RECEIVED, Uuid::now_v7()).await;

    assert_error(&app.get(&format!("/v1/webhooks/{id}"), &intruder).await, StatusCode::NOT_FOUND, "not_found");
    let patch = app.patch(&format!("/v1/webhooks/{id}"), &intruder, json!({"enabled": false})).await;
    assert_error(&patch, StatusCode::NOT_FOUND, "not_found");
    let rotate = app.post(&format!("/v1/webhooks/{id}/rotate-secret"), &intruder, json!({})).await;
    assert_error(&rotate, StatusCode::NOT_FOUND, "not_found");
    assert_error(&app.get(&format!("/v1/webhooks/{id}/deliveries"), &intruder).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(&app.get(&format!("/v1/webhooks/{id}/attempts"), &intruder).await, StatusCode::NOT_FOUND, "not_found");
    let redeliver = app.post(&format!("/v1/webhooks/{id}/deliveries/{event_id}/redeliver"), &intruder, json!({})).await;
    assert_error(&redeliver, StatusCode::NOT_FOUND, "not_found");
    assert_error(&app.delete(&format!("/v1/webhooks/{id}"), &intruder).await, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(app.get("/v1/webhooks", &intruder).await.body["items"], json!([]));

    let got = app.get(&format!("/v1/webhooks/{id}"), &key).await;
    assert_eq!(got.body["enabled"], json!(true), "unchanged by the other tenant");
    assert_eq!(deliveries(&app, &key, id).await.len(), 1);
    assert_eq!(app.delete(&format!("/v1/webhooks/{id}"), &key).await.status, StatusCode::NO_CONTENT);
    assert_error(&app.get(&format!("/v1/webhooks/{id}"), &key).await, StatusCode::NOT_FOUND, "not_found");
    let deleted = app.sql_i64(&format!("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = '{id}'")).await;
    assert_eq!(deleted, 0, "deliveries go with their endpoint");
}

#[tokio::test]
async fn graphql_creates_lists_and_rotates_endpoints() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let created = app
        .graphql(
            Some(&key),
            "mutation($input: CreateWebhookEndpoint!) { createWebhookEndpoint(input: $input) { secret endpoint { id url eventTypes enabled } } }",
            json!({"input": {"url": "https://hooks.example.com/gql", "eventTypes": ["account.error"]}}),
        )
        .await;
    let data = &created["data"]["createWebhookEndpoint"];
    assert!(data["secret"].as_str().is_some_and(|s| s.starts_with("whsec_")), "{created}");
    assert_eq!(data["endpoint"]["eventTypes"], json!(["account.error"]));
    let id = data["endpoint"]["id"].as_str().expect("id").to_owned();

    let listed = app.graphql(Some(&key), "{ webhookEndpoints { items { id url enabled } nextCursor } }", json!({})).await;
    assert_eq!(
        listed["data"]["webhookEndpoints"]["items"],
        json!([{"id": id, "url": "https://hooks.example.com/gql", "enabled": true}])
    );

    let rotated =
        app.graphql(Some(&key), "mutation($id: UUID!) { rotateWebhookSecret(id: $id) { secret } }", json!({"id": id})).await;
    let new_secret = rotated["data"]["rotateWebhookSecret"]["secret"].as_str().expect("secret");
    assert_ne!(Some(new_secret), data["secret"].as_str());

    let refused = app
        .graphql(
            Some(&key),
            "mutation($input: CreateWebhookEndpoint!) { createWebhookEndpoint(input: $input) { secret } }",
            json!({"input": {"url": "https://hooks.example.com/gql", "eventTypes": ["nope"]}}),
        )
        .await;
    assert_eq!(graphql_error_code(&refused), "unknown_event_type");
    assert_eq!(refused["errors"][0]["extensions"]["field"], json!("event_types"));
}

#[tokio::test]
async fn the_fan_out_trigger_gives_each_event_one_pending_delivery_per_subscribed_enabled_endpoint_of_its_tenant() {
    let app = spawn_app().await;
    let installed = app
        .sql_i64(&format!("SELECT count(*) FROM pg_trigger WHERE tgname = '{}' AND NOT tgisinternal", webhooks::FAN_OUT_TRIGGER))
        .await;
    assert_eq!(installed, 1, "the trigger the code names is the one the migration installs");

    let (tenant, key) = app.tenant_with_admin().await;
    let (every, _) = endpoint(&app, &key, json!({"url": "https://hooks.example.com/every"})).await;
    let (sent_only, _) =
        endpoint(&app, &key, json!({"url": "https://hooks.example.com/sent", "event_types": ["message.sent"]})).await;
    let (failed_only, _) =
        endpoint(&app, &key, json!({"url": "https://hooks.example.com/failed", "event_types": ["message.failed"]})).await;
    let (disabled, _) = endpoint(&app, &key, json!({"url": "https://hooks.example.com/off"})).await;
    let reply = app.patch(&format!("/v1/webhooks/{disabled}"), &key, json!({"enabled": false})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let (other_tenant, other_key) = app.tenant_with_admin().await;
    let (elsewhere, _) = endpoint(&app, &other_key, json!({"url": "https://hooks.example.com/elsewhere"})).await;

    let event = record_event(&app, &tenant, events::MESSAGE_SENT, Uuid::now_v7()).await;
    for (endpoint_id, expected) in [(every, 1), (sent_only, 1), (failed_only, 0), (disabled, 0)] {
        let listed = deliveries(&app, &key, endpoint_id).await;
        assert_eq!(listed.len(), expected, "{endpoint_id}: {listed:?}");
        for delivery in listed {
            assert_eq!((delivery["event_id"].clone(), delivery["status"].clone()), (json!(event), json!("pending")));
        }
    }
    assert!(deliveries(&app, &other_key, elsewhere).await.is_empty(), "another tenant's endpoint hears nothing");

    // In the event's own transaction: an event rolled back leaves no delivery behind.
    let txn = app.ctx.db.begin().await.expect("begin");
    let tenant_id = Uuid::parse_str(&tenant).expect("tenant id");
    events::record(&txn, tenant_id.into(), events::MESSAGE_SENT, "message", Some(Uuid::now_v7()), json!({}))
        .await
        .expect("record");
    txn.rollback().await.expect("rollback");
    assert_eq!(app.sql_i64(&format!("SELECT count(*) FROM webhook_deliveries WHERE tenant_id = '{tenant}'")).await, 2);
    assert_eq!(app.sql_i64(&format!("SELECT count(*) FROM webhook_deliveries WHERE tenant_id = '{other_tenant}'")).await, 0);
}

#[tokio::test]
async fn a_webhook_job_that_fails_on_postbridges_side_has_its_claim_cut_to_seconds_and_only_its_own() {
    let app = spawn_app().await;
    let (tenant, key) = app.tenant_with_admin().await;
    let receiver = WebhookReceiver::answering(&[], 200).await;
    let (endpoint_id, _) = endpoint(&app, &key, json!({"url": receiver.url})).await;
    let failed = record_event(&app, &tenant, events::MESSAGE_FAILED, Uuid::now_v7()).await;
    let other = record_event(&app, &tenant, events::MESSAGE_FAILED, Uuid::now_v7()).await;
    let mut claimed = webhooks::claim_due_webhooks(&app.ctx, 10).await.expect("claim");
    claimed.sort_by_key(|(_, event)| *event);
    assert_eq!(claimed, vec![(endpoint_id.into(), failed), (endpoint_id.into(), other)]);

    let job = Job::Webhook { endpoint_id: endpoint_id.into(), event_id: failed };
    assert_eq!(marks::dispatch_again_soon(&app.ctx, &job.marked()).await.expect("cut short"), 1);
    let claim_ends_in = |event: Uuid| {
        format!(
            "SELECT ceil(extract(epoch FROM dispatched_until - now()))::bigint FROM webhook_deliveries \
             WHERE endpoint_id = '{endpoint_id}' AND event_id = '{event}'"
        )
    };
    let soon = app.sql_i64(&claim_ends_in(failed)).await;
    assert!((1..=marks::AFTER_JOB_ERROR_SECONDS as i64).contains(&soon), "the failed job's claim ends in {soon} s");
    assert!(app.sql_i64(&claim_ends_in(other)).await > 60, "the other delivery keeps its whole grace");
    assert_eq!(marks::dispatch_again_soon(&app.ctx, &job.marked()).await.expect("again"), 0, "a shorter mark stays");
}
