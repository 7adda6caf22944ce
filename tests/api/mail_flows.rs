//! The mail flows end to end (design flows 4–6) against the real Dovecot and SMTP server of `MailServers::shared()`:
//! test & confirm, inbound polling (IMAP and POP3, after-fetch actions, XOAUTH2, UIDVALIDITY changes, tenancy) and
//! outbound sending (idempotency, routing, delivery outcomes, validation). Polls and deliveries are run by calling the
//! service functions the worker calls (`poll::poll_account`, `delivery::deliver`), so each test drives its own queue.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mail_parser::MessageParser;
use postbridge_core::failure::MailStep;
use postbridge_core::receive::poll::{self, PollError, PollReport};
use postbridge_core::send::delivery::{self, Delivery};
use postbridge_core::send::give_back;
use postbridge_tests::mail::{AcceptedMessage, MailServers};
use postbridge_tests::mailflow::{
    new_login, oauth_account, password_account, sample_message, spawn_mail_app, spawn_mail_app_with, MAIL_PASSWORD,
};
use postbridge_tests::{assert_error, graphql_error_code, with, TestApp, TestEnv};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

fn uuid(id: &str) -> Uuid {
    id.parse().expect("a uuid")
}

async fn poll(app: &TestApp, account: &str) -> PollReport {
    app.poll(account).await
}

async fn deliver(app: &TestApp, message: &str) -> Delivery {
    delivery::deliver(&app.ctx, uuid(message).into()).await.expect("deliver runs")
}

async fn account_json(app: &TestApp, key: &str, id: &str) -> Value {
    let reply = app.get(&format!("/v1/accounts/{id}"), key).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body
}

async fn outbound_json(app: &TestApp, key: &str, id: &str) -> Value {
    let reply = app.get(&format!("/v1/messages/{id}"), key).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body
}

fn seeded(login: &str, count: usize, prefix: &str) -> Vec<(String, Vec<u8>)> {
    (1..=count).map(|i| sample_message(login, &format!("{prefix} {i}"))).collect()
}

fn raws(messages: &[(String, Vec<u8>)]) -> Vec<Vec<u8>> {
    messages.iter().map(|(_, raw)| raw.clone()).collect()
}

/// The received messages of an account, oldest (lowest id) first.
async fn received_oldest_first(app: &TestApp, key: &str, account: &str) -> Vec<Value> {
    let mut items = app.all_received(key, account).await;
    items.reverse();
    items
}

/// `message.received` events about an account's messages.
async fn received_events(app: &TestApp, account: &str) -> i64 {
    app.sql_i64(&format!(
        "SELECT count(*) FROM events WHERE event_type = 'message.received' AND data->>'account_id' = '{account}'"
    ))
    .await
}

fn message_ids(items: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = items.iter().map(|m| m["message_id"].as_str().expect("message_id").to_owned()).collect();
    ids.sort();
    ids
}

/// The user changes the mailbox password on the server (Dovecot re-reads a changed passwd-file at most once a second).
async fn change_password_on_server(servers: &MailServers, login: &str) {
    servers.add_password_user(login, "rotated-by-the-user-later");
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

// ---- test & confirm ----------------------------------------------------------------------------------------------

#[tokio::test]
async fn test_and_confirm_confirms_imap_pop3_and_smtp_accounts_and_records_an_event() {
    let (app, servers) = spawn_mail_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    for (protocol, security) in
        [("imap", "tls"), ("imap", "starttls"), ("pop3", "tls"), ("pop3", "starttls"), ("smtp", "starttls"), ("smtp", "tls")]
    {
        let id = app.create_mail_account(&admin, password_account(servers, protocol, security, &login, json!({}))).await;
        assert_eq!(account_json(&app, &admin, &id).await["state"], "draft");
        let reply = app.test_mail_account(&admin, &id).await;
        assert_eq!(reply.body["ok"], json!(true), "{protocol}/{security}: {}", reply.text);
        assert_eq!((&reply.body["step"], &reply.body["message"]), (&Value::Null, &Value::Null), "{}", reply.text);
        assert_eq!(reply.body["account"]["state"], "confirmed", "{}", reply.text);
        assert_eq!(account_json(&app, &admin, &id).await["state"], "confirmed");
        assert_eq!(app.event_count("account.confirmed", &id).await, 1, "{protocol}/{security}");
    }
    // And over GraphQL.
    let id = app.create_mail_account(&admin, password_account(servers, "imap", "tls", &login, json!({}))).await;
    let body = app
        .graphql(
            Some(&admin),
            "mutation($id: UUID!) { testAccount(id: $id) { ok step message account { state } } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(
        body["data"]["testAccount"],
        json!({"ok": true, "step": null, "message": null, "account": {"state": "CONFIRMED"}}),
        "{body}"
    );
}

#[tokio::test]
async fn test_and_confirm_with_a_wrong_password_reports_the_servers_words_at_the_auth_step_and_leaves_the_state() {
    let (app, servers) = spawn_mail_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, "the-real-password");
    for (protocol, security, words) in [
        ("imap", "tls", "Authentication failed"),
        ("pop3", "starttls", "Authentication failed"),
        ("smtp", "starttls", "5.7.3 Authentication unsuccessful"),
    ] {
        let id = app.create_mail_account(&admin, password_account(servers, protocol, security, &login, json!({}))).await;
        let reply = app.test_mail_account(&admin, &id).await;
        assert_eq!(reply.body["ok"], json!(false), "{}", reply.text);
        assert_eq!(reply.body["step"], "auth", "{protocol}: {}", reply.text);
        let message = reply.body["message"].as_str().unwrap_or_default();
        assert!(message.contains(words), "{protocol}: the server's own words expected, got {message:?}");
        assert!(!message.contains(MAIL_PASSWORD), "the password must never be echoed");
        assert_eq!(reply.body["account"]["state"], "draft", "{}", reply.text);
        assert_eq!(account_json(&app, &admin, &id).await["state"], "draft");
        assert_eq!(app.event_count("account.confirmed", &id).await, 0);
    }
    // A confirmed account whose password then stops working stays confirmed (the test only reports).
    let other = new_login();
    servers.add_password_user(&other, MAIL_PASSWORD);
    let id = app.confirmed_mail_account(&admin, password_account(servers, "imap", "tls", &other, json!({}))).await;
    change_password_on_server(servers, &other).await;
    let reply = app.test_mail_account(&admin, &id).await;
    assert_eq!((reply.body["ok"].clone(), reply.body["step"].clone()), (json!(false), json!("auth")), "{}", reply.text);
    assert_eq!(account_json(&app, &admin, &id).await["state"], "confirmed");
    assert_eq!(app.event_count("account.confirmed", &id).await, 1);
}

#[tokio::test]
async fn test_and_confirm_names_the_folder_step_for_a_folder_that_does_not_exist() {
    let (app, servers) = spawn_mail_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    let id = app
        .create_mail_account(&admin, password_account(servers, "imap", "tls", &login, json!({"folder": "No/Such/Folder"})))
        .await;
    let reply = app.test_mail_account(&admin, &id).await;
    assert_eq!((reply.body["ok"].clone(), reply.body["step"].clone()), (json!(false), json!("folder")), "{}", reply.text);
    let message = reply.body["message"].as_str().unwrap_or_default();
    assert!(message.contains("doesn't exist") || message.contains("NONEXISTENT"), "Dovecot's words expected: {message:?}");
    assert_eq!(reply.body["account"]["state"], "draft");
    // The folder appears on the server: the same account now confirms.
    servers.seed_messages(&login, "No/Such/Folder", &[]);
    app.confirm_mail_account(&admin, &id).await;
}

#[tokio::test]
async fn test_and_confirm_names_the_connect_step_for_a_closed_port() {
    let (app, servers) = spawn_mail_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    for protocol in ["imap", "pop3", "smtp"] {
        let body = password_account(servers, protocol, "tls", &new_login(), json!({"port": closed}));
        let id = app.create_mail_account(&admin, body).await;
        let reply = app.test_mail_account(&admin, &id).await;
        assert_eq!(
            (reply.body["ok"].clone(), reply.body["step"].clone()),
            (json!(false), json!("connect")),
            "{protocol}: {}",
            reply.text
        );
        assert_eq!(reply.body["account"]["state"], "draft");
    }
}

// ---- inbound: IMAP -----------------------------------------------------------------------------------------------

