//! The inbound mail clients (`postbridge_core::protocols::{imap, pop3}`) against the real Dovecot of
//! `MailServers::shared()`: implicit TLS and STARTTLS / STLS, passwords and XOAUTH2 tokens, the server's own words on
//! failure, the SSRF guard and certificate checks, and exact message bytes. Each test uses its own mailbox user.

use std::sync::Arc;
use std::time::{Duration, Instant};

use postbridge_core::failure::MailStep;
use postbridge_core::model::Security;
use postbridge_core::protocols::error::{Endpoint, MailAuth, MailError, Timeouts};
use postbridge_core::protocols::imap::ImapSession;
use postbridge_core::protocols::netguard::NetGuard;
use postbridge_core::protocols::pop3::{Limited, Pop3Session};
use postbridge_tests::mail::MailServers;
use tokio_rustls::rustls::ClientConfig;
use uuid::Uuid;

fn new_login() -> String {
    format!("user-{}@example.com", Uuid::new_v4().simple())
}

fn timeouts() -> Timeouts {
    Timeouts { connect: Duration::from_secs(5), io: Duration::from_secs(20) }
}

/// `RETR`, the whole message (the tests' messages are small).
async fn retr(session: &mut Pop3Session, number: u32) -> Result<Vec<u8>, MailError> {
    match session.retr_limited(number, 64 * 1024 * 1024).await? {
        Limited::Whole(raw) => Ok(raw),
        Limited::Cut(raw) => panic!("message {number} cut at {} bytes", raw.len()),
    }
}

fn password(login: &str, password: &str) -> MailAuth {
    MailAuth::Password { login: login.to_owned(), password: password.to_owned() }
}

fn xoauth2(login: &str, token: &str) -> MailAuth {
    MailAuth::XOAuth2 { login: login.to_owned(), access_token: token.to_owned() }
}

/// A message with a unique Message-ID, CRLF line endings and lines that need dot-stuffing in POP3.
fn message(to: &str, subject: &str) -> (String, Vec<u8>) {
    let message_id = format!("<{}@sender.example.net>", Uuid::new_v4().simple());
    let raw = format!(
        "From: Sender <sender@example.net>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: {message_id}\r\n\
         Date: Mon, 2 Jun 2025 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Hello, this is {subject}.\r\n.leading dot line\r\n..two dots\r\n.\r\nlast line\r\n"
    )
    .into_bytes();
    (message_id, raw)
}

fn messages(to: &str, count: usize) -> Vec<Vec<u8>> {
    (1..=count).map(|i| message(to, &format!("Message {i}")).1).collect()
}

struct Server {
    servers: &'static MailServers,
    guard: NetGuard,
    tls: Arc<ClientConfig>,
}

impl Server {
    async fn new() -> Server {
        let servers = MailServers::shared().await;
        Server { servers, guard: NetGuard::new(true), tls: servers.tls_client_config() }
    }

    fn endpoint(&self, port: u16, security: Security) -> Endpoint {
        Endpoint::new(self.servers.host(), port, security)
    }

    async fn imap_with(&self, security: Security, auth: &MailAuth) -> Result<ImapSession, MailError> {
        let port = match security {
            Security::Tls => self.servers.imaps_port(),
            _ => self.servers.imap_port(),
        };
        ImapSession::connect(&self.guard, &self.tls, &self.endpoint(port, security), auth, timeouts()).await
    }

    async fn imap(&self, auth: &MailAuth) -> ImapSession {
        match self.imap_with(Security::Tls, auth).await {
            Ok(session) => session,
            Err(err) => panic!("IMAP login failed: {err}\n{}", self.servers.dovecot_log()),
        }
    }

    async fn pop3_with(&self, security: Security, auth: &MailAuth) -> Result<Pop3Session, MailError> {
        let port = match security {
            Security::Tls => self.servers.pop3s_port(),
            _ => self.servers.pop3_port(),
        };
        Pop3Session::connect(&self.guard, &self.tls, &self.endpoint(port, security), auth, timeouts()).await
    }

    async fn pop3(&self, auth: &MailAuth) -> Pop3Session {
        match self.pop3_with(Security::Tls, auth).await {
            Ok(session) => session,
            Err(err) => panic!("POP3 login failed: {err}\n{}", self.servers.dovecot_log()),
        }
    }

