//! A small POP3 client (RFC 1939) with STLS (RFC 2595) and SASL XOAUTH2 through AUTH (RFC 5034), for inbound
//! polling and for test & confirm. Every read is bounded by the I/O timeout, lines by a length limit, and every
//! failure is a [`MailError`] with the server's own words.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};
use tokio_rustls::rustls::ClientConfig;

use crate::failure::MailStep;
use crate::model::Security;
use crate::protocols::error::{command_time, server_words, Endpoint, MailAuth, MailError, Timeouts};
use crate::protocols::net::{connect_tcp, start_tls};
use crate::protocols::netguard::NetGuard;

/// Longest status line accepted (RFC 1939 allows 512 octets; servers' texts are short).
const MAX_STATUS_LINE: usize = 64 * 1024;
/// Longest line of a multi-line response (RFC 5322 allows 1000 octets; real mail sometimes has far longer lines).
const MAX_DATA_LINE: usize = 4 * 1024 * 1024;
/// The longest line of a listing (`UIDL`, `LIST`): a message number and an id of at most 70 characters or a size.
const MAX_LISTING_LINE: usize = 512;
/// The most messages a listing may name: far beyond any real mailbox, and a bound on what one poll holds.
const MAX_LISTED_MESSAGES: usize = 1_000_000;
/// RFC 5034: an AUTH command with its initial response may be 255 octets at most; longer ones go after a `+`.
const MAX_AUTH_LINE: usize = 255;
const BUFFER_SIZE: usize = 64 * 1024;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An authenticated POP3 session (the TRANSACTION state). Deletions take effect at [`Pop3Session::quit`].
pub struct Pop3Session {
    conn: Conn<Box<dyn Io>>,
}

impl std::fmt::Debug for Pop3Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pop3Session").field("io_timeout", &self.conn.io).finish_non_exhaustive()
    }
}

impl Pop3Session {
    /// Connects to `endpoint` (through `guard`), sets up TLS as the endpoint's security says (implicit TLS, or
    /// `STLS`), reads the greeting and logs in (USER / PASS for a password, `AUTH XOAUTH2` for a token).
    pub async fn connect(
        guard: &NetGuard,
        tls_config: &Arc<ClientConfig>,
        endpoint: &Endpoint,
        auth: &MailAuth,
        timeouts: Timeouts,
    ) -> Result<Pop3Session, MailError> {
        let io = timeouts.io;
        let tcp = connect_tcp(guard, &endpoint.host, endpoint.port, timeouts.connect).await?;
        let mut conn: Conn<Box<dyn Io>> = match endpoint.security {
            Security::Tls => {
                let tls = start_tls(Arc::clone(tls_config), &endpoint.host, tcp, io).await?;
                let mut conn = Conn::new(Box::new(tls) as Box<dyn Io>, io);
                conn.greeting().await?;
                conn
            }
            Security::Starttls => {
                let mut plain = Conn::new(tcp, io);
                plain.greeting().await?;
                plain.command("STLS", MailStep::Tls).await?;
                if !plain.reader.buffer().is_empty() {
                    return Err(MailError::new(MailStep::Tls, "the server sent data before the TLS handshake"));
                }
                let tls = start_tls(Arc::clone(tls_config), &endpoint.host, plain.reader.into_inner(), io).await?;
                Conn::new(Box::new(tls) as Box<dyn Io>, io)
            }
            Security::None => {
                let mut conn = Conn::new(Box::new(tcp) as Box<dyn Io>, io);
                conn.greeting().await?;
                conn
            }
        };
        match auth {
            MailAuth::Password { login, password } => {
                if has_line_break(login) || has_line_break(password) {
                    return Err(MailError::new(MailStep::Auth, "the login or password contains a line break"));
                }
                conn.command(&format!("USER {login}"), MailStep::Auth).await?;
                conn.command_hidden(&format!("PASS {password}"), "PASS", MailStep::Auth).await?;
            }
            MailAuth::XOAuth2 { login, access_token } => conn.xoauth2(login, access_token).await?,
        }
        Ok(Pop3Session { conn })
    }

    /// `STAT`: how many messages the maildrop holds and their total size in octets.
    pub async fn stat(&mut self) -> Result<(u32, u64), MailError> {
        let text = self.conn.command("STAT", MailStep::Command).await?;
        let mut words = text.split_whitespace();
        match (words.next().and_then(|n| n.parse().ok()), words.next().and_then(|n| n.parse().ok())) {
            (Some(count), Some(size)) => Ok((count, size)),
            _ => Err(MailError::new(MailStep::Command, format!("unreadable STAT reply: {}", server_words(&text)))),
        }
    }

