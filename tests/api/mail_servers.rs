//! Proves the mail-server test infrastructure (`postbridge_tests::mail`): the private Dovecot (IMAP, POP3) and the Node
//! SMTP server accept what real servers accept and refuse what they refuse, over TLS trusted through the test CA,
//! with passwords and with XOAUTH2 tokens checked at the OAuth provider stand-in. Raw protocol exchanges only.

use postbridge_tests::mail::{
    oauthbearer_initial_response, plain_initial_response, xoauth2_initial_response, MailServers, RawConnection,
};
use uuid::Uuid;

fn new_login() -> String {
    format!("user-{}@example.com", Uuid::new_v4().simple())
}

fn message(from: &str, to: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: <{}@example.com>\r\n\
         Date: Mon, 2 Jun 2025 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Hello from the mail server tests.\r\n.leading dot line\r\n",
        Uuid::new_v4().simple()
    )
    .into_bytes()
}

async fn imaps(servers: &MailServers) -> RawConnection {
    let mut conn = RawConnection::tls(servers, servers.imaps_port()).await.expect("IMAPS connects");
    let greeting = conn.read_until(|l| l.contains("ready")).await.expect("IMAP greeting");
    assert!(greeting.last().unwrap().starts_with("* OK"), "{greeting:?}");
    conn
}

fn last(lines: &[String]) -> &str {
    lines.last().map(String::as_str).unwrap_or("")
}

/// `AUTHENTICATE XOAUTH2` with an initial response; a failed one is answered with a `+` challenge (an error JSON) that
/// the client acknowledges with an empty line before the tagged NO.
async fn imap_xoauth2(conn: &mut RawConnection, login: &str, token: &str) -> Vec<String> {
    conn.send_line(&format!("x AUTHENTICATE XOAUTH2 {}", xoauth2_initial_response(login, token))).await.unwrap();
    let mut lines = conn.read_until(|l| l.starts_with("x ") || l.starts_with('+')).await.unwrap();
    if last(&lines).starts_with('+') {
        conn.send_line("").await.unwrap();
        lines.extend(conn.read_until(|l| l.starts_with("x ")).await.unwrap());
    }
    lines
}

#[tokio::test]
async fn shared_servers_start_once_and_listen_on_distinct_ports() {
    let servers = MailServers::shared().await;
    let again = MailServers::shared().await;
    assert!(std::ptr::eq(servers, again));
    let mut ports = vec![
        servers.imap_port(),
        servers.imaps_port(),
        servers.pop3_port(),
        servers.pop3s_port(),
        servers.smtp_port(),
        servers.smtps_port(),
    ];
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 6);
    assert!(servers.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    eprintln!("mail servers started in {:?} (run folder {})", servers.startup_time(), servers.run_dir().display());
}

#[tokio::test]
async fn imaps_login_with_a_password_user() {
    let servers = MailServers::shared().await;
    let login = new_login();
    servers.add_password_user(&login, "correct-horse");

    let mut conn = imaps(servers).await;
    let reply = conn.imap("a1", &format!("LOGIN {login} wrong-password")).await.unwrap();
    assert_eq!(last(&reply), "a1 NO [AUTHENTICATIONFAILED] Authentication failed.", "{reply:?}");

    let reply = conn.imap("a2", &format!("LOGIN {login} correct-horse")).await.unwrap();
    assert!(last(&reply).starts_with("a2 OK"), "{reply:?}\n{}", servers.dovecot_log());
    let reply = conn.imap("a3", "SELECT INBOX").await.unwrap();
    assert!(reply.iter().any(|l| l == "* 0 EXISTS"), "{reply:?}");
    assert!(last(&reply).starts_with("a3 OK"), "{reply:?}");
    conn.imap("a4", "LOGOUT").await.unwrap();
}

#[tokio::test]
async fn imap_starttls_then_login_is_logged_as_tls() {
    let servers = MailServers::shared().await;
    let login = new_login();
    servers.add_password_user(&login, "pw-starttls");

    let mut conn = RawConnection::plain(servers, servers.imap_port()).await.unwrap();
    let greeting = conn.read_until(|l| l.contains("ready")).await.unwrap();
    assert!(last(&greeting).contains(" STARTTLS "), "{greeting:?}");
    let reply = conn.imap("b1", "STARTTLS").await.unwrap();
    assert!(last(&reply).starts_with("b1 OK"), "{reply:?}");
    let mut conn = conn.start_tls().await.expect("TLS after STARTTLS");
    let reply = conn.imap("b2", &format!("LOGIN {login} pw-starttls")).await.unwrap();
    assert!(last(&reply).starts_with("b2 OK"), "{reply:?}");
    let logins = servers.dovecot_logins(&login, 1).await;
    assert_eq!(logins.len(), 1, "{logins:?}");
    assert_eq!((logins[0].protocol.as_str(), logins[0].method.as_str(), logins[0].tls), ("imap", "PLAIN", true));
}

