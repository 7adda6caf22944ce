//! Lists of sent and received messages filter by status, account, time, folder and From/subject text, and page
//! through the filtered list with cursors; bad filters are clear 4xx errors. Messages are submitted and received
//! for real (no worker runs, so submitted messages stay queued until a test moves them).

use postbridge_tests::mail::MailServers;
use postbridge_tests::mailflow::{new_login, password_account, spawn_mail_app, MAIL_PASSWORD};
use postbridge_tests::{assert_error, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn subjects(reply: &postbridge_tests::Reply) -> Vec<String> {
    reply.body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", reply.text))
        .iter()
        .map(|m| m["subject"].as_str().unwrap_or("").to_owned())
        .collect()
}

async fn submit(app: &TestApp, key: &str, from: &str, subject: &str) -> String {
    let reply =
        app.post("/v1/messages", key, json!({"from": from, "to": ["rcpt@example.org"], "subject": subject, "text": "hi"})).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    reply.id()
}

async fn smtp_sender(app: &TestApp, servers: &MailServers, admin: &str) -> (String, String) {
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    let account =
        app.confirmed_mail_account(admin, password_account(servers, "smtp", "tls", &login, json!({"from_filter": login}))).await;
    (login, account)
}

#[tokio::test]
async fn sent_messages_filter_by_status_account_and_time_with_cursors() {
    let (app, servers) = spawn_mail_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let (alice, alice_account) = smtp_sender(&app, servers, &admin).await;
    let (bob, bob_account) = smtp_sender(&app, servers, &admin).await;
    let old = submit(&app, &admin, &alice, "a-old").await;
    let failed = submit(&app, &admin, &alice, "a-failed").await;
    submit(&app, &admin, &alice, "a-queued").await;
    submit(&app, &admin, &bob, "b-queued").await;
    app.sql_exec(&format!("UPDATE outbound_messages SET created_at = now() - interval '2 days' WHERE id = '{old}'")).await;
    app.sql_exec(&format!("UPDATE outbound_messages SET status = 'failed' WHERE id = '{failed}'")).await;

    assert_eq!(subjects(&app.get("/v1/messages?status=failed", &admin).await), ["a-failed"]);
    assert_eq!(subjects(&app.get(&format!("/v1/messages?account_id={bob_account}"), &admin).await), ["b-queued"]);
    let queued_alice = app.get(&format!("/v1/messages?status=queued&account_id={alice_account}"), &admin).await;
    assert_eq!(subjects(&queued_alice), ["a-queued", "a-old"]);
    let since = (chrono::Utc::now() - chrono::Duration::days(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let recent = app.get(&format!("/v1/messages?account_id={alice_account}&since={since}"), &admin).await;
    assert_eq!(subjects(&recent), ["a-queued", "a-failed"]);
    assert_eq!(subjects(&app.get(&format!("/v1/messages?until={since}"), &admin).await), ["a-old"]);

    // The cursor pages through the filtered list only.
    let first = app.get(&format!("/v1/messages?account_id={alice_account}&limit=2"), &admin).await;
    assert_eq!(subjects(&first), ["a-queued", "a-failed"]);
    let cursor = first.body["next_cursor"].as_str().expect("a next page").to_owned();
    let second = app.get(&format!("/v1/messages?account_id={alice_account}&limit=2&cursor={cursor}"), &admin).await;
    assert_eq!((subjects(&second), second.body["next_cursor"].clone()), (vec!["a-old".to_owned()], Value::Null));

    // GraphQL: the same filter.
    let body = app
        .graphql(
            Some(&admin),
            "query($a: UUID!) { sentMessages(filter: {status: QUEUED, accountId: $a}) { items { subject } } }",
            json!({"a": bob_account}),
        )
        .await;
    assert_eq!(body["data"]["sentMessages"]["items"], json!([{"subject": "b-queued"}]), "{body}");

    // Bad filters are the caller's to fix.
    assert_error(&app.get("/v1/messages?status=shipped", &admin).await, StatusCode::BAD_REQUEST, "invalid_query");
    assert_error(&app.get("/v1/messages?account_id=nope", &admin).await, StatusCode::BAD_REQUEST, "invalid_query");
    let backwards = format!("/v1/messages?since={since}&until=2000-01-01T00:00:00Z");
    assert_error(&app.get(&backwards, &admin).await, StatusCode::UNPROCESSABLE_ENTITY, "invalid_time_range");
    // RFC 3339 parsers take any signed year; Postgres would refuse these (a 500 before).
    for far in ["since=-5000-01-01T00:00:00Z", "until=%2B20000-01-01T00:00:00Z", "since=0000-12-31T00:00:00Z"] {
        assert_error(&app.get(&format!("/v1/messages?{far}"), &admin).await, StatusCode::UNPROCESSABLE_ENTITY, "invalid_time");
    }
    // Another tenant's account id matches nothing of this tenant's.
    let (_, stranger) = app.tenant_with_admin().await;
    assert!(subjects(&app.get(&format!("/v1/messages?account_id={alice_account}"), &stranger).await).is_empty());
}

fn message(from: &str, subject: &str, n: usize) -> Vec<u8> {
    format!("From: {from}\r\nSubject: {subject}\r\nMessage-ID: <filter-{n}@example.net>\r\n\r\nbody\r\n").into_bytes()
}

#[tokio::test]
async fn received_messages_filter_by_folder_from_subject_and_time_with_cursors() {
    let (app, servers) = spawn_mail_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    let account = app.confirmed_mail_account(&admin, password_account(servers, "imap", "tls", &login, json!({}))).await;
    servers.seed_messages(
        &login,
        "INBOX",
        &[
            message("Ada <ada@example.net>", "Invoice 1", 1),
            message("billing@shop.example", "Sale: 50%_off today", 2),
            message("Ada <ada@example.net>", "Invoice 2", 3),
            message("bob@example.org", "Lunch?", 4),
        ],
    );
    assert_eq!(app.poll(&account).await.stored, 4);
    let list = |query: &str| {
        let path = format!("/v1/accounts/{account}/messages?{query}");
        let app = &app;
        let admin = admin.clone();
        async move { app.get(&path, &admin).await }
    };

    assert_eq!(subjects(&list("from=ADA@example").await), ["Invoice 2", "Invoice 1"], "case-insensitive");
    assert_eq!(subjects(&list("subject=invoice").await), ["Invoice 2", "Invoice 1"]);
    assert_eq!(subjects(&list("subject=50%25_off").await), ["Sale: 50%_off today"], "% and _ are literal");
    assert!(subjects(&list("subject=5__").await).is_empty(), "_ is no wildcard");
    assert_eq!(subjects(&list("folder=INBOX&from=bob").await), ["Lunch?"]);
    assert!(subjects(&list("folder=Archive").await).is_empty());
    app.sql_exec(&format!("UPDATE inbound_messages SET received_at = now() - interval '3 days' WHERE subject = 'Invoice 1' AND account_id = '{account}'")).await;
    let since = (chrono::Utc::now() - chrono::Duration::days(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(subjects(&list(&format!("from=ada&since={since}")).await), ["Invoice 2"]);
    assert_eq!(subjects(&list(&format!("until={since}")).await), ["Invoice 1"]);

    let first = list("from=ada&limit=1").await;
    assert_eq!(subjects(&first), ["Invoice 2"]);
    let cursor = first.body["next_cursor"].as_str().expect("a next page").to_owned();
    let second = list(&format!("from=ada&limit=1&cursor={cursor}")).await;
    assert_eq!((subjects(&second), second.body["next_cursor"].clone()), (vec!["Invoice 1".to_owned()], Value::Null));

    let body = app
        .graphql(
            Some(&admin),
            "query($a: UUID!) { receivedMessages(accountId: $a, filter: {subject: \"lunch\"}) { items { subject } } }",
            json!({"a": account}),
        )
        .await;
    assert_eq!(body["data"]["receivedMessages"]["items"], json!([{"subject": "Lunch?"}]), "{body}");

    assert_error(&list(&format!("subject={}", "x".repeat(201))).await, StatusCode::UNPROCESSABLE_ENTITY, "invalid_filter");
    assert_error(&list("subject=").await, StatusCode::UNPROCESSABLE_ENTITY, "invalid_filter");
    assert_error(&list("since=yesterday").await, StatusCode::BAD_REQUEST, "invalid_query");
    assert_error(&list("until=-5000-01-01T00:00:00Z").await, StatusCode::UNPROCESSABLE_ENTITY, "invalid_time");
}