    /// `UIDL`: every message's number and unique id (stable across sessions), in the server's order. An id is
    /// what RFC 1939 allows (1 to 70 printable characters), or the listing is refused: it is stored and indexed.
    pub async fn uidl(&mut self) -> Result<Vec<(u32, String)>, MailError> {
        self.conn.command("UIDL", MailStep::Command).await?;
        self.conn
            .listing("UIDL", |text| {
                let mut words = text.split_whitespace();
                match (words.next().and_then(|n| n.parse().ok()), words.next()) {
                    (Some(number), Some(uid)) if is_unique_id(uid) => Some((number, uid.to_owned())),
                    _ => None,
                }
            })
            .await
    }

    /// `LIST`: every message's number and size in octets as the server announces it (a hint only: what is read is
    /// bounded by [`Self::retr_limited`]).
    pub async fn list(&mut self) -> Result<Vec<(u32, u64)>, MailError> {
        self.conn.command("LIST", MailStep::Command).await?;
        self.conn
            .listing("LIST", |text| {
                let mut words = text.split_whitespace();
                words.next().and_then(|n| n.parse().ok()).zip(words.next().and_then(|n| n.parse().ok()))
            })
            .await
    }

    /// `RETR` reading at most `max` octets of the message: [`Limited::Whole`], or [`Limited::Cut`] with its first
    /// octets when the server sends more (the session is then mid-response and unusable: drop it without QUIT).
    pub async fn retr_limited(&mut self, msg_no: u32, max: usize) -> Result<Limited, MailError> {
        self.conn.command(&format!("RETR {msg_no}"), MailStep::Command).await?;
        self.conn.multi_line_limited(max).await
    }

    /// `TOP n 0`: the message's header (and the blank line after it), read up to `max` octets as in
    /// [`Self::retr_limited`].
    pub async fn top_headers(&mut self, msg_no: u32, max: usize) -> Result<Limited, MailError> {
        self.conn.command(&format!("TOP {msg_no} 0"), MailStep::Command).await?;
        self.conn.multi_line_limited(max).await
    }

    /// `DELE`: marks the message deleted; the server removes it at [`Pop3Session::quit`].
    pub async fn dele(&mut self, msg_no: u32) -> Result<(), MailError> {
        self.conn.command(&format!("DELE {msg_no}"), MailStep::Command).await.map(drop)
    }

    /// `QUIT`: ends the session and commits deletions (a `-ERR` means they were not all committed).
    pub async fn quit(mut self) -> Result<(), MailError> {
        self.conn.command("QUIT", MailStep::Command).await.map(drop)
    }
}

/// A multi-line response read up to a bound.
#[derive(Debug, PartialEq, Eq)]
pub enum Limited {
    /// All of it.
    Whole(Vec<u8>),
    /// Its first octets (more than the bound); the rest was left unread.
    Cut(Vec<u8>),
}

/// A line-oriented connection.
struct Conn<S> {
    reader: BufReader<S>,
    io: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn new(stream: S, io: Duration) -> Self {
        Conn { reader: BufReader::with_capacity(BUFFER_SIZE, stream), io }
    }

    async fn greeting(&mut self) -> Result<(), MailError> {
        let line = match self.read_line(MAX_STATUS_LINE, "the greeting").await {
            Ok(line) => line,
            Err(err) if err.step == MailStep::Connect => {
                return Err(MailError::new(MailStep::Greeting, "the server closed the connection without a greeting"))
            }
            Err(err) => return Err(err),
        };
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        if text.starts_with("+OK") {
            Ok(())
        } else {
            let words = text.strip_prefix("-ERR").unwrap_or(text).trim();
            Err(MailError::new(
                MailStep::Greeting,
                if words.is_empty() { "not a POP3 greeting".to_owned() } else { server_words(words) },
            ))
        }
    }

    /// Sends `line` and reads the status line: the text after `+OK`, or the `-ERR` text as an error at `step`.
    async fn command(&mut self, line: &str, step: MailStep) -> Result<String, MailError> {
        let verb = line.split(' ').next().unwrap_or("").to_owned();
        self.command_hidden(line, &verb, step).await
    }

