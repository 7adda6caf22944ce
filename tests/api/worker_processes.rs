//! What operators do to workers, with real processes: the worker binary (one, two or three of them), a private
//! `redis-server` that is flushed or stopped, SIGKILL and SIGTERM. Every message is counted at the SMTP server:
//! nothing may be lost, nothing sent twice, and nothing stays broken once the fault ends.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use postbridge_tests::mail::MailServers;
use postbridge_tests::mailflow::{new_login, password_account, spawn_mail_app_with, MAIL_PASSWORD};
use postbridge_tests::processes::{PrivatePostgres, PrivateRedis, WorkerProcess};
use postbridge_tests::{wait_until, TestApp, TestEnv};
use serde_json::{json, Value};
use uuid::Uuid;

const WORKER: &str = env!("CARGO_BIN_EXE_postbridge-test-worker");

/// An app whose API and workers use a private Redis (and whatever else `env` says), and a tenant admin key.
async fn app_on(mut env: TestEnv, redis: &PrivateRedis) -> (TestApp, &'static MailServers, String) {
    env.set("REDIS_URL", redis.url());
    env.set("DATABASE_MAX_CONNECTIONS", "10");
    let (app, servers) = spawn_mail_app_with(env).await;
    let (_, key) = app.tenant_with_admin().await;
    (app, servers, key)
}

/// A confirmed SMTP account; returns its login (the From address).
async fn sender(app: &TestApp, servers: &MailServers, key: &str) -> String {
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    app.confirmed_mail_account(key, password_account(servers, "smtp", "starttls", &login, json!({"from_filter": login}))).await;
    login
}

