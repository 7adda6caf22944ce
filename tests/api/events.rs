//! The event log (`GET /v1/events`, GraphQL `events`): an event for each transition, filters, cursor pages,
//! tenancy, retention; and the live subscriptions over WebSocket (graphql-transport-ws).

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{SinkExt, StreamExt};
use postbridge_core::connect::{grants, token_configs};
use postbridge_core::observe::events;
use postbridge_core::receive::poll;
use postbridge_tests::mail::MailServers;
use postbridge_tests::mailflow::{new_login, password_account, sample_message, spawn_mail_app, MAIL_PASSWORD};
use postbridge_tests::oauth::CONSENTING_USER;
use postbridge_tests::{assert_error, graphql_error_code, spawn_app, TestApp};
use reqwest::StatusCode;
use sea_orm::ConnectionTrait;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

// ---- helpers ---------------------------------------------------------------------------------

fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// One page of `GET /v1/events` with the given query string (asserted 200).
async fn list(app: &TestApp, key: &str, query: &str) -> Value {
    let reply = app.get(&format!("/v1/events?{query}"), key).await;
    assert_eq!(reply.status, StatusCode::OK, "{query}: {}", reply.text);
    reply.body
}

/// Every event the query matches, all pages followed, newest first.
async fn list_all(app: &TestApp, key: &str, query: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page_query = match &cursor {
            Some(c) => format!("{query}&cursor={c}"),
            None => query.to_owned(),
        };
        let page = list(app, key, &page_query).await;
        items.extend(page["items"].as_array().expect("items").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return items,
        }
    }
}

/// The one event of `event_type` about `resource_id`, through the REST filters; asserts its resource.
async fn the_event(app: &TestApp, key: &str, event_type: &str, resource_type: &str, resource_id: &str) -> Value {
    let items = list_all(app, key, &format!("types={event_type}&resource_id={resource_id}")).await;
    assert_eq!(items.len(), 1, "one {event_type} about {resource_id}: {items:?}");
    let event = items[0].clone();
    assert_eq!(
        (&event["event_type"], &event["resource_type"], &event["resource_id"]),
        (&json!(event_type), &json!(resource_type), &json!(resource_id)),
        "{event}"
    );
    event
}

fn ids(items: &[Value]) -> Vec<String> {
    items.iter().map(|e| e["id"].as_str().expect("id").to_owned()).collect()
}

async fn create_account(app: &TestApp, key: &str, body: Value) -> String {
    let reply = app.post("/v1/accounts", key, body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    reply.id()
}

/// Switches an account on or off; off is the `disabled` state, on again is `draft`.
async fn set_enabled(app: &TestApp, key: &str, account: &str, enabled: bool) {
    let reply = app.patch(&format!("/v1/accounts/{account}"), key, json!({"enabled": enabled})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
}

// ---- a graphql-transport-ws client -----------------------------------------------------------

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens `ws://.../graphql` speaking graphql-transport-ws, with extra headers on the upgrade request.
pub(crate) async fn ws_open(app: &TestApp, headers: &[(&str, &str)]) -> Ws {
    let url = format!("{}/graphql", app.address.replacen("http://", "ws://", 1));
    let mut request = url.into_client_request().expect("a ws request");
    request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("graphql-transport-ws"));
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("header name");
        request.headers_mut().insert(name, HeaderValue::from_str(value).expect("header value"));
    }
    let (ws, response) = tokio_tungstenite::connect_async(request).await.expect("the WebSocket upgrade succeeds");
    assert_eq!(response.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()), Some("graphql-transport-ws"));
    ws
}

pub(crate) async fn ws_send(ws: &mut Ws, message: Value) {
    ws.send(Message::Text(message.to_string().into())).await.expect("ws send");
}

/// The next protocol message, or `Err(close frame reason)` once the server closes the connection.
pub(crate) async fn ws_next(ws: &mut Ws) -> Result<Value, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text).expect("a JSON message")),
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| format!("{} {}", f.code, f.reason)).unwrap_or_default()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("closed".to_owned()),
        }
    }
}

/// Opens a connection and completes `connection_init` with this payload.
pub(crate) async fn ws_connected(app: &TestApp, headers: &[(&str, &str)], init: Value) -> Ws {
    let mut ws = ws_open(app, headers).await;
    ws_send(&mut ws, json!({"type": "connection_init", "payload": init})).await;
    let ack = tokio::time::timeout(Duration::from_secs(10), ws_next(&mut ws)).await.expect("an answer to connection_init");
    assert_eq!(ack, Ok(json!({"type": "connection_ack"})));
    ws
}