#[tokio::test]
async fn one_imap_poll_stores_every_message_once_in_uid_order_with_parsed_headers_and_the_exact_bytes() {
    let (app, servers) = spawn_mail_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    let messages = seeded(&login, 200, "Message");
    servers.seed_messages(&login, "INBOX", &raws(&messages));
    let account = app.confirmed_mail_account(&admin, password_account(servers, "imap", "tls", &login, json!({}))).await;

    let report = poll(&app, &account).await;
    assert_eq!(report, PollReport { polled: true, fetched: 200, stored: 200, resynchronised: false });
    let items = received_oldest_first(&app, &admin, &account).await;
    assert_eq!(items.len(), 200);
    let uids: Vec<i64> = items.iter().map(|m| m["uid"].as_i64().expect("uid")).collect();
    assert!(uids.windows(2).all(|w| w[0] < w[1]), "stored in UID order: {uids:?}");
    let uid_validity = items[0]["uid_validity"].as_i64().expect("uid_validity");
    for (item, (message_id, raw)) in items.iter().zip(&messages) {
        assert_eq!(item["message_id"], json!(message_id));
        assert_eq!(item["from"], "sender@example.net");
        assert_eq!(item["to"], json!([login]));
        assert_eq!(item["folder"], "INBOX");
        assert_eq!(item["uid_validity"].as_i64(), Some(uid_validity));
        assert_eq!(item["size"].as_u64(), Some(raw.len() as u64));
        assert_eq!(item["sent_at"], "2025-06-02T10:00:00Z");
        let id = item["id"].as_str().expect("id");
        let (status, bytes) = app.received_raw(&admin, id).await;
        assert_eq!(status, StatusCode::OK);
        assert!(bytes == *raw, "raw bytes of {message_id} differ from what was delivered");
    }
    let subjects: Vec<&str> = items.iter().map(|m| m["subject"].as_str().unwrap_or_default()).collect();
    let expected: Vec<String> = (1..=200).map(|i| format!("Message {i}")).collect();
    assert_eq!(subjects, expected);
    // One message.received event per stored message, naming it.
    assert_eq!(received_events(&app, &account).await, 200);
    let first = items[0]["id"].as_str().unwrap();
    assert_eq!(app.event_count("message.received", first).await, 1);
    // One message read back on its own, over REST and GraphQL.
    let single = app.get(&format!("/v1/received-messages/{first}"), &admin).await;
    assert_eq!((single.status, single.body["subject"].clone()), (StatusCode::OK, json!("Message 1")));
    let body = app
        .graphql(
            Some(&admin),
            "query($a: UUID!, $id: UUID!) { receivedMessages(accountId: $a, limit: 3) { items { subject uid } nextCursor } \
             receivedMessage(id: $id) { subject messageId from } }",
            json!({"a": account, "id": first}),
        )
        .await;
    let newest: Vec<&str> = body["data"]["receivedMessages"]["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| m["subject"].as_str().unwrap())
        .collect();
    assert_eq!(newest, ["Message 200", "Message 199", "Message 198"], "{body}");
    assert!(body["data"]["receivedMessages"]["nextCursor"].is_string());
    assert_eq!(
        body["data"]["receivedMessage"],
        json!({"subject": "Message 1", "messageId": messages[0].0, "from": "sender@example.net"})
    );
    // The next poll is scheduled one interval (60 s) ahead and the position is the highest UID.
    let scheduled = app
        .sql_text(&format!(
            "SELECT (next_poll_at BETWEEN now() + interval '50 seconds' AND now() + interval '70 seconds')::text FROM email_accounts WHERE id = '{account}'"
        ))
        .await;
    assert_eq!(scheduled.as_deref(), Some("true"));
    let last_uid = app.sql_i64(&format!("SELECT last_uid FROM email_accounts WHERE id = '{account}'")).await;
    assert_eq!(last_uid, *uids.last().unwrap());
    // `keep` leaves the messages on the server, unread.
    let on_server = servers.mailbox_messages(&login, "INBOX");
    assert_eq!(on_server.len(), 200);
    assert!(on_server.iter().all(|m| !m.flags.contains('S')), "keep must not mark messages seen");

    // Nothing new: nothing stored.
    assert_eq!(poll(&app, &account).await, PollReport { polled: true, fetched: 0, stored: 0, resynchronised: false });
    // New mail between polls is picked up, and only it.
    let more = seeded(&login, 3, "Later");
    servers.seed_messages(&login, "INBOX", &raws(&more));
    assert_eq!(poll(&app, &account).await, PollReport { polled: true, fetched: 3, stored: 3, resynchronised: false });
    let items = received_oldest_first(&app, &admin, &account).await;
    assert_eq!(items.len(), 203);
    let later: Vec<&Value> = items[200..].iter().collect();
    assert_eq!(later.iter().map(|m| m["subject"].as_str().unwrap()).collect::<Vec<_>>(), ["Later 1", "Later 2", "Later 3"]);
    assert!(later.iter().all(|m| m["uid"].as_i64().unwrap() > last_uid));
    assert_eq!(app.sql_i64(&format!("SELECT count(*) FROM inbound_messages WHERE account_id = '{account}'")).await, 203);
    assert_eq!(received_events(&app, &account).await, 203);
}

async fn imap_account_with_after_fetch(app: &TestApp, servers: &MailServers, admin: &str, login: &str, extra: Value) -> String {
    servers.add_password_user(login, MAIL_PASSWORD);
    app.confirmed_mail_account(admin, password_account(servers, "imap", "starttls", login, extra)).await
}

#[tokio::test]
async fn imap_after_fetch_mark_seen_flags_the_fetched_messages_on_the_server() {
    let (app, servers) = spawn_mail_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let login = new_login();
    let account = imap_account_with_after_fetch(&app, servers, &admin, &login, json!({"after_fetch": "mark_seen"})).await;
    servers.seed_messages(&login, "INBOX", &raws(&seeded(&login, 5, "Seen")));
    assert_eq!(poll(&app, &account).await.stored, 5);
    let on_server = servers.mailbox_messages(&login, "INBOX");
    assert_eq!(on_server.len(), 5);
    assert!(on_server.iter().all(|m| m.flags.contains('S')), "{on_server:?}");
    // A message arriving later is flagged after its own poll, and nothing is stored twice.
    servers.seed_messages(&login, "INBOX", &raws(&seeded(&login, 1, "Seen later")));
    assert_eq!(poll(&app, &account).await.stored, 1);
    assert!(servers.mailbox_messages(&login, "INBOX").iter().all(|m| m.flags.contains('S')));
    assert_eq!(app.all_received(&admin, &account).await.len(), 6);
}

#[tokio::test]
async fn imap_after_fetch_move_moves_the_fetched_messages_to_the_target_folder() {
    let (app, servers) = spawn_mail_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    servers.seed_messages(&login, "Processed", &[]);
    let account = imap_account_with_after_fetch(
        &app,
        servers,
        &admin,
        &login,
        json!({"after_fetch": "move", "move_to_folder": "Processed"}),
    )
    .await;
    let messages = seeded(&login, 4, "Move");
    servers.seed_messages(&login, "INBOX", &raws(&messages));
    assert_eq!(poll(&app, &account).await.stored, 4);
    assert_eq!(servers.mailbox_count(&login, "INBOX"), 0);
    let moved = servers.mailbox_messages(&login, "Processed");
    let mut moved_raw: Vec<Vec<u8>> = moved.into_iter().map(|m| m.raw).collect();
    let mut expected = raws(&messages);
    moved_raw.sort();
    expected.sort();
    assert_eq!(moved_raw, expected, "the moved messages are the fetched ones, unchanged");
    // The next poll finds an empty INBOX and stores nothing again.
    assert_eq!(poll(&app, &account).await.stored, 0);
    assert_eq!(app.all_received(&admin, &account).await.len(), 4);
}

#[tokio::test]
async fn imap_after_fetch_delete_removes_the_fetched_messages_from_the_server() {
    let (app, servers) = spawn_mail_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let login = new_login();
    let account = imap_account_with_after_fetch(&app, servers, &admin, &login, json!({"after_fetch": "delete"})).await;
    let messages = seeded(&login, 6, "Delete");
    servers.seed_messages(&login, "INBOX", &raws(&messages));
    assert_eq!(poll(&app, &account).await.stored, 6);
    assert_eq!(servers.mailbox_count(&login, "INBOX"), 0);
    let stored = app.all_received(&admin, &account).await;
    assert_eq!(message_ids(&stored), {
        let mut ids: Vec<String> = messages.iter().map(|(id, _)| id.clone()).collect();
        ids.sort();
        ids
    });
}

#[tokio::test]
async fn an_xoauth2_imap_account_authorized_by_consent_is_confirmed_and_polled() {
    let (app, servers) = spawn_mail_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let oauth = app.shared_oauth(servers, &tenant, &admin).await;
    let login = new_login();
    servers.add_oauth_user(&login);
    let account =
        app.create_mail_account(&admin, oauth_account(servers, "imap", "tls", &login, &oauth.config_id, json!({}))).await;
    app.consent_on_shared_provider(servers, &admin, &account, &login).await;
    assert_eq!(account_json(&app, &admin, &account).await["state"], "authorized");
    app.confirm_mail_account(&admin, &account).await;
    let messages = seeded(&login, 3, "OAuth");
    servers.seed_messages(&login, "INBOX", &raws(&messages));
    assert_eq!(poll(&app, &account).await, PollReport { polled: true, fetched: 3, stored: 3, resynchronised: false });
    let stored = received_oldest_first(&app, &admin, &account).await;
    assert_eq!(
        stored.iter().map(|m| m["message_id"].as_str().unwrap().to_owned()).collect::<Vec<_>>(),
        messages.iter().map(|m| m.0.clone()).collect::<Vec<_>>()
    );
    // Every login of this mailbox (test and poll) used XOAUTH2 over TLS.
    let logins = servers.dovecot_logins(&login, 2).await;
    assert!(logins.len() >= 2 && logins.iter().all(|l| l.method == "XOAUTH2" && l.tls && l.protocol == "imap"), "{logins:?}");
}

#[tokio::test]
async fn a_token_the_server_refuses_and_a_refresh_answered_invalid_grant_put_the_account_in_error_and_the_grant_in_reauth_required(
) {
    let (app, servers) = spawn_mail_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let oauth = app.shared_oauth(servers, &tenant, &admin).await;
    let login = new_login();
    servers.add_oauth_user(&login);
    let account =
        app.create_mail_account(&admin, oauth_account(servers, "imap", "tls", &login, &oauth.config_id, json!({}))).await;
    app.consent_on_shared_provider(servers, &admin, &account, &login).await;
    app.confirm_mail_account(&admin, &account).await;
    let grant = account_json(&app, &admin, &account).await["grant_id"].as_str().expect("grant_id").to_owned();
    servers.seed_messages(&login, "INBOX", &raws(&seeded(&login, 2, "Never fetched")));
    // The user withdraws consent: the stored access token is refused by Dovecot, and the refresh gets invalid_grant.
    servers.provider().revoke_user(&login);

    match poll::poll_account(&app.ctx, uuid(&account).into()).await {
        Err(PollError::Mail(e)) => assert_eq!(e.step, MailStep::Auth, "{e}"),
        other => panic!("expected an authentication failure, got {other:?}"),
    }
    let account_now = account_json(&app, &admin, &account).await;
    assert_eq!(account_now["state"], "error", "{account_now}");
    let error = account_now["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("invalid_grant") || error.contains("sign-in needed"), "{error:?}");
    let grant_now = app.get(&format!("/v1/grants/{grant}"), &admin).await;
    assert_eq!(grant_now.body["status"], "reauth_required", "{}", grant_now.text);
    assert_eq!(app.event_count("grant.reauth_required", &grant).await, 1);
    assert_eq!(app.all_received(&admin, &account).await.len(), 0);
    // Only one refresh was attempted: a second poll does not hammer the provider or change the outcome.
    assert!(matches!(poll::poll_account(&app.ctx, uuid(&account).into()).await, Err(PollError::Mail(_))));
    assert_eq!(app.event_count("grant.reauth_required", &grant).await, 1);
}

#[tokio::test]
async fn an_access_token_the_imap_server_refuses_is_refreshed_once_and_the_poll_goes_on() {
    let (app, servers) = spawn_mail_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let oauth = app.shared_oauth(servers, &tenant, &admin).await;
    let login = new_login();
    servers.add_oauth_user(&login);
    let account =
        app.create_mail_account(&admin, oauth_account(servers, "imap", "tls", &login, &oauth.config_id, json!({}))).await;
    app.consent_on_shared_provider(servers, &admin, &account, &login).await;
    app.confirm_mail_account(&admin, &account).await;
    let grant = account_json(&app, &admin, &account).await["grant_id"].as_str().expect("grant_id").to_owned();
    // The stored token looks valid for an hour, but the server does not know it (e.g. revoked by a password reset).
    let planted = app.plant_access_token(&tenant, &grant, "a-token-the-server-never-issued").await;
    servers.seed_messages(&login, "INBOX", &raws(&seeded(&login, 2, "After refresh")));
    assert_eq!(poll(&app, &account).await.stored, 2);
    let stored_now = app.sql_text(&format!("SELECT access_token FROM grants WHERE id = '{grant}'")).await;
    assert_ne!(stored_now.as_deref(), Some(planted.as_str()), "a new access token was obtained");
    let refreshed = app
        .sql_text(&format!("SELECT (last_refreshed_at > now() - interval '1 minute')::text FROM grants WHERE id = '{grant}'"))
        .await;
    assert_eq!(refreshed.as_deref(), Some("true"));
    assert_eq!(app.get(&format!("/v1/grants/{grant}"), &admin).await.body["status"], "valid");
    assert_eq!(account_json(&app, &admin, &account).await["state"], "confirmed");
}

#[tokio::test]
async fn a_poll_that_lost_its_position_fetches_again_but_stores_nothing_twice() {
    let (app, servers) = spawn_mail_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    // More than one fetch batch (1,000), so the loop commits twice.
    let messages = seeded(&login, 1_050, "Bulk");
    servers.seed_messages(&login, "INBOX", &raws(&messages));
    let account = app.confirmed_mail_account(&admin, password_account(servers, "imap", "tls", &login, json!({}))).await;
    assert_eq!(poll(&app, &account).await, PollReport { polled: true, fetched: 1_050, stored: 1_050, resynchronised: false });
    // A crash between storing and saving the position, simulated: the position goes back to an earlier UID.
    app.sql_exec(&format!("UPDATE email_accounts SET last_uid = 500 WHERE id = '{account}'")).await;
    assert_eq!(poll(&app, &account).await, PollReport { polled: true, fetched: 550, stored: 0, resynchronised: false });
    let distinct =
        app.sql_i64(&format!("SELECT count(DISTINCT message_id) FROM inbound_messages WHERE account_id = '{account}'")).await;
    let rows = app.sql_i64(&format!("SELECT count(*) FROM inbound_messages WHERE account_id = '{account}'")).await;
    assert_eq!((distinct, rows), (1_050, 1_050));
    assert_eq!(received_events(&app, &account).await, 1_050, "no event twice either");
    // A poll whose lease is held by another worker does nothing.
    app.sql_exec(&format!("UPDATE email_accounts SET lease_until = now() + interval '5 minutes' WHERE id = '{account}'")).await;
    servers.seed_messages(&login, "INBOX", &raws(&seeded(&login, 1, "While leased")));
    assert_eq!(poll(&app, &account).await, PollReport::default());
    app.sql_exec(&format!("UPDATE email_accounts SET lease_until = NULL WHERE id = '{account}'")).await;
    assert_eq!(poll(&app, &account).await.stored, 1);
}

#[tokio::test]
async fn a_password_the_imap_server_no_longer_accepts_puts_the_account_in_error_with_the_servers_words() {
    let (app, servers) = spawn_mail_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    let account = app.confirmed_mail_account(&admin, password_account(servers, "imap", "tls", &login, json!({}))).await;
    servers.seed_messages(&login, "INBOX", &raws(&seeded(&login, 2, "Locked out")));
    change_password_on_server(servers, &login).await;
    match poll::poll_account(&app.ctx, uuid(&account).into()).await {
        Err(PollError::Mail(e)) => assert_eq!(e.step, MailStep::Auth, "{e}"),
        other => panic!("expected an authentication failure, got {other:?}"),
    }
    let account_now = account_json(&app, &admin, &account).await;
    assert_eq!(account_now["state"], "error");
    let error = account_now["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("Authentication failed"), "Dovecot's words expected: {error:?}");
    assert!(!error.contains(MAIL_PASSWORD));
    assert_eq!(app.all_received(&admin, &account).await.len(), 0);
    let leased = app.sql_text(&format!("SELECT lease_until::text FROM email_accounts WHERE id = '{account}'")).await;
    assert_eq!(leased, None, "the mailbox lease is released");
}

#[tokio::test]
async fn a_uidvalidity_change_resynchronises_without_storing_anything_twice_or_skipping_anything() {
    let (app, servers) = spawn_mail_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    let first = seeded(&login, 5, "Before");
    servers.seed_messages(&login, "Projects", &raws(&first));
    let account =
        app.confirmed_mail_account(&admin, password_account(servers, "imap", "tls", &login, json!({"folder": "Projects"}))).await;
    assert_eq!(poll(&app, &account).await.stored, 5);
    let validity_before = app.sql_i64(&format!("SELECT uid_validity FROM email_accounts WHERE id = '{account}'")).await;

    // Recreate the folder on the server (Maildir++: `.Projects` with its dovecot-uidlist and indexes): Dovecot gives it
    // a new UIDVALIDITY and numbers its messages from 1 again. Two of the old messages come back, byte for byte, beside
    // three new ones.
    let folder = servers.maildir(&login).join(".Projects");
    std::fs::remove_dir_all(&folder).expect("remove the folder");
    let new = seeded(&login, 3, "After");
    let mut again = vec![first[1].1.clone(), first[3].1.clone()];
    again.extend(raws(&new));
    servers.seed_messages(&login, "Projects", &again);

    let report = poll(&app, &account).await;
    assert!(report.resynchronised, "{report:?}");
    assert_eq!((report.fetched, report.stored), (5, 3), "{report:?}");
    assert_eq!(received_events(&app, &account).await, 8, "the re-matched messages are not announced again");
    let validity_after = app.sql_i64(&format!("SELECT uid_validity FROM email_accounts WHERE id = '{account}'")).await;
    assert_ne!(validity_before, validity_after);
    let stored = app.all_received(&admin, &account).await;
    let mut expected: Vec<String> = first.iter().chain(&new).map(|(id, _)| id.clone()).collect();
    expected.sort();
    assert_eq!(message_ids(&stored), expected, "each message once, none skipped");
    // Back to normal: the next poll is incremental under the new UIDVALIDITY.
    let latest = seeded(&login, 1, "Latest");
    servers.seed_messages(&login, "Projects", &raws(&latest));
    assert_eq!(poll(&app, &account).await, PollReport { polled: true, fetched: 1, stored: 1, resynchronised: false });
    let newest = &app.all_received(&admin, &account).await[0];
    assert_eq!(
        (newest["message_id"].as_str(), newest["uid_validity"].as_i64()),
        (Some(latest[0].0.as_str()), Some(validity_after))
    );
    assert_eq!(app.sql_i64(&format!("SELECT count(*) FROM inbound_messages WHERE account_id = '{account}'")).await, 9);
}

/// A TCP proxy to a server port that forwards both ways until the server→client bytes it may still pass (shared by all
/// its connections) run out; then it closes both sides of that connection. TLS passes through it unchanged.
struct CuttingProxy {
    port: u16,
    budget: Arc<AtomicU64>,
}

impl CuttingProxy {
    async fn start(upstream: u16) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let budget = Arc::new(AtomicU64::new(u64::MAX));
        let shared = budget.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(Self::relay(client, upstream, shared.clone()));
            }
        });
        CuttingProxy { port, budget }
    }

    /// From now on, at most `bytes` more server→client bytes pass (`u64::MAX`: no limit).
    fn cut_after(&self, bytes: u64) {
        self.budget.store(bytes, Ordering::SeqCst);
    }

    async fn relay(client: TcpStream, upstream: u16, budget: Arc<AtomicU64>) {
        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else { return };
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let up = async {
            let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        };
        let down = async {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match server_read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut allowed = 0;
                let _ = budget.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                    allowed = left.min(n as u64) as usize;
                    Some(left - allowed as u64)
                });
                if allowed > 0 && client_write.write_all(&buf[..allowed]).await.is_err() {
                    return;
                }
                if allowed < n {
                    return; // the budget ran out: cut here
                }
            }
        };
        tokio::select! {
            _ = up => {}
            _ = down => {}
        }
        // Dropping the halves closes both connections.
    }
}