    fn password_user(&self, pw: &str) -> (String, MailAuth) {
        let login = new_login();
        self.servers.add_password_user(&login, pw);
        let auth = password(&login, pw);
        (login, auth)
    }
}

#[track_caller]
fn assert_auth_failure(result: Result<impl std::fmt::Debug, MailError>, secret: &str) -> MailError {
    let err = result.expect_err("authentication must fail");
    assert_eq!(err.step, MailStep::Auth, "{err}");
    assert!(err.is_auth_failure(), "{err:?}");
    assert!(!err.is_transient(), "{err:?}");
    assert!(!err.to_string().contains(secret), "the error shows the secret: {err}");
    err
}

// ---- IMAP ---------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn imap_over_tls_logs_in_with_a_password_and_selects_the_inbox() {
    let server = Server::new().await;
    let (login, auth) = server.password_user("imap-tls-pw");
    server.servers.seed_messages(&login, "INBOX", &messages(&login, 2));

    let mut session = server.imap(&auth).await;
    let status = session.select("INBOX").await.expect("select INBOX");
    assert_eq!(status.exists, 2);
    assert!(status.uid_validity > 0);
    assert_eq!(status.uid_next, Some(3));
    session.logout().await.expect("logout");

    let logins = server.servers.dovecot_logins(&login, 1).await;
    assert_eq!(logins.len(), 1, "{logins:?}");
    assert_eq!((logins[0].protocol.as_str(), logins[0].method.as_str(), logins[0].tls), ("imap", "PLAIN", true));
}

#[tokio::test]
async fn imap_over_starttls_upgrades_before_logging_in() {
    let server = Server::new().await;
    let (login, auth) = server.password_user("imap-starttls-pw");

    let mut session = server.imap_with(Security::Starttls, &auth).await.expect("STARTTLS session");
    let status = session.select("INBOX").await.expect("select INBOX");
    assert_eq!(status.exists, 0);
    session.logout().await.expect("logout");

    let logins = server.servers.dovecot_logins(&login, 1).await;
    assert_eq!(logins.len(), 1, "{logins:?}");
    assert!(logins[0].tls, "the login happened before TLS: {logins:?}");
}

#[tokio::test]
async fn imap_xoauth2_with_a_minted_token_selects_the_inbox() {
    let server = Server::new().await;
    let login = new_login();
    server.servers.add_oauth_user(&login);
    server.servers.seed_messages(&login, "INBOX", &messages(&login, 1));
    let token = server.servers.mint_access_token(&login);

    let mut session = server.imap(&xoauth2(&login, &token)).await;
    assert_eq!(session.select("INBOX").await.expect("select").exists, 1);
    session.logout().await.expect("logout");

    let logins = server.servers.dovecot_logins(&login, 1).await;
    assert_eq!(logins.first().map(|l| l.method.as_str()), Some("XOAUTH2"), "{logins:?}");
}

#[tokio::test]
async fn imap_wrong_password_is_an_auth_failure_in_dovecots_words() {
    let server = Server::new().await;
    let (login, _) = server.password_user("the-right-one");

    let err = assert_auth_failure(server.imap_with(Security::Tls, &password(&login, "wrong-secret-pw")).await, "wrong-secret-pw");
    assert_eq!(err.message, "[AUTHENTICATIONFAILED] Authentication failed.");
    assert_eq!(err.to_string(), "auth: [AUTHENTICATIONFAILED] Authentication failed.");

    // Over STARTTLS too.
    let err =
        assert_auth_failure(server.imap_with(Security::Starttls, &password(&login, "wrong-secret-pw")).await, "wrong-secret-pw");
    assert!(err.message.contains("Authentication failed"), "{err}");
}

#[tokio::test]
async fn imap_revoked_and_garbage_tokens_are_auth_failures() {
    let server = Server::new().await;
    let login = new_login();
    server.servers.add_oauth_user(&login);

    let garbage = format!("garbage-{}", Uuid::new_v4().simple());
    let err = assert_auth_failure(server.imap_with(Security::Tls, &xoauth2(&login, &garbage)).await, &garbage);
    assert!(err.message.contains("Authentication failed"), "{err}");

    let token = server.servers.mint_access_token(&login);
    server.imap(&xoauth2(&login, &token)).await.logout().await.expect("the token works before revocation");
    server.servers.provider().revoke_user(&login);
    let err = assert_auth_failure(server.imap_with(Security::Tls, &xoauth2(&login, &token)).await, &token);
    assert!(err.message.contains("Authentication failed"), "{err}");

    // Someone else's valid token.
    let other = server.servers.mint_access_token(&new_login());
    assert_auth_failure(server.imap_with(Security::Starttls, &xoauth2(&login, &other)).await, &other);
}