/// Starts subscription `id` about `tenant`'s events, then runs a database-backed query on the same connection and
/// waits for its answer (the server registers a subscription when it first polls it, which it does while the query
/// waits for Postgres), then for the tenant's watch: once it is written, the subscription is live.
async fn subscribe(app: &TestApp, ws: &mut Ws, tenant: &str, id: &str, query: &str, variables: Value) {
    ws_send(ws, json!({"id": id, "type": "subscribe", "payload": {"query": query, "variables": variables}})).await;
    ws_send(ws, json!({"id": "sync", "type": "subscribe", "payload": {"query": "{ events(limit: 1) { nextCursor } }"}})).await;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws_next(ws)).await.expect("the sync query answers");
        let message = message.unwrap_or_else(|reason| panic!("connection closed while subscribing: {reason}"));
        assert_ne!(message["id"], json!(id), "nothing happened yet, so the subscription sends nothing: {message}");
        if message == json!({"id": "sync", "type": "complete"}) {
            break;
        }
        assert_eq!(message["type"], "next", "{message}");
        assert!(message["payload"]["errors"].is_null(), "{message}");
    }
    let watched = format!("SELECT count(*) FROM event_watchers WHERE tenant_id = '{tenant}' AND expires_at > now()");
    postbridge_tests::wait_until("the subscription's tenant is watched", Duration::from_secs(10), async || {
        app.sql_i64(&watched).await > 0
    })
    .await;
}

// ---- an event for each transition -----------------------------------------------------------

#[tokio::test]
async fn confirming_receiving_sending_failing_and_locking_out_each_record_an_event_listed_by_type_and_resource() {
    let (app, servers) = spawn_mail_app().await;
    let (_, admin) = app.tenant_with_admin().await;

    // account.confirmed: test & confirm of a fresh IMAP account.
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    let inbound = app.create_mail_account(&admin, password_account(servers, "imap", "tls", &login, json!({}))).await;
    app.confirm_mail_account(&admin, &inbound).await;
    let confirmed = the_event(&app, &admin, "account.confirmed", "account", &inbound).await;
    assert_eq!((&confirmed["data"]["previous_state"], &confirmed["data"]["state"]), (&json!("draft"), &json!("confirmed")));

    // message.received: one per stored message, about the received message.
    let seeded: Vec<Vec<u8>> = (1..=2).map(|i| sample_message(&login, &format!("Hello {i}")).1).collect();
    servers.seed_messages(&login, "INBOX", &seeded);
    let report = poll::poll_account(&app.ctx, inbound.parse().expect("uuid")).await.expect("poll");
    assert_eq!(report.stored, 2);
    let received = app.all_received(&admin, &inbound).await;
    assert_eq!(received.len(), 2);
    for message in &received {
        let id = message["id"].as_str().expect("id");
        let event = the_event(&app, &admin, "message.received", "received_message", id).await;
        assert_eq!(event["data"]["account_id"], json!(inbound));
    }

    // message.sent and message.failed: one delivery accepted, one refused for good.
    let sender = new_login();
    servers.add_password_user(&sender, MAIL_PASSWORD);
    app.confirmed_mail_account(&admin, password_account(servers, "smtp", "tls", &sender, json!({"is_default": true}))).await;
    let sent = send(&app, &admin, &sender, &format!("to-{}@example.org", Uuid::new_v4().simple())).await;
    let failed = send(&app, &admin, &sender, &format!("reject+{}@example.org", Uuid::new_v4().simple())).await;
    assert_eq!(the_event(&app, &admin, "message.sent", "message", &sent).await["resource_id"], json!(sent));
    let failure = the_event(&app, &admin, "message.failed", "message", &failed).await;
    assert!(failure["data"]["error"].as_str().is_some_and(|e| e.contains("550")), "{failure}");
    assert!(list_all(&app, &admin, &format!("resource_id={sent}&types=message.failed")).await.is_empty());

    // account.error: the password changed on the server, so the next poll cannot log in.
    locked_out(servers, &login).await;
    assert!(poll::poll_account(&app.ctx, inbound.parse().expect("uuid")).await.is_err());
    let error = the_event(&app, &admin, "account.error", "account", &inbound).await;
    assert_eq!(error["data"]["previous_state"], json!("confirmed"), "{error}");
    assert!(error["data"]["error"].as_str().is_some_and(|e| !e.is_empty()), "the event says why: {error}");

    // Every event is also there without filters, newest first.
    let all = list_all(&app, &admin, "limit=200").await;
    let types: Vec<&str> = all.iter().map(|e| e["event_type"].as_str().expect("type")).collect();
    assert_eq!(types.iter().filter(|t| **t == "message.received").count(), 2, "{types:?}");
    assert_eq!(types.first(), Some(&"account.error"), "newest first: {types:?}");
}