/// A sample message padded to about 2 KB.
fn padded_message(login: &str, subject: &str) -> (String, Vec<u8>) {
    let (message_id, mut raw) = sample_message(login, subject);
    let line = format!("{}\r\n", "x".repeat(76));
    while raw.len() + line.len() <= 2048 {
        raw.extend_from_slice(line.as_bytes());
    }
    (message_id, raw)
}

/// (uid, message_id) of an account's stored messages in UID order.
async fn stored_uids(app: &TestApp, account: &str) -> Vec<(i64, String)> {
    let text = app
        .sql_text(&format!(
            "SELECT COALESCE(string_agg(uid::text || ' ' || message_id, ',' ORDER BY uid), '') FROM inbound_messages \
             WHERE account_id = '{account}'"
        ))
        .await
        .unwrap_or_default();
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (uid, id) = s.split_once(' ').expect("uid and message id");
            (uid.parse().expect("uid"), id.to_owned())
        })
        .collect()
}

#[tokio::test]
async fn a_connection_the_server_drops_mid_fetch_keeps_a_stored_prefix_and_the_next_poll_completes_it_once() {
    const TOTAL: usize = 1_500;
    let (app, servers) = spawn_mail_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    let messages: Vec<(String, Vec<u8>)> = (1..=TOTAL).map(|i| padded_message(&login, &format!("Big {i}"))).collect();
    servers.seed_messages(&login, "INBOX", &raws(&messages));
    let proxy = CuttingProxy::start(servers.imaps_port()).await;
    let account =
        app.confirmed_mail_account(&admin, password_account(servers, "imap", "tls", &login, json!({"port": proxy.port}))).await;

    // Cut in the middle of the second batch's FETCH: past the first 1,000 messages (plus their FETCH framing), about
    // half a megabyte into the rest.
    let first_batch: u64 = messages[..1_000].iter().map(|(_, raw)| raw.len() as u64 + 100).sum();
    proxy.cut_after(first_batch + 500_000);
    let outcome = poll::poll_account(&app.ctx, uuid(&account).into()).await;
    let stored = stored_uids(&app, &account).await;
    match &outcome {
        Err(PollError::Mail(_)) => {}
        Ok(report) => {
            assert!(report.polled, "{report:?}");
            assert_eq!(report.stored as usize, stored.len(), "a partial report counts what was stored: {report:?}");
        }
        Err(other) => panic!("a mail error (or a partial report) expected, got {other}"),
    }
    assert!(stored.len() < TOTAL, "the cut happened before the end ({outcome:?})");
    assert_eq!(stored.len() % 1_000, 0, "whole batches are committed, nothing of a cut batch: {} stored", stored.len());
    let uids: Vec<i64> = stored.iter().map(|(uid, _)| *uid).collect();
    assert!(uids.windows(2).all(|w| w[0] < w[1]), "no duplicate UIDs");
    let ids: Vec<&str> = stored.iter().map(|(_, id)| id.as_str()).collect();
    let prefix: Vec<&str> = messages[..stored.len()].iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, prefix, "what is stored is the first messages in UID order");
    let position = format!("SELECT COALESCE(last_uid, 0) FROM email_accounts WHERE id = '{account}'");
    assert_eq!(app.sql_i64(&position).await, uids.last().copied().unwrap_or(0), "the position is the highest stored UID");

    // The server behaves again: the next poll fetches the rest, and only it.
    proxy.cut_after(u64::MAX);
    let report = poll(&app, &account).await;
    let rest = (TOTAL - stored.len()) as u64;
    assert_eq!(report, PollReport { polled: true, fetched: rest, stored: rest, resynchronised: false });
    assert_eq!(app.sql_i64(&format!("SELECT count(*) FROM inbound_messages WHERE account_id = '{account}'")).await, TOTAL as i64);
    assert_eq!(
        app.sql_i64(&format!("SELECT count(DISTINCT uid) FROM inbound_messages WHERE account_id = '{account}'")).await,
        TOTAL as i64
    );
    let all = stored_uids(&app, &account).await;
    let stored_ids: HashSet<&str> = all.iter().map(|(_, id)| id.as_str()).collect();
    let seeded_ids: HashSet<&str> = messages.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(stored_ids.len(), TOTAL, "no Message-ID twice");
    assert_eq!(stored_ids, seeded_ids);
    assert_eq!(app.sql_i64(&position).await, all.last().map(|(uid, _)| *uid).unwrap());
    assert_eq!(received_events(&app, &account).await, TOTAL as i64);
}

