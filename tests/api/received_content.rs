//! Received mail usable without a MIME parser: bodies, threading headers and attachments are taken from the message
//! once, when it is stored, and served by REST and GraphQL; each attachment downloads on its own; the
//! `message.received` event carries enough to act on. Against the real Dovecot, through a real poll.

use postbridge_tests::mail::MailServers;
use postbridge_tests::mailflow::{new_login, password_account, spawn_mail_app, MAIL_PASSWORD};
use postbridge_tests::{assert_error, TestApp};
use reqwest::StatusCode;
use serde_json::json;

/// Text and HTML alternatives (the HTML with a script and an inline image), an inline PNG, a PDF attachment with a
/// non-ASCII file name, and threading headers.
fn report_message(to: &str) -> Vec<u8> {
    format!(
        "From: Ada <ada@example.net>\r\nTo: <{to}>\r\nSubject: Quarterly report\r\nMessage-ID: <r2@example.net>\r\n\
In-Reply-To: <r1@example.net>\r\nReferences: <r0@example.net> <r1@example.net>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n--outer\r\nContent-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n\
--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello Bob,\r\n\r\nthe   report is attached.\r\n--alt\r\n\
Content-Type: text/html; charset=utf-8\r\n\r\n<p onclick=\"steal()\">Hello <b>Bob</b>,</p><script>steal()</script><img src=\"cid:logo@ex\">\r\n\
--alt--\r\n--outer\r\nContent-Type: image/png\r\nContent-ID: <logo@ex>\r\nContent-Disposition: inline\r\n\
Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--outer\r\nContent-Type: application/pdf\r\n\
Content-Disposition: attachment; filename*=UTF-8''Q3%20r%C3%A9sum%C3%A9.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n\
JVBERi0xLjQK\r\n--outer--\r\n"
    )
    .into_bytes()
}

/// A polled mailbox holding the report; returns (admin key, account id, message id).
async fn stored_report(app: &TestApp, servers: &MailServers) -> (String, String, String) {
    let (_, admin) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    let account = app.confirmed_mail_account(&admin, password_account(servers, "imap", "tls", &login, json!({}))).await;
    servers.seed_messages(&login, "INBOX", &[report_message(&login)]);
    assert_eq!(app.poll(&account).await.stored, 1);
    let list = app.get(&format!("/v1/accounts/{account}/messages"), &admin).await;
    let id = list.body["items"][0]["id"].as_str().expect("the stored message").to_owned();
    (admin, account, id)
}