/// Submits a message and runs its delivery; returns its id.
async fn send(app: &TestApp, key: &str, from: &str, to: &str) -> String {
    let reply = app.post("/v1/messages", key, json!({"from": from, "to": [to], "subject": "Events", "text": "Hi"})).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let id = reply.id();
    postbridge_core::send::delivery::deliver(&app.ctx, id.parse().expect("uuid")).await.expect("deliver runs");
    id
}

#[tokio::test]
async fn a_message_whose_sending_account_was_deleted_fails_with_a_message_failed_event() {
    let (app, servers) = spawn_mail_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let sender = new_login();
    servers.add_password_user(&sender, MAIL_PASSWORD);
    let account =
        app.confirmed_mail_account(&admin, password_account(servers, "smtp", "tls", &sender, json!({"is_default": true}))).await;
    let reply =
        app.post("/v1/messages", &admin, json!({"from": sender, "to": ["x@example.org"], "subject": "S", "text": "T"})).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text);
    let message = reply.id();
    assert_eq!(app.delete(&format!("/v1/accounts/{account}"), &admin).await.status, StatusCode::NO_CONTENT);

    let outcome = postbridge_core::send::delivery::deliver(&app.ctx, message.parse().expect("uuid")).await.expect("deliver");
    assert_eq!(outcome, postbridge_core::send::delivery::Delivery::Failed);
    let failure = the_event(&app, &admin, "message.failed", "message", &message).await;
    assert_eq!(failure["data"]["error"], json!("its sending account was deleted"), "{failure}");
}