#[tokio::test]
async fn imaps_xoauth2_with_a_minted_token_and_with_bad_tokens() {
    let servers = MailServers::shared().await;
    let login = new_login();
    servers.add_oauth_user(&login);
    let token = servers.mint_access_token(&login);

    let mut conn = imaps(servers).await;
    let reply = imap_xoauth2(&mut conn, &login, &token).await;
    assert!(last(&reply).starts_with("x OK"), "{reply:?}\n{}", servers.dovecot_log());
    let reply = conn.imap("s", "SELECT INBOX").await.unwrap();
    assert!(last(&reply).starts_with("s OK"), "{reply:?}");
    // OAUTHBEARER too.
    let mut conn = imaps(servers).await;
    let reply =
        conn.imap("o", &format!("AUTHENTICATE OAUTHBEARER {}", oauthbearer_initial_response(&login, &token))).await.unwrap();
    assert!(last(&reply).starts_with("o OK"), "{reply:?}");

    // The user's own token after revocation, a token of someone else, and an unknown token (concurrently: each failure
    // is answered after half a second).
    servers.provider().revoke_user(&login);
    let other = servers.mint_access_token(&new_login());
    let attempt = |bad: String| {
        let login = login.clone();
        async move {
            let mut conn = imaps(servers).await;
            imap_xoauth2(&mut conn, &login, &bad).await
        }
    };
    let (revoked, others, unknown) =
        tokio::join!(attempt(token.clone()), attempt(other), attempt("not-a-token-the-provider-issued".to_owned()));
    for reply in [revoked, others, unknown] {
        assert_eq!(last(&reply), "x NO [AUTHENTICATIONFAILED] Authentication failed.", "{reply:?}");
    }
}

#[tokio::test]
async fn seeded_messages_are_visible_over_imap() {
    let servers = MailServers::shared().await;
    let login = new_login();
    servers.add_password_user(&login, "pw-seed");
    let inbox: Vec<Vec<u8>> = (1..=25).map(|i| message("a@example.net", &login, &format!("Inbox {i}"))).collect();
    servers.seed_messages(&login, "INBOX", &inbox);
    servers.seed_messages(&login, "Projects/2025", &[message("b@example.net", &login, "Nested")]);
    assert_eq!(servers.mailbox_count(&login, "INBOX"), 25);

    let mut conn = imaps(servers).await;
    let reply = conn.imap("l", &format!("LOGIN {login} pw-seed")).await.unwrap();
    assert!(last(&reply).starts_with("l OK"), "{reply:?}\n{}", servers.dovecot_log());
    let reply = conn.imap("s", "SELECT INBOX").await.unwrap();
    assert!(reply.iter().any(|l| l == "* 25 EXISTS"), "{reply:?}");
    // UIDs follow the seeding order.
    let reply = conn.imap("f", "UID FETCH 1,25 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])").await.unwrap();
    let text = reply.join("\n");
    assert!(text.contains("Subject: Inbox 1\n") || text.contains("Subject: Inbox 1\r"), "{text}");
    assert!(text.contains("Subject: Inbox 25"), "{text}");
    let reply = conn.imap("e", "EXAMINE Projects/2025").await.unwrap();
    assert!(reply.iter().any(|l| l == "* 1 EXISTS"), "{reply:?}");

    // Seen on disk once Dovecot moved them to cur/ and a client set \Seen.
    assert!(last(&conn.imap("s2", "SELECT INBOX").await.unwrap()).starts_with("s2 OK"));
    assert!(last(&conn.imap("st", "UID STORE 1 +FLAGS.SILENT (\\Seen)").await.unwrap()).starts_with("st OK"));
    let stored = servers.mailbox_messages(&login, "INBOX");
    assert_eq!(stored.len(), 25);
    assert_eq!(stored.iter().filter(|m| m.flags.contains('S')).count(), 1);
}