#[tokio::test]
async fn bodies_threading_and_attachments_are_served_and_lists_stay_small() {
    let (app, servers) = spawn_mail_app().await;
    let (admin, account, id) = stored_report(&app, servers).await;

    let list = app.get(&format!("/v1/accounts/{account}/messages"), &admin).await;
    let item = &list.body["items"][0];
    assert_eq!(item["snippet"], "Hello Bob, the report is attached.");
    assert_eq!(item["in_reply_to"], "<r1@example.net>");
    assert_eq!(item["references"], json!(["<r0@example.net>", "<r1@example.net>"]));
    assert_eq!((item["text"].clone(), item["html"].clone()), (json!(null), json!(null)), "no bodies in a list");
    assert_eq!(item["unparsed"], false);
    let attachments = item["attachments"].as_array().expect("attachments");
    assert_eq!(attachments.len(), 2);
    assert_eq!(
        attachments[0],
        json!({"index": 0, "filename": null, "content_type": "image/png", "size": 8, "content_id": "logo@ex", "inline": true})
    );
    assert_eq!(attachments[1]["filename"], "Q3 résumé.pdf");
    assert_eq!(
        (attachments[1]["content_type"].clone(), attachments[1]["inline"].clone()),
        (json!("application/pdf"), json!(false))
    );

    let one = app.get(&format!("/v1/received-messages/{id}"), &admin).await;
    assert_eq!(one.status, StatusCode::OK);
    assert!(one.body["text"].as_str().is_some_and(|t| t.starts_with("Hello Bob,\r\n\r\nthe   report")), "{}", one.text);
    let html = one.body["html"].as_str().expect("html");
    assert!(html.contains("<script>") && html.contains("onclick"), "as sent by default");
    let sanitized = app.get(&format!("/v1/received-messages/{id}?html=sanitized"), &admin).await;
    let clean = sanitized.body["html"].as_str().expect("sanitised html");
    assert!(clean.contains("Hello <b>Bob</b>") && clean.contains("cid:logo@ex"), "{clean}");
    assert!(!clean.contains("script") && !clean.contains("onclick") && !clean.contains("steal"), "{clean}");
    assert_error(
        &app.get(&format!("/v1/received-messages/{id}?html=shiny"), &admin).await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    );

    // GraphQL: the same fields, the HTML sanitised on request.
    let body = app
        .graphql(
            Some(&admin),
            "query($id: UUID!) { receivedMessage(id: $id, html: SANITIZED) { text html snippet inReplyTo references \
             attachments { index filename contentType size contentId inline } unparsed } }",
            json!({"id": id}),
        )
        .await;
    let message = &body["data"]["receivedMessage"];
    assert_eq!(message["snippet"], "Hello Bob, the report is attached.", "{body}");
    assert!(message["html"].as_str().is_some_and(|h| !h.contains("script")));
    assert_eq!(message["attachments"][1]["filename"], "Q3 résumé.pdf");

    // The event says enough to act without a second call.
    let data = app
        .sql_text(&format!("SELECT data::text FROM events WHERE event_type = 'message.received' AND resource_id = '{id}'"))
        .await
        .expect("a message.received event");
    let data: serde_json::Value = serde_json::from_str(&data).expect("json");
    assert_eq!(data["subject"], "Quarterly report");
    assert_eq!(data["from"], "ada@example.net");
    assert_eq!(data["snippet"], "Hello Bob, the report is attached.");
    assert_eq!(data["attachments"][1]["filename"], "Q3 résumé.pdf");
    assert_eq!(data["to"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn each_attachment_downloads_as_an_attachment_and_strangers_and_bad_indexes_get_nothing() {
    let (app, servers) = spawn_mail_app().await;
    let (admin, _account, id) = stored_report(&app, servers).await;
    let download = |index: &str, key: &str| {
        app.http.get(format!("{}/v1/received-messages/{id}/attachments/{index}", app.address)).bearer_auth(key.to_owned()).send()
    };

    let pdf = download("1", &admin).await.expect("request");
    assert_eq!(pdf.status(), StatusCode::OK);
    let header = |name: &str| pdf.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert_eq!(header("content-type"), "application/pdf");
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(header("content-security-policy"), "sandbox");
    let disposition = header("content-disposition");
    assert!(
        disposition.starts_with("attachment;") && disposition.contains("filename*=UTF-8''Q3%20r%C3%A9sum%C3%A9.pdf"),
        "{disposition}"
    );
    assert_eq!(pdf.bytes().await.expect("bytes").as_ref(), b"%PDF-1.4\n", "decoded from base64");
    let png = download("0", &admin).await.expect("request");
    assert_eq!(png.bytes().await.expect("bytes").as_ref(), b"\x89PNG\r\n\x1a\n");

    for (index, status) in [("2", StatusCode::NOT_FOUND), ("-1", StatusCode::NOT_FOUND), ("one", StatusCode::BAD_REQUEST)] {
        let reply = download(index, &admin).await.expect("request");
        assert_eq!(reply.status(), status, "index {index}");
    }
    let (_, stranger) = app.tenant_with_admin().await;
    assert_eq!(download("1", &stranger).await.expect("request").status(), StatusCode::NOT_FOUND, "another tenant's mail");
}

/// One sender's NUL bytes (in an encoded subject, a quoted-printable body, a raw 8-bit body and a file name) and an
/// endless file name: Postgres refuses NUL in text and jsonb, so until these were cleaned the poll's whole batch
/// failed, on every poll, and the mailbox received nothing more.
fn message_with_nul(to: &str) -> Vec<u8> {
    let mut raw = format!(
        "From: <mallory@example.net>\r\nTo: <{to}>\r\nSubject: =?utf-8?q?a=00b?=\r\nMessage-ID: <nul@example.net>\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nbefore=00after\r\n--b\r\n\
Content-Type: text/plain\r\nContent-Disposition: attachment; filename*=utf-8''x%00{long}.txt\r\n\r\n",
        long = "y".repeat(10_000)
    )
    .into_bytes();
    // Dovecot serves a raw NUL as 0x80 over IMAP; a POP3 server or another IMAP server may not.
    raw.extend_from_slice(b"raw\0byte\r\n--b--\r\n");
    raw
}

#[tokio::test]
async fn a_message_with_nul_bytes_is_stored_cleaned_and_the_mailbox_goes_on_receiving() {
    let (app, servers) = spawn_mail_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    let account = app.confirmed_mail_account(&admin, password_account(servers, "imap", "tls", &login, json!({}))).await;
    servers.seed_messages(&login, "INBOX", &[message_with_nul(&login), report_message(&login)]);
    let first = app.poll(&account).await;
    assert_eq!(first.stored, 2, "both stored in the one poll");

    let list = app.get(&format!("/v1/accounts/{account}/messages"), &admin).await;
    let item = list.body["items"]
        .as_array()
        .and_then(|items| items.iter().find(|m| m["message_id"] == "<nul@example.net>"))
        .expect("the message with NUL bytes")
        .clone();
    assert_eq!(item["subject"], "a\u{FFFD}b");
    assert_eq!(item["snippet"], "before\u{FFFD}after");
    let name = item["attachments"][0]["filename"].as_str().expect("a file name");
    assert!(name.starts_with("x\u{FFFD}y") && name.len() <= 255, "{name}");
    let id = item["id"].as_str().expect("id");
    let raw =
        app.http.get(format!("{}/v1/received-messages/{id}/raw", app.address)).bearer_auth(&admin).send().await.expect("raw");
    let header = |name: &str| raw.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let headers = [header("x-content-type-options"), header("content-security-policy"), header("content-disposition")];
    assert_eq!(headers, ["nosniff".to_owned(), "sandbox".to_owned(), format!("attachment; filename=\"message-{id}.eml\"")]);
    let raw = raw.bytes().await.expect("bytes");
    assert!(raw.windows(17).any(|w| w == b"=?utf-8?q?a=00b?="), "the raw message is as received");
    let event = app
        .sql_text(&format!("SELECT data::text FROM events WHERE event_type = 'message.received' AND resource_id = '{id}'"))
        .await
        .expect("a message.received event");
    assert!(event.len() < 2_000, "the event stays small: {} bytes", event.len());

    servers.seed_messages(&login, "INBOX", &[report_message(&login)]);
    let next = app.poll(&account).await;
    assert_eq!(next.stored, 1, "the mailbox goes on receiving");
    let failures = app.sql_text(&format!("SELECT poll_failures::text FROM email_accounts WHERE id = '{account}'")).await;
    assert_eq!(failures.as_deref(), Some("0"));
}