#[tokio::test]
async fn members_see_only_their_own_accounts_received_messages() {
    let (app, servers) = spawn_mail_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let alice = app.api_key(&tenant, "member").await;
    let bob = app.api_key(&tenant, "member").await;
    let mut accounts = Vec::new();
    for key in [&alice, &bob] {
        let login = new_login();
        servers.add_password_user(&login, MAIL_PASSWORD);
        servers.seed_messages(&login, "INBOX", &raws(&seeded(&login, 2, "Private")));
        let account = app.confirmed_mail_account(key, password_account(servers, "imap", "tls", &login, json!({}))).await;
        assert_eq!(poll(&app, &account).await.stored, 2);
        accounts.push(account);
    }
    let (alice_account, bob_account) = (&accounts[0], &accounts[1]);
    let alice_messages = app.all_received(&alice, alice_account).await;
    assert_eq!(alice_messages.len(), 2);
    let bob_messages = app.all_received(&bob, bob_account).await;
    let bob_message = bob_messages[0]["id"].as_str().unwrap();
    // Alice cannot list, read or download Bob's mail: 404, as if it did not exist.
    assert_error(&app.get(&format!("/v1/accounts/{bob_account}/messages"), &alice).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(&app.get(&format!("/v1/received-messages/{bob_message}"), &alice).await, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(app.received_raw(&alice, bob_message).await.0, StatusCode::NOT_FOUND);
    let body =
        app.graphql(Some(&alice), "query($id: UUID!) { receivedMessage(id: $id) { id } }", json!({"id": bob_message})).await;
    assert_eq!(graphql_error_code(&body), "not_found", "{body}");
    // Her own, yes; the admin sees both.
    let own = alice_messages[0]["id"].as_str().unwrap();
    assert_eq!(app.get(&format!("/v1/received-messages/{own}"), &alice).await.status, StatusCode::OK);
    assert_eq!(app.received_raw(&admin, bob_message).await.0, StatusCode::OK);
    assert_eq!(app.all_received(&admin, alice_account).await.len() + app.all_received(&admin, bob_account).await.len(), 4);
}

#[tokio::test]
async fn another_tenants_received_message_answers_not_found() {
    let (app, servers) = spawn_mail_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let (_, stranger) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    servers.seed_messages(&login, "INBOX", &raws(&seeded(&login, 1, "Tenant secret")));
    let account = app.confirmed_mail_account(&admin, password_account(servers, "imap", "tls", &login, json!({}))).await;
    assert_eq!(poll(&app, &account).await.stored, 1);
    let message = app.all_received(&admin, &account).await[0]["id"].as_str().unwrap().to_owned();
    assert_error(&app.get(&format!("/v1/received-messages/{message}"), &stranger).await, StatusCode::NOT_FOUND, "not_found");
    let (status, bytes) = app.received_raw(&stranger, &message).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!String::from_utf8_lossy(&bytes).contains("Tenant secret"));
    assert_error(&app.get(&format!("/v1/accounts/{account}/messages"), &stranger).await, StatusCode::NOT_FOUND, "not_found");
    let body =
        app.graphql(Some(&stranger), "query($id: UUID!) { receivedMessage(id: $id) { id } }", json!({"id": message})).await;
    assert_eq!(graphql_error_code(&body), "not_found", "{body}");
    let body = app
        .graphql(Some(&stranger), "query($a: UUID!) { receivedMessages(accountId: $a) { items { id } } }", json!({"a": account}))
        .await;
    assert_eq!(graphql_error_code(&body), "not_found", "{body}");
}

// ---- inbound: POP3 -----------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_pop3_poll_stores_every_message_once_by_its_uidl_and_a_second_poll_stores_nothing() {
    let (app, servers) = spawn_mail_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    let messages = seeded(&login, 7, "Pop");
    servers.seed_messages(&login, "INBOX", &raws(&messages));
    let account = app.confirmed_mail_account(&admin, password_account(servers, "pop3", "tls", &login, json!({}))).await;
    assert_eq!(poll(&app, &account).await, PollReport { polled: true, fetched: 7, stored: 7, resynchronised: false });
    let stored = received_oldest_first(&app, &admin, &account).await;
    let mut expected: Vec<String> = messages.iter().map(|(id, _)| id.clone()).collect();
    expected.sort();
    assert_eq!(message_ids(&stored), expected);
    for item in &stored {
        let (_, raw) = messages.iter().find(|(id, _)| item["message_id"] == json!(id)).expect("a seeded message");
        assert!(
            app.received_raw(&admin, item["id"].as_str().unwrap()).await.1 == *raw,
            "POP3 bytes must be exact (dot-unstuffed)"
        );
    }
    let uidls = app
        .sql_i64(&format!(
            "SELECT count(DISTINCT pop3_uid) FROM inbound_messages WHERE account_id = '{account}' AND pop3_uid IS NOT NULL"
        ))
        .await;
    assert_eq!(uidls, 7, "each message is keyed by its own UIDL");
    let mut uids: Vec<i64> = stored.iter().map(|m| m["uid"].as_i64().expect("uid")).collect();
    uids.dedup();
    assert_eq!(uids.len(), 7, "and has its own number: {uids:?}");
    assert_eq!(received_events(&app, &account).await, 7);
    // Keep: still on the server; polling again stores nothing.
    assert_eq!(servers.mailbox_count(&login, "INBOX"), 7);
    assert_eq!(poll(&app, &account).await, PollReport { polled: true, fetched: 0, stored: 0, resynchronised: false });
    servers.seed_messages(&login, "INBOX", &raws(&seeded(&login, 2, "Pop later")));
    assert_eq!(poll(&app, &account).await.stored, 2);
    assert_eq!(app.sql_i64(&format!("SELECT count(*) FROM inbound_messages WHERE account_id = '{account}'")).await, 9);
}

#[tokio::test]
async fn pop3_after_fetch_delete_removes_the_fetched_messages_from_the_server() {
    let (app, servers) = spawn_mail_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    servers.seed_messages(&login, "INBOX", &raws(&seeded(&login, 4, "Pop delete")));
    let account = app
        .confirmed_mail_account(&admin, password_account(servers, "pop3", "starttls", &login, json!({"after_fetch": "delete"})))
        .await;
    assert_eq!(poll(&app, &account).await.stored, 4);
    assert_eq!(servers.mailbox_count(&login, "INBOX"), 0);
    assert_eq!(app.all_received(&admin, &account).await.len(), 4);
    assert_eq!(poll(&app, &account).await.stored, 0);
}

// ---- outbound ----------------------------------------------------------------------------------------------------

/// A tenant with a confirmed default SMTP sender (password auth, `security`) whose login is `sender`.
struct Outbox {
    tenant: String,
    admin: String,
    sender: String,
    account: String,
}

async fn outbox(app: &TestApp, servers: &MailServers, security: &str) -> Outbox {
    let (tenant, admin) = app.tenant_with_admin().await;
    let sender = new_login();
    servers.add_password_user(&sender, MAIL_PASSWORD);
    let account = app
        .confirmed_mail_account(&admin, password_account(servers, "smtp", security, &sender, json!({"is_default": true})))
        .await;
    Outbox { tenant, admin, sender, account }
}

fn recipient(tag: &str) -> String {
    format!("{tag}{}@example.org", Uuid::new_v4().simple())
}

async fn submit(app: &TestApp, key: &str, body: Value) -> String {
    let reply = app.post("/v1/messages", key, body).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    assert_eq!(reply.body["status"], "queued");
    // The answer is built from the row as written: it says what a read of the row says (what a worker may have
    // changed since aside).
    let stored = app.get(&format!("/v1/messages/{}", reply.id()), key).await;
    let settled = ["status", "attempts", "next_attempt_at", "last_error", "smtp_reply", "recipient_results", "sent_at"];
    let unsettled = |body: &Value| {
        let mut fields = body.as_object().cloned().unwrap_or_default();
        fields.retain(|name, _| !settled.contains(&name.as_str()));
        fields
    };
    assert_eq!(unsettled(&reply.body), unsettled(&stored.body), "as stored: {}", stored.text);
    reply.id()
}

async fn explain(app: &TestApp, key: &str, from: &str) -> postbridge_tests::Reply {
    let from: String = url::form_urlencoded::byte_serialize(from.as_bytes()).collect();
    app.get(&format!("/v1/routing?from={from}"), key).await
}

fn parse(accepted: &AcceptedMessage) -> mail_parser::Message<'_> {
    MessageParser::default().parse(&accepted.raw).expect("a parsable message")
}

