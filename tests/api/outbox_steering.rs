//! The outbox is the user's to steer: cancel a queued message, retry a failed one, resolve an unknown one; each
//! only from the state it starts from, with its event and audit entry, inside the tenant's wall.

use postbridge_core::send::announce;
use postbridge_core::send::delivery::{self, Delivery};
use postbridge_tests::mailflow::{new_login, password_account, spawn_mail_app, MAIL_PASSWORD};
use postbridge_tests::TestApp;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::worker_queue::unknown_delivery;

/// A tenant with a confirmed SMTP account; returns the admin key and the login.
async fn sender(app: &TestApp, servers: &postbridge_tests::mail::MailServers) -> (String, String, String) {
    let (tenant, key) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    app.confirmed_mail_account(&key, password_account(servers, "smtp", "starttls", &login, json!({"from_filter": login}))).await;
    (tenant, key, login)
}

async fn submit(app: &TestApp, key: &str, login: &str, rcpt: &str) -> String {
    let reply = app.post("/v1/messages", key, json!({"from": login, "to": [rcpt], "subject": "steer", "text": "hi"})).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    reply.id()
}

/// Runs `step` while listening where the workers wake for due messages; whether it was announced (a retried or
/// resent message goes at its commit, not at the scheduler's next pass).
async fn announced<T>(app: &TestApp, step: impl std::future::Future<Output = T>) -> (bool, T) {
    use postbridge_core::store::listen::{Listener, Notice};
    let mut listener = Listener::new(app.ctx.settings.database_url.clone(), announce::CHANNEL, "the test's listener");
    assert!(matches!(listener.next().await, Notice::Connected));
    let output = step.await;
    let heard = tokio::time::timeout(std::time::Duration::from_secs(2), listener.next()).await;
    (matches!(heard, Ok(Notice::Payload(_))), output)
}

async fn audit_actions(app: &TestApp, key: &str, resource: &str) -> Vec<String> {
    let reply = app.get("/v1/audit-log", key).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let items = reply.body["items"].as_array().cloned().unwrap_or_default();
    items.iter().filter(|e| e["resource_id"] == json!(resource)).filter_map(|e| e["action"].as_str().map(str::to_owned)).collect()
}

#[tokio::test]
async fn a_cancelled_message_is_never_sent_and_a_retry_sends_it_after_all() {
    let (app, servers) = spawn_mail_app().await;
    let (_, key, login) = sender(&app, servers).await;
    let id = submit(&app, &key, &login, "cancel@example.org").await;

    let cancelled = app.post(&format!("/v1/messages/{id}/cancel"), &key, json!({})).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.text);
    assert_eq!(cancelled.body["status"], json!("cancelled"));
    assert_eq!(app.event_count("message.cancelled", &id).await, 1);
    assert!(audit_actions(&app, &key, &id).await.contains(&"message.cancelled".to_owned()));

    // A job dispatched before the cancel finds nothing to send.
    let message_id = Uuid::parse_str(&id).expect("id");
    assert_eq!(delivery::deliver(&app.ctx, message_id.into()).await.expect("deliver"), Delivery::Skipped);
    assert_eq!(app.get(&format!("/v1/messages/{id}"), &key).await.body["status"], json!("cancelled"));

    let again = app.post(&format!("/v1/messages/{id}/cancel"), &key, json!({})).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    assert_eq!(again.code(), "message_not_cancellable");
    assert_eq!(app.event_count("message.cancelled", &id).await, 1, "a refused cancel records nothing");

    let retried = app.post(&format!("/v1/messages/{id}/retry"), &key, json!({})).await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.text);
    assert_eq!((retried.body["status"].clone(), retried.body["attempts"].clone()), (json!("queued"), json!(0)));
    assert_eq!(delivery::deliver(&app.ctx, message_id.into()).await.expect("deliver"), Delivery::Sent);
    let sent = app.get(&format!("/v1/messages/{id}"), &key).await;
    assert_eq!(sent.body["status"], json!("sent"));
    let cancel_sent = app.post(&format!("/v1/messages/{id}/cancel"), &key, json!({})).await;
    assert_eq!(cancel_sent.status, StatusCode::CONFLICT, "a sent message cannot be cancelled: {}", cancel_sent.text);
    assert!(cancel_sent.body["message"].as_str().unwrap_or("").contains("is sent"), "{}", cancel_sent.text);
}

