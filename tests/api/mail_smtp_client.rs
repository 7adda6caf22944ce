//! The SMTP client (`postbridge_core::protocols::smtp`) and the message composer (`mail::compose`) against the real Node SMTP
//! server of the shared mail servers (STARTTLS and implicit TLS, PLAIN / LOGIN / XOAUTH2, failure knobs), plus a tiny
//! in-process SMTP server for behaviours a real server will not show on demand (a pooled connection closed under
//! the client, no reply after the content, a Gmail-style XOAUTH2 error challenge).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mail_parser::{MessageParser, MimeHeaders as _};
use postbridge_core::failure::MailStep;
use postbridge_core::model::Security;
use postbridge_core::protocols::compose::{
    compose, new_message_id, Attachment, ComposeError, Composed, Mailbox, OutgoingMessage,
};
use postbridge_core::protocols::error::{Endpoint, MailAuth, Timeouts};
use postbridge_core::protocols::netguard::NetGuard;
use postbridge_core::protocols::smtp::{SendError, SendOutcome, SmtpClient, SmtpConfig};
use postbridge_tests::mail::{AcceptedMessage, MailServers};
use postbridge_tests::TestEnv;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;
use uuid::Uuid;

fn new_login() -> String {
    format!("user-{}@example.com", Uuid::new_v4().simple())
}

fn new_rcpt(prefix: &str) -> String {
    format!("{prefix}{}@example.org", Uuid::new_v4().simple())
}

fn config() -> SmtpConfig {
    SmtpConfig { timeouts: Timeouts { connect: Duration::from_secs(5), io: Duration::from_secs(15) }, ..SmtpConfig::default() }
}

/// A client that trusts the test CA, with a guard that allows loopback (as tests and development deployments do).
fn client(servers: &MailServers) -> SmtpClient {
    SmtpClient::new(NetGuard::new(true), Some(servers.ca_pem().as_bytes()), config()).expect("SMTP client")
}

fn starttls(servers: &MailServers) -> Endpoint {
    Endpoint::new(servers.host(), servers.smtp_port(), Security::Starttls)
}

fn implicit_tls(servers: &MailServers) -> Endpoint {
    Endpoint::new(servers.host(), servers.smtps_port(), Security::Tls)
}

fn password(login: &str, password: &str) -> MailAuth {
    MailAuth::Password { login: login.to_owned(), password: password.to_owned() }
}

/// A password user on the SMTP server.
fn password_user(servers: &MailServers) -> (String, MailAuth) {
    let login = new_login();
    let secret = format!("pw-{}", Uuid::new_v4().simple());
    servers.add_password_user(&login, &secret);
    let auth = password(&login, &secret);
    (login, auth)
}

fn message(from: &str, to: &str, subject: &str) -> OutgoingMessage {
    OutgoingMessage {
        from: Mailbox::new(Some("Sender Example"), from),
        reply_to: None,
        to: vec![Mailbox::address(to)],
        cc: vec![],
        bcc: vec![],
        subject: subject.to_owned(),
        text: Some(format!("Body of {subject}.\n.a line starting with a dot\n")),
        html: None,
        headers: vec![],
        attachments: vec![],
        message_id: new_message_id("example.com"),
    }
}

fn composed(message: &OutgoingMessage) -> Composed {
    compose(message).expect("the message composes")
}

fn sent_reply(outcome: Result<SendOutcome, SendError>, servers: &MailServers) -> String {
    match outcome {
        Ok(SendOutcome::Sent { reply, .. }) => reply,
        Err(err) => panic!("send failed: {err:?}\n{}", servers.smtp_log()),
    }
}

fn only_message(servers: &MailServers, rcpt: &str) -> AcceptedMessage {
    let mut messages = servers.accepted_messages_to(rcpt);
    assert_eq!(messages.len(), 1, "messages to {rcpt}");
    messages.remove(0)
}

/// Successful AUTHs of `login` at the SMTP server, as its log tells them.
fn smtp_auth_count(servers: &MailServers, login: &str) -> usize {
    let needle = format!(" {login}: ok");
    servers.smtp_log().lines().filter(|line| line.contains("auth ") && line.ends_with(&needle)).count()
}

fn header_names(raw: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(raw);
    let head = text.split("\r\n\r\n").next().unwrap_or_default().to_owned();
    head.lines()
        .filter(|line| !line.starts_with([' ', '\t']))
        .filter_map(|line| line.split_once(':').map(|(name, _)| name.to_ascii_lowercase()))
        .collect()
}