/// The user changes the mailbox password on the server. Dovecot re-reads a passwd-file at most once a second,
/// and only when its modification time (whole seconds) or its size changed: the new password is longer.
async fn locked_out(servers: &MailServers, login: &str) {
    assert_ne!(MAIL_PASSWORD.len(), "the-password-the-user-changed-to".len());
    servers.add_password_user(login, "the-password-the-user-changed-to");
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

#[tokio::test]
async fn a_refused_refresh_records_grant_reauth_required_and_account_error_and_a_revocation_grant_revoked() {
    let app = spawn_app().await;
    let setup = app.oauth_setup().await;
    let account = app.oauth_account(&setup, "imap", CONSENTING_USER).await;
    let outcome = app.consent(&setup, &account).await;
    assert_eq!(outcome.param("status").as_deref(), Some("success"), "{outcome:?}");
    let grant = app.account_json(&setup, &account).await["grant_id"].as_str().expect("grant id").to_owned();

    // The user withdraws consent at the provider; the next refresh is refused with invalid_grant.
    setup.provider.revoke_user(CONSENTING_USER);
    app.sql_exec(&format!(
        "UPDATE grants SET expires_at = now() + interval '60 seconds', refresh_at = now() WHERE id = '{grant}'"
    ))
    .await;
    let pass = grants::refresh_due(&app.ctx, 100).await.expect("refresh pass");
    assert_eq!(pass.reauth_required, 1, "{pass:?}");
    the_event(&app, &setup.admin, "grant.reauth_required", "grant", &grant).await;
    let error = the_event(&app, &setup.admin, "account.error", "account", &account).await;
    assert_eq!(error["data"]["state"], json!("error"));

    // The admin revokes the grant.
    let revoked = app.delete(&format!("/v1/grants/{grant}"), &setup.admin).await;
    assert!(revoked.status.is_success(), "{}", revoked.text);
    the_event(&app, &setup.admin, "grant.revoked", "grant", &grant).await;
}

#[tokio::test]
async fn an_expiring_client_secret_is_announced_once_per_window_however_often_it_is_scanned() {
    let app = spawn_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let mut body = TestApp::microsoft_config();
    body["client_secret_expires_at"] = json!((chrono::Utc::now().date_naive() + chrono::Duration::days(20)).to_string());
    let config = app.post("/v1/token-configs", &admin, body).await;
    assert_eq!(config.status, StatusCode::CREATED, "{}", config.text);
    let config = config.id();

    token_configs::scan_secret_expiry(&app.ctx).await.expect("first scan");
    token_configs::scan_secret_expiry(&app.ctx).await.expect("second scan");
    let event = the_event(&app, &admin, "token_config.secret_expiring", "token_config", &config).await;
    assert_eq!(event["data"]["window_days"], json!(30), "{event}");
}

// ---- filters, pages, roles, tenancy ----------------------------------------------------------

#[tokio::test]
async fn events_filter_by_type_resource_and_time_and_page_with_a_cursor_newest_first() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let viewer = app.api_key(&tenant, "viewer").await;
    let first = create_account(&app, &admin, TestApp::smtp_account("first@example.com")).await;
    let second = create_account(&app, &admin, TestApp::smtp_account("second@example.com")).await;
    // first: disabled, draft, disabled; second: disabled, draft.
    for (account, enabled) in [(&first, false), (&second, false), (&first, true), (&second, true), (&first, false)] {
        set_enabled(&app, &admin, account, enabled).await;
    }

    // A viewer reads them all, newest (highest id) first. (Ids are time-ordered to the millisecond, so the
    // exact sequence of two changes within one millisecond is not asserted.)
    let all = list_all(&app, &viewer, "limit=200").await;
    let mut seen: Vec<(String, String)> = all
        .iter()
        .map(|e| (e["event_type"].as_str().unwrap_or("").to_owned(), e["resource_id"].as_str().unwrap_or("").to_owned()))
        .collect();
    seen.sort();
    let expect = |t: &str, a: &String| (t.to_owned(), a.clone());
    let mut expected = vec![
        expect("account.disabled", &first),
        expect("account.draft", &second),
        expect("account.draft", &first),
        expect("account.disabled", &second),
        expect("account.disabled", &first),
    ];
    expected.sort();
    assert_eq!(seen, expected);
    let mut descending = ids(&all);
    descending.sort_by(|a, b| b.cmp(a));
    assert_eq!(ids(&all), descending);

    // By type (comma-separated or repeated), by resource, by resource type.
    assert_eq!(list_all(&app, &viewer, "types=account.disabled").await.len(), 3);
    let both = list_all(&app, &viewer, "types=account.disabled,account.draft").await;
    assert_eq!(ids(&both), ids(&all));
    assert_eq!(ids(&list_all(&app, &viewer, "types=account.draft&types=account.disabled").await), ids(&all));
    assert_eq!(list_all(&app, &viewer, &format!("resource_id={second}")).await.len(), 2);
    assert_eq!(list_all(&app, &viewer, &format!("resource_id={first}&types=account.draft")).await.len(), 1);
    assert_eq!(list_all(&app, &viewer, "resource_type=account").await.len(), 5);
    assert!(list_all(&app, &viewer, "resource_type=grant").await.is_empty());
    assert!(list_all(&app, &viewer, "types=message.sent").await.is_empty());

    // By time: `since` is inclusive, `until` exclusive.
    let created = |e: &Value| e["created_at"].as_str().expect("created_at").parse::<DateTime<Utc>>().expect("a time");
    let matching =
        |keep: &dyn Fn(DateTime<Utc>) -> bool| ids(&all.iter().filter(|e| keep(created(e))).cloned().collect::<Vec<_>>());
    let (early, late) = (created(&all[3]), created(&all[1]));
    let since = list_all(&app, &viewer, &format!("since={}", encode(&early.to_rfc3339()))).await;
    assert_eq!(ids(&since), matching(&|t| t >= early));
    assert!(ids(&since).contains(&ids(&all)[3]), "since is inclusive");
    let until = list_all(&app, &viewer, &format!("until={}", encode(&late.to_rfc3339()))).await;
    assert_eq!(ids(&until), matching(&|t| t < late));
    assert!(!ids(&until).contains(&ids(&all)[1]), "until is exclusive");
    let window =
        list_all(&app, &viewer, &format!("since={}&until={}", encode(&early.to_rfc3339()), encode(&late.to_rfc3339()))).await;
    assert_eq!(ids(&window), matching(&|t| t >= early && t < late));

    // Pages of two: 2, 2, 1, each starting after the previous one's cursor.
    let mut pages = Vec::new();
    let mut query = "limit=2".to_owned();
    loop {
        let page = list(&app, &viewer, &query).await;
        pages.push(page["items"].as_array().expect("items").len());
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(pages, vec![2, 2, 1]);
    assert_eq!(ids(&list_all(&app, &viewer, "limit=2").await), ids(&all));

    // One event by id; the same over GraphQL.
    let one = app.get(&format!("/v1/events/{}", all[0]["id"].as_str().expect("id")), &viewer).await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.text);
    assert_eq!(one.body, all[0]);
    let gql = app
        .graphql(
            Some(&viewer),
            "query($t: [String!], $r: UUID) { events(types: $t, resourceId: $r, limit: 1) { items { id eventType resourceType resourceId data } nextCursor } }",
            json!({"t": ["account.disabled"], "r": first}),
        )
        .await;
    let items = gql["data"]["events"]["items"].as_array().unwrap_or_else(|| panic!("{gql}"));
    assert_eq!(items.len(), 1, "{gql}");
    let newest_disabled = list_all(&app, &viewer, &format!("types=account.disabled&resource_id={first}")).await;
    assert_eq!(items[0]["id"], newest_disabled[0]["id"]);
    assert_eq!(
        (&items[0]["eventType"], &items[0]["resourceType"], &items[0]["resourceId"], &items[0]["data"]["state"]),
        (&json!("account.disabled"), &json!("account"), &json!(first), &json!("disabled"))
    );
    assert!(gql["data"]["events"]["nextCursor"].is_string(), "another disabled event of it exists: {gql}");
    let by_id =
        app.graphql(Some(&viewer), "query($id: UUID!) { event(id: $id) { id eventType } }", json!({"id": all[1]["id"]})).await;
    assert_eq!(by_id["data"]["event"], json!({"id": all[1]["id"], "eventType": all[1]["event_type"]}), "{by_id}");
}