#[tokio::test]
async fn posting_a_message_twice_with_one_idempotency_key_returns_the_same_message_and_stores_one_row() {
    let (app, servers) = spawn_mail_app().await;
    let o = outbox(&app, servers, "starttls").await;
    let body = json!({"from": o.sender, "to": [recipient("to-")], "subject": "Invoice 42", "text": "Hello", "idempotency_key": "invoice-42"});
    let first = submit(&app, &o.admin, body.clone()).await;
    let second = submit(&app, &o.admin, body.clone()).await;
    assert_eq!(first, second);
    // The Idempotency-Key header and GraphQL's idempotencyKey name the same message.
    let mut without_key = body.clone();
    without_key.as_object_mut().unwrap().remove("idempotency_key");
    let by_header = app
        .http
        .post(format!("{}/v1/messages", app.address))
        .bearer_auth(&o.admin)
        .header("Idempotency-Key", "invoice-42")
        .json(&without_key)
        .send()
        .await
        .expect("request sent");
    assert_eq!(by_header.status(), StatusCode::ACCEPTED);
    assert_eq!(by_header.json::<Value>().await.unwrap()["id"], json!(first));
    let gql = app
        .graphql(
            Some(&o.admin),
            "mutation($i: SendMessage!) { sendMessage(input: $i) { id status } }",
            json!({"i": {"from": o.sender, "to": body["to"], "subject": "Invoice 42", "text": "Hello", "idempotencyKey": "invoice-42"}}),
        )
        .await;
    assert_eq!(gql["data"]["sendMessage"], json!({"id": first, "status": "QUEUED"}), "{gql}");
    assert_eq!(app.sql_i64(&format!("SELECT count(*) FROM outbound_messages WHERE tenant_id = '{}'", o.tenant)).await, 1);
    // Another key is another message; delivering the first twice sends it once.
    let other = submit(
        &app,
        &o.admin,
        json!({"from": o.sender, "to": body["to"], "subject": "Invoice 43", "text": "Hi", "idempotency_key": "invoice-43"}),
    )
    .await;
    assert_ne!(other, first);
    assert_eq!(deliver(&app, &first).await, Delivery::Sent);
    assert_eq!(deliver(&app, &first).await, Delivery::Skipped);
    let to = body["to"][0].as_str().unwrap();
    let accepted = servers.wait_for_messages_to(to, 1, Duration::from_secs(10)).await;
    assert_eq!(accepted.len(), 1, "sent once");
}

#[tokio::test]
async fn deliver_sends_over_password_auth_with_the_right_headers_and_bcc_only_in_the_envelope() {
    let (app, servers) = spawn_mail_app().await;
    let o = outbox(&app, servers, "starttls").await;
    let (to, cc, bcc) = (recipient("to-"), recipient("cc-"), recipient("bcc-"));
    let id = submit(
        &app,
        &o.admin,
        json!({"from": format!("Billing Team <{}>", o.sender), "to": [format!("Customer <{to}>")], "cc": [cc], "bcc": [bcc],
               "reply_to": "Helpdesk <help@example.net>", "subject": "Your invoice", "text": "Please find it attached.",
               "headers": {"X-Campaign": "spring"}}),
    )
    .await;
    assert_eq!(deliver(&app, &id).await, Delivery::Sent);
    let row = outbound_json(&app, &o.admin, &id).await;
    assert_eq!((row["status"].as_str(), row["attempts"].as_i64()), (Some("sent"), Some(1)), "{row}");
    assert!(
        row["smtp_reply"].as_str().unwrap_or_default().contains("Queued mail for delivery"),
        "the server's reply is recorded: {row}"
    );
    assert!(row["sent_at"].is_string());
    assert_eq!(app.event_count("message.sent", &id).await, 1);

    let accepted = servers.wait_for_messages_to(&bcc, 1, Duration::from_secs(10)).await;
    assert_eq!(accepted.len(), 1);
    let accepted = &accepted[0];
    assert_eq!(accepted.auth_user.as_deref(), Some(o.sender.as_str()));
    assert_eq!(accepted.mail_from, o.sender);
    assert_eq!(accepted.rcpt_to, [to.clone(), cc.clone(), bcc.clone()]);
    let parsed = parse(accepted);
    let from = parsed.from().and_then(|a| a.first()).expect("From");
    assert_eq!((from.name(), from.address()), (Some("Billing Team"), Some(o.sender.as_str())));
    let to_header = parsed.to().and_then(|a| a.first()).expect("To");
    assert_eq!((to_header.name(), to_header.address()), (Some("Customer"), Some(to.as_str())));
    assert_eq!(parsed.cc().and_then(|a| a.first()).and_then(|a| a.address()), Some(cc.as_str()));
    let reply_to = parsed.reply_to().and_then(|a| a.first()).expect("Reply-To");
    assert_eq!((reply_to.name(), reply_to.address()), (Some("Helpdesk"), Some("help@example.net")));
    assert_eq!(parsed.subject(), Some("Your invoice"));
    assert_eq!(parsed.message_id().map(|m| format!("<{m}>")), row["message_id"].as_str().map(str::to_owned));
    assert_eq!(parsed.header_raw("X-Campaign").map(str::trim), Some("spring"));
    let text = String::from_utf8_lossy(&accepted.raw);
    assert!(!text.contains(&bcc) && parsed.header_raw("Bcc").is_none(), "Bcc must be in the envelope only");
    let logged_in = servers
        .smtp_log()
        .lines()
        .any(|l| l.contains(&format!("auth PLAIN {}: ok", o.sender)) || l.contains(&format!("auth LOGIN {}: ok", o.sender)));
    assert!(logged_in, "a password login");
}

/// A confirmed XOAUTH2 SMTP account on the shared provider (consented as its own login).
struct OAuthSender {
    tenant: String,
    admin: String,
    login: String,
    account: String,
}

/// `extra` gets the login and gives the account fields to add.
async fn oauth_sender(app: &TestApp, servers: &MailServers, security: &str, extra: impl FnOnce(&str) -> Value) -> OAuthSender {
    let (tenant, admin) = app.tenant_with_admin().await;
    let oauth = app.shared_oauth(servers, &tenant, &admin).await;
    let login = new_login();
    servers.add_oauth_user(&login);
    let body = oauth_account(servers, "smtp", security, &login, &oauth.config_id, extra(&login));
    let account = app.create_mail_account(&admin, body).await;
    app.consent_on_shared_provider(servers, &admin, &account, &login).await;
    app.confirm_mail_account(&admin, &account).await;
    OAuthSender { tenant, admin, login, account }
}

#[tokio::test]
async fn deliver_sends_over_xoauth2_with_the_consented_token() {
    let (app, servers) = spawn_mail_app().await;
    let OAuthSender { admin, login, account, .. } =
        oauth_sender(&app, servers, "tls", |login| json!({"from_filter": login})).await;
    let to = recipient("oauth-to-");
    let id =
        submit(&app, &admin, json!({"from": format!("Ann <{login}>"), "to": [to], "subject": "Sent with a token", "text": "Hi"}))
            .await;
    let row = outbound_json(&app, &admin, &id).await;
    assert_eq!((row["account_id"].as_str(), row["routed_by"].as_str()), (Some(account.as_str()), Some("address")));
    assert_eq!(deliver(&app, &id).await, Delivery::Sent);
    let accepted = servers.wait_for_messages_to(&to, 1, Duration::from_secs(10)).await;
    assert_eq!(accepted[0].auth_user.as_deref(), Some(login.as_str()));
    let parsed = parse(&accepted[0]);
    let from = parsed.from().and_then(|a| a.first()).expect("From");
    assert_eq!((from.name(), from.address()), (Some("Ann"), Some(login.as_str())));
    assert_eq!(
        parsed.message_id().map(|m| format!("<{m}>")),
        outbound_json(&app, &admin, &id).await["message_id"].as_str().map(str::to_owned)
    );
    assert!(servers.smtp_log().contains(&format!("auth XOAUTH2 {login}: ok")), "an XOAUTH2 login");
}

#[tokio::test]
async fn an_access_token_the_smtp_server_refuses_is_refreshed_once_and_the_message_is_sent() {
    let (app, servers) = spawn_mail_app().await;
    let OAuthSender { tenant, admin, login, account } =
        oauth_sender(&app, servers, "starttls", |_| json!({"is_default": true})).await;
    let grant = account_json(&app, &admin, &account).await["grant_id"].as_str().expect("grant_id").to_owned();
    let planted = app.plant_access_token(&tenant, &grant, "refused-by-the-smtp-server").await;
    let to = recipient("refresh-");
    let id = submit(&app, &admin, json!({"from": login, "to": [to], "subject": "After a refresh", "text": "Hi"})).await;
    assert_eq!(deliver(&app, &id).await, Delivery::Sent);
    let row = outbound_json(&app, &admin, &id).await;
    assert_eq!((row["status"].as_str(), row["attempts"].as_i64()), (Some("sent"), Some(1)), "one attempt, one refresh: {row}");
    assert_eq!(servers.wait_for_messages_to(&to, 1, Duration::from_secs(10)).await.len(), 1);
    let stored_now = app.sql_text(&format!("SELECT access_token FROM grants WHERE id = '{grant}'")).await;
    assert_ne!(stored_now.as_deref(), Some(planted.as_str()));
    assert_eq!(account_json(&app, &admin, &account).await["state"], "confirmed");
    // Consent withdrawn: the refresh gets invalid_grant, the message fails, the grant needs a new consent.
    servers.provider().revoke_user(&login);
    app.plant_access_token(&tenant, &grant, "refused-again").await;
    let id =
        submit(&app, &admin, json!({"from": login, "to": [recipient("refresh-")], "subject": "Revoked", "text": "Hi"})).await;
    assert_eq!(deliver(&app, &id).await, Delivery::Failed);
    assert_eq!(app.get(&format!("/v1/grants/{grant}"), &admin).await.body["status"], "reauth_required");
    assert_eq!(account_json(&app, &admin, &account).await["state"], "error");
    assert_eq!(app.event_count("message.failed", &id).await, 1);
}

/// The routing decision of an explanation (its words and warnings are tested in `routing.rs`).
fn routing_of(explanation: &Value) -> Value {
    let field = |name: &str| explanation[name].clone();
    json!({"account_id": field("account_id"), "routed_by": field("routed_by"), "effective_from": field("effective_from"),
           "reply_to": field("reply_to")})
}