#[tokio::test]
async fn pop3s_user_pass_and_stat() {
    let servers = MailServers::shared().await;
    let login = new_login();
    servers.add_password_user(&login, "pw-pop3");
    let messages: Vec<Vec<u8>> = (1..=3).map(|i| message("c@example.net", &login, &format!("Pop {i}"))).collect();
    servers.seed_messages(&login, "INBOX", &messages);

    let mut conn = RawConnection::tls(servers, servers.pop3s_port()).await.unwrap();
    let greeting = conn.read_until(|l| l.contains("ready")).await.unwrap();
    assert!(last(&greeting).starts_with("+OK"), "{greeting:?}");
    conn.send_line(&format!("USER {login}")).await.unwrap();
    assert!(conn.read_line().await.unwrap().starts_with("+OK"));
    conn.send_line("PASS wrong").await.unwrap();
    assert_eq!(conn.read_line().await.unwrap(), "-ERR [AUTH] Authentication failed.");

    conn.send_line(&format!("USER {login}")).await.unwrap();
    assert!(conn.read_line().await.unwrap().starts_with("+OK"));
    conn.send_line("PASS pw-pop3").await.unwrap();
    let reply = conn.read_line().await.unwrap();
    assert!(reply.starts_with("+OK"), "{reply}\n{}", servers.dovecot_log());
    conn.send_line("STAT").await.unwrap();
    let stat = conn.read_line().await.unwrap();
    let total: usize = messages.iter().map(Vec::len).sum();
    assert_eq!(stat, format!("+OK 3 {total}"));
    conn.send_line("QUIT").await.unwrap();
    assert!(conn.read_line().await.unwrap().starts_with("+OK"));
}

#[tokio::test]
async fn pop3_stls_then_xoauth2() {
    let servers = MailServers::shared().await;
    let login = new_login();
    servers.add_oauth_user(&login);
    let token = servers.mint_access_token(&login);

    let mut conn = RawConnection::plain(servers, servers.pop3_port()).await.unwrap();
    conn.read_until(|l| l.contains("ready")).await.unwrap();
    conn.send_line("STLS").await.unwrap();
    assert!(conn.read_line().await.unwrap().starts_with("+OK"));
    let mut conn = conn.start_tls().await.unwrap();
    conn.send_line(&format!("AUTH XOAUTH2 {}", xoauth2_initial_response(&login, &token))).await.unwrap();
    let reply = conn.read_line().await.unwrap();
    assert!(reply.starts_with("+OK"), "{reply}\n{}", servers.dovecot_log());
    conn.send_line("STAT").await.unwrap();
    assert_eq!(conn.read_line().await.unwrap(), "+OK 0 0");
}

// ---- SMTP -----------------------------------------------------------------------------------------------------------