// ---- sending --------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn plain_over_starttls_delivers_with_the_right_headers_and_a_hidden_bcc() {
    let servers = MailServers::shared().await;
    let (login, auth) = password_user(servers);
    let to = new_rcpt("to-");
    let cc = new_rcpt("cc-");
    let bcc = new_rcpt("bcc-");
    let mut outgoing = message(&login, &to, "Quarterly report");
    outgoing.reply_to = Some(Mailbox::new(Some("Original Author"), "author@example.net"));
    outgoing.cc = vec![Mailbox::new(Some("Carbon Copy"), &cc)];
    outgoing.bcc = vec![Mailbox::address(&bcc)];
    outgoing.headers = vec![("X-Postbridge-Test".to_owned(), "yes".to_owned())];
    let message = composed(&outgoing);
    assert_eq!(message.envelope_to, vec![to.clone(), cc.clone(), bcc.clone()]);

    let smtp = client(servers);
    let reply = sent_reply(smtp.send(&starttls(servers), &auth, &message).await, servers);
    assert!(reply.starts_with("250 "), "{reply}");
    assert!(reply.contains("Queued mail for delivery"), "the server's own words: {reply}");

    let accepted = only_message(servers, &to);
    assert_eq!(accepted.auth_user.as_deref(), Some(login.as_str()));
    assert_eq!(accepted.mail_from, login);
    assert_eq!(accepted.rcpt_to, vec![to.clone(), cc.clone(), bcc.clone()]);
    assert_eq!(accepted.raw, message.raw, "the server received the bytes as composed");
    assert!(!header_names(&accepted.raw).contains(&"bcc".to_owned()), "{:?}", header_names(&accepted.raw));
    assert!(!String::from_utf8_lossy(&accepted.raw).contains(&bcc), "the Bcc address appears nowhere in the message");

    let parsed = MessageParser::default().parse(&accepted.raw).expect("parsable message");
    let from = parsed.from().and_then(|a| a.first()).expect("From");
    assert_eq!((from.name(), from.address()), (Some("Sender Example"), Some(login.as_str())));
    assert_eq!(parsed.to().and_then(|a| a.first()).and_then(|a| a.address()), Some(to.as_str()));
    let cc_header = parsed.cc().and_then(|a| a.first()).expect("Cc");
    assert_eq!((cc_header.name(), cc_header.address()), (Some("Carbon Copy"), Some(cc.as_str())));
    let reply_to = parsed.reply_to().and_then(|a| a.first()).expect("Reply-To");
    assert_eq!((reply_to.name(), reply_to.address()), (Some("Original Author"), Some("author@example.net")));
    assert_eq!(parsed.subject(), Some("Quarterly report"));
    assert_eq!(Some(format!("<{}>", parsed.message_id().unwrap_or_default())), Some(outgoing.message_id.clone()));
    assert!(parsed.bcc().is_none());
    assert_eq!(parsed.header_raw("X-Postbridge-Test").map(str::trim), Some("yes"));
    assert!(parsed.date().is_some(), "a Date header is written");
    let text = parsed.body_text(0).expect("text body");
    assert!(text.contains("Body of Quarterly report.") && text.contains("\n.a line starting with a dot"), "{text:?}");
}

#[tokio::test]
async fn plain_over_implicit_tls_delivers() {
    let servers = MailServers::shared().await;
    let (login, auth) = password_user(servers);
    let to = new_rcpt("tls-");
    let message = composed(&message(&login, &to, "Over implicit TLS"));
    let reply = sent_reply(client(servers).send(&implicit_tls(servers), &auth, &message).await, servers);
    assert!(reply.starts_with("250 "), "{reply}");
    let accepted = only_message(servers, &to);
    assert_eq!(accepted.auth_user.as_deref(), Some(login.as_str()));
    assert_eq!(accepted.raw, message.raw);
}

#[tokio::test]
async fn xoauth2_with_a_minted_token_delivers() {
    let servers = MailServers::shared().await;
    let login = new_login();
    servers.add_oauth_user(&login);
    let auth = MailAuth::XOAuth2 { login: login.clone(), access_token: servers.mint_access_token(&login) };
    let smtp = client(servers);
    for endpoint in [starttls(servers), implicit_tls(servers)] {
        let to = new_rcpt("oauth-");
        let message = composed(&message(&login, &to, "Sent with XOAUTH2"));
        sent_reply(smtp.send(&endpoint, &auth, &message).await, servers);
        assert_eq!(only_message(servers, &to).auth_user.as_deref(), Some(login.as_str()));
    }
    assert_eq!(smtp_auth_count(servers, &login), 2, "{}", servers.smtp_log());
    assert!(servers.smtp_log().contains(&format!("auth XOAUTH2 {login}: ok")));
}