#[tokio::test]
async fn routing_prefers_the_exact_from_filter_then_the_domain_then_the_default_sender() {
    let (app, servers) = spawn_mail_app().await;
    let o = outbox(&app, servers, "tls").await;
    let mut sender_for = Vec::new();
    for filter in ["sales@acme.test", "acme.test"] {
        let login = new_login();
        servers.add_password_user(&login, MAIL_PASSWORD);
        let id = app
            .confirmed_mail_account(&o.admin, password_account(servers, "smtp", "tls", &login, json!({"from_filter": filter})))
            .await;
        sender_for.push((filter, id, login));
    }
    let (exact, domain) = (&sender_for[0], &sender_for[1]);
    let route = explain(&app, &o.admin, "sales@acme.test").await;
    assert_eq!(
        routing_of(&route.body),
        json!({"account_id": exact.1, "routed_by": "address", "effective_from": "sales@acme.test", "reply_to": null}),
        "{}",
        route.text
    );
    let route = explain(&app, &o.admin, "SALES@Acme.Test").await;
    assert_eq!(
        (route.body["account_id"].as_str(), route.body["routed_by"].as_str()),
        (Some(exact.1.as_str()), Some("address")),
        "{}",
        route.text
    );
    let route = explain(&app, &o.admin, "Bob <bob@acme.test>").await;
    assert_eq!(
        routing_of(&route.body),
        json!({"account_id": domain.1, "routed_by": "domain", "effective_from": "Bob <bob@acme.test>", "reply_to": null}),
        "{}",
        route.text
    );
    let route = explain(&app, &o.admin, "Carol <carol@elsewhere.test>").await;
    assert_eq!(
        routing_of(&route.body),
        json!({"account_id": o.account, "routed_by": "default", "effective_from": format!("Carol <{}>", o.sender), "reply_to": "Carol <carol@elsewhere.test>"}),
        "{}",
        route.text
    );
    // The outbox row records the same choice, and delivery uses that account.
    let to = recipient("route-");
    for (from, account, login) in [("sales@acme.test", &exact.1, &exact.2), ("bob@acme.test", &domain.1, &domain.2)] {
        let id = submit(&app, &o.admin, json!({"from": from, "to": [to], "subject": format!("From {from}"), "text": "Hi"})).await;
        assert_eq!(outbound_json(&app, &o.admin, &id).await["account_id"].as_str(), Some(account.as_str()));
        assert_eq!(deliver(&app, &id).await, Delivery::Sent);
        let accepted = servers.accepted_messages_to(&to);
        let last = accepted.last().expect("accepted");
        assert_eq!((last.auth_user.as_deref(), last.mail_from.as_str()), (Some(login.as_str()), from));
    }
    // An account that is not usable (draft) is never chosen.
    let draft_login = new_login();
    app.create_mail_account(
        &o.admin,
        password_account(servers, "smtp", "tls", &draft_login, json!({"from_filter": "draft@acme.test"})),
    )
    .await;
    assert_eq!(explain(&app, &o.admin, "draft@acme.test").await.body["routed_by"], "domain");
}

#[tokio::test]
async fn the_default_sender_rewrites_from_keeps_the_display_name_and_puts_the_original_in_reply_to() {
    let (app, servers) = spawn_mail_app().await;
    let o = outbox(&app, servers, "starttls").await;
    let to = recipient("fallback-");
    let id = submit(
        &app,
        &o.admin,
        json!({"from": "Dana Sales <dana@customer.test>", "to": [to], "subject": "Fallback", "text": "Hi"}),
    )
    .await;
    let row = outbound_json(&app, &o.admin, &id).await;
    assert_eq!((row["routed_by"].as_str(), row["account_id"].as_str()), (Some("default"), Some(o.account.as_str())), "{row}");
    assert_eq!(deliver(&app, &id).await, Delivery::Sent);
    let accepted = servers.wait_for_messages_to(&to, 1, Duration::from_secs(10)).await;
    assert_eq!(accepted[0].mail_from, o.sender, "the envelope sender is the default account's address");
    let parsed = parse(&accepted[0]);
    let from = parsed.from().and_then(|a| a.first()).expect("From");
    assert_eq!((from.name(), from.address()), (Some("Dana Sales"), Some(o.sender.as_str())));
    let reply_to = parsed.reply_to().and_then(|a| a.first()).expect("Reply-To");
    assert_eq!((reply_to.name(), reply_to.address()), (Some("Dana Sales"), Some("dana@customer.test")));
    // An explicit reply_to wins over the original address.
    let to2 = recipient("fallback-explicit-");
    let id = submit(
        &app,
        &o.admin,
        json!({"from": "dana@customer.test", "to": [to2], "reply_to": "desk@customer.test", "subject": "x", "text": "y"}),
    )
    .await;
    assert_eq!(deliver(&app, &id).await, Delivery::Sent);
    let accepted = servers.wait_for_messages_to(&to2, 1, Duration::from_secs(10)).await;
    let parsed = parse(&accepted[0]);
    assert_eq!(parsed.reply_to().and_then(|a| a.first()).and_then(|a| a.address()), Some("desk@customer.test"));
    assert_eq!(parsed.from().and_then(|a| a.first()).and_then(|a| a.address()), Some(o.sender.as_str()));
}

#[tokio::test]
async fn without_a_matching_account_or_a_default_sender_sending_is_refused_with_no_sender() {
    let (app, servers) = spawn_mail_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    app.confirmed_mail_account(&admin, password_account(servers, "smtp", "tls", &login, json!({"from_filter": "acme.test"})))
        .await;
    let reply = app
        .post("/v1/messages", &admin, json!({"from": "someone@other.test", "to": ["x@example.org"], "subject": "s", "text": "t"}))
        .await;
    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "no_sender");
    assert_eq!(reply.body["field"], "from");
    let route = app.get("/v1/routing?from=someone%40other.test", &admin).await;
    assert_error(&route, StatusCode::UNPROCESSABLE_ENTITY, "no_sender");
    assert_eq!(app.sql_i64(&format!("SELECT count(*) FROM outbound_messages WHERE tenant_id = '{tenant}'")).await, 0);
    // A default that is not usable (still a draft) does not count either.
    let draft = new_login();
    app.create_mail_account(&admin, password_account(servers, "smtp", "tls", &draft, json!({"is_default": true}))).await;
    assert_error(&app.get("/v1/routing?from=someone%40other.test", &admin).await, StatusCode::UNPROCESSABLE_ENTITY, "no_sender");
    let gql = app.graphql(Some(&admin), "query { explainRoute(from: \"someone@other.test\") { routedBy } }", json!({})).await;
    assert_eq!(graphql_error_code(&gql), "no_sender", "{gql}");
}