/// Submits `count` messages over the API, eight at a time, as a careful client does: a 503 (no database connection
/// on a loaded machine) is sent again after its `Retry-After` with the same idempotency key. Returns their subjects.
async fn submit_batch(app: &TestApp, key: &str, from: &str, rcpt: &str, count: usize) -> Vec<String> {
    let subjects: Vec<String> = (0..count).map(|i| format!("batch {i} {}", Uuid::new_v4().simple())).collect();
    futures::stream::iter(subjects.clone())
        .map(|subject| async move {
            let body = json!({"from": from, "to": [rcpt], "subject": subject, "text": "hi", "idempotency_key": subject});
            let mut reply = app.post("/v1/messages", key, body.clone()).await;
            for _ in 0..10 {
                if reply.status.as_u16() != 503 {
                    break;
                }
                assert_eq!(reply.code(), "unavailable", "{}", reply.text);
                tokio::time::sleep(Duration::from_secs(1)).await;
                reply = app.post("/v1/messages", key, body.clone()).await;
            }
            assert_eq!(reply.status.as_u16(), 202, "{}", reply.text);
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    subjects
}

/// How many times the SMTP server accepted each subject for `rcpt`.
fn accepted_subjects(servers: &MailServers, rcpt: &str) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for message in servers.accepted_messages_to(rcpt) {
        let text = String::from_utf8_lossy(&message.raw);
        if let Some(subject) = text.lines().find_map(|l| l.strip_prefix("Subject: ")) {
            *seen.entry(subject.trim().to_owned()).or_insert(0) += 1;
        }
    }
    seen
}

/// Every subject accepted exactly once, and every message `sent` in Postgres.
async fn assert_all_sent_once(app: &TestApp, servers: &MailServers, rcpt: &str, subjects: &[String]) {
    // The server stores a `slow+` message 200 ms before it answers 250, and a loaded machine may take a while
    // longer to record the answer: the outbox settles first (a message cut off would end `unknown`, not `sent`).
    let seen = settled_none_twice(app, servers, rcpt).await;
    let missing: Vec<_> = subjects.iter().filter(|s| !seen.contains_key(*s)).collect();
    assert!(missing.is_empty(), "{} never reached the server, e.g. {:?}", missing.len(), missing.first());
    let sent = app.sql_i64("SELECT count(*) FROM outbound_messages WHERE status = 'sent'").await;
    let statuses = app
        .sql_text("SELECT string_agg(status || ': ' || n, ', ') FROM (SELECT status, count(*) AS n FROM outbound_messages GROUP BY status) s")
        .await;
    assert_eq!(sent, subjects.len() as i64, "every message is sent in Postgres too ({statuses:?})");
}

/// A worker process caught in the middle of sending a batch: the first `first` of `count` messages have reached
/// the server. The app and the worker use a private Redis; `env` may point them at other servers too.
struct Batch {
    app: TestApp,
    key: String,
    servers: &'static MailServers,
    worker: WorkerProcess,
    rcpt: String,
    subjects: Vec<String>,
}

async fn batch_in_flight(env: TestEnv, redis: &PrivateRedis, tag: &str, count: usize, first: usize) -> Batch {
    let (app, servers, key) = app_on(env, redis).await;
    let from = sender(&app, servers, &key).await;
    let worker = WorkerProcess::spawn(WORKER, &app.env, &[("SEND_CONCURRENCY", "4")]);
    worker.wait_ready(Duration::from_secs(30)).await;
    let rcpt = format!("slow+{tag}-{}@example.org", Uuid::new_v4().simple());
    let subjects = submit_batch(&app, &key, &from, &rcpt, count).await;
    wait_until(&format!("the first {first} messages arrive"), Duration::from_secs(60), async || {
        servers.accepted_messages_to(&rcpt).len() >= first
    })
    .await;
    Batch { app, key, servers, worker, rcpt, subjects }
}

/// Waits until the server accepted `count` messages for `rcpt`; on timeout the panic shows where the others are.
async fn all_arrive(app: &TestApp, servers: &MailServers, rcpt: &str, count: usize) {
    all_arrive_within(app, servers, rcpt, count, Duration::from_secs(120)).await;
}

async fn all_arrive_within(app: &TestApp, servers: &MailServers, rcpt: &str, count: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while accepted_subjects(servers, rcpt).len() < count {
        if Instant::now() >= deadline {
            let unsent = app
                .sql_text(
                    "SELECT string_agg(format('%s x%s (attempts %s, claim ends in %ss, due in %ss): %s', status, n, attempts, \
                     claim, due, err), '; ') FROM (SELECT status, attempts, count(*) AS n, left(last_error, 160) AS err, \
                     round(extract(epoch FROM dispatched_until - now())) AS claim, \
                     round(extract(epoch FROM next_attempt_at - now())) AS due FROM outbound_messages \
                     WHERE status <> 'sent' GROUP BY 1, 2, 4, 5, 6) s",
                )
                .await;
            panic!("all {count} messages arrive: not within {within:?}; not sent: {unsent:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until no message is queued or being sent (cut deliveries settle when their leases end), then checks that
/// the server accepted none twice; what it accepted, by subject.
async fn settled_none_twice(app: &TestApp, servers: &MailServers, rcpt: &str) -> HashMap<String, usize> {
    wait_until("every message is settled", Duration::from_secs(120), async || {
        app.sql_i64("SELECT count(*) FROM outbound_messages WHERE status IN ('queued', 'sending')").await == 0
    })
    .await;
    // A duplicate would arrive after the last first copy: give it time to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = accepted_subjects(servers, rcpt);
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    seen
}

#[tokio::test]
async fn a_flushall_in_the_middle_of_500_sends_loses_nothing_and_sends_nothing_twice() {
    let redis = PrivateRedis::start().await;
    let Batch { app, servers, worker, rcpt, subjects, .. } = batch_in_flight(TestEnv::new(), &redis, "flush", 500, 50).await;
    redis.flush_all().await;
    let at_flush = servers.accepted_messages_to(&rcpt).len();
    assert!(at_flush < 500, "the flush came in the middle of the batch ({at_flush} sent)");

    // The consumers die on the flush and come back by themselves.
    let flushed = Instant::now();
    wait_until("the worker is ready again after the flush", Duration::from_secs(15), async || {
        matches!(worker.readyz().await, Some((200, _)))
    })
    .await;
    let back_after = flushed.elapsed();
    all_arrive(&app, servers, &rcpt, 500).await;
    assert_all_sent_once(&app, servers, &rcpt, &subjects).await;
    assert!(back_after < Duration::from_secs(15), "consumers came back after {back_after:?}");
    assert_eq!(worker.metric("postbridge_worker_consumers{queue=\"send\"}").await, 1.0);
}

#[tokio::test]
async fn a_send_consumer_that_loses_its_registration_mid_batch_comes_back_and_loses_nothing() {
    let redis = PrivateRedis::start().await;
    let Batch { app, servers, worker, rcpt, subjects, .. } = batch_in_flight(TestEnv::new(), &redis, "ended", 200, 20).await;
    // The send consumer's registration is gone while Redis keeps every job (a failover to a replica that had not
    // seen it): its next fetch or heartbeat fails, it ends, and it is started again under a new name.
    let queue = format!("{}:send", app.ctx.settings.redis_prefix);
    assert_eq!(redis.unregister_consumers(&queue).await, 1, "one send consumer was registered");
    wait_until("the send consumer is registered again", Duration::from_secs(15), async || {
        redis.registered_consumers(&queue).await == 1
    })
    .await;
    // Well inside the 120 s dispatch grace (a lost job would wait it out): a minute for about ten seconds of sending.
    all_arrive_within(&app, servers, &rcpt, 200, Duration::from_secs(60)).await;
    assert_all_sent_once(&app, servers, &rcpt, &subjects).await;
    assert_eq!(worker.metric("postbridge_worker_consumers{queue=\"send\"}").await, 1.0);
}

#[tokio::test]
async fn redis_stopped_for_20_seconds_and_started_empty_loses_nothing_and_the_worker_says_so_meanwhile() {
    let mut redis = PrivateRedis::start().await;
    let Batch { app, servers, worker, rcpt, subjects, .. } = batch_in_flight(TestEnv::new(), &redis, "outage", 300, 30).await;

    redis.stop();
    let stopped = Instant::now();
    assert!(servers.accepted_messages_to(&rcpt).len() < 300, "the outage came in the middle of the batch");
    // Not ready while Redis is away, with the reason; the process stays up and answers.
    wait_until(
        "/readyz says 503",
        Duration::from_secs(10),
        async || matches!(worker.readyz().await, Some((503, body)) if body.contains("redis")),
    )
    .await;
    // The heartbeat row tells operators too, and the overview warns that sends are due with no consumer.
    let operator = app.operator_token();
    wait_until("the ops views show the outage", Duration::from_secs(15), async || {
        let workers = app.get("/v1/ops/workers", &operator).await;
        let overview = app.get("/v1/ops/overview", &operator).await;
        let not_ready = workers.body.as_array().is_some_and(|list| {
            list.iter().any(|w| w["pid"] == json!(worker.pid()) && w["status"] == "live" && w["ready"] == false)
        });
        let warned = overview.body["queue_warnings"]
            .as_array()
            .is_some_and(|warnings| warnings.iter().any(|w| w["queue"] == "send" && w["due"].as_i64() > Some(0)));
        not_ready && warned
    })
    .await;
    let wait = Duration::from_secs(20).saturating_sub(stopped.elapsed());
    tokio::time::sleep(wait).await;
    redis.start_again().await;

    wait_until("the worker is ready again", Duration::from_secs(20), async || matches!(worker.readyz().await, Some((200, _))))
        .await;
    all_arrive(&app, servers, &rcpt, 300).await;
    assert_all_sent_once(&app, servers, &rcpt, &subjects).await;
    let workers = app.get("/v1/ops/workers", &operator).await;
    let row = workers.body.as_array().and_then(|l| l.iter().find(|w| w["pid"] == json!(worker.pid())).cloned());
    let row = row.unwrap_or(Value::Null);
    assert_eq!(row["status"], "live", "{row}");
    let consumers = row["consumers"].as_array().cloned().unwrap_or_default();
    assert!(consumers.iter().any(|c| c["queue"] == "send" && c["live"] == 1), "{row}");
}

#[tokio::test]
async fn two_and_three_worker_processes_share_one_outbox_and_send_each_message_once() {
    for processes in [2usize, 3] {
        let redis = PrivateRedis::start().await;
        let (app, servers, key) = app_on(TestEnv::new(), &redis).await;
        let from = sender(&app, servers, &key).await;
        let workers: Vec<WorkerProcess> =
            (0..processes).map(|_| WorkerProcess::spawn(WORKER, &app.env, &[("SEND_CONCURRENCY", "2")])).collect();
        for worker in &workers {
            worker.wait_ready(Duration::from_secs(30)).await;
        }
        let rcpt = format!("slow+share-{}@example.org", Uuid::new_v4().simple());
        let subjects = submit_batch(&app, &key, &from, &rcpt, 120).await;
        all_arrive(&app, servers, &rcpt, 120).await;
        assert_all_sent_once(&app, servers, &rcpt, &subjects).await;
        let mut shares = Vec::new();
        for worker in &workers {
            shares.push(worker.metric("postbridge_messages_total{outcome=\"sent\"}").await as i64);
        }
        assert!(shares.iter().all(|n| *n > 0), "{processes} processes: every one sent part of the batch: {shares:?}");
        assert_eq!(shares.iter().sum::<i64>(), 120, "{processes} processes: {shares:?}");
        let listed = app.get("/v1/ops/workers", &app.operator_token()).await;
        let live = listed.body.as_array().map(|l| l.iter().filter(|w| w["status"] == "live").count()).unwrap_or(0);
        assert_eq!(live, processes, "{}", listed.text);
    }
}

#[tokio::test]
async fn a_worker_killed_mid_batch_and_restarted_at_once_loses_nothing_and_resends_nothing() {
    let redis = PrivateRedis::start().await;
    let Batch { app, servers, worker: mut first, rcpt, .. } = batch_in_flight(TestEnv::new(), &redis, "kill", 200, 20).await;
    let killed_pid = first.pid();
    first.kill_9();
    let in_flight = app.sql_i64("SELECT count(*) FROM outbound_messages WHERE status = 'sending'").await;
    assert!(servers.accepted_messages_to(&rcpt).len() < 200, "killed in the middle of the batch");

    // A restart right after the kill works at once (its consumers have names of their own).
    let second = WorkerProcess::spawn(WORKER, &app.env, &[("SEND_CONCURRENCY", "4")]);
    second.wait_ready(Duration::from_secs(15)).await;
    // Messages the killed worker held come back when their 30 s lease ends: queued again if they never reached
    // the server, `unknown` if they did.
    let seen = settled_none_twice(&app, servers, &rcpt).await;
    let rows = app.ctx.db.clone();
    let statuses = sea_orm::ConnectionTrait::query_all_raw(
        &rows,
        sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, "SELECT subject, status FROM outbound_messages".to_owned()),
    )
    .await
    .expect("rows");
    let mut unknown = 0;
    for row in statuses {
        let subject: String = row.try_get("", "subject").expect("subject");
        let status: String = row.try_get("", "status").expect("status");
        match status.as_str() {
            "sent" => assert_eq!(seen.get(&subject), Some(&1), "a sent message reached the server once: {subject}"),
            // Cut after its content went out: the server may or may not have it, and it is not resent blindly.
            "unknown" => {
                assert!(seen.get(&subject).is_none_or(|n| *n == 1), "{subject}");
                unknown += 1;
            }
            other => panic!("{subject} ended {other}"),
        }
    }
    assert!(unknown as i64 <= in_flight, "only messages in flight at the kill can be unknown ({unknown} > {in_flight})");
    let sent = app.sql_i64("SELECT count(*) FROM outbound_messages WHERE status = 'sent'").await;
    assert_eq!(sent + unknown as i64, 200);

    // The killed process shows as dead (no clean stop), the new one as live.
    let operator = app.operator_token();
    wait_until("the killed worker is listed as dead", Duration::from_secs(40), async || {
        let listed = app.get("/v1/ops/workers", &operator).await;
        listed.body.as_array().is_some_and(|l| l.iter().any(|w| w["pid"] == json!(killed_pid) && w["status"] == "dead"))
    })
    .await;
}

#[tokio::test]
async fn sigterm_lets_jobs_in_flight_finish_and_marks_the_worker_stopped() {
    let redis = PrivateRedis::start().await;
    let Batch { app, servers, mut worker, rcpt, subjects, .. } = batch_in_flight(TestEnv::new(), &redis, "term", 100, 10).await;
    let pid = worker.pid();
    let status = worker.terminate(Duration::from_secs(40)).await.expect("the worker exits within its grace");
    assert!(status.success(), "{status:?}");
    // Nothing is left half-done: no message is held by the stopped process, none is unknown.
    assert_eq!(app.sql_i64("SELECT count(*) FROM outbound_messages WHERE status IN ('sending', 'unknown')").await, 0);
    let listed = app.get("/v1/ops/workers", &app.operator_token()).await;
    assert!(
        listed.body.as_array().is_some_and(|l| l.iter().any(|w| w["pid"] == json!(pid) && w["status"] == "stopped")),
        "{}",
        listed.text
    );
    // Another worker finishes the batch, once each.
    let next = WorkerProcess::spawn(WORKER, &app.env, &[]);
    next.wait_ready(Duration::from_secs(30)).await;
    all_arrive(&app, servers, &rcpt, 100).await;
    assert_all_sent_once(&app, servers, &rcpt, &subjects).await;
}

#[tokio::test]
async fn ops_workers_is_for_operators_only() {
    let redis = PrivateRedis::start().await;
    let (app, _, key) = app_on(TestEnv::new(), &redis).await;
    let reply = app.get("/v1/ops/workers", &key).await;
    postbridge_tests::assert_error(&reply, reqwest::StatusCode::FORBIDDEN, "forbidden");
    let graphql = app.graphql(Some(&key), "{ opsWorkers { id } }", json!({})).await;
    assert_eq!(postbridge_tests::graphql_error_code(&graphql), "forbidden", "{graphql}");
    let worker = WorkerProcess::spawn(WORKER, &app.env, &[]);
    worker.wait_ready(Duration::from_secs(30)).await;
    let operator = app.operator_token();
    wait_until("the worker is listed", Duration::from_secs(15), async || {
        let graphql = app
            .graphql(Some(&operator), "{ opsWorkers { pid status ready host version consumers { queue live } } }", json!({}))
            .await;
        graphql["data"]["opsWorkers"].as_array().is_some_and(|l| {
            l.iter().any(|w| {
                w["pid"] == json!(worker.pid())
                    && w["status"] == "LIVE"
                    && w["ready"] == true
                    && w["consumers"].as_array().is_some_and(|c| c.len() == 5 && c.iter().all(|q| q["live"] == 1))
            })
        })
    })
    .await;
}

#[tokio::test]
async fn postgres_stopped_for_10_seconds_mid_batch_sends_everything_once_records_every_250_and_the_worker_recovers_by_itself() {
    let redis = PrivateRedis::start().await;
    let mut postgres = PrivatePostgres::start().await;
    postgres.create_migrated_database("postbridge").await;
    let mut env = TestEnv::new();
    env.set("DATABASE_URL", postgres.url("postbridge"));
    let Batch { app, key, servers, worker, rcpt, subjects } = batch_in_flight(env, &redis, "pgdown", 200, 20).await;

    postgres.stop();
    assert!(servers.accepted_messages_to(&rcpt).len() < 200, "the outage came in the middle of the batch");
    wait_until(
        "/readyz says 503 naming postgres",
        Duration::from_secs(10),
        async || matches!(worker.readyz().await, Some((503, body)) if body.contains("postgres")),
    )
    .await;
    // The API says the same to its callers: 503 `unavailable`, to be tried again after `Retry-After`.
    let client = reqwest::Client::new();
    let listed = client.get(format!("{}/v1/messages?limit=1", app.address)).bearer_auth(&key).send().await.expect("request");
    assert_eq!(listed.status().as_u16(), 503);
    assert_eq!(listed.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let body: Value = listed.json().await.expect("a JSON error body");
    assert_eq!(body["code"], "unavailable", "{body}");
    tokio::time::sleep(Duration::from_secs(10)).await;
    postgres.start_again().await;

    wait_until("the worker is ready again", Duration::from_secs(30), async || matches!(worker.readyz().await, Some((200, _))))
        .await;
    // A 250 heard while Postgres was away is written once it is back: nothing ends `unknown`, nothing is sent twice.
    assert_all_sent_once(&app, servers, &rcpt, &subjects).await;
    assert_eq!(app.sql_i64("SELECT count(*) FROM outbound_messages WHERE status = 'unknown'").await, 0);
}

/// Send jobs a worker pushed on a commit's notice, and on its pass.
const SENDS_ON_NOTICE: &str = "postbridge_worker_dispatched_total{queue=\"send\",trigger=\"notice\"}";
const SENDS_ON_PASS: &str = "postbridge_worker_dispatched_total{queue=\"send\",trigger=\"pass\"}";

/// A worker listening for sends whose pass comes only every 10 s (the longest allowed): after its first pass, done
/// when it is ready, only notices dispatch.
async fn worker_on_notices(app: &TestApp, extra: &[(&str, &str)]) -> WorkerProcess {
    let mut settings = vec![("DISPATCH_INTERVAL", "10s")];
    settings.extend_from_slice(extra);
    let worker = WorkerProcess::spawn(WORKER, &app.env, &settings);
    worker.wait_ready(Duration::from_secs(30)).await;
    wait_until("the worker listens for sends", Duration::from_secs(10), async || {
        worker.metric("postbridge_worker_listening{channel=\"postbridge_sends_due\"}").await == 1.0
    })
    .await;
    worker
}

/// The pid of the worker's send wake-up listener connection, if it is listening.
async fn send_listener_pid(app: &TestApp) -> Option<i32> {
    postbridge_tests::listening_backends(&app.owner_db().await, "postbridge_sends_due").await.first().copied()
}

#[tokio::test]
async fn a_submitted_message_is_dispatched_on_its_commit_not_at_the_next_pass_even_after_the_listener_and_the_announcer_are_cut()
{
    let redis = PrivateRedis::start().await;
    let (app, servers, key) = app_on(TestEnv::new(), &redis).await;
    let from = sender(&app, servers, &key).await;
    let worker = worker_on_notices(&app, &[]).await;
    let (notice, pass) = (SENDS_ON_NOTICE, SENDS_ON_PASS);
    let rcpt = format!("notice-{}@example.org", Uuid::new_v4().simple());

    let first = submit_batch(&app, &key, &from, &rcpt, 1).await;
    wait_until("the first message arrives", Duration::from_secs(30), async || {
        accepted_subjects(servers, &rcpt).contains_key(&first[0])
    })
    .await;
    assert_eq!(worker.metric(notice).await, 1.0, "the commit's notice dispatched it");
    assert_eq!(worker.metric(pass).await, 0.0, "no pass found it first");

    // Cut the listener's connection: it reconnects by itself, and the next message is again sent on notice.
    let cut = send_listener_pid(&app).await.expect("the worker's listener connection");
    use sea_orm::ConnectionTrait;
    app.owner_db().await.execute_unprepared(&format!("SELECT pg_terminate_backend({cut})")).await.expect("terminate");
    wait_until("the listener is back on a new connection", Duration::from_secs(15), async || {
        send_listener_pid(&app).await.is_some_and(|pid| pid != cut)
    })
    .await;
    let second = submit_batch(&app, &key, &from, &rcpt, 1).await;
    wait_until("the second message arrives", Duration::from_secs(30), async || {
        accepted_subjects(servers, &rcpt).contains_key(&second[0])
    })
    .await;
    let by_notice = worker.metric(notice).await;
    let by_pass = worker.metric(pass).await;
    assert_eq!(by_notice + by_pass, 2.0, "each message was dispatched once");
    assert_eq!(by_notice, 2.0, "the reconnected listener dispatched the second too");

    // Cut the API process's announcing connection too: the next announcement goes out on a new one.
    let owner = app.owner_db().await;
    let sql = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'SELECT pg_notify%'";
    let row = owner.query_one_raw(sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, sql)).await;
    let announcer = row.expect("pg_stat_activity").expect("the announcing connection").try_get_by_index::<i32>(0);
    owner.execute_unprepared(&format!("SELECT pg_terminate_backend({})", announcer.expect("a pid"))).await.expect("terminate");
    let third = submit_batch(&app, &key, &from, &rcpt, 1).await;
    wait_until("the third message arrives", Duration::from_secs(30), async || {
        accepted_subjects(servers, &rcpt).contains_key(&third[0])
    })
    .await;
    assert_eq!(worker.metric(notice).await, 3.0, "announced on a new connection and dispatched on its notice");
    assert_eq!(app.ctx.metrics.sends_announced.with_label_values(&["failed"]).get(), 0, "no announcement was lost");
    let sent = app.sql_i64("SELECT count(*) FROM outbound_messages WHERE status = 'sent'").await;
    assert_eq!(sent, 3);
}

#[tokio::test]
async fn while_every_send_slot_is_busy_new_messages_wait_and_go_out_together_when_one_frees_not_at_the_next_pass() {
    let redis = PrivateRedis::start().await;
    let (app, servers, key) = app_on(TestEnv::new(), &redis).await;
    let from = sender(&app, servers, &key).await;
    // One send slot: only notices and freed slots dispatch.
    let worker = worker_on_notices(&app, &[("SEND_CONCURRENCY", "1")]).await;
    let (notice, pass) = (SENDS_ON_NOTICE, SENDS_ON_PASS);

    // The slot is taken by a message the server answers only after a second...
    let slow = format!("slower+busy-{}@example.org", Uuid::new_v4().simple());
    let opener = submit_batch(&app, &key, &from, &slow, 1).await;
    wait_until("the first message is at the server", Duration::from_secs(10), async || {
        app.sql_i64("SELECT count(*) FROM outbound_messages WHERE handed_at IS NOT NULL").await == 1
    })
    .await;
    // ...while twelve more are submitted.
    let rcpt = format!("busy-{}@example.org", Uuid::new_v4().simple());
    let started = Instant::now();
    let rest = submit_batch(&app, &key, &from, &rcpt, 12).await;
    let all_while_busy = app.sql_i64("SELECT count(*) FROM outbound_messages WHERE status = 'sending'").await == 1;
    wait_until("all twelve arrive", Duration::from_secs(8), async || accepted_subjects(servers, &rcpt).len() == rest.len()).await;
    assert!(started.elapsed() < Duration::from_secs(9), "sent when the slot freed, not at the pass 10 s on");
    assert_eq!(worker.metric(pass).await, 0.0, "no pass dispatched anything");
    let jobs = worker.metric(notice).await;
    if all_while_busy {
        // All twelve waited for the one slot, and were claimed together when it freed: four batches of three
        // (an account's backlog is spread over four jobs). Without waiting, each notice claimed one or two.
        assert_eq!(jobs, 5.0, "the opener's job and four batches");
    } else {
        // A slow machine: the slot freed before the last submissions; those were claimed as they came.
        assert!(jobs < 13.0, "the twelve went out in batches, not one job each: {jobs} jobs for 13 messages");
    }
    assert_eq!(accepted_subjects(servers, &slow).get(&opener[0]), Some(&1));
    assert!(accepted_subjects(servers, &rcpt).values().all(|&n| n == 1), "none twice");
    assert_eq!(app.sql_i64("SELECT count(*) FROM outbound_messages WHERE status = 'sent'").await, 13);
}
