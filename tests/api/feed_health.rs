//! A broken inbound feed shows in the ops overview before a customer notices: a mailbox polled without error that
//! receives nothing for far longer than usual (`inbound_silent`), or whose IDLE connection keeps dropping
//! (`idle_dropping`). Arrivals are counted by real polls against Dovecot; the history is then aged in SQL.

use postbridge_tests::mail::MailServers;
use postbridge_tests::mailflow::{new_login, password_account, spawn_mail_app, MAIL_PASSWORD};
use postbridge_tests::{assert_error, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn message(n: usize) -> Vec<u8> {
    format!("From: a@example.net\r\nSubject: n{n}\r\nMessage-ID: <feed-{n}@example.net>\r\n\r\nbody {n}\r\n").into_bytes()
}

async fn feed_warnings(app: &TestApp, key: &str) -> Vec<Value> {
    let overview = app.get("/v1/ops/overview", key).await;
    assert_eq!(overview.status, StatusCode::OK, "{}", overview.text);
    overview.body["feed_warnings"].as_array().cloned().unwrap_or_else(|| panic!("{}", overview.text))
}

async fn polled_mailbox(app: &TestApp, servers: &MailServers, admin: &str) -> (String, String) {
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    let account = app.confirmed_mail_account(admin, password_account(servers, "imap", "tls", &login, json!({}))).await;
    (login, account)
}

#[tokio::test]
async fn a_mailbox_silent_far_longer_than_usual_is_a_warning_until_mail_arrives_again() {
    let (app, servers) = spawn_mail_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let (login, account) = polled_mailbox(&app, servers, &admin).await;
    let arrivals = format!("SELECT arrivals::bigint FROM email_accounts WHERE id = '{account}'");

    // Two polls a moment apart that both store mail are one arrival; a poll that stores nothing is none.
    servers.seed_messages(&login, "INBOX", &[message(1), message(2)]);
    assert_eq!(app.poll(&account).await.stored, 2);
    servers.seed_messages(&login, "INBOX", &[message(3)]);
    assert_eq!(app.poll(&account).await.stored, 1);
    assert_eq!(app.poll(&account).await.stored, 0);
    assert_eq!(app.sql_i64(&arrivals).await, 1);
    assert!(feed_warnings(&app, &admin).await.is_empty(), "too little history to judge");

    // A mailbox that used to get mail about hourly has had none for two days, though polls succeed.
    app.sql_exec(&format!(
        "UPDATE email_accounts SET arrivals = 8, usual_gap_seconds = 3600, last_received_at = now() - interval '2 days' \
         WHERE id = '{account}'"
    ))
    .await;
    let warnings = feed_warnings(&app, &admin).await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let warning = &warnings[0];
    assert_eq!((warning["kind"].clone(), warning["account_id"].clone()), (json!("inbound_silent"), json!(account)));
    assert_eq!((warning["login"].clone(), warning["usual_gap_seconds"].clone()), (json!(login), json!(3600)));
    assert!(warning["message"].as_str().is_some_and(|m| m.contains("48 hours")), "{warning}");

    // Another tenant's admin sees none of it; a member is not shown the tenant-wide overview.
    let (_, stranger) = app.tenant_with_admin().await;
    assert!(feed_warnings(&app, &stranger).await.is_empty());
    let member = app.api_key_with_id(&admin, None, "member").await.1;
    assert_error(&app.get("/v1/ops/overview", &member).await, StatusCode::FORBIDDEN, "forbidden");

    // Mail arrives again: the warning goes, and the two-day gap moves the usual gap up (a fifth of the way).
    servers.seed_messages(&login, "INBOX", &[message(4)]);
    assert_eq!(app.poll(&account).await.stored, 1);
    assert!(feed_warnings(&app, &admin).await.is_empty());
    assert_eq!(app.sql_i64(&arrivals).await, 9);
    let gap = app.sql_i64(&format!("SELECT usual_gap_seconds::bigint FROM email_accounts WHERE id = '{account}'")).await;
    let expected = (0.8 * 3600.0 + 0.2 * 172_800.0) as i64;
    assert!((expected..expected + 60).contains(&gap), "usual gap {gap}, expected about {expected}");

    // A disabled mailbox is not expected to receive anything.
    app.sql_exec(&format!("UPDATE email_accounts SET last_received_at = now() - interval '30 days' WHERE id = '{account}'"))
        .await;
    assert_eq!(feed_warnings(&app, &admin).await.len(), 1);
    let disabled = app.patch(&format!("/v1/accounts/{account}"), &admin, json!({"enabled": false})).await;
    assert_eq!(disabled.status, StatusCode::OK, "{}", disabled.text);
    assert!(feed_warnings(&app, &admin).await.is_empty());
}

#[tokio::test]
async fn an_idle_connection_that_keeps_dropping_is_a_warning_for_the_hour_it_drops_in() {
    let (app, servers) = spawn_mail_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let (_, account) = polled_mailbox(&app, servers, &admin).await;

    app.sql_exec(&format!(
        "UPDATE email_accounts SET idle_drops = 9, idle_drops_since = now() - interval '10 minutes' WHERE id = '{account}'"
    ))
    .await;
    assert!(feed_warnings(&app, &admin).await.is_empty(), "nine drops in an hour are tolerated");
    app.sql_exec(&format!("UPDATE email_accounts SET idle_drops = 10 WHERE id = '{account}'")).await;
    let warnings = feed_warnings(&app, &admin).await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!((warnings[0]["kind"].clone(), warnings[0]["idle_drops_last_hour"].clone()), (json!("idle_dropping"), json!(10)));

    // An hour later the window is over: the drops no longer count.
    app.sql_exec(&format!("UPDATE email_accounts SET idle_drops_since = now() - interval '61 minutes' WHERE id = '{account}'"))
        .await;
    assert!(feed_warnings(&app, &admin).await.is_empty());

    // GraphQL shows the same list.
    app.sql_exec(&format!("UPDATE email_accounts SET idle_drops_since = now() WHERE id = '{account}'")).await;
    let body =
        app.graphql(Some(&admin), "{ opsOverview { feedWarnings { kind accountId idleDropsLastHour } } }", json!({})).await;
    assert_eq!(
        body["data"]["opsOverview"]["feedWarnings"],
        json!([{"kind": "IDLE_DROPPING", "accountId": account, "idleDropsLastHour": 10}]),
        "{body}"
    );
}