#[tokio::test]
async fn a_temporary_recipient_failure_requeues_the_message_with_backoff_and_the_servers_reply() {
    let (app, servers) = spawn_mail_app().await;
    let o = outbox(&app, servers, "starttls").await;
    let id =
        submit(&app, &o.admin, json!({"from": o.sender, "to": [recipient("tempfail+")], "subject": "Later", "text": "Hi"})).await;
    assert_eq!(deliver(&app, &id).await, Delivery::Retry);
    let row = outbound_json(&app, &o.admin, &id).await;
    assert_eq!((row["status"].as_str(), row["attempts"].as_i64()), (Some("queued"), Some(1)), "{row}");
    let error = row["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("451") && error.contains("Try again later"), "{error:?}");
    let later = app
        .sql_text(&format!(
            "SELECT (next_attempt_at > now() + interval '20 seconds')::text FROM outbound_messages WHERE id = '{id}'"
        ))
        .await;
    assert_eq!(later.as_deref(), Some("true"), "the retry waits: {row}");
    assert_eq!(app.sql_text(&format!("SELECT lease_until::text FROM outbound_messages WHERE id = '{id}'")).await, None);
    assert_eq!(app.event_count("message.failed", &id).await, 0);
    // Once due again, another attempt is made and counted; the server still says 451, so it stays queued.
    app.sql_exec(&format!("UPDATE outbound_messages SET next_attempt_at = now() WHERE id = '{id}'")).await;
    assert_eq!(deliver(&app, &id).await, Delivery::Retry);
    assert_eq!(outbound_json(&app, &o.admin, &id).await["attempts"].as_i64(), Some(2));
    // The last allowed attempt gives up.
    app.sql_exec(&format!(
        "UPDATE outbound_messages SET next_attempt_at = now(), attempts = {} WHERE id = '{id}'",
        delivery::MAX_ATTEMPTS - 1
    ))
    .await;
    assert_eq!(deliver(&app, &id).await, Delivery::Failed);
    let row = outbound_json(&app, &o.admin, &id).await;
    assert_eq!(row["status"], "failed");
    assert!(row["last_error"].as_str().unwrap_or_default().contains("451"), "{row}");
    assert_eq!(app.event_count("message.failed", &id).await, 1);
}

#[tokio::test]
async fn a_recipient_refused_with_451_once_is_sent_on_the_next_attempt_exactly_once() {
    let (app, servers) = spawn_mail_app().await;
    let o = outbox(&app, servers, "starttls").await;
    let to = recipient("tempfailonce+");
    let id = submit(&app, &o.admin, json!({"from": o.sender, "to": [to], "subject": "Second time lucky", "text": "Hi"})).await;
    assert_eq!(deliver(&app, &id).await, Delivery::Retry);
    let row = outbound_json(&app, &o.admin, &id).await;
    assert_eq!((row["status"].as_str(), row["attempts"].as_i64()), (Some("queued"), Some(1)), "{row}");
    let error = row["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("451") && error.contains("Try again later"), "{error:?}");
    let later = app.sql_text(&format!("SELECT (next_attempt_at > now())::text FROM outbound_messages WHERE id = '{id}'")).await;
    assert_eq!(later.as_deref(), Some("true"), "the retry waits: {row}");
    assert!(servers.accepted_messages_to(&to).is_empty(), "nothing was accepted on the refused attempt");
    // Once due again, the server accepts the recipient and the message goes out.
    app.sql_exec(&format!("UPDATE outbound_messages SET next_attempt_at = now() WHERE id = '{id}'")).await;
    assert_eq!(deliver(&app, &id).await, Delivery::Sent);
    let row = outbound_json(&app, &o.admin, &id).await;
    assert_eq!((row["status"].as_str(), row["attempts"].as_i64()), (Some("sent"), Some(2)), "{row}");
    servers.wait_for_messages_to(&to, 1, Duration::from_secs(10)).await;
    let accepted = servers.accepted_messages_to(&to);
    assert_eq!(accepted.len(), 1, "exactly one copy reached the server");
    assert_eq!(parse(&accepted[0]).subject(), Some("Second time lucky"));
    assert_eq!(app.event_count("message.sent", &id).await, 1);
    assert_eq!(deliver(&app, &id).await, Delivery::Skipped, "a sent message is not sent again");
    assert_eq!(servers.accepted_messages_to(&to).len(), 1);
}

#[tokio::test]
async fn a_permanent_recipient_failure_fails_the_message_and_records_message_failed() {
    let (app, servers) = spawn_mail_app().await;
    let o = outbox(&app, servers, "tls").await;
    let id =
        submit(&app, &o.admin, json!({"from": o.sender, "to": [recipient("reject+")], "subject": "Nobody", "text": "Hi"})).await;
    assert_eq!(deliver(&app, &id).await, Delivery::Failed);
    let row = outbound_json(&app, &o.admin, &id).await;
    assert_eq!(row["status"], "failed", "{row}");
    let error = row["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("550") && error.contains("No such user"), "{error:?}");
    assert_eq!(app.event_count("message.failed", &id).await, 1);
    assert_eq!(app.event_count("message.sent", &id).await, 0);
    assert_eq!(deliver(&app, &id).await, Delivery::Skipped, "a failed message is not retried");
    assert_eq!(
        account_json(&app, &o.admin, &o.account).await["state"],
        "confirmed",
        "a refused recipient is not the account's fault"
    );
}

#[tokio::test]
async fn one_refused_recipient_leaves_the_message_partially_sent_with_each_recipients_reply() {
    let (app, servers) = spawn_mail_app().await;
    let o = outbox(&app, servers, "tls").await;
    let (good, refused) = (recipient("good-"), recipient("reject+"));
    let id =
        submit(&app, &o.admin, json!({"from": o.sender, "to": [good], "cc": [refused], "subject": "Some", "text": "Hi"})).await;
    assert_eq!(deliver(&app, &id).await, Delivery::Sent);
    let row = outbound_json(&app, &o.admin, &id).await;
    assert_eq!(row["status"], "partially_sent", "{row}");
    assert!(row["sent_at"].is_string(), "{row}");
    assert_eq!(
        row["recipient_results"],
        json!([{"recipient": good, "accepted": true, "reply": "250 2.1.5 Accepted"},
               {"recipient": refused, "accepted": false, "reply": "550 5.1.1 No such user"}]),
        "{row}"
    );
    assert_eq!(servers.accepted_messages_to(&good).len(), 1);
    assert_eq!(app.event_count("message.sent", &id).await, 1);
    assert_eq!(app.event_count("message.failed", &id).await, 0);
    assert_eq!(deliver(&app, &id).await, Delivery::Skipped, "handed over: never sent again");
    let listed = app.get("/v1/messages?status=partially_sent", &o.admin).await;
    assert_eq!(listed.body["items"].as_array().map(Vec::len), Some(1), "{}", listed.text);
    let body = app
        .graphql(
            Some(&o.admin),
            "query($id: UUID!) { sentMessage(id: $id) { status recipientResults { recipient accepted } } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(body["data"]["sentMessage"]["status"], "PARTIALLY_SENT", "{body}");
    assert_eq!(body["data"]["sentMessage"]["recipientResults"][1], json!({"recipient": refused, "accepted": false}));
}

#[tokio::test]
async fn a_connection_dropped_after_data_leaves_the_message_unknown_and_it_is_never_resent() {
    let (app, servers) = spawn_mail_app().await;
    let o = outbox(&app, servers, "starttls").await;
    let rcpt = recipient("dropafterdata+");
    let id = submit(&app, &o.admin, json!({"from": o.sender, "to": [rcpt], "subject": "Maybe", "text": "Hi"})).await;
    assert_eq!(deliver(&app, &id).await, Delivery::Unknown);
    let row = outbound_json(&app, &o.admin, &id).await;
    assert_eq!((row["status"].as_str(), row["attempts"].as_i64()), (Some("unknown"), Some(1)), "{row}");
    assert!(row["last_error"].as_str().unwrap_or_default().contains("uncertain"), "{row}");
    assert_eq!(deliver(&app, &id).await, Delivery::Skipped);
    assert_eq!(outbound_json(&app, &o.admin, &id).await["attempts"].as_i64(), Some(1), "never attempted again");
    let attempts_at_server =
        servers.smtp_log().lines().filter(|l| l.contains("dropping the connection after DATA") && l.contains(&rcpt)).count();
    assert_eq!(attempts_at_server, 1);
    // The client recovers: the next message on the same account goes out.
    let to = recipient("after-drop-");
    let next = submit(&app, &o.admin, json!({"from": o.sender, "to": [to], "subject": "Next", "text": "Hi"})).await;
    assert_eq!(deliver(&app, &next).await, Delivery::Sent);
}

#[tokio::test]
async fn smtp_auth_disabled_fails_the_message_with_the_admin_hint_and_puts_the_account_in_error() {
    let (app, servers) = spawn_mail_app().await;
    let o = outbox(&app, servers, "starttls").await;
    servers.disable_smtp_auth(&o.sender);
    let id = submit(&app, &o.admin, json!({"from": o.sender, "to": [recipient("blocked-")], "subject": "Blocked", "text": "Hi"}))
        .await;
    assert_eq!(deliver(&app, &id).await, Delivery::Failed);
    let row = outbound_json(&app, &o.admin, &id).await;
    assert_eq!(row["status"], "failed");
    let error = row["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("5.7.139") && error.contains("SmtpClientAuthentication"), "the server's words: {error:?}");
    assert!(error.contains("Set-CASMailbox"), "the hint for the admin: {error:?}");
    let account = account_json(&app, &o.admin, &o.account).await;
    assert_eq!(account["state"], "error", "{account}");
    assert!(account["last_error"].as_str().unwrap_or_default().contains("5.7.139"), "{account}");
    assert_eq!(app.event_count("message.failed", &id).await, 1);
    // Now that the account is in error it is not a usable sender any more.
    let reply =
        app.post("/v1/messages", &o.admin, json!({"from": o.sender, "to": ["x@example.org"], "subject": "s", "text": "t"})).await;
    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "no_sender");
}

#[tokio::test]
async fn reclaim_abandoned_requeues_a_message_never_handed_over_and_makes_a_handed_one_unknown() {
    let (app, servers) = spawn_mail_app().await;
    let o = outbox(&app, servers, "starttls").await;
    let body = |s: &str| json!({"from": o.sender, "to": [recipient("abandoned-")], "subject": s, "text": "Hi"});
    let abandoned = submit(&app, &o.admin, body("abandoned")).await;
    let never_handed = submit(&app, &o.admin, body("never handed")).await;
    let in_flight = submit(&app, &o.admin, body("in flight")).await;
    let queued = submit(&app, &o.admin, body("queued")).await;
    app.sql_exec(&format!(
        "UPDATE outbound_messages SET status = 'sending', attempts = 1, lease_until = now() - interval '1 minute', \
         lease_token = gen_random_uuid(), handed_at = now() - interval '2 minutes' WHERE id = '{abandoned}'"
    ))
    .await;
    app.sql_exec(&format!(
        "UPDATE outbound_messages SET status = 'sending', attempts = 1, lease_until = now() - interval '1 minute', \
         lease_token = gen_random_uuid(), dispatched_until = now() + interval '1 minute' WHERE id = '{never_handed}'"
    ))
    .await;
    app.sql_exec(&format!(
        "UPDATE outbound_messages SET status = 'sending', attempts = 1, lease_until = now() + interval '4 minutes', \
         lease_token = gen_random_uuid() WHERE id = '{in_flight}'"
    ))
    .await;
    assert_eq!(give_back::reclaim_abandoned(&app.ctx).await.expect("settles"), give_back::Abandoned { requeued: 1, unknown: 1 });
    let row = outbound_json(&app, &o.admin, &abandoned).await;
    assert_eq!(row["status"], "unknown", "{row}");
    assert!(row["last_error"].as_str().unwrap_or_default().contains("may have accepted"), "{row}");
    let row = outbound_json(&app, &o.admin, &never_handed).await;
    assert_eq!(row["status"], "queued", "nothing reached the server, so it goes back to the queue: {row}");
    assert_eq!(row["attempts"], 0, "the cut attempt is not counted: {row}");
    assert_eq!(outbound_json(&app, &o.admin, &in_flight).await["status"], "sending");
    assert_eq!(outbound_json(&app, &o.admin, &queued).await["status"], "queued");
    assert_eq!(deliver(&app, &abandoned).await, Delivery::Skipped, "an unknown message is never resent blindly");
    assert_eq!(deliver(&app, &in_flight).await, Delivery::Skipped, "a leased message belongs to its worker");
    assert_eq!(give_back::reclaim_abandoned(&app.ctx).await.expect("settles"), give_back::Abandoned::default());
    assert_eq!(deliver(&app, &never_handed).await, Delivery::Sent, "the requeued message is sent at once");
    assert_eq!(outbound_json(&app, &o.admin, &never_handed).await["attempts"], 1);
}

#[tokio::test]
async fn invalid_messages_are_refused_with_the_field_at_fault_and_nothing_is_stored() {
    let mut env = TestEnv::new();
    env.set("MAX_MESSAGE_BYTES", "8192");
    let (app, servers) = spawn_mail_app_with(env).await;
    let o = outbox(&app, servers, "starttls").await;
    let valid = json!({"from": o.sender, "to": ["valid@example.org"], "subject": "Valid", "text": "Hello"});
    let with = |patch: Value| {
        let mut body = valid.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                body.as_object_mut().unwrap().remove(k);
            } else {
                body[k] = v.clone();
            }
        }
        body
    };
    let big = base64_of(&vec![b'a'; 16 * 1024]);
    let many = |prefix: &str, count: usize| (0..count).map(|i| format!("{prefix}-{i}@example.org")).collect::<Vec<_>>();
    let cases: Vec<(Value, &str, &str)> = vec![
        (with(json!({"from": "not an address"})), "invalid_email", "from"),
        (with(json!({"from": "Eve <eve@>"})), "invalid_email", "from"),
        (with(json!({"to": []})), "invalid_message", "to"),
        (with(json!({"to": ["bad address"]})), "invalid_email", "to[0]"),
        (with(json!({"text": null})), "required", "text"),
        (
            with(json!({"attachments": [{"filename": "a.pdf", "content_base64": "not base64!!"}]})),
            "invalid_base64",
            "attachments[0].content_base64",
        ),
        (with(json!({"headers": {"From": "ceo@example.com"}})), "invalid_message", "headers"),
        (with(json!({"headers": {"Bcc": "spy@example.com"}})), "invalid_message", "headers"),
        (with(json!({"headers": {"X-Injected": "a\r\nBcc: spy@example.com"}})), "invalid_message", "headers"),
        (with(json!({"idempotency_key": ""})), "required", "idempotency_key"),
        // Counted before any is parsed: 1,001 recipients in all, or 101 extra headers.
        (with(json!({"to": many("to", 400), "cc": many("cc", 400), "bcc": many("bcc", 201)})), "too_many_recipients", "to"),
        (
            with(json!({"headers": (0..101).map(|i| (format!("X-Extra-{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()})),
            "too_many_headers",
            "headers",
        ),
    ];
    for (body, code, field) in &cases {
        let reply = app.post("/v1/messages", &o.admin, body.clone()).await;
        assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, code);
        let got = reply.body["field"].as_str().unwrap_or_default();
        assert!(got.starts_with(field), "field {field:?} expected for {body}: {}", reply.text);
    }
    // Too large once composed: 413, like a body too large to read.
    let too_large =
        app.post("/v1/messages", &o.admin, with(json!({"attachments": [{"filename": "big.bin", "content_base64": big}]}))).await;
    assert_error(&too_large, StatusCode::PAYLOAD_TOO_LARGE, "message_too_large");
    assert_eq!(
        app.sql_i64(&format!("SELECT count(*) FROM outbound_messages WHERE tenant_id = '{}'", o.tenant)).await,
        0,
        "nothing stored"
    );
    // The limit is about size only: a small message with a small attachment passes.
    let small = with(
        json!({"attachments": [{"filename": "note.txt", "content_type": "text/plain", "content_base64": base64_of(b"tiny")}]}),
    );
    submit(&app, &o.admin, small).await;
    assert_eq!(app.sql_i64(&format!("SELECT count(*) FROM outbound_messages WHERE tenant_id = '{}'", o.tenant)).await, 1);
}

#[tokio::test]
async fn a_20_mib_message_is_accepted_and_a_larger_one_is_refused_413_with_nothing_written() {
    let (app, servers) = spawn_mail_app().await;
    let o = outbox(&app, servers, "starttls").await;
    let message = |raw_bytes: usize| {
        let content: Vec<u8> = (0..raw_bytes).map(|i| (i % 251) as u8).collect();
        json!({"from": o.sender, "to": [recipient("big-")], "subject": "Large", "text": "See the attachment",
               "attachments": [{"filename": "data.bin", "content_base64": base64_of(&content)}]})
    };
    // Built before sending, and sent on fresh connections: building 20 MiB of JSON in a debug build can take
    // longer than the server keeps an idle connection, and a body written into a closing one breaks the pipe.
    let (fits, too_large) = (message(15 * 1024 * 1024), message(20 * 1024 * 1024));
    let fresh = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
    let post = |body: Value| {
        let request = fresh.post(format!("{}/v1/messages", app.address)).bearer_auth(&o.admin).json(&body);
        async move {
            let resp = request.send().await.expect("request sent");
            (resp.status(), resp.json::<Value>().await.unwrap_or_default())
        }
    };
    // 15 MiB of attachment: about 20 MiB of base64, in the body and in the composed message.
    let (status, body) = post(fits).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let accepted = body["id"].as_str().expect("id").to_owned();
    let size = outbound_json(&app, &o.admin, &accepted).await["size"].as_i64().expect("size");
    assert!((20 * 1024 * 1024..25 * 1024 * 1024).contains(&size), "composed size {size}");

    // 20 MiB of attachment: the body fits the route's limit, the composed message (about 27 MiB) not.
    let (status, body) = post(too_large).await;
    assert_eq!((status, &body["code"]), (StatusCode::PAYLOAD_TOO_LARGE, &json!("message_too_large")), "{body}");
    assert!(body["message"].as_str().unwrap_or_default().contains("26214400"), "{body}");
    // A body over the route's limit (about 37.5 MiB) is refused on its Content-Length, before it is sent.
    let (status, body) = app.post_announcing("/v1/messages", &o.admin, 40 * 1024 * 1024).await;
    assert_eq!((status, &body["code"]), (413, &json!("payload_too_large")), "{body}");
    assert_eq!(
        app.sql_i64(&format!("SELECT count(*) FROM outbound_messages WHERE tenant_id = '{}'", o.tenant)).await,
        1,
        "only the accepted message is stored"
    );
    // Other routes keep their small limit (1 MiB).
    let (status, body) = app.post_announcing("/v1/api-keys", &o.admin, 2 * 1024 * 1024).await;
    assert_eq!((status, &body["code"]), (413, &json!("payload_too_large")), "{body}");
}

#[tokio::test]
async fn an_idempotency_key_reused_with_another_request_is_refused_422_and_an_unreadable_key_400() {
    let (app, servers) = spawn_mail_app().await;
    let o = outbox(&app, servers, "starttls").await;
    let to = recipient("idem-");
    let body = json!({"from": o.sender, "to": [to], "subject": "Invoice 7", "text": "Hello", "idempotency_key": "invoice-7"});
    let first = submit(&app, &o.admin, body.clone()).await;
    // The same key with another body (REST, header, GraphQL): refused, naming the first message.
    let other = with(body.clone(), json!({"text": "Hello again"}));
    let reply = app.post("/v1/messages", &o.admin, other.clone()).await;
    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_mismatch");
    assert_eq!(reply.body["field"], json!("idempotency_key"));
    assert!(reply.text.contains(&first), "{}", reply.text);
    let by_header = app
        .http
        .post(format!("{}/v1/messages", app.address))
        .bearer_auth(&o.admin)
        .header("Idempotency-Key", "invoice-7")
        .json(&with(other.clone(), json!({"idempotency_key": null})))
        .send()
        .await
        .expect("sent");
    assert_eq!(by_header.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let gql = app
        .graphql(
            Some(&o.admin),
            "mutation($i: SendMessage!) { sendMessage(input: $i) { id } }",
            json!({"i": {"from": o.sender, "to": body["to"], "subject": "Invoice 7", "text": "Changed", "idempotencyKey": "invoice-7"}}),
        )
        .await;
    assert_eq!(graphql_error_code(&gql), "idempotency_key_mismatch", "{gql}");
    // The same request again still answers the first message, over GraphQL too.
    assert_eq!(submit(&app, &o.admin, body.clone()).await, first);
    let gql = app
        .graphql(
            Some(&o.admin),
            "mutation($i: SendMessage!) { sendMessage(input: $i) { id } }",
            json!({"i": {"from": o.sender, "to": body["to"], "subject": "Invoice 7", "text": "Hello", "idempotencyKey": "invoice-7"}}),
        )
        .await;
    assert_eq!(gql["data"]["sendMessage"]["id"], json!(first), "{gql}");

    // Keys that cannot be keys: 400, nothing stored.
    let without_key = with(body.clone(), json!({"idempotency_key": null, "subject": "Unkeyed"}));
    let headers: Vec<reqwest::header::HeaderValue> = vec![
        reqwest::header::HeaderValue::from_bytes(b"caf\xe9-\xff").expect("obs-text is a valid header value"),
        reqwest::header::HeaderValue::from_str(&"k".repeat(256)).expect("header"),
        reqwest::header::HeaderValue::from_str("tab\tinside").expect("header"),
    ];
    for header in headers {
        let resp = app
            .http
            .post(format!("{}/v1/messages", app.address))
            .bearer_auth(&o.admin)
            .header("Idempotency-Key", header.clone())
            .json(&without_key)
            .send()
            .await
            .expect("sent");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{header:?}");
        assert_eq!(resp.json::<Value>().await.expect("json")["code"], json!("invalid_idempotency_key"), "{header:?}");
    }
    for key in ["bell\u{7}", &"k".repeat(256)] {
        let reply = app.post("/v1/messages", &o.admin, with(without_key.clone(), json!({"idempotency_key": key}))).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_idempotency_key");
    }
    assert_eq!(
        app.sql_i64(&format!("SELECT count(*) FROM outbound_messages WHERE tenant_id = '{}'", o.tenant)).await,
        1,
        "only the first message is stored"
    );
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn a_token_that_cannot_be_decrypted_is_postbridges_failure_and_touches_neither_message_grant_nor_account() {
    let (app, servers) = spawn_mail_app().await;
    let OAuthSender { tenant, admin, login, account } =
        oauth_sender(&app, servers, "tls", |login| json!({"from_filter": login})).await;
    let grant = account_json(&app, &admin, &account).await["grant_id"].as_str().expect("grant_id").to_owned();
    // A ciphertext sealed for another row: it does not decrypt here (as after a lost master key).
    let elsewhere = postbridge_core::secrets::GRANT_ACCESS_TOKEN.location(tenant.parse().expect("tenant uuid"), Uuid::new_v4());
    let foreign = app.ctx.cipher.encrypt(elsewhere, "token-of-another-row").expect("encrypt");
    app.sql_exec(&format!(
        "UPDATE grants SET access_token = '{foreign}', expires_at = now() + interval '1 hour', next_refresh_at = NULL WHERE id = '{grant}'"
    ))
    .await;
    let grant_before = app.sql_text(&format!("SELECT expires_at::text FROM grants WHERE id = '{grant}'")).await;
    let id = submit(&app, &admin, json!({"from": login, "to": [recipient("undecryptable-")], "subject": "s", "text": "t"})).await;

    let outcome = delivery::deliver(&app.ctx, Uuid::parse_str(&id).expect("id").into()).await;
    assert!(outcome.is_err(), "an internal failure, not a delivery outcome: {outcome:?}");
    let row = outbound_json(&app, &admin, &id).await;
    assert_eq!(row["status"], "queued", "never failed for good: {row}");
    assert_eq!(row["attempts"], 0, "the attempt is not counted: {row}");
    let waits = app
        .sql_i64(&format!(
            "SELECT (next_attempt_at > now() + interval '20 seconds')::int::bigint FROM outbound_messages WHERE id = '{id}'"
        ))
        .await;
    assert_eq!(waits, 1, "it waits before the next try instead of spinning");
    assert_eq!(
        app.sql_text(&format!("SELECT expires_at::text FROM grants WHERE id = '{grant}'")).await,
        grant_before,
        "the token is not expired"
    );
    assert_eq!(app.sql_text(&format!("SELECT status FROM grants WHERE id = '{grant}'")).await.as_deref(), Some("valid"));
    let state = app.get(&format!("/v1/accounts/{account}"), &admin).await;
    assert_eq!(state.body["state"], "confirmed", "the account is not put in error: {}", state.text);
}