#[tokio::test]
async fn imap_selecting_a_missing_folder_fails_at_the_folder_step() {
    let server = Server::new().await;
    let (_, auth) = server.password_user("folder-pw");
    let mut session = server.imap(&auth).await;

    let err = session.select("Does/Not/Exist").await.expect_err("missing folder");
    assert_eq!(err.step, MailStep::Folder, "{err}");
    assert!(err.message.contains("doesn't exist"), "{err}");
    assert!(!err.is_transient() && !err.is_auth_failure());
    // The session is still usable.
    assert_eq!(session.select("INBOX").await.expect("select INBOX").exists, 0);
    // A folder with non-ASCII characters is sent in modified UTF-7 and found.
    let err = session.select("Gelöschte Elemente").await.expect_err("missing folder");
    assert_eq!(err.step, MailStep::Folder, "{err}");
}

#[tokio::test]
async fn imap_fetch_new_returns_every_message_in_uid_order_with_the_exact_bytes() {
    let server = Server::new().await;
    let (login, auth) = server.password_user("fetch-pw");
    let seeded = messages(&login, 12);
    server.servers.seed_messages(&login, "INBOX", &seeded);

    let mut session = server.imap(&auth).await;
    let status = session.select("INBOX").await.expect("select");
    assert_eq!(status.exists, 12);
    let fetched = session.fetch_new(0, 1000).await.expect("fetch");
    assert_eq!(fetched.iter().map(|m| m.uid).collect::<Vec<_>>(), (1..=12).collect::<Vec<u32>>());
    for (message, raw) in fetched.iter().zip(&seeded) {
        assert_eq!(message.raw, *raw, "message {} differs", message.uid);
        assert!(!message.flags_seen);
    }
    // BODY.PEEK: nothing became \Seen.
    assert!(server.servers.mailbox_messages(&login, "INBOX").iter().all(|m| !m.flags.contains('S')));
    // `n:*` would return the highest message although its UID is not above 12: nothing is new.
    assert!(session.fetch_new(12, 1000).await.expect("fetch").is_empty());
    assert!(session.uids_after(12).await.expect("uids").is_empty());
    assert_eq!(session.uids_after(10).await.expect("uids"), vec![11, 12]);
    assert!(session.fetch_new(u32::MAX, 10).await.expect("fetch").is_empty());
    session.logout().await.expect("logout");
}

#[tokio::test]
async fn imap_fetch_new_pages_by_max_and_sees_mail_that_arrives_between_calls() {
    let server = Server::new().await;
    let (login, auth) = server.password_user("paging-pw");
    let seeded = messages(&login, 5);
    server.servers.seed_messages(&login, "INBOX", &seeded);

    let mut session = server.imap(&auth).await;
    session.select("INBOX").await.expect("select");
    let uids = |batch: &[postbridge_core::protocols::imap::FetchedMessage]| batch.iter().map(|m| m.uid).collect::<Vec<_>>();
    let first = session.fetch_new(0, 2).await.expect("page 1");
    assert_eq!(uids(&first), vec![1, 2]);
    assert_eq!(first[1].raw, seeded[1]);
    assert_eq!(uids(&session.fetch_new(2, 2).await.expect("page 2")), vec![3, 4]);

    let later = messages(&login, 2);
    server.servers.seed_messages(&login, "INBOX", &later);
    let third = session.fetch_new(4, 2).await.expect("page 3");
    assert_eq!(uids(&third), vec![5, 6]);
    assert_eq!(third[1].raw, later[0]);
    let fourth = session.fetch_new(6, 2).await.expect("page 4");
    assert_eq!(uids(&fourth), vec![7]);
    assert!(session.fetch_new(7, 2).await.expect("page 5").is_empty());
    assert_eq!(session.fetch_new(0, 0).await.expect("max 0").len(), 0);
}

