//! The queue's guarantees, with the real worker loop: Postgres is the source of truth, so jobs lost in
//! Redis are dispatched again, and a job that runs twice does its work once.

use std::time::Duration;

use postbridge_core::service::delivery::{self, Delivery};
use postbridge_tests::mailflow::{new_login, password_account, spawn_mail_app, MAIL_PASSWORD};
use serde_json::json;
use uuid::Uuid;

/// Deletes every Redis key of this test's prefix: a flush that cannot touch the other tests' queues.
async fn flush_test_queues(app: &postbridge_tests::TestApp) -> usize {
    let prefix = app.ctx.settings.redis_prefix.clone();
    let mut conn = app.ctx.redis.get_multiplexed_async_connection().await.expect("redis");
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await.expect("keys");
    for key in &keys {
        let _: i64 = redis::cmd("DEL").arg(key).query_async(&mut conn).await.expect("del");
    }
    keys.len()
}

#[tokio::test]
async fn messages_queued_when_redis_loses_its_jobs_are_still_all_sent_exactly_once() {
    let (app, servers) = spawn_mail_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    app.confirmed_mail_account(&key, password_account(servers, "smtp", "starttls", &login, json!({"from_filter": login}))).await;
    let rcpt = format!("flush-{}@example.org", Uuid::new_v4().simple());
    for i in 0..10 {
        let reply = app
            .post("/v1/messages", &key, json!({"from": login, "to": [rcpt], "subject": format!("m{i}"), "text": "hello"}))
            .await;
        assert_eq!(reply.status.as_u16(), 202, "{}", reply.text);
    }

    // The scheduler dispatches everything into Redis, then Redis loses it all.
    let conn = apalis_redis::connect(app.ctx.settings.redis_url.as_str()).await.expect("redis");
    let prefix = app.ctx.settings.redis_prefix.clone();
    let mut polls = postbridge_worker::queue::storage(conn.clone(), &prefix, "poll");
    let mut sends = postbridge_worker::queue::storage(conn, &prefix, "send");
    postbridge_worker::dispatch_due(&app.ctx, &mut polls, &mut sends).await.expect("dispatch");
    assert!(flush_test_queues(&app).await > 0, "jobs were in Redis");
    let dispatched = app.sql_i64("SELECT count(*) FROM outbound_messages WHERE dispatched_until > now()").await;
    assert_eq!(dispatched, 10, "all ten were dispatched before the flush");

    // Once the dispatch grace has passed the rows are due again; the worker sends them all, once each.
    app.sql_exec("UPDATE outbound_messages SET dispatched_until = now() - interval '1 second'").await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(postbridge_worker::run(app.ctx.clone(), stop_rx));
    let arrived = servers.wait_for_messages_to(&rcpt, 10, Duration::from_secs(60)).await;
    let _ = stop_tx.send(true);
    worker.await.expect("worker task").expect("worker stops cleanly");
    assert_eq!(arrived.len(), 10);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(servers.accepted_messages_to(&rcpt).len(), 10, "no message was sent twice");
    assert_eq!(app.sql_i64("SELECT count(*) FROM outbound_messages WHERE status = 'sent'").await, 10);
}

#[tokio::test]
async fn a_message_delivered_by_two_jobs_at_once_is_sent_once() {
    let (app, servers) = spawn_mail_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    app.confirmed_mail_account(&key, password_account(servers, "smtp", "starttls", &login, json!({"from_filter": login}))).await;
    let rcpt = format!("twice-{}@example.org", Uuid::new_v4().simple());
    let reply = app.post("/v1/messages", &key, json!({"from": login, "to": [rcpt], "subject": "once", "text": "hello"})).await;
    let id = Uuid::parse_str(&reply.id()).expect("id");

    let (first, second) = tokio::join!(delivery::deliver(&app.ctx, id), delivery::deliver(&app.ctx, id));
    let mut outcomes = [first.expect("first"), second.expect("second")];
    outcomes.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(outcomes, [Delivery::Sent, Delivery::Skipped]);
    assert_eq!(delivery::deliver(&app.ctx, id).await.expect("third"), Delivery::Skipped, "a sent message is never sent again");
    servers.wait_for_messages_to(&rcpt, 1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(servers.accepted_messages_to(&rcpt).len(), 1);
    let status = app.get(&format!("/v1/messages/{id}"), &key).await;
    assert_eq!(status.body["status"], json!("sent"));
    assert_eq!(status.body["attempts"], json!(1));
    assert!(status.body["smtp_reply"].as_str().is_some_and(|r| r.starts_with("250")), "{}", status.text);
}

#[tokio::test]
async fn a_retry_is_not_sent_before_its_backoff_ends_even_if_dispatched_again() {
    let (app, servers) = spawn_mail_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    app.confirmed_mail_account(&key, password_account(servers, "smtp", "starttls", &login, json!({"from_filter": login}))).await;
    let reply = app
        .post("/v1/messages", &key, json!({"from": login, "to": [format!("tempfail+{}@example.org", Uuid::new_v4().simple())], "subject": "later", "text": "hi"}))
        .await;
    let id = Uuid::parse_str(&reply.id()).expect("id");
    assert_eq!(delivery::deliver(&app.ctx, id).await.expect("first attempt"), Delivery::Retry);
    assert_eq!(delivery::deliver(&app.ctx, id).await.expect("early job"), Delivery::Skipped, "the backoff holds");
    let attempts = app.sql_i64(&format!("SELECT attempts::bigint FROM outbound_messages WHERE id = '{id}'")).await;
    assert_eq!(attempts, 1);
    let claimed = postbridge_core::service::scheduler::claim_due_sends(&app.ctx, 10).await.expect("claim");
    assert!(!claimed.contains(&id), "a message in backoff is not dispatched");
}

#[tokio::test]
async fn an_account_sends_no_faster_than_its_pace_and_the_rest_waits_without_an_attempt() {
    let mut env = postbridge_tests::TestEnv::new();
    env.set("SEND_RATE_PER_MINUTE", "2");
    let (app, servers) = postbridge_tests::mailflow::spawn_mail_app_with(env).await;
    let (_, key) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    app.confirmed_mail_account(&key, password_account(servers, "smtp", "starttls", &login, json!({"from_filter": login}))).await;
    let rcpt = format!("paced-{}@example.org", Uuid::new_v4().simple());
    let mut ids = Vec::new();
    for i in 0..3 {
        let reply =
            app.post("/v1/messages", &key, json!({"from": login, "to": [rcpt], "subject": format!("p{i}"), "text": "hi"})).await;
        ids.push(Uuid::parse_str(&reply.id()).expect("id"));
    }
    assert_eq!(delivery::deliver(&app.ctx, ids[0]).await.expect("first"), Delivery::Sent);
    assert_eq!(delivery::deliver(&app.ctx, ids[1]).await.expect("second"), Delivery::Sent);
    assert_eq!(delivery::deliver(&app.ctx, ids[2]).await.expect("third"), Delivery::Paced);
    let third = app.get(&format!("/v1/messages/{}", ids[2]), &key).await;
    assert_eq!((third.body["status"].clone(), third.body["attempts"].clone()), (json!("queued"), json!(0)));
    let wait = app
        .sql_i64(&format!(
            "SELECT EXTRACT(EPOCH FROM next_attempt_at - now())::bigint FROM outbound_messages WHERE id = '{}'",
            ids[2]
        ))
        .await;
    assert!((30..=62).contains(&wait), "waits for the minute to pass: {wait}s");
    assert_eq!(servers.wait_for_messages_to(&rcpt, 2, Duration::from_secs(10)).await.len(), 2);
}