/// Connects to the STARTTLS port, checks the pre-TLS EHLO, upgrades and returns the post-TLS EHLO lines.
async fn smtp_starttls(servers: &MailServers) -> (RawConnection, Vec<String>) {
    let mut conn = RawConnection::plain(servers, servers.smtp_port()).await.unwrap();
    let (code, _) = conn.smtp_reply().await.unwrap();
    assert_eq!(code, 220);
    let (code, ehlo) = conn.smtp("EHLO client.example.com").await.unwrap();
    assert_eq!(code, 250);
    assert!(ehlo.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
    assert!(!ehlo.iter().any(|l| l.starts_with("AUTH")), "AUTH only after STARTTLS: {ehlo:?}");
    let (code, reply) = conn.smtp("STARTTLS").await.unwrap();
    assert_eq!(code, 220, "{reply:?}");
    let mut conn = conn.start_tls().await.expect("TLS after STARTTLS");
    let (code, ehlo) = conn.smtp("EHLO client.example.com").await.unwrap();
    assert_eq!(code, 250);
    (conn, ehlo)
}

async fn smtp_xoauth2(conn: &mut RawConnection, login: &str, token: &str) -> (u16, Vec<String>) {
    conn.smtp(&format!("AUTH XOAUTH2 {}", xoauth2_initial_response(login, token))).await.unwrap()
}

#[tokio::test]
async fn smtp_starttls_xoauth2_and_a_delivered_message() {
    let servers = MailServers::shared().await;
    let login = new_login();
    servers.add_oauth_user(&login);
    let token = servers.mint_access_token(&login);

    let (mut conn, ehlo) = smtp_starttls(servers).await;
    assert!(ehlo.iter().any(|l| l == "AUTH PLAIN LOGIN XOAUTH2"), "{ehlo:?}");
    let (code, reply) = conn.smtp("MAIL FROM:<x@example.com>").await.unwrap();
    assert_eq!((code, reply[0].as_str()), (530, "5.7.57 Client not authenticated to send mail"));
    let (code, reply) = smtp_xoauth2(&mut conn, &login, &token).await;
    assert_eq!(code, 235, "{reply:?}\n{}", servers.smtp_log());

    let rcpt = format!("rcpt-{}@example.org", Uuid::new_v4().simple());
    let body = message(&login, &rcpt, "Sent over SMTP");
    assert_eq!(conn.smtp(&format!("MAIL FROM:<{login}>")).await.unwrap().0, 250);
    assert_eq!(conn.smtp(&format!("RCPT TO:<{rcpt}>")).await.unwrap().0, 250);
    assert_eq!(conn.smtp("DATA").await.unwrap().0, 354);
    // Dot-stuffing on the wire; the stored message has it removed.
    let wire = String::from_utf8(body.clone()).unwrap().replace("\r\n.", "\r\n..");
    conn.send_raw(wire.as_bytes()).await.unwrap();
    let (code, reply) = conn.smtp(".").await.unwrap();
    assert_eq!(code, 250, "{reply:?}");
    assert!(reply[0].starts_with("2.6.0 "), "{reply:?}");
    assert_eq!(conn.smtp("QUIT").await.unwrap().0, 221);

    let accepted = servers.accepted_messages_to(&rcpt);
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].raw, body);
    assert_eq!(accepted[0].auth_user.as_deref(), Some(login.as_str()));
    assert_eq!(accepted[0].mail_from, login);
    assert_eq!(accepted[0].rcpt_to, vec![rcpt.clone()]);
    assert!(servers.accepted_messages().iter().any(|m| m.rcpt_to.contains(&rcpt)));
}

#[tokio::test]
async fn smtp_refuses_bad_tokens_and_passwords_like_exchange() {
    let servers = MailServers::shared().await;
    let login = new_login();
    servers.add_password_user(&login, "smtp-pass");

    let (mut conn, _) = smtp_starttls(servers).await;
    let (code, reply) = smtp_xoauth2(&mut conn, &login, "unknown-token").await;
    assert_eq!((code, reply[0].as_str()), (535, "5.7.3 Authentication unsuccessful"));
    let (code, reply) = conn.smtp(&format!("AUTH PLAIN {}", plain_initial_response(&login, "wrong"))).await.unwrap();
    assert_eq!((code, reply[0].as_str()), (535, "5.7.3 Authentication unsuccessful"));
    let (code, _) = conn.smtp(&format!("AUTH PLAIN {}", plain_initial_response(&login, "smtp-pass"))).await.unwrap();
    assert_eq!(code, 235);
}

#[tokio::test]
async fn smtps_auth_login_with_a_password() {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let servers = MailServers::shared().await;
    let login = new_login();
    servers.add_password_user(&login, "login-pass");

    let mut conn = RawConnection::tls(servers, servers.smtps_port()).await.unwrap();
    assert_eq!(conn.smtp_reply().await.unwrap().0, 220);
    let (_, ehlo) = conn.smtp("EHLO client.example.com").await.unwrap();
    assert!(ehlo.iter().any(|l| l == "AUTH PLAIN LOGIN XOAUTH2"), "{ehlo:?}");
    assert_eq!(conn.smtp("AUTH LOGIN").await.unwrap().0, 334);
    assert_eq!(conn.smtp(&b64(&login)).await.unwrap().0, 334);
    assert_eq!(conn.smtp(&b64("login-pass")).await.unwrap().0, 235);
}

#[tokio::test]
async fn smtp_recipient_knobs_answer_451_and_550() {
    let servers = MailServers::shared().await;
    let login = new_login();
    servers.add_password_user(&login, "knob-pass");
    let (mut conn, _) = smtp_starttls(servers).await;
    assert_eq!(conn.smtp(&format!("AUTH PLAIN {}", plain_initial_response(&login, "knob-pass"))).await.unwrap().0, 235);
    assert_eq!(conn.smtp(&format!("MAIL FROM:<{login}>")).await.unwrap().0, 250);
    let (code, reply) = conn.smtp("RCPT TO:<tempfail+1@example.org>").await.unwrap();
    assert_eq!((code, reply[0].as_str()), (451, "4.3.0 Try again later"));
    let (code, reply) = conn.smtp("RCPT TO:<reject+1@example.org>").await.unwrap();
    assert_eq!((code, reply[0].as_str()), (550, "5.1.1 No such user"));
}