#[tokio::test]
async fn bad_event_filters_are_refused_with_the_field_named() {
    let app = spawn_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let refused = app.get("/v1/events?types=account.confirmed,account.exploded", &admin).await;
    assert_error(&refused, StatusCode::UNPROCESSABLE_ENTITY, "unknown_event_type");
    assert_eq!(refused.body["field"], "types");
    for (query, field, code) in [
        ("since=yesterday", "since", "invalid_timestamp"),
        ("until=2026-13-01T00:00:00Z", "until", "invalid_timestamp"),
        ("since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z", "since", "invalid_time_range"),
        ("resource_id=not-an-id", "resource_id", "invalid_id"),
        ("cursor=42", "cursor", "invalid_id"),
        ("limit=0", "limit", "invalid_limit"),
        ("limit=many", "limit", "invalid_limit"),
    ] {
        let reply = app.get(&format!("/v1/events?{query}"), &admin).await;
        assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, code);
        assert_eq!(reply.body["field"], field, "{query}: {}", reply.text);
    }
    let gql = app.graphql(Some(&admin), r#"{ events(types: ["nope"]) { items { id } } }"#, json!({})).await;
    assert_eq!(graphql_error_code(&gql), "unknown_event_type", "{gql}");
    assert_error(&app.get("/v1/events", "pbk_not_a_key").await, StatusCode::UNAUTHORIZED, "unauthenticated");
}

#[tokio::test]
async fn another_tenants_events_are_neither_listed_nor_found() {
    let app = spawn_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let (other_tenant, other_admin) = app.tenant_with_admin().await;
    let account = create_account(&app, &admin, TestApp::smtp_account("mine@example.com")).await;
    set_enabled(&app, &admin, &account, false).await;
    let mine = list_all(&app, &admin, "").await;
    assert_eq!(mine.len(), 1);
    let id = mine[0]["id"].as_str().expect("id");

    assert!(list_all(&app, &other_admin, "").await.is_empty());
    assert!(list_all(&app, &other_admin, &format!("resource_id={account}")).await.is_empty());
    assert_error(&app.get(&format!("/v1/events/{id}"), &other_admin).await, StatusCode::NOT_FOUND, "not_found");
    let gql = app.graphql(Some(&other_admin), "query($id: UUID!) { event(id: $id) { id } }", json!({"id": id})).await;
    assert_eq!(graphql_error_code(&gql), "not_found", "{gql}");
    // The operator sees a tenant's events only by naming it.
    let operator = app.operator_token();
    let named = app.request(reqwest::Method::GET, "/v1/events", Some(&operator), Some(&other_tenant), None).await;
    assert_eq!((named.status, named.body["items"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)), "{}", named.text);
    assert_error(&app.get("/v1/events", &operator).await, StatusCode::BAD_REQUEST, "tenant_required");
}