    /// [`Self::command`] where `name` (never the line itself) is what messages mention.
    async fn command_hidden(&mut self, line: &str, name: &str, step: MailStep) -> Result<String, MailError> {
        self.send(line, name).await?;
        self.status(name, step).await
    }

    async fn send(&mut self, line: &str, name: &str) -> Result<(), MailError> {
        let io = self.io;
        let stream = self.reader.get_mut();
        let write = async {
            stream.write_all(line.as_bytes()).await?;
            stream.write_all(b"\r\n").await?;
            stream.flush().await
        };
        match tokio::time::timeout(io, write).await {
            Err(_) => Err(MailError::timeout(name, io)),
            Ok(Err(err)) => Err(MailError::new(MailStep::Connect, format!("connection lost sending {name}: {err}"))),
            Ok(Ok(())) => Ok(()),
        }
    }

    async fn status(&mut self, name: &str, step: MailStep) -> Result<String, MailError> {
        let line = self.read_line(MAX_STATUS_LINE, name).await?;
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if let Some(rest) = text.strip_prefix("+OK") {
            return Ok(rest.trim_start().to_owned());
        }
        if let Some(rest) = text.strip_prefix("-ERR") {
            return Err(refusal(step, rest.trim()));
        }
        Err(MailError::new(MailStep::Command, format!("unexpected reply to {name}: {}", server_words(text))))
    }

    /// SASL XOAUTH2 (RFC 5034): the initial response on the AUTH line when the line stays within 255 octets, else
    /// after the server's `+`; the error challenge (a JSON document) is answered with an empty line.
    async fn xoauth2(&mut self, login: &str, token: &str) -> Result<(), MailError> {
        if has_line_break(login) || has_line_break(token) || login.contains('\x01') || token.contains('\x01') {
            return Err(MailError::new(MailStep::Auth, "the login or access token contains a control character"));
        }
        let initial = base64::engine::general_purpose::STANDARD.encode(format!("user={login}\x01auth=Bearer {token}\x01\x01"));
        let name = "AUTH XOAUTH2";
        let inline = format!("{name} {initial}");
        let mut pending = if inline.len() + 2 <= MAX_AUTH_LINE {
            self.send(&inline, name).await?;
            None
        } else {
            self.send(name, name).await?;
            Some(initial)
        };
        let mut challenge = None;
        loop {
            let line = self.read_line(MAX_STATUS_LINE, name).await?;
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            if text.starts_with("+OK") {
                return Ok(());
            }
            if let Some(rest) = text.strip_prefix("-ERR") {
                let mut error = refusal(MailStep::Auth, rest.trim());
                if let Some(challenge) = challenge {
                    error.message = format!("{} (server said: {challenge})", error.message);
                }
                return Err(error);
            }
            if let Some(rest) = text.strip_prefix('+') {
                match pending.take() {
                    Some(initial) => self.send(&initial, name).await?,
                    None => {
                        let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).unwrap_or_default();
                        if !decoded.is_empty() {
                            challenge = Some(server_words(&String::from_utf8_lossy(&decoded)));
                        }
                        self.send("", name).await?;
                    }
                }
                continue;
            }
            return Err(MailError::new(MailStep::Auth, format!("unexpected reply to {name}: {}", server_words(text))));
        }
    }

    /// A multi-line response body up to the terminating `.` line, dot-unstuffed (line endings as sent), gathered into
    /// one buffer of at most `max` octets; past that it stops reading and returns
    /// what it has (a little more than `max`, never more than one line beyond it).
    async fn multi_line_limited(&mut self, max: usize) -> Result<Limited, MailError> {
        let whole = command_time(self.io);
        tokio::time::timeout(whole, self.multi_line_limited_untimed(max))
            .await
            .unwrap_or_else(|_| Err(MailError::timeout("a multi-line response", whole)))
    }

    /// [`Self::multi_line_limited`] with only each read's I/O timeout.
    async fn multi_line_limited_untimed(&mut self, max: usize) -> Result<Limited, MailError> {
        let mut raw = Vec::new();
        loop {
            let line = self.read_line(MAX_DATA_LINE, "a multi-line response").await?;
            if line == b".\r\n" || line == b".\n" {
                return Ok(Limited::Whole(raw));
            }
            raw.extend_from_slice(line.strip_prefix(b".").unwrap_or(&line));
            if raw.len() > max {
                return Ok(Limited::Cut(raw));
            }
        }
    }

    /// A listing's entries (`UIDL`, `LIST`: one line per message), each line read by `entry`; a line it cannot
    /// read, a line longer than a listing's, or more lines than a mailbox's messages could be, refuses the listing
    /// (a server streaming lines without end would otherwise fill the worker's memory).
    async fn listing<T>(&mut self, command: &str, entry: impl Fn(&str) -> Option<T>) -> Result<Vec<T>, MailError> {
        let whole = command_time(self.io);
        tokio::time::timeout(whole, self.listing_untimed(command, entry))
            .await
            .unwrap_or_else(|_| Err(MailError::timeout(&format!("the {command} listing"), whole)))
    }

    /// [`Self::listing`] with only each read's I/O timeout.
    async fn listing_untimed<T>(&mut self, command: &str, entry: impl Fn(&str) -> Option<T>) -> Result<Vec<T>, MailError> {
        let mut entries = Vec::new();
        loop {
            let line = self.read_line(MAX_LISTING_LINE, "a listing").await?;
            if line == b".\r\n" || line == b".\n" {
                return Ok(entries);
            }
            if entries.len() >= MAX_LISTED_MESSAGES {
                let why = format!("the {command} listing goes on past {MAX_LISTED_MESSAGES} messages");
                return Err(MailError::new(MailStep::Command, why));
            }
            let text = String::from_utf8_lossy(line.strip_prefix(b".").unwrap_or(&line));
            match entry(text.trim_end_matches(['\r', '\n'])) {
                Some(read) => entries.push(read),
                None => {
                    let why = format!("unreadable {command} line: {}", server_words(&text));
                    return Err(MailError::new(MailStep::Command, why));
                }
            }
        }
    }

    /// One line including its `\n`, at most `max` octets; every read bounded by the I/O timeout.
    async fn read_line(&mut self, max: usize, waiting_for: &str) -> Result<Vec<u8>, MailError> {
        let io = self.io;
        let mut line = Vec::new();
        loop {
            let available = match tokio::time::timeout(io, self.reader.fill_buf()).await {
                Err(_) => return Err(MailError::timeout(waiting_for, io)),
                Ok(Err(err)) => return Err(MailError::new(MailStep::Connect, format!("connection lost: {err}"))),
                Ok(Ok(available)) => available,
            };
            if available.is_empty() {
                return Err(MailError::new(MailStep::Connect, "the server closed the connection"));
            }
            let (used, done) = match available.iter().position(|b| *b == b'\n') {
                Some(end) => (end + 1, true),
                None => (available.len(), false),
            };
            line.extend_from_slice(&available[..used]);
            self.reader.consume(used);
            if line.len() > max {
                return Err(MailError::new(MailStep::Command, format!("the server sent a line longer than {max} octets")));
            }
            if done {
                return Ok(line);
            }
        }
    }
}