#[tokio::test]
async fn imap_mark_seen_sets_the_seen_flag() {
    let server = Server::new().await;
    let (login, auth) = server.password_user("seen-pw");
    server.servers.seed_messages(&login, "INBOX", &messages(&login, 3));

    let mut session = server.imap(&auth).await;
    session.select("INBOX").await.expect("select");
    session.mark_seen(&[1, 3]).await.expect("mark seen");
    session.mark_seen(&[]).await.expect("nothing to mark");
    let fetched = session.fetch_new(0, 10).await.expect("fetch");
    assert_eq!(fetched.iter().map(|m| (m.uid, m.flags_seen)).collect::<Vec<_>>(), vec![(1, true), (2, false), (3, true)]);
    let on_disk = server.servers.mailbox_messages(&login, "INBOX");
    assert_eq!(on_disk.iter().filter(|m| m.flags.contains('S')).count(), 2, "{on_disk:?}");
}

#[tokio::test]
async fn imap_move_to_moves_messages_to_another_folder() {
    let server = Server::new().await;
    let (login, auth) = server.password_user("move-pw");
    let seeded = messages(&login, 4);
    server.servers.seed_messages(&login, "INBOX", &seeded);

    let mut session = server.imap(&auth).await;
    session.select("INBOX").await.expect("select");
    session.move_to(&[1, 2, 4], "Archive").await.expect("move");
    assert_eq!(server.servers.mailbox_count(&login, "INBOX"), 1);
    assert_eq!(server.servers.mailbox_count(&login, "Archive"), 3);
    let left = session.fetch_new(0, 10).await.expect("fetch");
    assert_eq!(left.iter().map(|m| m.uid).collect::<Vec<_>>(), vec![3]);

    let archived = session.select("Archive").await.expect("select Archive");
    assert_eq!(archived.exists, 3);
    let moved = session.fetch_new(0, 10).await.expect("fetch Archive");
    let mut raws: Vec<Vec<u8>> = moved.into_iter().map(|m| m.raw).collect();
    raws.sort();
    let mut expected = vec![seeded[0].clone(), seeded[1].clone(), seeded[3].clone()];
    expected.sort();
    assert_eq!(raws, expected);

    session.select("INBOX").await.expect("select");
    let err = session.move_to(&[3], "No/Such/Folder").await.expect_err("missing target");
    assert_eq!(err.step, MailStep::Folder, "{err}");
    assert_eq!(server.servers.mailbox_count(&login, "INBOX"), 1);
}

#[tokio::test]
async fn imap_delete_expunges_only_the_given_messages() {
    let server = Server::new().await;
    let (login, auth) = server.password_user("delete-pw");
    server.servers.seed_messages(&login, "INBOX", &messages(&login, 4));

    let mut session = server.imap(&auth).await;
    session.select("INBOX").await.expect("select");
    session.delete(&[2, 3]).await.expect("delete");
    assert_eq!(server.servers.mailbox_count(&login, "INBOX"), 2);
    assert_eq!(session.uids_after(0).await.expect("uids"), vec![1, 4]);
    session.logout().await.expect("logout");

    let mut again = server.imap(&auth).await;
    assert_eq!(again.select("INBOX").await.expect("select").exists, 2);
}

#[tokio::test]
async fn imap_find_message_id_searches_the_given_folder() {
    let server = Server::new().await;
    let (login, auth) = server.password_user("sent-pw");
    let (sent_id, sent) = message("someone@example.org", "Sent report");
    let (inbox_id, inbox) = message(&login, "Inbox only");
    server.servers.seed_messages(&login, "Sent", &[sent]);
    server.servers.seed_messages(&login, "INBOX", &[inbox]);

    let mut session = server.imap(&auth).await;
    assert!(session.find_message_id("Sent", &sent_id).await.expect("search Sent"));
    assert!(!session.find_message_id("Sent", &inbox_id).await.expect("search Sent"));
    assert!(!session.find_message_id("Sent", "<never-sent@example.net>").await.expect("search Sent"));
    assert!(session.find_message_id("INBOX", &inbox_id).await.expect("search INBOX"));
    let err = session.find_message_id("Missing", &sent_id).await.expect_err("missing folder");
    assert_eq!(err.step, MailStep::Folder, "{err}");
}

#[tokio::test]
async fn imap_refuses_a_host_the_guard_forbids_without_connecting() {
    let server = Server::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let strict = NetGuard::new(false);
    let auth = password("someone@example.com", "pw");

    let result =
        ImapSession::connect(&strict, &server.tls, &Endpoint::new("127.0.0.1", port, Security::Tls), &auth, timeouts()).await;
    let err = result.expect_err("refused by the guard");
    assert_eq!(err.step, MailStep::Forbidden, "{err}");
    assert!(!err.is_transient());
    let result =
        Pop3Session::connect(&strict, &server.tls, &Endpoint::new("localhost", port, Security::None), &auth, timeouts()).await;
    assert_eq!(result.expect_err("refused by the guard").step, MailStep::Forbidden);
    // Nothing ever reached the listener.
    assert!(tokio::time::timeout(Duration::from_millis(300), listener.accept()).await.is_err());
}

