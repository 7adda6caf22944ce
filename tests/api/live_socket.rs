//! The WebSocket at `GET /graphql` treats its clients as untrusted: a message is bounded like a request body even
//! before `connection_init`, and every operation on an open connection is a request of its own (authenticated
//! again, rate-limited, and at most `MAX_OPERATIONS` at once).

use std::collections::BTreeSet;
use std::time::Duration;

use futures::SinkExt;
use postbridge_api::graphql::socket::MAX_OPERATIONS;
use postbridge_tests::{spawn_app, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

use crate::events::{ws_connected, ws_next, ws_open, ws_send, Ws};

const QUERY: &str = "{ events(limit: 1) { nextCursor } }";

/// The answer to query `id` (its `next` message; the `complete` after it is read too).
async fn answer(ws: &mut Ws, id: &str) -> Value {
    ws_send(ws, json!({"id": id, "type": "subscribe", "payload": {"query": QUERY}})).await;
    let next = tokio::time::timeout(Duration::from_secs(10), ws_next(ws)).await.expect("an answer").expect("open");
    assert_eq!((next["id"].clone(), next["type"].clone()), (json!(id), json!("next")), "{next}");
    let complete = tokio::time::timeout(Duration::from_secs(10), ws_next(ws)).await.expect("complete").expect("open");
    assert_eq!(complete, json!({"id": id, "type": "complete"}));
    next
}

fn error_code(answer: &Value) -> Option<&str> {
    answer["payload"]["errors"][0]["extensions"]["code"].as_str()
}

async fn connected_with(app: &TestApp, key: &str) -> Ws {
    ws_connected(app, &[], json!({"authorization": format!("Bearer {key}")})).await
}

#[tokio::test]
async fn a_message_without_end_closes_the_connection_before_anyone_authenticated() {
    let app = spawn_app().await;
    let mut ws = ws_open(&app, &[]).await;
    // One text message, never finished: 64 KiB continuations up to four times the request bound (1 MiB).
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0usize;
    let mut frame = Frame::message(b"{".to_vec(), OpCode::Data(Data::Text), false);
    while sent < 4 * 1024 * 1024 {
        if ws.send(Message::Frame(frame)).await.is_err() {
            break;
        }
        sent += chunk.len();
        frame = Frame::message(chunk.clone(), OpCode::Data(Data::Continue), false);
    }
    let closed = tokio::time::timeout(Duration::from_secs(10), ws_next(&mut ws)).await.expect("the server answers");
    assert!(closed.is_err(), "the connection is closed, not buffered without end: {closed:?}");
    // The server is none the worse for it.
    let (_, key) = app.tenant_with_admin().await;
    let mut ws = connected_with(&app, &key).await;
    assert_eq!(error_code(&answer(&mut ws, "1").await), None);
}

#[tokio::test]
async fn a_key_revoked_while_its_connection_is_open_runs_nothing_more_on_it() {
    let app = spawn_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let (key_id, key) = app.api_key_with_id(&admin, None, "viewer").await;
    let mut ws = connected_with(&app, &key).await;
    assert_eq!(error_code(&answer(&mut ws, "before").await), None, "the key works");

    assert!(app.delete(&format!("/v1/api-keys/{key_id}"), &admin).await.status.is_success());
    let after = answer(&mut ws, "after").await;
    assert_eq!(error_code(&after), Some("unauthenticated"), "{after}");
    assert!(after["payload"]["data"].is_null(), "nothing ran: {after}");
}

#[tokio::test]
async fn a_connection_runs_a_bounded_number_of_operations_and_each_costs_the_tenant_a_request() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let mut ws = connected_with(&app, &key).await;
    // More subscriptions than a connection runs at once: the extra ones are refused, the others run.
    let opened = MAX_OPERATIONS + 5;
    for n in 0..opened {
        let subscribe =
            json!({"id": format!("s{n}"), "type": "subscribe", "payload": {"query": "subscription { events { id } }"}});
        ws_send(&mut ws, subscribe).await;
    }
    let (mut refused, mut completed) = (BTreeSet::new(), BTreeSet::new());
    while completed.len() < opened - MAX_OPERATIONS {
        let message = tokio::time::timeout(Duration::from_secs(10), ws_next(&mut ws)).await.expect("refusals").expect("open");
        let id = message["id"].as_str().unwrap_or_default().to_owned();
        match message["type"].as_str() {
            Some("next") => {
                assert_eq!(error_code(&message), Some("too_many_operations"), "{message}");
                refused.insert(id);
            }
            Some("complete") => assert!(refused.contains(&id) && completed.insert(id), "{message}"),
            _ => panic!("unexpected: {message}"),
        }
    }
    assert_eq!(refused.len(), opened - MAX_OPERATIONS);
    // With every place taken, a query waits for none: it is refused too.
    let full = answer(&mut ws, "full").await;
    assert_eq!(error_code(&full), Some("too_many_operations"), "{full}");
    // A stopped subscription gives its place back.
    let running = (0..opened).map(|n| format!("s{n}")).find(|id| !refused.contains(id)).expect("a running one");
    ws_send(&mut ws, json!({"id": running, "type": "complete"})).await;
    let stopped = tokio::time::timeout(Duration::from_secs(10), ws_next(&mut ws)).await.expect("stopped").expect("open");
    assert_eq!(stopped, json!({"id": running, "type": "complete"}));
    let freed = answer(&mut ws, "freed").await;
    assert!(freed["payload"]["data"]["events"].is_object(), "{freed}");

    // Each operation on the socket is a request against the tenant's limit, as over HTTP.
    let (tenant, limited) = app.tenant_with_admin().await;
    let reply = app.patch(&format!("/v1/tenants/{tenant}"), &app.operator_token(), json!({"api_rate_limit_per_minute": 5})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let mut ws = connected_with(&app, &limited).await;
    let mut answered = 0;
    let limited_at = loop {
        let reply = answer(&mut ws, &format!("q{answered}")).await;
        match error_code(&reply) {
            None => answered += 1,
            Some(code) => break code.to_owned(),
        }
        assert!(answered <= 5, "past the tenant's 5 a minute");
    };
    assert_eq!(limited_at, "rate_limited");
}