/// A unique id as RFC 1939 defines it: 1 to 70 characters in 0x21..=0x7E.
fn is_unique_id(uid: &str) -> bool {
    (1..=70).contains(&uid.len()) && uid.bytes().all(|b| (0x21..=0x7E).contains(&b))
}

fn has_line_break(text: &str) -> bool {
    text.contains(['\r', '\n'])
}

/// A `-ERR` as an error: RFC 2449 / 3206 response codes `[SYS/TEMP]`, `[IN-USE]` and `[LOGIN-DELAY]` are
/// temporary (454 at the auth step, 451 elsewhere).
fn refusal(step: MailStep, text: &str) -> MailError {
    let words = if text.is_empty() { "no reason given".to_owned() } else { server_words(text) };
    let upper = text.to_ascii_uppercase();
    let temporary = ["[SYS/TEMP]", "[IN-USE]", "[LOGIN-DELAY]"].iter().any(|code| upper.starts_with(code));
    let error = MailError::new(step, words);
    if temporary {
        error.with_code(if step == MailStep::Auth { 454 } else { 451 })
    } else {
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_refusals_are_transient_and_not_auth_failures() {
        let error = refusal(MailStep::Auth, "[SYS/TEMP] Try again later");
        assert!(error.is_transient());
        assert!(!error.is_auth_failure());
        let error = refusal(MailStep::Auth, "[AUTH] Authentication failed.");
        assert!(error.is_auth_failure());
        assert!(!error.is_transient());
        assert_eq!(error.to_string(), "auth: [AUTH] Authentication failed.");
    }

    #[tokio::test]
    async fn multi_line_responses_are_dot_unstuffed_and_end_at_the_dot_line() {
        let (client, mut server) = tokio::io::duplex(1024);
        server.write_all(b"line one\r\n..dot line\r\n.\r\nnext\r\n").await.expect("write");
        let mut conn = Conn::new(client, Duration::from_secs(5));
        match conn.multi_line_limited(usize::MAX).await.expect("multi-line") {
            Limited::Whole(raw) => assert_eq!(raw, b"line one\r\n.dot line\r\n"),
            Limited::Cut(raw) => panic!("cut at {} bytes", raw.len()),
        }
        assert_eq!(conn.read_line(100, "next").await.expect("next line"), b"next\r\n");
    }

    #[tokio::test]
    async fn a_listing_is_read_line_by_line_and_refused_when_a_line_or_the_count_goes_past_its_bound() {
        let read =
            |text: &str| text.split_once(' ').filter(|(_, uid)| is_unique_id(uid)).map(|(n, uid)| (n.to_owned(), uid.to_owned()));
        let listing = async |wire: &'static [u8]| {
            let (client, mut server) = tokio::io::duplex(1 << 16);
            server.write_all(wire).await.expect("write");
            Conn::new(client, Duration::from_secs(5)).listing("UIDL", read).await
        };
        let listed = listing(b"1 abc\r\n2 x.y\r\n.\r\n").await.expect("a listing");
        assert_eq!(listed, [("1".to_owned(), "abc".to_owned()), ("2".to_owned(), "x.y".to_owned())]);
        for (wire, why) in [
            (&b"1 a\x00b\r\n.\r\n"[..], "an id Postgres cannot store"),
            (b"1 has spaces inside\r\n.\r\n", "not one word"),
            (b"1 xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n.\r\n", "71 characters"),
        ] {
            let error = listing(wire).await.expect_err(why);
            assert!(error.to_string().contains("unreadable UIDL line"), "{why}: {error}");
        }
        let long_line: &'static [u8] =
            Box::leak([b"1 ".to_vec(), vec![b'x'; 600], b"\r\n.\r\n".to_vec()].concat().into_boxed_slice());
        assert!(listing(long_line).await.is_err(), "a line longer than a listing's");

        // A server streaming lines without end: refused at the bound, not held in memory until the worker dies.
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let streaming = tokio::spawn(async move {
            let lines = b"1 a\r\n".repeat(10_000);
            while server.write_all(&lines).await.is_ok() {}
        });
        let error = Conn::new(client, Duration::from_secs(5)).listing("UIDL", read).await.expect_err("an endless listing");
        assert!(error.to_string().contains("goes on past 1000000 messages"), "{error}");
        streaming.abort();
    }

    #[tokio::test]
    async fn a_bounded_multi_line_read_stops_past_the_bound() {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let body: Vec<u8> = b"line of text\r\n".repeat(100);
        server.write_all(&body).await.expect("write");
        server.write_all(b".\r\nshort\r\n.\r\n").await.expect("write");
        let mut conn = Conn::new(client, Duration::from_secs(5));
        match conn.multi_line_limited(100).await.expect("read") {
            Limited::Cut(prefix) => assert!(prefix.len() > 100 && prefix.len() <= 100 + 14, "{}", prefix.len()),
            other => panic!("expected a cut, got {other:?}"),
        }
        let (client, mut server) = tokio::io::duplex(1 << 16);
        server.write_all(b"short\r\n.\r\n").await.expect("write");
        let mut conn = Conn::new(client, Duration::from_secs(5));
        assert_eq!(conn.multi_line_limited(100).await.expect("read"), Limited::Whole(b"short\r\n".to_vec()));
    }

    #[tokio::test]
    async fn absurd_lines_and_silence_are_errors() {
        let (client, mut server) = tokio::io::duplex(1024);
        server.write_all(&[b'x'; 300]).await.expect("write");
        let mut conn = Conn::new(client, Duration::from_millis(200));
        let error = conn.read_line(100, "a line").await.expect_err("too long");
        assert_eq!(error.step, MailStep::Command);
        let (client, _server) = tokio::io::duplex(1024);
        let mut conn = Conn::new(client, Duration::from_millis(50));
        let error = conn.read_line(100, "the greeting").await.expect_err("silence");
        assert_eq!(error.step, MailStep::Timeout);
    }
}