#[tokio::test]
async fn a_member_sees_only_the_events_about_its_own_accounts_listed_by_id_and_live() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let member = app.api_key(&tenant, "member").await;
    let mine = create_account(&app, &member, TestApp::smtp_account("mine@example.com")).await;
    let theirs = create_account(&app, &admin, TestApp::smtp_account("theirs@example.com")).await;
    let mut ws = ws_connected(&app, &[], json!({"authorization": format!("Bearer {member}")})).await;
    subscribe(&app, &mut ws, &tenant, "feed", "subscription { events { resourceId data } }", json!({})).await;
    set_enabled(&app, &admin, &theirs, false).await;
    set_enabled(&app, &admin, &mine, false).await;

    // Live: the other account's change committed first, so had it been sent it would arrive first.
    let message = tokio::time::timeout(Duration::from_secs(5), ws_next(&mut ws)).await.expect("an event arrives");
    let message = message.expect("the connection stays open");
    assert_eq!(message["payload"]["data"]["events"]["resourceId"], json!(mine), "{message}");

    let theirs_event = the_event(&app, &admin, "account.disabled", "account", &theirs).await;
    let listed = list_all(&app, &member, "").await;
    assert_eq!(listed.iter().map(|e| e["resource_id"].clone()).collect::<Vec<_>>(), vec![json!(mine)], "{listed:?}");
    assert!(list_all(&app, &member, &format!("resource_id={theirs}")).await.is_empty());
    let by_id = format!("/v1/events/{}", theirs_event["id"].as_str().expect("id"));
    assert_error(&app.get(&by_id, &member).await, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(app.get(&by_id, &app.api_key(&tenant, "viewer").await).await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_retention_purge_deletes_only_events_older_than_the_retention() {
    let app = spawn_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let account = create_account(&app, &admin, TestApp::smtp_account("old@example.com")).await;
    set_enabled(&app, &admin, &account, false).await;
    set_enabled(&app, &admin, &account, true).await;
    let all = list_all(&app, &admin, "").await;
    let old = all[1]["id"].as_str().expect("id");
    app.sql_exec(&format!("UPDATE events SET created_at = now() - interval '31 days' WHERE id = '{old}'")).await;

    assert_eq!(events::purge_older_than(&app.ctx, 0).await.expect("purge"), 0, "0 keeps everything");
    assert_eq!(events::purge_older_than(&app.ctx, 30).await.expect("purge"), 1);
    assert_eq!(ids(&list_all(&app, &admin, "").await), ids(&all[..1]));
    assert_error(&app.get(&format!("/v1/events/{old}"), &admin).await, StatusCode::NOT_FOUND, "not_found");
}

// ---- live subscriptions ----------------------------------------------------------------------

#[tokio::test]
async fn a_subscriber_receives_an_account_status_change_within_a_second() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let viewer = app.api_key(&tenant, "viewer").await;
    let account = create_account(&app, &admin, TestApp::smtp_account("live@example.com")).await;
    let mut ws = ws_connected(&app, &[], json!({"authorization": format!("Bearer {viewer}")})).await;
    subscribe(
        &app,
        &mut ws,
        &tenant,
        "status",
        "subscription($id: UUID) { accountStatusChanged(accountId: $id) { id state login } }",
        json!({"id": account}),
    )
    .await;

    for (enabled, state) in [(false, "DISABLED"), (true, "DRAFT")] {
        set_enabled(&app, &admin, &account, enabled).await;
        let message = tokio::time::timeout(Duration::from_secs(1), ws_next(&mut ws))
            .await
            .unwrap_or_else(|_| panic!("no {state} update within a second"));
        assert_eq!(
            message,
            Ok(json!({"id": "status", "type": "next", "payload": {"data": {"accountStatusChanged": {
                "id": account, "state": state, "login": "live@example.com"}}}}))
        );
    }
}

#[tokio::test]
async fn an_events_subscription_gets_only_its_own_tenants_events_of_the_types_asked_for() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let (_, other_admin) = app.tenant_with_admin().await;
    let member = app.api_key(&tenant, "member").await;
    // The member's own account: members see only their own accounts' events.
    let mine = create_account(
        &app,
        &member,
        json!({"protocol": "smtp", "auth": "password", "login": "a@example.com",
        "password": "app-password-1", "host": "smtp.example.com", "enabled": false}),
    )
    .await;
    let theirs = create_account(&app, &other_admin, TestApp::smtp_account("b@example.com")).await;
    // The credential on the upgrade request this time, as browsers cannot but servers can send it.
    let bearer = format!("Bearer {member}");
    let mut ws = ws_connected(&app, &[("Authorization", &bearer)], json!({})).await;
    subscribe(
        &app,
        &mut ws,
        &tenant,
        "feed",
        r#"subscription { events(types: ["account.disabled"]) { id eventType resourceType resourceId data } }"#,
        json!({}),
    )
    .await;

    // Another tenant's change comes first, then one of ours of another type, then the one asked for.
    set_enabled(&app, &other_admin, &theirs, false).await;
    set_enabled(&app, &admin, &mine, true).await;
    set_enabled(&app, &admin, &mine, false).await;
    let message = tokio::time::timeout(Duration::from_secs(5), ws_next(&mut ws)).await.expect("an event arrives");
    let message = message.expect("the connection stays open");
    // Notifications arrive in commit order: had the other tenant's or the draft event been sent, it would be first.
    let event = &message["payload"]["data"]["events"];
    assert_eq!(message["id"], "feed", "{message}");
    assert_eq!(
        (&event["eventType"], &event["resourceType"], &event["resourceId"], &event["data"]["state"]),
        (&json!("account.disabled"), &json!("account"), &json!(mine), &json!("disabled")),
        "{message}"
    );
    let listed = list_all(&app, &admin, &format!("types=account.disabled&resource_id={mine}")).await;
    assert_eq!(event["id"], listed[0]["id"], "the same event as the list");
}

