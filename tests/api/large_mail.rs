//! Large inbound mail never stalls a mailbox (issue 10): sizes are fetched first, batches are bounded by bytes, a
//! message above `POSTBRIDGE_MAX_INBOUND_MESSAGE_BYTES` is stored as a flagged placeholder (its headers and size),
//! and what a server sends is bounded whatever sizes it announces. Against the real Dovecot of
//! `MailServers::shared()`, plus a scripted IMAP server that lies about sizes.

use std::time::{Duration, Instant};

use postbridge_core::receive::inbox::content_hash;
use postbridge_core::receive::poll::{self, PollError, PollReport};
use postbridge_tests::mail::MailServers;
use postbridge_tests::mailflow::{
    new_login, password_account, sample_message, spawn_mail_app, spawn_mail_app_with, MAIL_PASSWORD,
};
use postbridge_tests::{TestApp, TestEnv};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use uuid::Uuid;

const MIB: usize = 1024 * 1024;

fn uuid(id: &str) -> Uuid {
    id.parse().expect("a uuid")
}

async fn poll(app: &TestApp, account: &str) -> PollReport {
    app.poll(account).await
}

/// A text body of about `size` bytes, lines of 78 octets; `seed` makes it differ from other bodies.
fn body_of(size: usize, seed: &str) -> Vec<u8> {
    let line = format!("{seed:<20.20} {}\r\n", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTU");
    let mut body = Vec::with_capacity(size + line.len());
    while body.len() + line.len() <= size {
        body.extend_from_slice(line.as_bytes());
    }
    body
}

/// [`sample_message`] grown to about `size` bytes; returns its Message-ID, its bytes and its header (with the blank
/// line).
fn message_of(to: &str, subject: &str, size: usize) -> (String, Vec<u8>, Vec<u8>) {
    let (message_id, mut raw) = sample_message(to, subject);
    let header_end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a header") + 4;
    let header = raw[..header_end].to_vec();
    raw.extend_from_slice(&body_of(size.saturating_sub(raw.len()), subject));
    (message_id, raw, header)
}

async fn imap_account(app: &TestApp, servers: &MailServers, admin: &str, login: &str, extra: Value) -> String {
    servers.add_password_user(login, MAIL_PASSWORD);
    app.confirmed_mail_account(admin, password_account(servers, "imap", "tls", login, extra)).await
}

async fn count(app: &TestApp, account: &str, condition: &str) -> i64 {
    app.sql_i64(&format!("SELECT count(*) FROM inbound_messages WHERE account_id = '{account}' AND {condition}")).await
}

#[tokio::test]
async fn a_30_mib_message_is_synced_whole() {
    let (app, servers) = spawn_mail_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let login = new_login();
    let (message_id, raw, _) = message_of(&login, "Thirty mebibytes", 30 * MIB);
    let (after_id, after, _) = message_of(&login, "Right after", 10_000);
    servers.seed_messages(&login, "INBOX", &[raw.clone(), after.clone()]);
    let account = imap_account(&app, servers, &admin, &login, json!({})).await;

    assert_eq!(poll(&app, &account).await, PollReport { polled: true, fetched: 2, stored: 2, resynchronised: false });
    let items = app.all_received(&admin, &account).await;
    let big = items.iter().find(|m| m["message_id"] == json!(message_id)).expect("the large message");
    assert_eq!((big["size"].as_u64(), big["oversized"].clone()), (Some(raw.len() as u64), json!(false)));
    assert_eq!(big["subject"], "Thirty mebibytes");
    let (status, bytes) = app.received_raw(&admin, big["id"].as_str().expect("id")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(bytes == raw, "the 30 MiB message is stored byte for byte ({} bytes back)", bytes.len());
    assert!(items.iter().any(|m| m["message_id"] == json!(after_id) && m["oversized"] == json!(false)));
    assert_eq!(poll(&app, &account).await.fetched, 0, "nothing twice");
}

#[tokio::test]
async fn six_hundred_messages_of_2_mib_are_all_synced_in_batches_bounded_by_bytes_none_lost_or_twice() {
    const COUNT: usize = 600;
    let (app, servers) = spawn_mail_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    // One shared 2 MiB body behind each message's own header: cheap to build, seeded in slices to keep memory low.
    let seeding = Instant::now();
    let body = body_of(2 * MIB, "shared body");
    let mut seeded = Vec::with_capacity(COUNT);
    let mut samples = Vec::new();
    for start in (0..COUNT).step_by(50) {
        let chunk: Vec<Vec<u8>> = (start..start + 50)
            .map(|i| {
                let (message_id, mut raw) = sample_message(&login, &format!("Two mebibytes {i}"));
                raw.extend_from_slice(&body);
                seeded.push((message_id, raw.len() as i64));
                if i == 0 || i == COUNT - 1 {
                    samples.push((seeded[i].0.clone(), content_hash(&raw)));
                }
                raw
            })
            .collect();
        servers.seed_messages(&login, "INBOX", &chunk);
    }
    eprintln!("seeded in {:?}", seeding.elapsed());
    let account = app.confirmed_mail_account(&admin, password_account(servers, "imap", "tls", &login, json!({}))).await;

    let started = Instant::now();
    let report = poll(&app, &account).await;
    let took = started.elapsed();
    assert_eq!(report, PollReport { polled: true, fetched: COUNT as u64, stored: COUNT as u64, resynchronised: false });
    assert_eq!(count(&app, &account, "true").await, COUNT as i64);
    let distinct = app
        .sql_i64(&format!(
            "SELECT count(*) FROM (SELECT DISTINCT uid, message_id FROM inbound_messages WHERE account_id = '{account}') m"
        ))
        .await;
    assert_eq!(distinct, COUNT as i64, "every message once, each with its own UID");
    let ids = app
        .sql_text(&format!(
            "SELECT string_agg(message_id || ' ' || size, ',' ORDER BY uid) FROM inbound_messages WHERE account_id = '{account}'"
        ))
        .await
        .unwrap_or_default();
    let expected: Vec<String> = seeded.iter().map(|(id, size)| format!("{id} {size}")).collect();
    assert!(ids == expected.join(","), "every seeded message stored, in UID order, at its size");
    for (message_id, hash) in &samples {
        let stored = app
            .sql_text(&format!(
                "SELECT content_hash FROM inbound_messages WHERE account_id = '{account}' AND message_id = '{message_id}'"
            ))
            .await;
        assert_eq!(stored.as_deref(), Some(hash.as_str()), "the exact bytes of {message_id}");
    }
    assert_eq!(count(&app, &account, "oversized").await, 0);
    // Each batch is one transaction (one `received_at`): several of them, none above 32 MiB of messages.
    let batches = app
        .sql_text(&format!(
            "SELECT count(*) || ' ' || max(bytes) FROM (SELECT sum(size) AS bytes FROM inbound_messages \
             WHERE account_id = '{account}' GROUP BY received_at) b"
        ))
        .await
        .unwrap_or_default();
    let (batches, largest) = batches.split_once(' ').expect("two numbers");
    let (batches, largest): (usize, usize) = (batches.parse().expect("count"), largest.parse().expect("bytes"));
    let total: usize = seeded.iter().map(|(_, size)| *size as usize).sum();
    assert!(batches >= total.div_ceil(32 * MIB), "{batches} batches for {total} bytes");
    assert!(largest <= 32 * MIB, "a batch held {largest} bytes");
    let last_uid = app.sql_i64(&format!("SELECT last_uid FROM email_accounts WHERE id = '{account}'")).await;
    assert_eq!(last_uid, app.sql_i64(&format!("SELECT max(uid) FROM inbound_messages WHERE account_id = '{account}'")).await);
    assert_eq!(poll(&app, &account).await.fetched, 0, "nothing twice");
    eprintln!("600 × 2 MiB synced in {took:?} ({batches} batches)");
}

/// Settings with a 1 MiB inbound maximum.
fn one_mib_maximum() -> TestEnv {
    let mut env = TestEnv::new();
    env.set("MAX_INBOUND_MESSAGE_BYTES", MIB.to_string());
    env
}

#[tokio::test]
async fn an_imap_message_over_the_maximum_is_a_flagged_placeholder_with_headers_and_size_and_the_next_ones_sync_too() {
    let (app, servers) = spawn_mail_app_with(one_mib_maximum()).await;
    let (_, admin) = app.tenant_with_admin().await;
    let login = new_login();
    let (before_id, before, _) = message_of(&login, "Before", 5_000);
    let (big_id, big, big_header) = message_of(&login, "Too large", 3 * MIB);
    let (after_id, after, _) = message_of(&login, "After", 900 * 1024);
    let (last_id, last, _) = message_of(&login, "Last", 5_000);
    servers.seed_messages(&login, "INBOX", &[before, big.clone(), after.clone(), last]);
    // `delete` after fetching: the server keeps the only whole copy of the oversized message.
    let account = imap_account(&app, servers, &admin, &login, json!({"after_fetch": "delete"})).await;

    assert_eq!(poll(&app, &account).await, PollReport { polled: true, fetched: 4, stored: 4, resynchronised: false });
    let items = app.all_received(&admin, &account).await;
    let mut subjects: Vec<&str> = items.iter().map(|m| m["subject"].as_str().unwrap_or_default()).collect();
    subjects.reverse();
    assert_eq!(subjects, ["Before", "Too large", "After", "Last"]);
    let placeholder = items.iter().find(|m| m["message_id"] == json!(big_id)).expect("the placeholder");
    assert_eq!(placeholder["oversized"], json!(true));
    assert_eq!(placeholder["size"].as_u64(), Some(big.len() as u64), "the size the server announced");
    assert_eq!((placeholder["from"].clone(), placeholder["to"].clone()), (json!("sender@example.net"), json!([login])));
    let id = placeholder["id"].as_str().expect("id");
    assert_eq!(app.received_raw(&admin, id).await, (StatusCode::OK, big_header.clone()), "only the headers are stored");
    for other in [&before_id, &after_id, &last_id] {
        assert!(items.iter().any(|m| m["message_id"] == json!(other) && m["oversized"] == json!(false)), "{other} whole");
    }
    let after_item = items.iter().find(|m| m["message_id"] == json!(after_id)).expect("after");
    assert_eq!(app.received_raw(&admin, after_item["id"].as_str().expect("id")).await.1, after, "under the maximum: whole");
    // Polling went past the placeholder and deleted only the messages stored whole.
    let last_uid = app.sql_i64(&format!("SELECT last_uid FROM email_accounts WHERE id = '{account}'")).await;
    assert_eq!(last_uid, app.sql_i64(&format!("SELECT max(uid) FROM inbound_messages WHERE account_id = '{account}'")).await);
    let left = servers.mailbox_messages(&login, "INBOX");
    assert_eq!(left.len(), 1, "only the oversized message stays on the server");
    assert!(left[0].raw == big);
    assert_eq!(poll(&app, &account).await, PollReport { polled: true, fetched: 0, stored: 0, resynchronised: false });

    // The flag in the single views (REST, GraphQL) and in the OpenAPI document.
    let single = app.get(&format!("/v1/received-messages/{id}"), &admin).await;
    assert_eq!((single.status, single.body["oversized"].clone()), (StatusCode::OK, json!(true)));
    let body = app
        .graphql(Some(&admin), "query($id: UUID!) { receivedMessage(id: $id) { oversized size subject } }", json!({"id": id}))
        .await;
    assert_eq!(body["data"]["receivedMessage"], json!({"oversized": true, "size": big.len(), "subject": "Too large"}), "{body}");
    let openapi = app.get("/openapi.json", &admin).await;
    assert_eq!(openapi.body["components"]["schemas"]["InboundMessage"]["properties"]["oversized"]["type"], "boolean");
}

#[tokio::test]
async fn a_pop3_message_over_the_maximum_is_a_placeholder_read_with_top_and_is_never_deleted() {
    let (app, servers) = spawn_mail_app_with(one_mib_maximum()).await;
    let (_, admin) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    let (_, small, _) = message_of(&login, "Pop small", 2_000);
    let (big_id, big, big_header) = message_of(&login, "Pop too large", 2 * MIB);
    let (after_id, after, _) = message_of(&login, "Pop after", 600 * 1024);
    servers.seed_messages(&login, "INBOX", &[small, big.clone(), after.clone()]);
    let account = app
        .confirmed_mail_account(&admin, password_account(servers, "pop3", "tls", &login, json!({"after_fetch": "delete"})))
        .await;

    assert_eq!(poll(&app, &account).await, PollReport { polled: true, fetched: 3, stored: 3, resynchronised: false });
    let items = app.all_received(&admin, &account).await;
    let placeholder = items.iter().find(|m| m["message_id"] == json!(big_id)).expect("the placeholder");
    assert_eq!((placeholder["oversized"].clone(), placeholder["size"].as_u64()), (json!(true), Some(big.len() as u64)));
    let (_, stored) = app.received_raw(&admin, placeholder["id"].as_str().expect("id")).await;
    assert!(stored == big_header, "TOP n 0: the headers and the blank line");
    let whole = items.iter().find(|m| m["message_id"] == json!(after_id)).expect("after");
    assert_eq!(whole["oversized"], json!(false));
    assert!(app.received_raw(&admin, whole["id"].as_str().expect("id")).await.1 == after);
    let left = servers.mailbox_messages(&login, "INBOX");
    assert_eq!(left.len(), 1, "only the oversized message stays on the server");
    assert!(left[0].raw == big);
    assert_eq!(poll(&app, &account).await, PollReport { polled: true, fetched: 0, stored: 0, resynchronised: false });
    assert_eq!(servers.mailbox_count(&login, "INBOX"), 1, "and it is not deleted later either");
}

// ---- a server that lies about sizes ------------------------------------------------------------------------------

/// How the scripted server answers the FETCH of message 2's body (messages 1 and 3 are honest and small).
#[derive(Clone, Copy)]
enum Lie {
    /// It announces 100 bytes and honours the partial FETCH: it sends the limit and one byte more.
    HonoursPartial,
    /// It ignores the partial FETCH and announces a 1 GiB literal.
    HugeLiteral,
}

const SMALL: &str = "From: a@example.net\r\nSubject: Small\r\nMessage-ID: <small@example.net>\r\n\r\nhello\r\n";

/// A plain-text IMAP server that announces RFC822.SIZE 100 for every message and answers message 2's body as
/// `lie` says. Returns its port.
async fn lying_imap_server(lie: Lie) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                let _ = write.write_all(b"* OK [CAPABILITY IMAP4rev1] scripted\r\n").await;
                while let Ok(Some(line)) = lines.next_line().await {
                    let (tag, command) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                    let upper = command.to_ascii_uppercase();
                    let mut out: Vec<u8> = Vec::new();
                    if upper.starts_with("SELECT") || upper.starts_with("EXAMINE") {
                        out.extend_from_slice(b"* 3 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* OK [UIDNEXT 4] ok\r\n");
                    } else if upper.starts_with("UID SEARCH") {
                        out.extend_from_slice(b"* SEARCH 1 2 3\r\n");
                    } else if upper.contains("RFC822.SIZE") {
                        for uid in 1..=3 {
                            out.extend_from_slice(format!("* {uid} FETCH (UID {uid} RFC822.SIZE 100)\r\n").as_bytes());
                        }
                    } else if upper.contains("BODY.PEEK[]<0.") {
                        let limit: usize = upper
                            .split("BODY.PEEK[]<0.")
                            .nth(1)
                            .and_then(|rest| rest.split('>').next())
                            .and_then(|n| n.parse().ok())
                            .expect("a partial FETCH");
                        for uid in 1..=3 {
                            if uid == 2 {
                                match lie {
                                    Lie::HonoursPartial => {
                                        let mut big = b"From: b@example.net\r\nSubject: Liar\r\n\r\n".to_vec();
                                        big.resize(limit, b'x');
                                        out.extend_from_slice(format!("* 2 FETCH (UID 2 BODY[]<0> {{{limit}}}\r\n").as_bytes());
                                        out.extend_from_slice(&big);
                                        out.extend_from_slice(b")\r\n");
                                    }
                                    Lie::HugeLiteral => {
                                        out.extend_from_slice(b"* 2 FETCH (UID 2 BODY[]<0> {1073741824}\r\n");
                                        let _ = write.write_all(&out).await;
                                        // Then nothing: a client that waited for the literal would hang.
                                        tokio::time::sleep(Duration::from_secs(60)).await;
                                        return;
                                    }
                                }
                            } else {
                                out.extend_from_slice(
                                    format!("* {uid} FETCH (UID {uid} BODY[]<0> {{{}}}\r\n{SMALL})\r\n", SMALL.len()).as_bytes(),
                                );
                            }
                        }
                    } else if upper.starts_with("LOGOUT") {
                        out.extend_from_slice(b"* BYE bye\r\n");
                    }
                    out.extend_from_slice(format!("{tag} OK done\r\n").as_bytes());
                    if write.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

async fn lying_account(app: &TestApp, admin: &str, port: u16) -> String {
    let body = json!({"protocol": "imap", "auth": "password", "login": "liar@example.net", "password": "pw",
                      "host": "127.0.0.1", "port": port, "security": "none"});
    app.create_mail_account(admin, body).await
}

#[tokio::test]
async fn a_message_larger_than_the_server_announced_is_cut_at_the_maximum_and_kept_as_a_placeholder() {
    let (app, _) = spawn_mail_app_with(one_mib_maximum()).await;
    let (_, admin) = app.tenant_with_admin().await;
    let account = lying_account(&app, &admin, lying_imap_server(Lie::HonoursPartial).await).await;

    assert_eq!(poll(&app, &account).await, PollReport { polled: true, fetched: 3, stored: 3, resynchronised: false });
    let liar = app
        .sql_text(&format!(
            "SELECT oversized || ' ' || size || ' ' || length(raw) || ' ' || subject FROM inbound_messages \
             WHERE account_id = '{account}' AND uid = 2"
        ))
        .await;
    let header = "From: b@example.net\r\nSubject: Liar\r\n\r\n";
    assert_eq!(
        liar,
        Some(format!("true {} {} Liar", MIB + 1, header.len())),
        "read up to the maximum only, then its header kept"
    );
    assert_eq!(count(&app, &account, "NOT oversized").await, 2);
    assert_eq!(app.sql_i64(&format!("SELECT last_uid FROM email_accounts WHERE id = '{account}'")).await, 3);
}

#[tokio::test]
async fn a_server_announcing_a_huge_literal_is_cut_off_at_once_and_what_came_before_is_kept() {
    let (app, _) = spawn_mail_app_with(one_mib_maximum()).await;
    let (_, admin) = app.tenant_with_admin().await;
    let account = lying_account(&app, &admin, lying_imap_server(Lie::HugeLiteral).await).await;

    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(20), poll::poll_account(&app.ctx, uuid(&account).into()))
        .await
        .expect("the poll ends without waiting for the announced gigabyte");
    match outcome {
        Err(PollError::Mail(err)) => assert!(err.message.contains("1073741824"), "{err}"),
        other => panic!("a mail error expected, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(15));
    // Message 1 arrived whole before the lie: stored, and the position is just past it (2 is fetched again later).
    assert_eq!(count(&app, &account, "true").await, 1);
    assert_eq!(app.sql_i64(&format!("SELECT last_uid FROM email_accounts WHERE id = '{account}'")).await, 1);
    let last_error = app.sql_text(&format!("SELECT last_error FROM email_accounts WHERE id = '{account}'")).await;
    assert!(last_error.is_some_and(|e| e.contains("announced")), "the account says why");
}