#[tokio::test]
async fn a_failed_message_is_retried_with_its_attempts_from_zero_and_only_a_failed_one() {
    let (app, servers) = spawn_mail_app().await;
    let (_, key, login) = sender(&app, servers).await;
    let id = submit(&app, &key, &login, &format!("reject+{}@example.org", Uuid::new_v4().simple())).await;
    let message_id = Uuid::parse_str(&id).expect("id");
    assert_eq!(delivery::deliver(&app.ctx, message_id.into()).await.expect("deliver"), Delivery::Failed);
    let failed = app.get(&format!("/v1/messages/{id}"), &key).await;
    assert_eq!((failed.body["status"].clone(), failed.body["attempts"].clone()), (json!("failed"), json!(1)));

    let (heard, retried) = announced(&app, app.post(&format!("/v1/messages/{id}/retry"), &key, json!({}))).await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.text);
    assert!(heard, "the retried message is announced to the workers at its commit");
    assert_eq!(retried.body["status"], json!("queued"));
    assert_eq!(retried.body["attempts"], json!(0));
    assert_eq!(retried.body["last_error"], Value::Null, "the last try's error is gone");
    assert!(audit_actions(&app, &key, &id).await.contains(&"message.retried".to_owned()));
    let retried_event = app
        .sql_text(&format!(
            "SELECT data->>'previous_status' FROM events WHERE event_type = 'message.retried' AND resource_id = '{id}'"
        ))
        .await;
    assert_eq!(retried_event.as_deref(), Some("failed"), "a receiver that heard message.failed hears it is on its way again");

    let twice = app.post(&format!("/v1/messages/{id}/retry"), &key, json!({})).await;
    assert_eq!(twice.status, StatusCode::CONFLICT, "{}", twice.text);
    assert_eq!(twice.code(), "message_not_retryable");
    let resolve = app.post(&format!("/v1/messages/{id}/resolve"), &key, json!({"outcome": "sent"})).await;
    assert_eq!(resolve.code(), "message_not_unknown", "only unknown messages are resolved: {}", resolve.text);
}

#[tokio::test]
async fn an_unknown_message_is_resolved_as_sent_or_queued_again_as_its_user_says() {
    let (app, key, _login, id, _servers) = unknown_delivery().await;
    let bad = app.post(&format!("/v1/messages/{id}/resolve"), &key, json!({"outcome": "maybe"})).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
    let missing = app.post(&format!("/v1/messages/{id}/resolve"), &key, json!({})).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST, "{}", missing.text);
    assert_eq!(app.get(&format!("/v1/messages/{id}"), &key).await.body["status"], json!("unknown"), "bad input changes nothing");

    let resolve = format!("/v1/messages/{id}/resolve");
    let (heard, resent) = announced(&app, app.post(&resolve, &key, json!({"outcome": "resend"}))).await;
    assert_eq!(resent.status, StatusCode::OK, "{}", resent.text);
    assert!(heard, "the message to send again is announced to the workers at its commit");
    assert_eq!(resent.body["status"], json!("queued"));
    let resolved = app
        .sql_text(&format!("SELECT data::text FROM events WHERE event_type = 'message.resolved' AND resource_id = '{id}'"))
        .await
        .expect("a message.resolved event");
    let data: Value = serde_json::from_str(&resolved).expect("json");
    assert_eq!((data["outcome"].clone(), data["status"].clone()), (json!("resend"), json!("queued")));

    // Sent again, cut again: this time the user knows it arrived.
    assert_eq!(delivery::deliver(&app.ctx, id.into()).await.expect("deliver"), Delivery::Unknown);
    let marked = app.post(&format!("/v1/messages/{id}/resolve"), &key, json!({"outcome": "sent"})).await;
    assert_eq!(marked.status, StatusCode::OK, "{}", marked.text);
    assert_eq!(marked.body["status"], json!("sent"));
    assert!(marked.body["sent_at"].is_string(), "{}", marked.text);
    assert_eq!(app.event_count("message.resolved", &id.to_string()).await, 2);
    assert_eq!(audit_actions(&app, &key, &id.to_string()).await.iter().filter(|a| *a == "message.resolved").count(), 2);
}

#[tokio::test]
async fn steering_stays_inside_the_tenant_and_needs_a_member() {
    let (app, servers) = spawn_mail_app().await;
    let (tenant, key, login) = sender(&app, servers).await;
    let id = submit(&app, &key, &login, "walls@example.org").await;

    let (_, stranger) = app.tenant_with_admin().await;
    for verb in ["cancel", "retry", "resolve"] {
        let reply = app.post(&format!("/v1/messages/{id}/{verb}"), &stranger, json!({"outcome": "sent"})).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{verb} from another tenant: {}", reply.text);
    }
    let viewer = app.api_key(&tenant, "viewer").await;
    let reply = app.post(&format!("/v1/messages/{id}/cancel"), &viewer, json!({})).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text);
    let unknown_id = app.post(&format!("/v1/messages/{}/cancel", Uuid::now_v7()), &key, json!({})).await;
    assert_eq!(unknown_id.status, StatusCode::NOT_FOUND, "{}", unknown_id.text);
    assert_eq!(app.get(&format!("/v1/messages/{id}"), &key).await.body["status"], json!("queued"), "nothing changed");

    // GraphQL steers the same way.
    let member = app.api_key(&tenant, "member").await;
    let cancelled =
        app.graphql(Some(&member), "mutation($id: UUID!) { cancelMessage(id: $id) { status } }", json!({"id": id})).await;
    assert_eq!(cancelled["data"]["cancelMessage"]["status"], json!("CANCELLED"), "{cancelled}");
    let refused = app
        .graphql(
            Some(&member),
            "mutation($id: UUID!) { resolveMessage(id: $id, input: {outcome: SENT}) { status } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(refused["errors"][0]["extensions"]["code"], json!("message_not_unknown"), "{refused}");
}