#[tokio::test]
async fn a_connection_without_a_valid_credential_is_closed_at_connection_init() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let (revoked_id, revoked) = app.api_key_with_id(&admin, None, "viewer").await;
    assert!(app.delete(&format!("/v1/api-keys/{revoked_id}"), &admin).await.status.is_success());
    for init in [
        json!({}),
        json!({"authorization": "Bearer pbk_not_a_real_key"}),
        json!({"Authorization": "Bearer not-a-jwt"}),
        json!({"authorization": format!("Bearer {revoked}")}),
    ] {
        let mut ws = ws_open(&app, &[]).await;
        ws_send(&mut ws, json!({"type": "connection_init", "payload": init})).await;
        let answer = tokio::time::timeout(Duration::from_secs(10), ws_next(&mut ws)).await.expect("an answer");
        let reason = answer.expect_err("no connection_ack: the connection is closed");
        assert!(reason.starts_with("1002"), "{init}: {reason}");
    }
    // A subscription before connection_init is refused too.
    let mut ws = ws_open(&app, &[]).await;
    ws_send(&mut ws, json!({"id": "1", "type": "subscribe", "payload": {"query": "subscription { events { id } }"}})).await;
    assert!(tokio::time::timeout(Duration::from_secs(10), ws_next(&mut ws)).await.expect("an answer").is_err());

    // An operator connects, but must name the tenant a subscription is about.
    let operator = app.operator_token();
    let mut ws = ws_connected(&app, &[], json!({"authorization": format!("Bearer {operator}")})).await;
    ws_send(&mut ws, json!({"id": "1", "type": "subscribe", "payload": {"query": "subscription { events { id } }"}})).await;
    let refused = tokio::time::timeout(Duration::from_secs(10), ws_next(&mut ws)).await.expect("an answer").expect("open");
    assert_eq!(refused["type"], "next", "{refused}");
    assert_eq!(refused["payload"]["errors"][0]["extensions"]["code"], "tenant_required", "{refused}");
    let mut ws =
        ws_connected(&app, &[], json!({"authorization": format!("Bearer {operator}"), "X-Postbridge-Tenant": tenant})).await;
    subscribe(&app, &mut ws, &tenant, "1", "subscription { events { eventType resourceId } }", json!({})).await;
    let account = create_account(&app, &admin, TestApp::smtp_account("ops@example.com")).await;
    set_enabled(&app, &admin, &account, false).await;
    let message = tokio::time::timeout(Duration::from_secs(5), ws_next(&mut ws)).await.expect("an event").expect("open");
    assert_eq!(message["payload"]["data"]["events"], json!({"eventType": "account.disabled", "resourceId": account}));
}