#[tokio::test]
async fn tls_to_a_server_whose_ca_is_not_trusted_fails_at_the_tls_step() {
    let server = Server::new().await;
    let (_, auth) = server.password_user("untrusted-pw");
    let web_pki_only = postbridge_core::protocols::tls::client_config(None).expect("default TLS config");

    for (port, security) in [(server.servers.imaps_port(), Security::Tls), (server.servers.imap_port(), Security::Starttls)] {
        let endpoint = server.endpoint(port, security);
        let err = ImapSession::connect(&server.guard, &web_pki_only, &endpoint, &auth, timeouts()).await.expect_err("untrusted");
        assert_eq!(err.step, MailStep::Tls, "{err}");
        assert!(!err.is_transient() && !err.is_auth_failure());
    }
    for (port, security) in [(server.servers.pop3s_port(), Security::Tls), (server.servers.pop3_port(), Security::Starttls)] {
        let endpoint = server.endpoint(port, security);
        let err = Pop3Session::connect(&server.guard, &web_pki_only, &endpoint, &auth, timeouts()).await.expect_err("untrusted");
        assert_eq!(err.step, MailStep::Tls, "{err}");
    }
    // A closed port fails at the connect step, transiently.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr").port();
    let err = ImapSession::connect(&server.guard, &server.tls, &server.endpoint(closed, Security::Tls), &auth, timeouts()).await;
    let err = err.expect_err("closed port");
    assert_eq!(err.step, MailStep::Connect, "{err}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn imap_first_sync_of_2000_messages_streams_them_in_one_fetch() {
    let server = Server::new().await;
    let (login, auth) = server.password_user("bulk-pw");
    let body = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt.\r\n".repeat(20);
    let seeded: Vec<Vec<u8>> = (1..=2000)
        .map(|i| {
            format!(
                "From: <bulk@example.net>\r\nTo: <{login}>\r\nSubject: Bulk {i}\r\nMessage-ID: <bulk-{i}-{}@example.net>\r\n\r\n{body}",
                Uuid::new_v4().simple()
            )
            .into_bytes()
        })
        .collect();
    server.servers.seed_messages(&login, "INBOX", &seeded);

    let mut session = server.imap(&auth).await;
    let started = Instant::now();
    assert_eq!(session.select("INBOX").await.expect("select").exists, 2000);
    let selected = started.elapsed();
    let started = Instant::now();
    let fetched = session.fetch_new(0, 10_000).await.expect("fetch");
    let fetch_time = started.elapsed();
    assert_eq!(fetched.len(), 2000);
    assert!(fetched.iter().zip(&seeded).all(|(m, raw)| m.raw == *raw));
    assert!(fetched.windows(2).all(|w| w[0].uid < w[1].uid));
    let bytes: usize = fetched.iter().map(|m| m.raw.len()).sum();
    eprintln!(
        "IMAP first sync: SELECT of 2000 new messages {selected:?}; fetch_new of 2000 messages ({} KiB) {fetch_time:?} = {:.0} messages/s",
        bytes / 1024,
        2000.0 / fetch_time.as_secs_f64()
    );
}

// ---- POP3 ---------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn pop3_over_tls_with_a_password_lists_and_retrieves_exact_bytes() {
    let server = Server::new().await;
    let (login, auth) = server.password_user("pop3-tls-pw");
    let seeded = messages(&login, 3);
    server.servers.seed_messages(&login, "INBOX", &seeded);

    let mut session = server.pop3(&auth).await;
    let total: u64 = seeded.iter().map(|m| m.len() as u64).sum();
    assert_eq!(session.stat().await.expect("stat"), (3, total));
    let uidl = session.uidl().await.expect("uidl");
    assert_eq!(uidl.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![1, 2, 3]);
    for (number, raw) in (1..=3).zip(&seeded) {
        // Each holds ".leading dot line", "..two dots" and a lone "." line, which travel dot-stuffed.
        assert_eq!(retr(&mut session, number).await.expect("retr"), *raw);
    }
    let err = retr(&mut session, 99).await.expect_err("no such message");
    assert_eq!(err.step, MailStep::Command, "{err}");
    session.quit().await.expect("quit");
    assert_eq!(server.servers.mailbox_count(&login, "INBOX"), 3);
    let logins = server.servers.dovecot_logins(&login, 1).await;
    assert_eq!(logins.first().map(|l| (l.protocol.as_str(), l.tls)), Some(("pop3", true)), "{logins:?}");
}