#[tokio::test]
async fn attachments_and_html_text_alternatives_survive() {
    let servers = MailServers::shared().await;
    let (login, auth) = password_user(servers);
    let to = new_rcpt("attach-");
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let mut outgoing = message(&login, &to, "Rechnung für März — ✓");
    outgoing.from = Mailbox::new(Some("Zoë Ünicode"), &login);
    outgoing.text = Some("Grüße,\nsee the attachments.\n".to_owned());
    outgoing.html = Some("<p>Grüße, <b>see</b> the attachments.</p>".to_owned());
    outgoing.attachments = vec![
        Attachment { filename: "invoice.pdf".to_owned(), content_type: "application/pdf".to_owned(), bytes: binary.clone() },
        Attachment {
            filename: "notes.txt".to_owned(),
            content_type: "text/plain; charset=utf-8".to_owned(),
            bytes: "line one\r\n.\r\nline three: ü\r\n".as_bytes().to_vec(),
        },
    ];
    let message = composed(&outgoing);
    assert!(message.raw.is_ascii(), "7-bit clean output");
    sent_reply(client(servers).send(&starttls(servers), &auth, &message).await, servers);

    let accepted = only_message(servers, &to);
    assert_eq!(accepted.raw, message.raw);
    let parsed = MessageParser::default().parse(&accepted.raw).expect("parsable message");
    assert_eq!(parsed.subject(), Some("Rechnung für März — ✓"));
    assert_eq!(parsed.from().and_then(|a| a.first()).and_then(|a| a.name()), Some("Zoë Ünicode"));
    // Text parts go out with CRLF line endings (lettre converts them).
    let text = parsed.body_text(0).map(|t| t.replace("\r\n", "\n"));
    assert_eq!(text.as_deref().map(str::trim_end), Some("Grüße,\nsee the attachments."));
    assert_eq!(parsed.body_html(0).as_deref(), Some("<p>Grüße, <b>see</b> the attachments.</p>"));
    assert_eq!(parsed.attachment_count(), 2);
    let pdf = parsed.attachment(0).expect("first attachment");
    assert_eq!(pdf.attachment_name(), Some("invoice.pdf"));
    assert_eq!(pdf.content_type().map(|ct| (ct.ctype(), ct.subtype())), Some(("application", Some("pdf"))));
    assert_eq!(pdf.contents(), binary.as_slice());
    let notes = parsed.attachment(1).expect("second attachment");
    assert_eq!(notes.attachment_name(), Some("notes.txt"));
    assert_eq!(notes.contents(), "line one\r\n.\r\nline three: ü\r\n".as_bytes());
    let text = String::from_utf8_lossy(&accepted.raw).to_ascii_lowercase();
    assert!(text.contains("multipart/mixed") && text.contains("multipart/alternative"), "{text}");
}

// ---- failures -------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_wrong_password_is_an_auth_error() {
    let servers = MailServers::shared().await;
    let (login, _) = password_user(servers);
    let to = new_rcpt("never-");
    let message = composed(&message(&login, &to, "Wrong password"));
    let err = client(servers).send(&starttls(servers), &password(&login, "not-the-password"), &message).await.unwrap_err();
    match &err {
        SendError::Auth { code: Some(535), message } => {
            assert!(message.contains("5.7.3 Authentication unsuccessful"), "{message}");
            assert!(!message.contains("not-the-password"), "{message}");
        }
        other => panic!("expected an Auth error, got {other:?}"),
    }
    assert!(!err.is_retryable());
    assert!(servers.accepted_messages_to(&to).is_empty());
}