/// The pid of the API's `LISTEN` session on this test's database (other than `not`), once there is one: the hub
/// (re)connects in the background.
async fn listener_backend(app: &TestApp, not: i64) -> i64 {
    let sql = format!(
        "SELECT coalesce(max(pid), 0)::bigint FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN %' AND pid <> {not}"
    );
    // Other sessions' queries are visible to the owner, not to the app's role.
    let owner = app.owner_db().await;
    for _ in 0..300 {
        let row = owner.query_one_raw(sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, sql.clone())).await;
        let pid = row.expect("query").and_then(|r| r.try_get_by_index::<i64>(0).ok()).unwrap_or(0);
        if pid != 0 {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the API never listened for events");
}

#[tokio::test]
async fn live_updates_resume_after_the_listeners_database_connection_is_killed() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let account = create_account(&app, &admin, TestApp::smtp_account("resilient@example.com")).await;
    let first = listener_backend(&app, 0).await;
    // Only a superuser (or the backend's own role) may terminate it; the app's role is neither.
    let owner = app.owner_db().await;
    owner.execute_unprepared(&format!("SELECT pg_terminate_backend({first})")).await.expect("terminate the listener");
    let second = listener_backend(&app, first).await;
    assert_ne!(second, first);

    let mut ws = ws_connected(&app, &[], json!({"Authorization": format!("Bearer {admin}")})).await;
    subscribe(&app, &mut ws, &tenant, "status", "subscription { accountStatusChanged { id state } }", json!({})).await;
    set_enabled(&app, &admin, &account, false).await;
    let message = tokio::time::timeout(Duration::from_secs(5), ws_next(&mut ws)).await.expect("an update").expect("open");
    assert_eq!(message["payload"]["data"]["accountStatusChanged"], json!({"id": account, "state": "DISABLED"}), "{message}");
}

#[tokio::test]
async fn a_nul_character_in_a_query_or_a_body_is_bad_input_not_an_internal_error() {
    let app = postbridge_tests::spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    for path in ["/v1/events?resource_type=%00", "/v1/audit-log?actor=%00", "/v1/audit-log?resource_type=a%00b"] {
        let reply = app.get(path, &key).await;
        postbridge_tests::assert_error(&reply, reqwest::StatusCode::UNPROCESSABLE_ENTITY, "invalid_characters");
    }
    let graphql = app.graphql(Some(&key), r#"{ auditLog(actor: "\u0000") { items { id } } }"#, serde_json::json!({})).await;
    assert_eq!(postbridge_tests::graphql_error_code(&graphql), "invalid_characters", "{graphql}");
    let before = app.get("/v1/accounts", &key).await.body["items"].as_array().map_or(0, Vec::len);
    let body = serde_json::json!({"protocol": "smtp", "auth": "password", "login": "nul@example.com", "password": "p",
                                  "host": "smtp.example.com", "name": "a\u{0}b"});
    let reply = app.post("/v1/accounts", &key, body).await;
    postbridge_tests::assert_error(&reply, reqwest::StatusCode::UNPROCESSABLE_ENTITY, "invalid_characters");
    let after = app.get("/v1/accounts", &key).await.body["items"].as_array().map_or(0, Vec::len);
    assert_eq!(before, after, "nothing was written");
}

#[tokio::test]
async fn events_are_announced_only_for_tenants_someone_watches_live_and_only_while_the_watch_holds() {
    use postbridge_core::observe::live_watchers;
    use postbridge_core::store::listen::{Listener, Notice};
    let app = spawn_app().await;
    let (tenant, _) = app.tenant_with_admin().await;
    let tenant_id = tenant.parse().expect("a tenant id");
    let mut listener = Listener::new(app.ctx.settings.database_url.clone(), "postbridge_events", "the test's listener");
    assert!(matches!(listener.next().await, Notice::Connected));
    let record = async |what: &str| {
        events::record(&app.ctx.db, tenant_id, events::MESSAGE_SENT, "outbound_message", None, json!({"what": what}))
            .await
            .expect("event recorded")
    };
    let heard = async |listener: &mut Listener| match tokio::time::timeout(Duration::from_millis(500), listener.next()).await {
        Ok(Notice::Payload(payload)) => Some(payload),
        Ok(other) => panic!("the test's listener: {other:?}"),
        Err(_) => None,
    };

    record("unwatched").await;
    assert_eq!(heard(&mut listener).await, None, "nobody watches the tenant: no notice");

    let instance = Uuid::now_v7();
    live_watchers::watch(&app.ctx.db, instance, &[tenant_id], 60).await.expect("watch");
    record("watched").await;
    let payload = heard(&mut listener).await.expect("a notice for a watched tenant");
    assert!(payload.starts_with(&tenant) && payload.ends_with(" message.sent"), "{payload}");

    // The process's last subscriber left: its next renewal ends the watch.
    live_watchers::renew(&app.ctx.db, instance, &[], 60).await.expect("renew");
    record("left").await;
    assert_eq!(heard(&mut listener).await, None, "the watch ended: no notice");

    // A watch its process stopped renewing (it died) expires on its own.
    app.sql_exec(&format!(
        "INSERT INTO event_watchers (tenant_id, instance_id, expires_at) VALUES ('{tenant}', '{}', now() - interval '1 second')",
        Uuid::now_v7()
    ))
    .await;
    record("expired").await;
    assert_eq!(heard(&mut listener).await, None, "an expired watch: no notice");
}