#[tokio::test]
async fn pop3_stls_with_a_password_and_with_xoauth2() {
    let server = Server::new().await;
    let (login, auth) = server.password_user("pop3-stls-pw");
    server.servers.seed_messages(&login, "INBOX", &messages(&login, 1));
    let mut session = server.pop3_with(Security::Starttls, &auth).await.expect("STLS password session");
    assert_eq!(session.stat().await.expect("stat").0, 1);
    session.quit().await.expect("quit");

    let oauth_login = new_login();
    server.servers.add_oauth_user(&oauth_login);
    let seeded = messages(&oauth_login, 2);
    server.servers.seed_messages(&oauth_login, "INBOX", &seeded);
    let token = server.servers.mint_access_token(&oauth_login);
    let mut session = server.pop3_with(Security::Starttls, &xoauth2(&oauth_login, &token)).await.expect("STLS XOAUTH2 session");
    assert_eq!(retr(&mut session, 2).await.expect("retr"), seeded[1]);
    session.quit().await.expect("quit");

    let logins = server.servers.dovecot_logins(&login, 1).await;
    assert!(logins.first().is_some_and(|l| l.tls), "{logins:?}");
    let logins = server.servers.dovecot_logins(&oauth_login, 1).await;
    assert_eq!(logins.first().map(|l| (l.method.as_str(), l.tls)), Some(("XOAUTH2", true)), "{logins:?}");
}

#[tokio::test]
async fn pop3_xoauth2_over_tls_inline_and_after_a_continuation() {
    let server = Server::new().await;
    // A short login keeps `AUTH XOAUTH2 <initial response>` within 255 octets; a long one makes the client wait for
    // the server's `+` (RFC 5034), as real (long) tokens do.
    for login in [new_login(), format!("user-{}-{}@example.com", Uuid::new_v4().simple(), "x".repeat(150))] {
        server.servers.add_oauth_user(&login);
        let seeded = messages(&login, 1);
        server.servers.seed_messages(&login, "INBOX", &seeded);
        let token = server.servers.mint_access_token(&login);
        let mut session = server.pop3(&xoauth2(&login, &token)).await;
        assert_eq!(retr(&mut session, 1).await.expect("retr"), seeded[0]);
        session.quit().await.expect("quit");

        let garbage = format!("garbage-{}", Uuid::new_v4().simple());
        let err = assert_auth_failure(server.pop3_with(Security::Tls, &xoauth2(&login, &garbage)).await, &garbage);
        assert!(err.message.contains("Authentication failed"), "{err}");
    }
}

#[tokio::test]
async fn pop3_uidl_is_stable_across_sessions() {
    let server = Server::new().await;
    let (login, auth) = server.password_user("uidl-pw");
    server.servers.seed_messages(&login, "INBOX", &messages(&login, 3));

    let mut first = server.pop3(&auth).await;
    let before = first.uidl().await.expect("uidl");
    first.quit().await.expect("quit");
    assert_eq!(before.len(), 3);

    server.servers.seed_messages(&login, "INBOX", &messages(&login, 1));
    let mut second = server.pop3(&auth).await;
    let after = second.uidl().await.expect("uidl");
    second.quit().await.expect("quit");
    assert_eq!(after.len(), 4);
    assert_eq!(after[..3], before[..]);
    assert!(!before.iter().any(|(_, uid)| *uid == after[3].1));
}

