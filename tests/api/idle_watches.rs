//! Mail in real time: confirmed IMAP mailboxes are watched in IDLE by the worker processes (real binaries, a real
//! Dovecot). A delivered message is stored while the next poll is an hour away; a cut connection is opened again;
//! a stopping worker hands its mailboxes over; two workers share the mailboxes, and a killed one's are taken over.

use std::time::Duration;

use postbridge_tests::mail::MailServers;
use postbridge_tests::mailflow::{new_login, password_account, sample_message, spawn_mail_app_with, MAIL_PASSWORD};
use postbridge_tests::processes::{PrivateRedis, WorkerProcess};
use postbridge_tests::{wait_until, TestApp, TestEnv};
use serde_json::json;

const WORKER: &str = env!("CARGO_BIN_EXE_postbridge-test-worker");
const WATCHED: &str = "postbridge_worker_idle_mailboxes";

async fn app_on(redis: &PrivateRedis) -> (TestApp, &'static MailServers, String) {
    let mut env = TestEnv::new();
    env.set("REDIS_URL", redis.url());
    let (app, servers) = spawn_mail_app_with(env).await;
    let (_, key) = app.tenant_with_admin().await;
    (app, servers, key)
}

/// A confirmed IMAP mailbox polled only hourly; returns (login, account id).
async fn hourly_mailbox(app: &TestApp, servers: &MailServers, key: &str) -> (String, String) {
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    let body = password_account(servers, "imap", "tls", &login, json!({"poll_interval_seconds": 3600}));
    let id = app.confirmed_mail_account(key, body).await;
    (login, id)
}

async fn stored(app: &TestApp, account: &str) -> i64 {
    app.sql_i64(&format!("SELECT count(*) FROM inbound_messages WHERE account_id = '{account}'")).await
}

/// Delivers a message to `login` and waits until it is stored, well before any poll could have run.
async fn delivered_and_stored(app: &TestApp, servers: &MailServers, login: &str, account: &str, subject: &str) {
    let before = stored(app, account).await;
    servers.deliver(login, "INBOX", &sample_message(login, subject).1);
    wait_until(&format!("{subject} is stored"), Duration::from_secs(15), async || stored(app, account).await > before).await;
    let next_poll_in = app
        .sql_i64(&format!("SELECT extract(epoch FROM next_poll_at - now())::bigint FROM email_accounts WHERE id = '{account}'"))
        .await;
    assert!(next_poll_in > 3000, "stored by the watch, not a poll (the next poll is {next_poll_in} s away)");
}

#[tokio::test]
async fn a_delivered_message_is_stored_at_once_and_the_watch_survives_a_cut_and_a_worker_stop() {
    let redis = PrivateRedis::start().await;
    let (app, servers, key) = app_on(&redis).await;
    let (login, account) = hourly_mailbox(&app, servers, &key).await;
    let mut first = WorkerProcess::spawn(WORKER, &app.env, &[]);
    first.wait_ready(Duration::from_secs(30)).await;
    wait_until("the worker watches the mailbox", Duration::from_secs(15), async || first.metric(WATCHED).await == 1.0).await;
    // The watch's first sync has run once the mailbox's poll is an hour away.
    wait_until("the first sync", Duration::from_secs(15), async || {
        app.sql_i64(&format!(
            "SELECT count(*) FROM email_accounts WHERE id = '{account}' AND next_poll_at > now() + interval '50 minutes'"
        ))
        .await
            == 1
    })
    .await;
    delivered_and_stored(&app, servers, &login, &account, "through IDLE").await;

    // The server cuts the connection: the watch opens it again and catches up with what arrived meanwhile.
    servers.kick(&login);
    delivered_and_stored(&app, servers, &login, &account, "after the cut").await;
    assert_eq!(first.metric(WATCHED).await, 1.0, "still watched by the same worker");
    let drops = app.sql_i64(&format!("SELECT idle_drops::bigint FROM email_accounts WHERE id = '{account}'")).await;
    assert_eq!(drops, 1, "the cut is counted towards the feed's health");

    // A stopping worker lets its mailbox go; the next worker watches it.
    assert!(first.terminate(Duration::from_secs(30)).await.is_some_and(|s| s.success()), "the worker stops cleanly");
    let held =
        app.sql_i64(&format!("SELECT count(*) FROM email_accounts WHERE id = '{account}' AND lease_until IS NOT NULL")).await;
    assert_eq!(held, 0, "the stopped worker let the mailbox go");
    let second = WorkerProcess::spawn(WORKER, &app.env, &[]);
    second.wait_ready(Duration::from_secs(30)).await;
    wait_until("the next worker watches the mailbox", Duration::from_secs(15), async || second.metric(WATCHED).await == 1.0)
        .await;
    delivered_and_stored(&app, servers, &login, &account, "after the handover").await;
    assert_eq!(stored(&app, &account).await, 3, "each message stored once");
    let errors =
        app.sql_i64(&format!("SELECT count(*) FROM email_accounts WHERE id = '{account}' AND last_error IS NOT NULL")).await;
    assert_eq!(errors, 0, "a cut that was mended leaves no error behind");
}

#[tokio::test]
async fn two_workers_share_the_mailboxes_and_a_killed_workers_mailboxes_are_taken_over() {
    let redis = PrivateRedis::start().await;
    let (app, servers, key) = app_on(&redis).await;
    let mut mailboxes = Vec::new();
    for _ in 0..4 {
        mailboxes.push(hourly_mailbox(&app, servers, &key).await);
    }
    let first = WorkerProcess::spawn(WORKER, &app.env, &[]);
    first.wait_ready(Duration::from_secs(30)).await;
    wait_until("one worker watches all four", Duration::from_secs(15), async || first.metric(WATCHED).await == 4.0).await;

    // A second worker: the first hands two over.
    let mut second = WorkerProcess::spawn(WORKER, &app.env, &[]);
    second.wait_ready(Duration::from_secs(30)).await;
    wait_until("the watches are shared two and two", Duration::from_secs(30), async || {
        first.metric(WATCHED).await == 2.0 && second.metric(WATCHED).await == 2.0
    })
    .await;
    for (i, (login, account)) in mailboxes.iter().enumerate() {
        delivered_and_stored(&app, servers, login, account, &format!("shared {i}")).await;
    }

    // SIGKILL: its leases run out (a minute), then the first worker watches everything again.
    second.kill_9();
    wait_until("the survivor watches all four", Duration::from_secs(120), async || first.metric(WATCHED).await == 4.0).await;
    for (i, (login, account)) in mailboxes.iter().enumerate() {
        delivered_and_stored(&app, servers, login, account, &format!("after the kill {i}")).await;
        assert_eq!(stored(&app, account).await, 2, "each message stored once");
    }
}