#[tokio::test]
async fn smtp_drop_after_data_closes_without_a_reply() {
    let servers = MailServers::shared().await;
    let login = new_login();
    servers.add_password_user(&login, "drop-pass");
    let (mut conn, _) = smtp_starttls(servers).await;
    assert_eq!(conn.smtp(&format!("AUTH PLAIN {}", plain_initial_response(&login, "drop-pass"))).await.unwrap().0, 235);
    let rcpt = format!("dropafterdata+{}@example.org", Uuid::new_v4().simple());
    assert_eq!(conn.smtp(&format!("MAIL FROM:<{login}>")).await.unwrap().0, 250);
    assert_eq!(conn.smtp(&format!("RCPT TO:<{rcpt}>")).await.unwrap().0, 250);
    assert_eq!(conn.smtp("DATA").await.unwrap().0, 354);
    conn.send_raw(&message(&login, &rcpt, "Dropped")).await.unwrap();
    conn.send_line(".").await.unwrap();
    assert!(conn.is_closed_by_server().await);
    assert!(servers.accepted_messages_to(&rcpt).is_empty());
}

#[tokio::test]
async fn smtp_auth_disabled_user_gets_5_7_139() {
    let servers = MailServers::shared().await;
    let login = new_login();
    servers.add_password_user(&login, "disabled-pass");
    servers.disable_smtp_auth(&login);
    let token = servers.mint_access_token(&login);

    let (mut conn, _) = smtp_starttls(servers).await;
    let expected = "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.";
    let (code, reply) = conn.smtp(&format!("AUTH PLAIN {}", plain_initial_response(&login, "disabled-pass"))).await.unwrap();
    assert_eq!((code, reply[0].as_str()), (535, expected));
    let (code, reply) = smtp_xoauth2(&mut conn, &login, &token).await;
    assert_eq!((code, reply[0].as_str()), (535, expected));
}

#[tokio::test]
async fn smtp_accepts_an_app_token_only_for_allowed_mailboxes() {
    let servers = MailServers::shared().await;
    let provider = servers.provider();
    let client_id = format!("app-{}", Uuid::new_v4().simple());
    provider.register_client(&client_id, Some("app-secret"), &[]);
    let response = reqwest::Client::new()
        .post(provider.token_url())
        .basic_auth(&client_id, Some("app-secret"))
        .form(&[("grant_type", "client_credentials"), ("scope", "https://outlook.office365.com/.default")])
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    let token = body["access_token"].as_str().expect("an app token").to_owned();
    let (allowed, other) = (new_login(), new_login());
    servers.allow_app_sender(&client_id, &allowed);

    let (mut conn, _) = smtp_starttls(servers).await;
    let (code, reply) = smtp_xoauth2(&mut conn, &other, &token).await;
    assert_eq!((code, reply[0].as_str()), (535, "5.7.3 Authentication unsuccessful"));
    assert_eq!(smtp_xoauth2(&mut conn, &allowed, &token).await.0, 235);
}

#[tokio::test]
async fn ten_thousand_seeded_messages_are_selectable() {
    let servers = MailServers::shared().await;
    let login = new_login();
    servers.add_password_user(&login, "pw-bulk");
    let messages: Vec<Vec<u8>> = (1..=10_000).map(|i| message("bulk@example.net", &login, &format!("Bulk {i}"))).collect();
    let started = std::time::Instant::now();
    servers.seed_messages(&login, "INBOX", &messages);
    let seeded = started.elapsed();
    let mut conn = imaps(servers).await;
    let reply = conn.imap("l", &format!("LOGIN {login} pw-bulk")).await.unwrap();
    assert!(last(&reply).starts_with("l OK"), "{reply:?}");
    let reply = conn.imap("s", "SELECT INBOX").await.unwrap();
    assert!(reply.iter().any(|l| l == "* 10000 EXISTS"), "{reply:?}");
    let reply = conn.imap("f", "UID FETCH 10000 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])").await.unwrap();
    assert!(reply.join("\n").contains("Subject: Bulk 10000"), "{reply:?}");
    eprintln!("seeded 10000 in {seeded:?}, selected after {:?}", started.elapsed());
}