#[tokio::test]
async fn disabled_smtp_auth_is_an_auth_error_with_the_servers_words() {
    let servers = MailServers::shared().await;
    let (login, auth) = password_user(servers);
    servers.disable_smtp_auth(&login);
    let message = composed(&message(&login, &new_rcpt("never-"), "SMTP AUTH disabled"));
    match client(servers).send(&starttls(servers), &auth, &message).await {
        Err(SendError::Auth { code: Some(535), message }) => {
            assert!(message.contains("5.7.139"), "{message}");
            assert!(message.contains("SmtpClientAuthentication is disabled for the Tenant"), "{message}");
        }
        other => panic!("expected an Auth error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_tempfail_recipient_is_transient_451_and_the_connection_stays_usable() {
    let servers = MailServers::shared().await;
    let (login, auth) = password_user(servers);
    let smtp = client(servers);
    let to = new_rcpt("tempfail+");
    let message = composed(&message(&login, &to, "Try again"));
    let err = smtp.send(&starttls(servers), &auth, &message).await.unwrap_err();
    match &err {
        SendError::Transient { step: MailStep::Command, code: Some(451), message } => {
            assert!(message.contains("RCPT TO") && message.contains("4.3.0 Try again later"), "{message}");
        }
        other => panic!("expected Transient 451, got {other:?}"),
    }
    assert!(err.is_retryable());
    assert_eq!(smtp.idle_connections(), 1, "a clean refusal leaves the connection reusable");

    // The next message goes over the same connection (RSET clears the failed transaction).
    let ok_to = new_rcpt("after-tempfail-");
    sent_reply(smtp.send(&starttls(servers), &auth, &composed(&message_for(&login, &ok_to))).await, servers);
    assert_eq!(smtp.connections_opened(), 1);
    assert_eq!(only_message(servers, &ok_to).rcpt_to, vec![ok_to]);
}

fn message_for(login: &str, to: &str) -> OutgoingMessage {
    message(login, to, "Follow-up")
}

#[tokio::test]
async fn a_refused_recipient_does_not_stop_the_others_and_all_refused_is_permanent_550() {
    let servers = MailServers::shared().await;
    let (login, auth) = password_user(servers);
    let smtp = client(servers);
    let good = new_rcpt("good-");
    let refused = new_rcpt("reject+");
    let mut outgoing = message(&login, &good, "Partly refused");
    outgoing.cc = vec![Mailbox::address(&refused)];
    let sent = smtp.send(&starttls(servers), &auth, &composed(&outgoing)).await.expect("sent to the good recipient");
    assert!(sent.is_partial());
    let answers: Vec<_> = sent.recipients().iter().map(|r| (r.recipient.clone(), r.accepted, r.reply.clone())).collect();
    assert_eq!(
        answers,
        vec![
            (good.clone(), true, "250 2.1.5 Accepted".to_owned()),
            (refused.clone(), false, "550 5.1.1 No such user".to_owned())
        ]
    );
    assert_eq!(only_message(servers, &good).rcpt_to, vec![good.clone()], "delivered to the accepted recipient only");

    // Nobody accepted: no DATA, a permanent failure naming the refusal; the connection stays usable.
    let nobody = message(&login, &new_rcpt("reject+"), "Refused");
    match smtp.send(&starttls(servers), &auth, &composed(&nobody)).await {
        Err(SendError::Permanent { step: MailStep::Command, code: Some(550), message }) => {
            assert!(message.contains("every recipient was refused") && message.contains("5.1.1 No such user"), "{message}");
        }
        other => panic!("expected Permanent 550, got {other:?}"),
    }
    let after = new_rcpt("after-");
    smtp.send(&starttls(servers), &auth, &composed(&message(&login, &after, "After")))
        .await
        .expect("the pooled connection works");
    assert_eq!(smtp.connections_opened(), 1, "reused after RSET");
}

#[tokio::test]
async fn a_connection_dropped_after_the_content_is_unknown() {
    let servers = MailServers::shared().await;
    let (login, auth) = password_user(servers);
    let smtp = client(servers);
    let message = composed(&message(&login, &new_rcpt("dropafterdata+"), "Dropped"));
    let err = smtp.send(&starttls(servers), &auth, &message).await.unwrap_err();
    assert!(matches!(err, SendError::Unknown { .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert_eq!(smtp.idle_connections(), 0, "a connection in an unknown state is never reused");
}

#[tokio::test]
async fn a_guard_that_refuses_loopback_never_connects() {
    let servers = MailServers::shared().await;
    let (login, auth) = password_user(servers);
    let strict = SmtpClient::new(NetGuard::new(false), Some(servers.ca_pem().as_bytes()), config()).unwrap();
    let message = composed(&message(&login, &new_rcpt("guarded-"), "Guarded"));
    match strict.send(&starttls(servers), &auth, &message).await {
        Err(SendError::Permanent { step: MailStep::Forbidden, code: None, message }) => {
            assert!(message.contains("loopback"), "{message}");
        }
        other => panic!("expected a policy refusal, got {other:?}"),
    }
    let err = strict.test_connection(&implicit_tls(servers), &auth).await.unwrap_err();
    assert_eq!(err.step, MailStep::Forbidden, "{err}");
    assert_eq!(strict.connections_opened(), 0);
    assert_eq!(smtp_auth_count(servers, &login), 0);
}

#[tokio::test]
async fn a_server_certificate_from_an_untrusted_ca_is_a_tls_error() {
    let servers = MailServers::shared().await;
    let (login, auth) = password_user(servers);
    let untrusting = SmtpClient::new(NetGuard::new(true), None, config()).unwrap();
    for endpoint in [starttls(servers), implicit_tls(servers)] {
        let err = untrusting.test_connection(&endpoint, &auth).await.unwrap_err();
        assert_eq!(err.step, MailStep::Tls, "{endpoint:?}: {err}");
        assert!(err.message.to_lowercase().contains("certificate"), "{err}");
        let message = composed(&message(&login, &new_rcpt("untrusted-"), "Untrusted"));
        match untrusting.send(&endpoint, &auth, &message).await {
            Err(SendError::Transient { step: MailStep::Tls, .. }) => {}
            other => panic!("expected a TLS failure, got {other:?}"),
        }
    }
    assert_eq!(smtp_auth_count(servers, &login), 0, "no credentials were sent");
}

#[tokio::test]
async fn header_injection_and_reserved_headers_are_refused() {
    let servers = MailServers::shared().await;
    let login = new_login();
    let to = new_rcpt("inject-");
    let base = message(&login, &to, "Injection");

    let mut m = base.clone();
    m.headers = vec![("X-Note".to_owned(), "hello\r\nBcc: victim@example.com".to_owned())];
    assert_eq!(compose(&m).unwrap_err(), ComposeError::ControlCharacters { field: "headers[0]".to_owned() });
    let mut m = base.clone();
    m.subject = "Hi\nBcc: victim@example.com".to_owned();
    assert_eq!(compose(&m).unwrap_err().field(), "subject");
    let mut m = base.clone();
    m.from = Mailbox::new(Some("Evil\r\nTo: victim@example.com"), &login);
    assert_eq!(compose(&m).unwrap_err().field(), "from.name");
    let mut m = base.clone();
    m.to = vec![Mailbox::address("victim@example.com>\r\nRCPT TO:<x@example.com")];
    assert!(matches!(compose(&m).unwrap_err(), ComposeError::InvalidAddress { .. }));
    let mut m = base.clone();
    m.attachments = vec![Attachment {
        filename: "a.txt\r\nContent-Type: text/html".to_owned(),
        content_type: "text/plain".to_owned(),
        bytes: b"x".to_vec(),
    }];
    assert_eq!(compose(&m).unwrap_err().field(), "attachments[0].filename");
    for name in ["From", "to", "Message-ID", "content-type", "Content-Transfer-Encoding", "MIME-Version", "Bcc"] {
        let mut m = base.clone();
        m.headers = vec![(name.to_owned(), "x".to_owned())];
        assert!(matches!(compose(&m).unwrap_err(), ComposeError::ReservedHeader { .. }), "{name}");
    }
    let mut m = base.clone();
    m.headers = vec![("X-Colon:Name".to_owned(), "x".to_owned())];
    assert!(matches!(compose(&m).unwrap_err(), ComposeError::InvalidHeaderName { .. }));
    let mut m = base.clone();
    m.headers = vec![("X-A".to_owned(), "1".to_owned()), ("x-a".to_owned(), "2".to_owned())];
    assert!(matches!(compose(&m).unwrap_err(), ComposeError::DuplicateHeader { .. }));
    let mut m = base.clone();
    m.attachments = vec![Attachment { filename: "a.bin".to_owned(), content_type: "not a type".to_owned(), bytes: vec![1] }];
    assert!(matches!(compose(&m).unwrap_err(), ComposeError::InvalidContentType { .. }));
    let mut m = base.clone();
    m.to.clear();
    assert_eq!(compose(&m).unwrap_err(), ComposeError::NoRecipients);

    // Allowed: threading headers and a list header.
    let mut m = base;
    m.headers = vec![
        ("In-Reply-To".to_owned(), "<parent@example.com>".to_owned()),
        ("List-Unsubscribe".to_owned(), "<mailto:unsubscribe@example.com>".to_owned()),
    ];
    let raw = String::from_utf8(compose(&m).unwrap().raw).unwrap();
    assert!(raw.contains("In-Reply-To: <parent@example.com>\r\n"), "{raw}");
    assert!(servers.accepted_messages_to(&to).is_empty());
}

// ---- connection reuse -------------------------------------------------------------------------------------------------

#[tokio::test]
async fn fifty_messages_in_a_row_share_one_authenticated_connection() {
    let servers = MailServers::shared().await;
    let (login, auth) = password_user(servers);
    let smtp = client(servers);
    let to = new_rcpt("bulk-");
    let endpoint = starttls(servers);
    let started = Instant::now();
    for i in 0..50 {
        let message = composed(&message(&login, &to, &format!("Bulk {i}")));
        sent_reply(smtp.send(&endpoint, &auth, &message).await, servers);
    }
    let elapsed = started.elapsed();
    eprintln!("50 messages over one pooled connection in {elapsed:?}");
    let arrived = servers.wait_for_messages_to(&to, 50, Duration::from_secs(10)).await;
    assert_eq!(arrived.len(), 50);
    assert_eq!(smtp.connections_opened(), 1);
    assert_eq!(smtp_auth_count(servers, &login), 1, "one AUTH for 50 messages\n{}", servers.smtp_log());
    assert_eq!(smtp.idle_connections(), 1);
    assert_eq!(smtp.close_idle().await, 1);
    assert_eq!(smtp.idle_connections(), 0);
}

#[tokio::test]
async fn concurrent_sends_use_separate_connections_and_a_changed_credential_a_new_one() {
    let servers = MailServers::shared().await;
    let (login, auth) = password_user(servers);
    let smtp = client(servers);
    let to = new_rcpt("parallel-");
    let endpoint = starttls(servers);
    let sends = (0..4).map(|i| {
        let (smtp, endpoint, auth) = (smtp.clone(), endpoint.clone(), auth.clone());
        let message = composed(&message(&login, &to, &format!("Parallel {i}")));
        async move { smtp.send(&endpoint, &auth, &message).await }
    });
    for outcome in futures::future::join_all(sends).await {
        sent_reply(outcome, servers);
    }
    assert_eq!(servers.accepted_messages_to(&to).len(), 4);
    let opened = smtp.connections_opened();
    assert!((1..=4).contains(&opened), "{opened}");
    assert_eq!(smtp.idle_connections() as u64, opened);

    // A new password (e.g. after an account update) never rides on a connection made with the old one.
    let new_secret = format!("new-{}", Uuid::new_v4().simple());
    servers.add_password_user(&login, &new_secret);
    sent_reply(
        smtp.send(&endpoint, &password(&login, &new_secret), &composed(&message(&login, &to, "New password"))).await,
        servers,
    );
    assert_eq!(smtp.connections_opened(), opened + 1);
}

#[tokio::test]
async fn an_idle_timeout_of_zero_disables_reuse() {
    let servers = MailServers::shared().await;
    let (login, auth) = password_user(servers);
    let smtp = SmtpClient::new(
        NetGuard::new(true),
        Some(servers.ca_pem().as_bytes()),
        SmtpConfig { idle_timeout: Duration::ZERO, ..config() },
    )
    .unwrap();
    let to = new_rcpt("noreuse-");
    for i in 0..2 {
        sent_reply(
            smtp.send(&implicit_tls(servers), &auth, &composed(&message(&login, &to, &format!("No reuse {i}")))).await,
            servers,
        );
    }
    assert_eq!(smtp.connections_opened(), 2);
    assert_eq!(smtp_auth_count(servers, &login), 2);
}

// ---- test & confirm ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn test_connection_succeeds_with_a_password_and_with_a_token() {
    let servers = MailServers::shared().await;
    let (login, auth) = password_user(servers);
    let smtp = client(servers);
    let info = smtp.test_connection(&starttls(servers), &auth).await.expect("password test");
    assert_eq!(info.mechanism, "PLAIN");
    assert!(info.encrypted);
    assert!(!info.name.is_empty());

    let oauth_login = new_login();
    let token = MailAuth::XOAuth2 { login: oauth_login.clone(), access_token: servers.mint_access_token(&oauth_login) };
    let info = smtp.test_connection(&implicit_tls(servers), &token).await.expect("token test");
    assert_eq!(info.mechanism, "XOAUTH2");
    assert_eq!(smtp.idle_connections(), 0, "test connections are never pooled");
    assert_eq!(smtp_auth_count(servers, &login), 1);
}

#[tokio::test]
async fn test_connection_names_the_failing_step_and_the_servers_words() {
    let servers = MailServers::shared().await;
    let (login, _) = password_user(servers);
    let smtp = client(servers);

    let err = smtp.test_connection(&starttls(servers), &password(&login, "wrong")).await.unwrap_err();
    assert_eq!((err.step, err.code), (MailStep::Auth, Some(535)), "{err}");
    assert!(err.message.contains("5.7.3 Authentication unsuccessful"), "{err}");
    assert!(err.is_auth_failure());

    let oauth_login = new_login();
    let bad_token = MailAuth::XOAuth2 { login: oauth_login.clone(), access_token: "not-a-valid-token".to_owned() };
    let err = smtp.test_connection(&starttls(servers), &bad_token).await.unwrap_err();
    assert_eq!((err.step, err.code), (MailStep::Auth, Some(535)), "{err}");
    assert!(!err.message.contains("not-a-valid-token"), "{err}");

    let disabled = new_login();
    servers.add_password_user(&disabled, "pw");
    servers.disable_smtp_auth(&disabled);
    let err = smtp.test_connection(&implicit_tls(servers), &password(&disabled, "pw")).await.unwrap_err();
    assert_eq!(err.step, MailStep::Auth);
    assert!(err.message.contains("5.7.139"), "{err}");

    // Nothing listens on a port that was just free.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = smtp.test_connection(&Endpoint::new("127.0.0.1", port, Security::Tls), &password(&login, "x")).await.unwrap_err();
    assert_eq!(err.step, MailStep::Connect, "{err}");

    // Implicit TLS spoken to the STARTTLS port: no TLS handshake answer.
    let err =
        smtp.test_connection(&Endpoint::new(servers.host(), servers.smtp_port(), Security::Tls), &password(&login, "x")).await;
    assert_eq!(err.unwrap_err().step, MailStep::Tls);

    let err = smtp.test_connection(&Endpoint::new("no-such-host.invalid", 587, Security::Starttls), &password(&login, "x")).await;
    assert_eq!(err.unwrap_err().step, MailStep::Dns);
}

#[tokio::test]
async fn from_settings_trusts_the_extra_ca_file() {
    let servers = MailServers::shared().await;
    let (_, auth) = password_user(servers);
    let mut env = TestEnv::new();
    env.set("EXTRA_CA_FILE", servers.ca_file().display().to_string());
    let smtp = SmtpClient::from_settings(&env.settings(), config()).expect("client from settings");
    smtp.test_connection(&starttls(servers), &auth).await.expect("STARTTLS trusted through the extra CA file");
    smtp.test_connection(&implicit_tls(servers), &auth).await.expect("implicit TLS trusted through the extra CA file");

    let missing = std::env::temp_dir().join(format!("postbridge-missing-ca-{}.pem", Uuid::new_v4().simple()));
    env.set("EXTRA_CA_FILE", missing.display().to_string());
    assert!(SmtpClient::from_settings(&env.settings(), config()).is_err());
}

// ---- behaviours shown with a scripted server ------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Script {
    /// Accepts a message, then closes the connection (as a server does on its idle timeout).
    CloseAfterMessage,
    /// Reads the message content and never answers.
    SilentAfterContent,
    /// Answers XOAUTH2 with a 334 JSON error challenge and, after the client's empty line, 535 (Gmail's way).
    XOAuth2Challenge,
    /// Accepts the message with a long reply holding a NUL (a hostile server; lettre refuses lines much longer).
    NulInReply,
    /// Answers EHLO with a reply line that never ends (a hostile server filling the client's memory).
    EndlessReply,
    /// Offers STARTTLS and answers it with `220` followed at once by a plaintext `250` (what an attacker on the path
    /// injects, hoping it is read as the encrypted answer to the next EHLO, without AUTH).
    InjectedAfterStarttls,
}

/// A plain-text SMTP server on loopback that follows `script`; counts connections.
async fn scripted_server(script: Script) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read);
                let _ = write.write_all(b"220 scripted ESMTP\r\n").await;
                let mut line = String::new();
                let mut in_data = false;
                while lines.read_line(&mut line).await.unwrap_or(0) > 0 {
                    let command = line.trim_end().to_owned();
                    line.clear();
                    if in_data {
                        if command == "." {
                            in_data = false;
                            match script {
                                Script::SilentAfterContent => {
                                    tokio::time::sleep(Duration::from_secs(30)).await;
                                    return;
                                }
                                Script::CloseAfterMessage => {
                                    let _ = write.write_all(b"250 2.0.0 queued\r\n").await;
                                    return;
                                }
                                Script::XOAuth2Challenge | Script::EndlessReply | Script::InjectedAfterStarttls => {
                                    let _ = write.write_all(b"250 2.0.0 queued\r\n").await;
                                }
                                Script::NulInReply => {
                                    let reply = format!("250 2.0.0 queued\0as {}\r\n", "x".repeat(800));
                                    let _ = write.write_all(reply.as_bytes()).await;
                                }
                            }
                        }
                        continue;
                    }
                    let upper = command.to_ascii_uppercase();
                    if upper.starts_with("EHLO") && script == Script::EndlessReply {
                        let chunk = vec![b'x'; 64 * 1024];
                        let _ = write.write_all(b"250-").await;
                        while write.write_all(&chunk).await.is_ok() {}
                        return;
                    }
                    if script == Script::InjectedAfterStarttls {
                        let reply: &[u8] = if upper.starts_with("EHLO") {
                            b"250-scripted\r\n250 STARTTLS\r\n"
                        } else if upper.starts_with("STARTTLS") {
                            b"220 2.0.0 go ahead\r\n250 scripted\r\n"
                        } else {
                            b"500 5.5.1 what\r\n"
                        };
                        let _ = write.write_all(reply).await;
                        continue;
                    }
                    let reply: &[u8] = if upper.starts_with("EHLO") {
                        b"250-scripted\r\n250-AUTH PLAIN XOAUTH2\r\n250 8BITMIME\r\n"
                    } else if upper.starts_with("AUTH XOAUTH2") && script == Script::XOAuth2Challenge {
                        // base64 of {"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}
                        b"334 eyJzdGF0dXMiOiI0MDAiLCJzY2hlbWVzIjoiQmVhcmVyIiwic2NvcGUiOiJodHRwczovL21haWwuZ29vZ2xlLmNvbS8ifQ==\r\n"
                    } else if command.is_empty() && script == Script::XOAuth2Challenge {
                        b"535 5.7.8 Username and Password not accepted.\r\n"
                    } else if upper.starts_with("AUTH") {
                        b"235 2.7.0 Accepted\r\n"
                    } else if upper.starts_with("DATA") {
                        in_data = true;
                        b"354 go ahead\r\n"
                    } else if upper.starts_with("QUIT") {
                        let _ = write.write_all(b"221 2.0.0 bye\r\n").await;
                        return;
                    } else {
                        b"250 2.0.0 OK\r\n"
                    };
                    if write.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, connections)
}

#[tokio::test]
async fn a_pooled_connection_the_server_closed_is_replaced_transparently() {
    let (port, connections) = scripted_server(Script::CloseAfterMessage).await;
    let smtp = SmtpClient::new(NetGuard::new(true), None, config()).unwrap();
    let endpoint = Endpoint::new("127.0.0.1", port, Security::None);
    let auth = password("someone@example.com", "pw");
    let message = composed(&message("someone@example.com", "rcpt@example.org", "Plain"));
    for _ in 0..3 {
        let outcome = smtp.send(&endpoint, &auth, &message).await.expect("sent");
        assert_eq!(outcome.reply(), "250 2.0.0 queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(connections.load(Ordering::SeqCst), 3);
    assert_eq!(smtp.connections_opened(), 3);
}

#[tokio::test]
async fn no_reply_after_the_content_times_out_as_unknown() {
    let (port, _) = scripted_server(Script::SilentAfterContent).await;
    let quick = SmtpConfig { timeouts: Timeouts { connect: Duration::from_secs(5), io: Duration::from_secs(1) }, ..config() };
    let smtp = SmtpClient::new(NetGuard::new(true), None, quick).unwrap();
    let message = composed(&message("someone@example.com", "rcpt@example.org", "Silent"));
    let started = Instant::now();
    let err = smtp
        .send(&Endpoint::new("127.0.0.1", port, Security::None), &password("someone@example.com", "pw"), &message)
        .await
        .unwrap_err();
    match &err {
        SendError::Unknown { message } => assert!(message.contains("after the message content was sent"), "{message}"),
        other => panic!("expected Unknown, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(smtp.idle_connections(), 0);
}

#[tokio::test]
async fn an_xoauth2_error_challenge_ends_in_the_servers_535() {
    let (port, _) = scripted_server(Script::XOAuth2Challenge).await;
    let smtp = SmtpClient::new(NetGuard::new(true), None, config()).unwrap();
    let endpoint = Endpoint::new("127.0.0.1", port, Security::None);
    let auth = MailAuth::XOAuth2 { login: "someone@example.com".to_owned(), access_token: "expired-token".to_owned() };
    let err = smtp.test_connection(&endpoint, &auth).await.unwrap_err();
    assert_eq!((err.step, err.code), (MailStep::Auth, Some(535)), "{err}");
    assert!(err.message.contains("5.7.8 Username and Password not accepted"), "{err}");
    assert!(err.message.contains("\"status\":\"400\""), "the challenge's detail is kept: {err}");
    assert!(!err.message.contains("expired-token"));
    let message = composed(&message("someone@example.com", "rcpt@example.org", "OAuth"));
    assert!(matches!(smtp.send(&endpoint, &auth, &message).await, Err(SendError::Auth { code: Some(535), .. })));
}

#[tokio::test]
async fn a_reply_with_a_nul_and_no_end_is_kept_bounded_and_storable() {
    let (port, _) = scripted_server(Script::NulInReply).await;
    let smtp = SmtpClient::new(NetGuard::new(true), None, config()).unwrap();
    let endpoint = Endpoint::new("127.0.0.1", port, Security::None);
    let message = composed(&message("someone@example.com", "rcpt@example.org", "Hostile"));
    let outcome = smtp.send(&endpoint, &password("someone@example.com", "pw"), &message).await.expect("sent");
    let reply = outcome.reply();
    assert!(reply.starts_with("250 2.0.0 queued\u{FFFD}as xxx"), "{reply}");
    assert!(!reply.contains('\0') && reply.len() <= 504, "{} bytes", reply.len());
}

#[tokio::test]
async fn a_reply_that_never_ends_is_cut_at_the_bound_not_read_until_the_timeout() {
    let (port, _) = scripted_server(Script::EndlessReply).await;
    let smtp = SmtpClient::new(NetGuard::new(true), None, config()).unwrap();
    let message = composed(&message("someone@example.com", "rcpt@example.org", "Endless"));
    let started = Instant::now();
    let err = smtp
        .send(&Endpoint::new("127.0.0.1", port, Security::None), &password("someone@example.com", "pw"), &message)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("without an answer from the client"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cut at the bound, not at the 15 s I/O timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(smtp.idle_connections(), 0);
}

#[tokio::test]
async fn plaintext_after_the_starttls_reply_is_refused_before_the_handshake() {
    let (port, _) = scripted_server(Script::InjectedAfterStarttls).await;
    let smtp = SmtpClient::new(NetGuard::new(true), None, config()).unwrap();
    let message = composed(&message("someone@example.com", "rcpt@example.org", "Injected"));
    let err = smtp
        .send(&Endpoint::new("127.0.0.1", port, Security::Starttls), &password("someone@example.com", "pw"), &message)
        .await
        .unwrap_err();
    // A TLS failure, tried again later: not a refusal of the credentials that would put the account in error.
    match &err {
        SendError::Transient { step: MailStep::Tls, message, .. } => {
            assert!(message.contains("before the TLS handshake"), "{message}")
        }
        other => panic!("expected a transient TLS failure, got {other:?}"),
    }
}