#[tokio::test]
async fn pop3_dele_takes_effect_at_quit_only() {
    let server = Server::new().await;
    let (login, auth) = server.password_user("dele-pw");
    let seeded = messages(&login, 3);
    server.servers.seed_messages(&login, "INBOX", &seeded);

    // Without QUIT nothing is removed.
    let mut session = server.pop3(&auth).await;
    session.dele(1).await.expect("dele");
    drop(session);
    let mut session = server.pop3(&auth).await;
    assert_eq!(session.stat().await.expect("stat").0, 3);

    session.dele(2).await.expect("dele");
    let err = retr(&mut session, 2).await.expect_err("deleted message");
    assert_eq!(err.step, MailStep::Command, "{err}");
    session.quit().await.expect("quit");
    assert_eq!(server.servers.mailbox_count(&login, "INBOX"), 2);

    let mut session = server.pop3(&auth).await;
    assert_eq!(session.stat().await.expect("stat").0, 2);
    assert_eq!(retr(&mut session, 2).await.expect("retr"), seeded[2]);
    session.quit().await.expect("quit");
}

#[tokio::test]
async fn pop3_wrong_password_is_an_auth_failure_in_dovecots_words() {
    let server = Server::new().await;
    let (login, _) = server.password_user("pop3-right");
    for security in [Security::Tls, Security::Starttls] {
        let err = assert_auth_failure(server.pop3_with(security, &password(&login, "pop3-wrong-pw")).await, "pop3-wrong-pw");
        assert_eq!(err.message, "[AUTH] Authentication failed.");
    }
}

/// A plain-text server on loopback that greets with `greeting` and answers each command line `answer` says; to a
/// command `answer` returns `None` for, it sends `start`, then `trickle` every 250 ms for ever. Returns its port.
async fn trickling_server(
    greeting: &'static str,
    answer: fn(&str, &str) -> Option<String>,
    (start, trickle): (&'static str, &'static str),
) -> u16 {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = tokio::io::BufReader::new(read).lines();
                let _ = write.write_all(greeting.as_bytes()).await;
                while let Ok(Some(line)) = lines.next_line().await {
                    let (tag, command) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                    match answer(tag, command) {
                        Some(reply) => {
                            let _ = write.write_all(reply.as_bytes()).await;
                        }
                        None => {
                            let _ = write.write_all(start.as_bytes()).await;
                            // A little before every I/O timeout, never the end of the answer.
                            while write.write_all(trickle.as_bytes()).await.is_ok() {
                                tokio::time::sleep(Duration::from_millis(250)).await;
                            }
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn a_server_that_answers_a_little_at_a_time_for_ever_fails_the_command_within_its_time() {
    let server = Server::new().await;
    let short = Timeouts { connect: Duration::from_secs(5), io: Duration::from_secs(1) };
    let auth = password("someone@example.com", "pw");

    // IMAP: a SELECT answered with "still here" for ever.
    let imap = trickling_server(
        "* OK [CAPABILITY IMAP4rev1 IDLE] scripted\r\n",
        |tag, command| match command.split(' ').next().unwrap_or_default().to_ascii_uppercase().as_str() {
            "SELECT" => None,
            "LOGIN" => Some(format!("{tag} OK [CAPABILITY IMAP4rev1 IDLE] in\r\n")),
            _ => Some(format!("{tag} OK done\r\n")),
        },
        ("", "* OK still here\r\n"),
    )
    .await;
    let endpoint = Endpoint::new("127.0.0.1", imap, Security::None);
    let mut session = ImapSession::connect(&server.guard, &server.tls, &endpoint, &auth, short).await.expect("logged in");
    let started = Instant::now();
    let selected = tokio::time::timeout(Duration::from_secs(30), session.select("INBOX")).await.expect("the command ends");
    let err = selected.expect_err("no end to the answer");
    assert_eq!(err.step, MailStep::Timeout, "{err}");
    assert!((4..15).contains(&started.elapsed().as_secs()), "ended by the command's time: {:?}", started.elapsed());

    // POP3: a UIDL listing that never reaches its end.
    let pop3 = trickling_server(
        "+OK scripted\r\n",
        |tag, _| (!tag.eq_ignore_ascii_case("UIDL")).then(|| "+OK\r\n".to_owned()),
        ("+OK\r\n", "1 a\r\n"),
    )
    .await;
    let endpoint = Endpoint::new("127.0.0.1", pop3, Security::None);
    let mut session = Pop3Session::connect(&server.guard, &server.tls, &endpoint, &auth, short).await.expect("logged in");
    let started = Instant::now();
    let listed = tokio::time::timeout(Duration::from_secs(30), session.uidl()).await.expect("the listing ends");
    let err = listed.expect_err("no end to the listing");
    assert_eq!(err.step, MailStep::Timeout, "{err}");
    assert!((4..15).contains(&started.elapsed().as_secs()), "ended by the command's time: {:?}", started.elapsed());
}
