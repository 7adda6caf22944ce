//! IMAP client for inbound polling and for test & confirm, on top of async-imap: connect through the SSRF guard,
//! implicit TLS / STARTTLS / plain, LOGIN or XOAUTH2, then the few commands polling needs. Every network step is
//! bounded by the I/O timeout, and every failure is a [`MailError`] with the server's own words.
//!
//! Commands after login are driven here (tagged command, then responses read one by one), so a NO / BAD keeps the
//! server's text and large FETCH results are streamed: one `UID FETCH` per batch, each message parsed as it arrives.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_imap::imap_proto::{
    AttributeValue, MailboxDatum, MessageSection, NameAttribute, Outcome, Response, ResponseCode, SectionPath, Status,
};
use async_imap::{Authenticator, Client};
use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::ClientConfig;

use crate::failure::MailStep;
use crate::model::Security;
use crate::protocols::error::{server_words, Endpoint, MailAuth, MailError, Timeouts};
use crate::protocols::net::{connect_tcp, start_tls};
use crate::protocols::netguard::NetGuard;

/// What `SELECT` / `EXAMINE` reported about a folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MailboxStatus {
    pub uid_validity: u32,
    pub uid_next: Option<u32>,
    pub exists: u32,
}

/// One message as fetched: its UID, its exact RFC 5322 bytes, and whether it was already `\Seen`.
#[derive(Clone, PartialEq, Eq)]
pub struct FetchedMessage {
    pub uid: u32,
    pub raw: Vec<u8>,
    pub flags_seen: bool,
}

impl fmt::Debug for FetchedMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchedMessage")
            .field("uid", &self.uid)
            .field("len", &self.raw.len())
            .field("flags_seen", &self.flags_seen)
            .finish()
    }
}

/// What the server announced for a message (`RFC822.SIZE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageSize {
    pub uid: u32,
    pub size: u32,
}

/// What one bounded FETCH returned: the messages that arrived whole, and why the server was cut off, if it was.
#[derive(Debug)]
pub struct BodyBatch {
    pub messages: Vec<FetchedMessage>,
    /// Set when the server sent more than the bounds allowed; the session is unusable afterwards.
    pub cut: Option<MailError>,
}

/// An authenticated IMAP session.
pub struct ImapSession {
    session: async_imap::Session<Transport>,
    io_timeout: Duration,
    /// Upper-cased capability names, learned at login or on first need.
    capabilities: Option<HashSet<String>>,
}

impl fmt::Debug for ImapSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImapSession").field("io_timeout", &self.io_timeout).finish_non_exhaustive()
    }
}

/// UID sets longer than this are split over several commands (servers limit command lines, Dovecot to 64 KiB).
const MAX_SET_LEN: usize = 4000;
/// A mailbox has one Sent folder, rarely a few: more `\Sent` folders than this are a hostile server's.
const MAX_SENT_FOLDERS: usize = 10;

impl ImapSession {
    /// Connects to `endpoint` (through `guard`), sets up TLS as the endpoint's security says, reads the greeting and
    /// logs in (LOGIN for a password, `AUTHENTICATE XOAUTH2` for a token).
    pub async fn connect(
        guard: &NetGuard,
        tls_config: &Arc<ClientConfig>,
        endpoint: &Endpoint,
        auth: &MailAuth,
        timeouts: Timeouts,
    ) -> Result<ImapSession, MailError> {
        let io = timeouts.io;
        let tcp = connect_tcp(guard, &endpoint.host, endpoint.port, timeouts.connect).await?;
        let client = match endpoint.security {
            Security::Tls => {
                let tls = start_tls(Arc::clone(tls_config), &endpoint.host, tcp, io).await?;
                let mut client = Client::new(Transport::tls(tls));
                read_greeting(&mut client, io).await?;
                client
            }
            Security::Starttls => {
                let mut client = Client::new(Transport::plain(tcp));
                read_greeting(&mut client, io).await?;
                match tokio::time::timeout(io, client.run_command_and_check_ok("STARTTLS", None)).await {
                    Err(_) => return Err(MailError::timeout("STARTTLS", io)),
                    Ok(Err(err)) => {
                        let words = client.get_ref().last_line();
                        return Err(imap_error(MailStep::Tls, err, Some(words)));
                    }
                    Ok(Ok(())) => {}
                }
                let Some(tcp) = client.into_inner().into_plain() else {
                    return Err(MailError::new(MailStep::Tls, "STARTTLS on a connection that is already TLS"));
                };
                let tls = start_tls(Arc::clone(tls_config), &endpoint.host, tcp, io).await?;
                Client::new(Transport::tls(tls))
            }
            Security::None => {
                let mut client = Client::new(Transport::plain(tcp));
                read_greeting(&mut client, io).await?;
                client
            }
        };
        let (session, capabilities) = authenticate(client, auth, io).await?;
        Ok(ImapSession { session, io_timeout: io, capabilities })
    }

    /// Selects `folder` (read-write). A folder that does not exist fails at [`MailStep::Folder`].
    pub async fn select(&mut self, folder: &str) -> Result<MailboxStatus, MailError> {
        self.open_folder("SELECT", folder).await
    }

    /// Opens `folder` read-only.
    pub async fn examine(&mut self, folder: &str) -> Result<MailboxStatus, MailError> {
        self.open_folder("EXAMINE", folder).await
    }

    async fn open_folder(&mut self, verb: &str, folder: &str) -> Result<MailboxStatus, MailError> {
        let command = format!("{verb} {}", quote_mailbox(folder));
        let mut exists = None;
        let mut uid_validity = None;
        let mut uid_next = None;
        self.run(&command, MailStep::Folder, |response| {
            match response {
                Response::MailboxData(MailboxDatum::Exists(n)) => exists = Some(*n),
                Response::Data { status: Status::Ok, outcome: Outcome { code: Some(code), .. } } => match code {
                    ResponseCode::UidValidity(v) => uid_validity = Some(*v),
                    ResponseCode::UidNext(n) => uid_next = Some(*n),
                    _ => {}
                },
                _ => {}
            }
            Ok(())
        })
        .await?;
        let uid_validity = uid_validity
            .ok_or_else(|| MailError::new(MailStep::Folder, format!("the server sent no UIDVALIDITY for {folder}")))?;
        Ok(MailboxStatus { uid_validity, uid_next, exists: exists.unwrap_or(0) })
    }

    /// The UIDs above `last_uid` in the selected folder, ascending.
    pub async fn uids_after(&mut self, last_uid: u32) -> Result<Vec<u32>, MailError> {
        let Some(first) = last_uid.checked_add(1) else {
            return Ok(Vec::new());
        };
        // Servers report mail that arrived since the last sync point only after one: a NOOP makes them look at the
        // folder again. It must complete first: Dovecot delays the sync of pipelined commands until the last one.
        self.run("NOOP", MailStep::Command, ignore).await?;
        let mut uids = Vec::new();
        self.run_listing(&format!("UID SEARCH UID {first}:*"), MailStep::Command, |response| {
            if let Response::MailboxData(MailboxDatum::Search(found)) = response {
                uids.extend(found.iter().copied().filter(|uid| *uid > last_uid));
            }
            Ok(())
        })
        .await?;
        uids.sort_unstable();
        uids.dedup();
        Ok(uids)
    }

    /// The first `max` messages with a UID above `last_uid` in the selected folder, ascending by UID, without
    /// setting `\Seen`. A NOOP lets the server notice new mail, one `UID SEARCH` finds the UIDs, and one `UID FETCH`
    /// of exactly the wanted range streams the messages.
    pub async fn fetch_new(&mut self, last_uid: u32, max: usize) -> Result<Vec<FetchedMessage>, MailError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let uids = self.uids_after(last_uid).await?;
        let wanted = &uids[..uids.len().min(max)];
        let (Some(&first), Some(&last)) = (wanted.first(), wanted.last()) else {
            return Ok(Vec::new());
        };
        let mut messages = Vec::with_capacity(wanted.len());
        // `first:last` holds exactly the wanted UIDs (they are the lowest above `last_uid`); a bound range also avoids
        // `n:*`, which returns the highest message even when its UID is below n.
        let command = format!("UID FETCH {first}:{last} (UID FLAGS BODY.PEEK[])");
        self.run_listing(&command, MailStep::Command, |response| {
            if let Response::Fetch(_, attributes) = response {
                if let Some(message) = fetched_message(attributes) {
                    if (first..=last).contains(&message.uid) {
                        messages.push(message);
                    }
                }
            }
            Ok(())
        })
        .await?;
        messages.sort_by_key(|m| m.uid);
        messages.dedup_by_key(|m| m.uid);
        Ok(messages)
    }

    /// RFC822.SIZE of each of `uids` that still exists, ascending by UID. Only a hint: what the server then sends is
    /// bounded separately.
    pub async fn message_sizes(&mut self, uids: &[u32]) -> Result<Vec<MessageSize>, MailError> {
        let wanted: HashSet<u32> = uids.iter().copied().collect();
        let mut sizes = Vec::with_capacity(uids.len());
        for set in uid_sets(uids) {
            self.run_listing(&format!("UID FETCH {set} (UID RFC822.SIZE)"), MailStep::Command, |response| {
                if let Response::Fetch(_, attributes) = response {
                    let uid = attributes.iter().find_map(|a| if let AttributeValue::Uid(v) = a { Some(*v) } else { None });
                    let size =
                        attributes.iter().find_map(|a| if let AttributeValue::Rfc822Size(v) = a { Some(*v) } else { None });
                    if let (Some(uid), Some(size)) = (uid, size) {
                        if wanted.contains(&uid) {
                            sizes.push(MessageSize { uid, size });
                        }
                    }
                }
                Ok(())
            })
            .await?;
        }
        sizes.sort_by_key(|m| m.uid);
        sizes.dedup_by_key(|m| m.uid);
        Ok(sizes)
    }

    /// The messages `uids`, without setting `\Seen`, ascending by UID. Each is asked for as its first `max_each + 1`
    /// bytes (a partial FETCH), so one that is larger than `max_each` arrives cut at that length however large the
    /// server said it was; and the whole answer may take at most `budget` bytes. A server that sends more than that
    /// is cut off: [`BodyBatch::cut`] says why and `messages` holds what arrived whole before (the session is then
    /// unusable).
    pub async fn fetch_bodies(&mut self, uids: &[u32], max_each: u64, budget: u64) -> Result<BodyBatch, MailError> {
        let part = max_each.saturating_add(1);
        self.fetch_sections(uids, &format!("BODY.PEEK[]<0.{part}>"), part, budget).await
    }

    /// The headers of `uids` (`BODY.PEEK[HEADER]`), each cut at `max_each` bytes, ascending by UID; the whole answer
    /// bounded by `budget` bytes as in [`Self::fetch_bodies`].
    pub async fn fetch_headers(&mut self, uids: &[u32], max_each: u64, budget: u64) -> Result<BodyBatch, MailError> {
        self.fetch_sections(uids, &format!("BODY.PEEK[HEADER]<0.{max_each}>"), max_each, budget).await
    }

    async fn fetch_sections(&mut self, uids: &[u32], item: &str, max_literal: u64, budget: u64) -> Result<BodyBatch, MailError> {
        let wanted: HashSet<u32> = uids.iter().copied().collect();
        let mut messages = Vec::with_capacity(uids.len());
        self.arm(budget, max_literal);
        let mut cut = None;
        for set in uid_sets(uids) {
            let result = self
                .run_armed(&format!("UID FETCH {set} (UID {item})"), MailStep::Command, |response| {
                    if let Response::Fetch(_, attributes) = response {
                        if let Some(message) = fetched_message(attributes) {
                            if wanted.contains(&message.uid) {
                                messages.push(message);
                            }
                        }
                    }
                    Ok(())
                })
                .await;
            match result {
                Ok(()) => {}
                Err(error) if self.guard_tripped().is_some() => {
                    cut = Some(error);
                    break;
                }
                Err(error) => return Err(error),
            }
        }
        messages.sort_by_key(|m| m.uid);
        messages.dedup_by_key(|m| m.uid);
        Ok(BodyBatch { messages, cut })
    }

    /// Sets `\Seen` on the messages (in the selected folder).
    pub async fn mark_seen(&mut self, uids: &[u32]) -> Result<(), MailError> {
        for set in uid_sets(uids) {
            self.run(&format!("UID STORE {set} +FLAGS.SILENT (\\Seen)"), MailStep::Command, ignore).await?;
        }
        Ok(())
    }

    /// Moves the messages to `folder`: `UID MOVE` where the server has MOVE, else `UID COPY`, `\Deleted` and an
    /// expunge of exactly those UIDs (`UID EXPUNGE`, or `EXPUNGE` without UIDPLUS). A missing target folder fails at
    /// [`MailStep::Folder`].
    pub async fn move_to(&mut self, uids: &[u32], folder: &str) -> Result<(), MailError> {
        let sets = uid_sets(uids);
        if sets.is_empty() {
            return Ok(());
        }
        let target = quote_mailbox(folder);
        if self.has_capability("MOVE").await? {
            for set in &sets {
                self.run(&format!("UID MOVE {set} {target}"), MailStep::Command, ignore).await?;
            }
            return Ok(());
        }
        for set in &sets {
            self.run(&format!("UID COPY {set} {target}"), MailStep::Command, ignore).await?;
        }
        self.delete_sets(&sets).await
    }

    /// Deletes the messages for good: `\Deleted`, then `UID EXPUNGE` of those UIDs (or `EXPUNGE` without UIDPLUS).
    pub async fn delete(&mut self, uids: &[u32]) -> Result<(), MailError> {
        let sets = uid_sets(uids);
        self.delete_sets(&sets).await
    }

    async fn delete_sets(&mut self, sets: &[String]) -> Result<(), MailError> {
        if sets.is_empty() {
            return Ok(());
        }
        for set in sets {
            self.run(&format!("UID STORE {set} +FLAGS.SILENT (\\Deleted)"), MailStep::Command, ignore).await?;
        }
        if self.has_capability("UIDPLUS").await? {
            for set in sets {
                self.run(&format!("UID EXPUNGE {set}"), MailStep::Command, ignore).await?;
            }
        } else {
            self.run("EXPUNGE", MailStep::Command, ignore).await?;
        }
        Ok(())
    }

    /// Whether `folder` holds a message whose Message-ID header contains `message_id` (e.g. to settle whether a
    /// send whose outcome is unknown reached the Sent folder). Leaves `folder` open read-only: select the polled
    /// folder again before fetching.
    pub async fn find_message_id(&mut self, folder: &str, message_id: &str) -> Result<bool, MailError> {
        let id = message_id.trim();
        if id.is_empty() || !id.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(MailError::new(MailStep::Command, "a Message-ID to search for must be printable ASCII"));
        }
        self.examine(folder).await?;
        let mut found = false;
        self.run_listing(&format!("UID SEARCH HEADER Message-ID {}", quote(id)), MailStep::Command, |response| {
            if let Response::MailboxData(MailboxDatum::Search(uids)) = response {
                found |= !uids.is_empty();
            }
            Ok(())
        })
        .await?;
        Ok(found)
    }

    /// The folders the server marks `\Sent` (RFC 6154 special use), whatever their names (a localized server's
    /// "Gesendete Elemente", Gmail's "[Gmail]/Sent Mail"); at most `MAX_SENT_FOLDERS`, names decoded from modified
    /// UTF-7 (one that does not decode is skipped). Empty when the server marks none.
    pub async fn sent_folders(&mut self) -> Result<Vec<String>, MailError> {
        let mut folders = Vec::new();
        self.run("LIST \"\" \"*\"", MailStep::Folder, |response| {
            if let Response::MailboxData(MailboxDatum::List(list)) = response {
                let sent = list.name_attributes.iter().any(|attribute| matches!(attribute, NameAttribute::Sent));
                if sent && folders.len() < MAX_SENT_FOLDERS {
                    folders.extend(decode_modified_utf7(&list.name));
                }
            }
            Ok(())
        })
        .await?;
        Ok(folders)
    }

    /// Whether the server announces `name` (e.g. `MOVE`, `UIDPLUS`; case-insensitive).
    pub async fn has_capability(&mut self, name: &str) -> Result<bool, MailError> {
        if self.capabilities.is_none() {
            let mut names = HashSet::new();
            self.run("CAPABILITY", MailStep::Command, |response| {
                if let Response::Capabilities(capabilities) = response {
                    names.extend(capabilities.iter().map(capability_name));
                }
                Ok(())
            })
            .await?;
            self.capabilities = Some(names);
        }
        Ok(self.capabilities.as_ref().is_some_and(|names| names.contains(&name.to_ascii_uppercase())))
    }

    /// Waits in IDLE (RFC 2177) on the selected folder until the server announces a new message (`EXISTS` or
    /// `RECENT`), `max` passes or `stop` resolves, then ends it with `DONE`. A server that refuses IDLE fails at
    /// [`MailStep::Command`] with its words (callers check [`Self::has_capability`] first). What the server may send
    /// meanwhile is bounded like any command's responses.
    pub async fn idle(&mut self, max: Duration, stop: impl std::future::Future<Output = ()>) -> Result<IdleEnd, MailError> {
        let io = self.io_timeout;
        self.arm(IDLE_BYTES, IDLE_BYTES);
        let tag = self.send("IDLE", MailStep::Command).await?;
        let mut bye = None;
        let seen = |parsed: &Response<'_>| Seen::of(parsed, &tag);
        // The continuation says the server idles; untagged data may come first.
        let mut changed = false;
        // The continuation within one I/O timeout, whatever comes before it.
        let deadline = tokio::time::Instant::now() + io;
        loop {
            match self.read_by(deadline, "IDLE", &mut bye, seen).await? {
                None => return Err(MailError::timeout("IDLE", io)),
                Some(Seen::Continue) => break,
                Some(Seen::Tagged(Ok(()))) => return Err(MailError::new(MailStep::Command, "IDLE ended before it started")),
                Some(Seen::Tagged(Err(refused))) => return Err(refused),
                Some(Seen::NewMail) => changed = true,
                Some(Seen::Other) => {}
            }
        }
        let end = if changed {
            IdleEnd::Changed
        } else {
            let deadline = tokio::time::Instant::now() + max;
            tokio::pin!(stop);
            loop {
                let read = tokio::select! {
                    () = &mut stop => break IdleEnd::Stopped,
                    read = self.read_by(deadline, "IDLE", &mut bye, seen) => read?,
                };
                match read {
                    None => break IdleEnd::TimedOut,
                    Some(Seen::NewMail) => break IdleEnd::Changed,
                    // The server ended the IDLE itself (allowed, if unusual): a reason to look at the folder.
                    Some(Seen::Tagged(done)) => return done.map(|()| IdleEnd::Changed),
                    // Flag changes, expunges, "still here": nothing to fetch.
                    Some(Seen::Continue | Seen::Other) => {}
                }
            }
        };
        match tokio::time::timeout(io, self.session.run_command_untagged("DONE")).await {
            Err(_) => return Err(MailError::timeout("DONE", io)),
            Ok(Err(err)) => return Err(imap_error(MailStep::Command, err, None)),
            Ok(Ok(())) => {}
        }
        let deadline = tokio::time::Instant::now() + io;
        loop {
            match self.read_by(deadline, "DONE", &mut bye, seen).await? {
                None => return Err(MailError::timeout("DONE", io)),
                Some(Seen::Tagged(done)) => return done.map(|()| end),
                Some(_) => {}
            }
        }
    }

    /// Reads one response by `deadline` and hands it to `on_response` (`None`: the deadline came first). A `BYE` is
    /// kept in `bye` for the error when the connection then closes.
    async fn read_by<R>(
        &mut self,
        deadline: tokio::time::Instant,
        verb: &str,
        bye: &mut Option<String>,
        on_response: impl FnOnce(&Response<'_>) -> R,
    ) -> Result<Option<R>, MailError> {
        let response = match tokio::time::timeout_at(deadline, self.session.read_response()).await {
            Err(_) => return Ok(None),
            Ok(Err(err)) => {
                return Err(match self.guard_tripped() {
                    Some(reason) => MailError::new(MailStep::Command, format!("{verb}: {reason}")),
                    None => io_error(err),
                })
            }
            Ok(Ok(None)) => return Err(connection_lost(bye.as_deref())),
            Ok(Ok(Some(response))) => response,
        };
        let parsed = response.parsed();
        if let Response::Data { status: Status::Bye, outcome } = parsed {
            *bye = Some(outcome_text(outcome));
        }
        Ok(Some(on_response(parsed)))
    }

    /// Ends the session politely.
    pub async fn logout(mut self) -> Result<(), MailError> {
        self.run("LOGOUT", MailStep::Command, ignore).await
    }

    /// Sends `command` and reads responses until its tagged completion, handing every other response to
    /// `on_response`. NO / BAD fail at `step` (or [`MailStep::Folder`] for TRYCREATE / NONEXISTENT) with the
    /// server's words.
    async fn run<F>(&mut self, command: &str, step: MailStep, on_response: F) -> Result<(), MailError>
    where
        F: FnMut(&Response<'_>) -> Result<(), MailError>,
    {
        self.arm(DEFAULT_COMMAND_BYTES, DEFAULT_COMMAND_BYTES);
        self.run_armed(command, step, on_response).await
    }

    /// [`Self::run`] for a command whose answer grows with the folder (a search, every message's size).
    async fn run_listing<F>(&mut self, command: &str, step: MailStep, on_response: F) -> Result<(), MailError>
    where
        F: FnMut(&Response<'_>) -> Result<(), MailError>,
    {
        self.arm(LISTING_COMMAND_BYTES, LISTING_COMMAND_BYTES);
        self.run_armed(command, step, on_response).await
    }

    /// Bounds what the server may send from now on: `total` bytes in all, no literal above `max_literal`.
    fn arm(&mut self, total: u64, max_literal: u64) {
        self.session.get_mut().guard.arm(total, max_literal);
    }

    /// Why the read guard cut the connection, if it did.
    fn guard_tripped(&self) -> Option<String> {
        self.session.get_ref().guard.tripped.clone()
    }

    /// [`Self::run`] within the bounds set by the last [`Self::arm`].
    async fn run_armed<F>(&mut self, command: &str, step: MailStep, mut on_response: F) -> Result<(), MailError>
    where
        F: FnMut(&Response<'_>) -> Result<(), MailError>,
    {
        let io = self.io_timeout;
        let verb = command_verb(command);
        let tag = self.send(command, step).await?;
        let mut bye = None;
        // Every response within the I/O timeout, and the whole command within a few: a server answering a
        // response a minute for ever would otherwise hold the worker's slot for ever.
        let whole = super::error::command_time(io);
        let deadline = tokio::time::Instant::now() + whole;
        loop {
            let next = deadline.min(tokio::time::Instant::now() + io);
            let response = match tokio::time::timeout_at(next, self.session.read_response()).await {
                Err(_) if next == deadline => return Err(MailError::timeout(&verb, whole)),
                Err(_) => return Err(MailError::timeout(&verb, io)),
                Ok(Err(err)) => {
                    return Err(match self.guard_tripped() {
                        Some(reason) => MailError::new(MailStep::Command, format!("{verb}: {reason}")),
                        None => io_error(err),
                    })
                }
                Ok(Ok(None)) => return Err(connection_lost(bye.as_deref())),
                Ok(Ok(Some(response))) => response,
            };
            match response.parsed() {
                Response::Done { tag: done, status, outcome } if *done == tag => {
                    return match status {
                        Status::Ok => Ok(()),
                        _ => Err(refusal(step, outcome)),
                    };
                }
                Response::Done { .. } => {}
                Response::Data { status: Status::Bye, outcome } => bye = Some(outcome_text(outcome)),
                parsed => on_response(parsed)?,
            }
        }
    }

    /// Sends a command; its responses are for the caller to read.
    async fn send(&mut self, command: &str, step: MailStep) -> Result<async_imap::imap_proto::RequestId, MailError> {
        let io = self.io_timeout;
        match tokio::time::timeout(io, self.session.run_command(command)).await {
            Err(_) => Err(MailError::timeout(&command_verb(command), io)),
            Ok(Err(err)) => Err(imap_error(step, err, None)),
            Ok(Ok(tag)) => Ok(tag),
        }
    }
}

/// What ended an IDLE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleEnd {
    /// The server announced a new message: fetch.
    Changed,
    /// The time given ran out (IDLE is re-issued well before servers' 30-minute limit).
    TimedOut,
    /// The caller stopped it.
    Stopped,
}

/// What the server may send during one IDLE: status updates are small, so this only stops a flood.
const IDLE_BYTES: u64 = 4 * 1024 * 1024;

/// One response during an IDLE, as far as the IDLE cares.
enum Seen {
    Continue,
    /// The IDLE command's own completion: OK, or the refusal.
    Tagged(Result<(), MailError>),
    NewMail,
    Other,
}

impl Seen {
    fn of(response: &Response<'_>, tag: &async_imap::imap_proto::RequestId) -> Seen {
        match response {
            Response::Continue(_) => Seen::Continue,
            Response::Done { tag: done, status, outcome } if done == tag => Seen::Tagged(match status {
                Status::Ok => Ok(()),
                _ => Err(refusal(MailStep::Command, outcome)),
            }),
            Response::MailboxData(MailboxDatum::Exists(_) | MailboxDatum::Recent(_)) => Seen::NewMail,
            _ => Seen::Other,
        }
    }
}

fn ignore(_: &Response<'_>) -> Result<(), MailError> {
    Ok(())
}

/// The command's name for messages (never its arguments, which may hold a folder name or worse).
fn command_verb(command: &str) -> String {
    let mut words = command.split(' ');
    match (words.next(), words.next()) {
        (Some("UID"), Some(verb)) => format!("UID {verb}"),
        (Some(verb), _) => verb.to_owned(),
        _ => String::new(),
    }
}

async fn read_greeting(client: &mut Client<Transport>, io: Duration) -> Result<(), MailError> {
    let response = match tokio::time::timeout(io, client.read_response()).await {
        Err(_) => return Err(MailError::timeout("the greeting", io)),
        Ok(Err(err)) => return Err(MailError::new(MailStep::Greeting, server_words(&err.to_string()))),
        Ok(Ok(None)) => return Err(MailError::new(MailStep::Greeting, "the server closed the connection without a greeting")),
        Ok(Ok(Some(response))) => response,
    };
    match response.parsed() {
        Response::Data { status: Status::Ok | Status::PreAuth, .. } => Ok(()),
        Response::Data { outcome, .. } => Err(MailError::new(MailStep::Greeting, outcome_text(outcome))),
        _ => Err(MailError::new(MailStep::Greeting, "not an IMAP greeting")),
    }
}

/// SASL XOAUTH2: the initial client response; to the error challenge (a JSON document) an empty response, after
/// which the server sends its NO. The challenge is kept for the error message.
struct XOAuth2<'a> {
    login: &'a str,
    token: &'a str,
    sent: bool,
    error_challenge: Option<String>,
}

impl Authenticator for &mut XOAuth2<'_> {
    type Response = Vec<u8>;

    fn process(&mut self, challenge: &[u8]) -> Vec<u8> {
        if self.sent {
            if !challenge.is_empty() {
                self.error_challenge = Some(server_words(&String::from_utf8_lossy(challenge)));
            }
            return Vec::new();
        }
        self.sent = true;
        format!("user={}\x01auth=Bearer {}\x01\x01", self.login, self.token).into_bytes()
    }
}

type Authenticated = (async_imap::Session<Transport>, Option<HashSet<String>>);

async fn authenticate(client: Client<Transport>, auth: &MailAuth, io: Duration) -> Result<Authenticated, MailError> {
    match auth {
        MailAuth::Password { login, password } => {
            if has_line_break(login) || has_line_break(password) {
                return Err(MailError::new(MailStep::Auth, "the login or password contains a line break"));
            }
            match tokio::time::timeout(io, client.login_with_capabilities(login, password)).await {
                Err(_) => Err(MailError::timeout("LOGIN", io)),
                Ok(Ok((session, capabilities))) => {
                    let names = capabilities.map(|c| c.iter().map(async_capability_name).collect());
                    Ok((session, names))
                }
                Ok(Err((err, client))) => Err(auth_error(err, client.get_ref().last_line(), None)),
            }
        }
        MailAuth::XOAuth2 { login, access_token } => {
            if has_line_break(login) || has_line_break(access_token) || login.contains('\x01') || access_token.contains('\x01') {
                return Err(MailError::new(MailStep::Auth, "the login or access token contains a control character"));
            }
            let mut mechanism = XOAuth2 { login, token: access_token, sent: false, error_challenge: None };
            let result = tokio::time::timeout(io, client.authenticate("XOAUTH2", &mut mechanism)).await;
            match result {
                Err(_) => Err(MailError::timeout("AUTHENTICATE XOAUTH2", io)),
                Ok(Ok(session)) => Ok((session, None)),
                Ok(Err((err, client))) => Err(auth_error(err, client.get_ref().last_line(), mechanism.error_challenge)),
            }
        }
    }
}

fn has_line_break(text: &str) -> bool {
    text.contains(['\r', '\n'])
}

fn auth_error(err: async_imap::error::Error, server_line: String, challenge: Option<String>) -> MailError {
    match err {
        async_imap::error::Error::No(_) | async_imap::error::Error::Bad(_) => {
            let mut message = server_line;
            if let Some(challenge) = challenge {
                message = format!("{message} (server said: {challenge})");
            }
            let temporary = ["[UNAVAILABLE]", "[INUSE]", "[SERVERBUG]"].iter().any(|code| message.starts_with(code));
            let error = MailError::new(MailStep::Auth, message);
            if temporary {
                error.with_code(454)
            } else {
                error
            }
        }
        other => imap_error(MailStep::Auth, other, None),
    }
}

/// Maps an async-imap error; `server_line` is the raw completion line where the caller has it.
fn imap_error(step: MailStep, err: async_imap::error::Error, server_line: Option<String>) -> MailError {
    use async_imap::error::Error;
    match err {
        Error::Io(err) => io_error(err),
        Error::ConnectionLost => connection_lost(None),
        Error::No(text) | Error::Bad(text) => MailError::new(step, server_line.unwrap_or_else(|| server_words(&text))),
        Error::Validate(err) => MailError::new(step, err.to_string()),
        other => MailError::new(MailStep::Command, server_words(&other.to_string())),
    }
}

fn io_error(err: io::Error) -> MailError {
    match err.kind() {
        io::ErrorKind::TimedOut => MailError::new(MailStep::Timeout, server_words(&err.to_string())),
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => MailError::new(MailStep::Connect, format!("connection lost: {err}")),
        // async-imap reports unparsable server data as an "other" I/O error quoting the data.
        _ => MailError::new(MailStep::Command, format!("unreadable server reply: {}", server_words(&err.to_string()))),
    }
}

fn connection_lost(bye: Option<&str>) -> MailError {
    match bye {
        Some(text) => MailError::new(MailStep::Connect, format!("the server closed the connection: {text}")),
        None => MailError::new(MailStep::Connect, "the server closed the connection"),
    }
}

/// A tagged NO / BAD as an error: TRYCREATE / NONEXISTENT mean a folder is missing; UNAVAILABLE / INUSE are
/// temporary.
fn refusal(step: MailStep, outcome: &Outcome<'_>) -> MailError {
    let text = outcome_text(outcome);
    let step = if matches!(outcome.code, Some(ResponseCode::TryCreate)) || text.starts_with("[NONEXISTENT]") {
        MailStep::Folder
    } else {
        step
    };
    let error = MailError::new(step, text.clone());
    if ["[UNAVAILABLE]", "[INUSE]", "[SERVERBUG]"].iter().any(|code| text.starts_with(code)) {
        error.with_code(if step == MailStep::Auth { 454 } else { 451 })
    } else {
        error
    }
}

/// The server's words: `[CODE] text` (codes imap-proto does not know stay inside the text).
fn outcome_text(outcome: &Outcome<'_>) -> String {
    let code = match &outcome.code {
        Some(ResponseCode::Alert) => "[ALERT] ",
        Some(ResponseCode::Parse) => "[PARSE] ",
        Some(ResponseCode::TryCreate) => "[TRYCREATE] ",
        Some(ResponseCode::ReadOnly) => "[READ-ONLY] ",
        Some(ResponseCode::ReadWrite) => "[READ-WRITE] ",
        Some(ResponseCode::BadCharset(_)) => "[BADCHARSET] ",
        _ => "",
    };
    let text = outcome.information.as_deref().unwrap_or("");
    let message = format!("{code}{text}");
    if message.trim().is_empty() {
        "no reason given".to_owned()
    } else {
        server_words(message.trim())
    }
}

fn fetched_message(attributes: &[AttributeValue<'_>]) -> Option<FetchedMessage> {
    let mut uid = None;
    let mut raw = None;
    let mut flags_seen = false;
    for attribute in attributes {
        match attribute {
            AttributeValue::Uid(value) => uid = Some(*value),
            AttributeValue::Flags(flags) => flags_seen = flags.iter().any(|flag| flag.eq_ignore_ascii_case("\\Seen")),
            // The whole message, or its start (`BODY[]<0>`), or its header (`BODY[HEADER]`, `BODY[HEADER]<0>`).
            AttributeValue::BodySection {
                section: None | Some(SectionPath::Full(MessageSection::Header)),
                index: None | Some(0),
                data,
            } => {
                raw = Some(data.as_deref().map(<[u8]>::to_vec).unwrap_or_default());
            }
            AttributeValue::Rfc822(data) => raw = Some(data.as_deref().map(<[u8]>::to_vec).unwrap_or_default()),
            _ => {}
        }
    }
    // FETCH responses without a body are flag updates (e.g. from another session): not messages.
    Some(FetchedMessage { uid: uid?, raw: raw?, flags_seen })
}

fn capability_name(capability: &async_imap::imap_proto::Capability<'_>) -> String {
    use async_imap::imap_proto::Capability;
    match capability {
        Capability::Imap4rev1 => "IMAP4REV1".to_owned(),
        Capability::Auth(mechanism) => format!("AUTH={}", mechanism.to_ascii_uppercase()),
        Capability::Atom(atom) => atom.to_ascii_uppercase(),
    }
}

fn async_capability_name(capability: &async_imap::types::Capability) -> String {
    use async_imap::types::Capability;
    match capability {
        Capability::Imap4rev1 => "IMAP4REV1".to_owned(),
        Capability::Auth(mechanism) => format!("AUTH={}", mechanism.to_ascii_uppercase()),
        Capability::Atom(atom) => atom.to_ascii_uppercase(),
    }
}

/// Sorted, de-duplicated UIDs as IMAP sets (`1:5,8,10:12`), split so no command line gets long.
fn uid_sets(uids: &[u32]) -> Vec<String> {
    let mut sorted: Vec<u32> = uids.iter().copied().filter(|uid| *uid > 0).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut sets = Vec::new();
    let mut current = String::new();
    let mut index = 0;
    while index < sorted.len() {
        let start = sorted[index];
        let mut end = start;
        while index + 1 < sorted.len() && sorted[index + 1] == end + 1 {
            index += 1;
            end = sorted[index];
        }
        index += 1;
        let range = if start == end { start.to_string() } else { format!("{start}:{end}") };
        if !current.is_empty() && current.len() + 1 + range.len() > MAX_SET_LEN {
            sets.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(',');
        }
        current.push_str(&range);
    }
    if !current.is_empty() {
        sets.push(current);
    }
    sets
}

/// An IMAP quoted string (the caller ensures there is no line break).
fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A folder name as an IMAP argument: modified UTF-7 (RFC 3501 §5.1.3), quoted.
fn quote_mailbox(name: &str) -> String {
    quote(&encode_modified_utf7(name))
}

fn encode_modified_utf7(name: &str) -> String {
    fn flush(out: &mut String, pending: &mut Vec<u16>) {
        if pending.is_empty() {
            return;
        }
        let bytes: Vec<u8> = pending.iter().flat_map(|unit| unit.to_be_bytes()).collect();
        out.push('&');
        out.push_str(&base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes).replace('/', ","));
        out.push('-');
        pending.clear();
    }
    let mut out = String::with_capacity(name.len());
    let mut pending = Vec::new();
    for ch in name.chars() {
        if (' '..='~').contains(&ch) {
            flush(&mut out, &mut pending);
            if ch == '&' {
                out.push_str("&-");
            } else {
                out.push(ch);
            }
        } else {
            let mut units = [0u16; 2];
            pending.extend_from_slice(ch.encode_utf16(&mut units));
        }
    }
    flush(&mut out, &mut pending);
    out
}

/// A folder name as the server sends it (modified UTF-7, RFC 3501 §5.1.3) in UTF-8; `None` when it is not valid.
fn decode_modified_utf7(wire: &str) -> Option<String> {
    let mut out = String::with_capacity(wire.len());
    let mut rest = wire;
    while let Some(start) = rest.find('&') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let end = after.find('-')?;
        let encoded = &after[..end];
        if encoded.is_empty() {
            out.push('&');
        } else {
            let bytes = base64::engine::general_purpose::STANDARD_NO_PAD.decode(encoded.replace(',', "/")).ok()?;
            if bytes.len() % 2 != 0 {
                return None;
            }
            let units: Vec<u16> = bytes.chunks_exact(2).map(|pair| u16::from_be_bytes([pair[0], pair[1]])).collect();
            out.push_str(&String::from_utf16(&units).ok()?);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

// ---- transport --------------------------------------------------------------------------------------------------

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// The connection under async-imap: TCP or TLS, remembering the last bytes the server sent, so a failed login
/// can quote the server's completion line as it was written (async-imap only keeps a debug rendering of it), and
/// bounding what the server can make the client read ([`ReadGuard`]).
struct Transport {
    stream: Stream,
    tail: Tail,
    guard: ReadGuard,
}

impl Transport {
    fn plain(tcp: TcpStream) -> Self {
        Transport { stream: Stream::Plain(tcp), tail: Tail::default(), guard: ReadGuard::default() }
    }

    fn tls(tls: TlsStream<TcpStream>) -> Self {
        Transport { stream: Stream::Tls(Box::new(tls)), tail: Tail::default(), guard: ReadGuard::default() }
    }

    fn into_plain(self) -> Option<TcpStream> {
        match self.stream {
            Stream::Plain(tcp) => Some(tcp),
            Stream::Tls(_) => None,
        }
    }

    fn last_line(&self) -> String {
        self.tail.last_line()
    }
}

/// Bytes one command may make the client read unless it says otherwise, and the largest literal then: most answers
/// are a few lines (a folder's status, an expunge's echo, the folder list), and a thousand watched connections each
/// made to buffer 64 MiB would take the worker down.
const DEFAULT_COMMAND_BYTES: u64 = 4 * 1024 * 1024;
/// Bytes a command whose answer grows with the folder (a search, every message's size) may make the client read.
const LISTING_COMMAND_BYTES: u64 = 64 * 1024 * 1024;

/// What the server may still send: at most `remaining` bytes for the command under way, and no literal (`{n}`)
/// above `max_literal`. It reads the raw bytes before async-imap parses them, so neither a size the server
/// announces nor data it keeps sending can make the client buffer more than the caller allowed (async-imap would
/// allocate an announced literal at once, up to 512 MiB). Once tripped, the connection is unusable.
struct ReadGuard {
    remaining: u64,
    max_literal: u64,
    /// Literal bytes still to pass before lines are read again.
    in_literal: u64,
    /// The end of the current line, enough to recognise a literal's announcement `{123}`.
    line_tail: Vec<u8>,
    tripped: Option<String>,
}

const LINE_TAIL_LEN: usize = 32;

impl Default for ReadGuard {
    fn default() -> Self {
        ReadGuard {
            remaining: DEFAULT_COMMAND_BYTES,
            max_literal: DEFAULT_COMMAND_BYTES,
            in_literal: 0,
            line_tail: Vec::with_capacity(LINE_TAIL_LEN + 1),
            tripped: None,
        }
    }
}

impl ReadGuard {
    /// Sets the bounds for the next command's responses.
    fn arm(&mut self, total: u64, max_literal: u64) {
        self.remaining = total;
        self.max_literal = max_literal;
    }

    /// Accounts for `data`, just read. When it crosses a bound, the error holds how many of its leading bytes were
    /// still within the bounds (they may be handed on) and says which bound the server crossed; every later read
    /// fails.
    fn check(&mut self, data: &[u8]) -> Result<(), (usize, String)> {
        if let Some(reason) = &self.tripped {
            return Err((0, reason.clone()));
        }
        let result = self.scan(data);
        if let Err((_, reason)) = &result {
            self.tripped = Some(reason.clone());
        }
        result
    }

    fn scan(&mut self, data: &[u8]) -> Result<(), (usize, String)> {
        let allowed = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(data.len());
        let mut index = 0;
        while index < allowed {
            if self.in_literal > 0 {
                let skip = self.in_literal.min((allowed - index) as u64);
                self.in_literal -= skip;
                index += skip as usize;
                continue;
            }
            let byte = data[index];
            if byte == b'\n' {
                if let Some(size) = announced_literal(&self.line_tail) {
                    if size > self.max_literal {
                        self.remaining -= index as u64;
                        let reason =
                            format!("the server announced {size} bytes where at most {} were asked for", self.max_literal);
                        return Err((index, reason));
                    }
                    self.in_literal = size;
                }
                self.line_tail.clear();
            } else {
                if self.line_tail.len() == LINE_TAIL_LEN {
                    self.line_tail.remove(0);
                }
                self.line_tail.push(byte);
            }
            index += 1;
        }
        self.remaining -= allowed as u64;
        if allowed < data.len() {
            return Err((allowed, "the server sent more data than the command allows".to_owned()));
        }
        Ok(())
    }
}

/// The size a line ending `{123}\r` announces (a literal follows the line). Too many digits to fit the tail count
/// as unbounded.
fn announced_literal(tail: &[u8]) -> Option<u64> {
    let body = tail.strip_suffix(b"}\r")?;
    let digits = body.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    if digits == body.len() {
        // The `{` scrolled out of the tail: far more digits than any real size.
        return Some(u64::MAX);
    }
    let (head, number) = body.split_at(body.len() - digits);
    if head.last() != Some(&b'{') {
        return None;
    }
    Some(std::str::from_utf8(number).ok().and_then(|n| n.parse().ok()).unwrap_or(u64::MAX))
}

/// The last [`TAIL_LEN`] bytes read.
#[derive(Default)]
struct Tail(Vec<u8>);

const TAIL_LEN: usize = 1024;

impl Tail {
    fn record(&mut self, data: &[u8]) {
        if data.len() >= TAIL_LEN {
            self.0.clear();
            self.0.extend_from_slice(&data[data.len() - TAIL_LEN..]);
            return;
        }
        let overflow = (self.0.len() + data.len()).saturating_sub(TAIL_LEN);
        self.0.drain(..overflow);
        self.0.extend_from_slice(data);
    }

    /// The last complete line the server sent, without its tag and status (`a1 NO [X] text` → `[X] text`).
    fn last_line(&self) -> String {
        let text = String::from_utf8_lossy(&self.0);
        let line = text.trim_end_matches(['\r', '\n']).rsplit('\n').next().unwrap_or("").trim();
        let mut words = line.splitn(3, ' ');
        let (first, second, rest) = (words.next().unwrap_or(""), words.next().unwrap_or(""), words.next().unwrap_or(""));
        let words = if ["OK", "NO", "BAD", "BYE"].iter().any(|s| second.eq_ignore_ascii_case(s)) {
            rest.to_owned()
        } else {
            format!("{first} {second} {rest}")
        };
        let words = words.trim();
        if words.is_empty() {
            "no reason given".to_owned()
        } else {
            server_words(words)
        }
    }
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.stream {
            Stream::Plain(_) => "Transport::Plain",
            Stream::Tls(_) => "Transport::Tls",
        })
    }
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(reason) = &this.guard.tripped {
            return Poll::Ready(Err(io::Error::other(reason.clone())));
        }
        let before = buf.filled().len();
        let result = match &mut this.stream {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        };
        if let Poll::Ready(Ok(())) = result {
            let filled = buf.filled();
            if filled.len() > before {
                if let Err((accepted, reason)) = this.guard.check(&filled[before..]) {
                    // Bytes past the bound never reach async-imap: those before it go on, and the next read fails
                    // (async-imap does not count a read that failed).
                    if accepted == 0 {
                        return Poll::Ready(Err(io::Error::other(reason)));
                    }
                    buf.set_filled(before + accepted);
                }
                let filled = buf.filled();
                this.tail.record(&filled[before..]);
            }
        }
        result
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, data),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_are_modified_utf7_and_quoted() {
        assert_eq!(quote_mailbox("INBOX"), "\"INBOX\"");
        assert_eq!(quote_mailbox("Archive/2024"), "\"Archive/2024\"");
        assert_eq!(quote_mailbox("Tom & Jerry"), "\"Tom &- Jerry\"");
        assert_eq!(quote_mailbox("Gelöschte Elemente"), "\"Gel&APY-schte Elemente\"");
        assert_eq!(quote_mailbox("台北"), "\"&U,BTFw-\"");
        assert_eq!(quote_mailbox("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }

    #[test]
    fn folder_names_from_the_server_decode_from_modified_utf7() {
        for name in ["INBOX", "Tom & Jerry", "Gelöschte Elemente", "台北", "Éléments envoyés", "a&b&c", "[Gmail]/Sent Mail"]
        {
            assert_eq!(decode_modified_utf7(&encode_modified_utf7(name)).as_deref(), Some(name), "{name}");
        }
        for broken in ["&AMk", "&!!!-", "&AA-", "&2D3-"] {
            assert_eq!(decode_modified_utf7(broken), None, "{broken}");
        }
    }

    #[test]
    fn uid_sets_are_ranges_and_split_when_long() {
        assert_eq!(uid_sets(&[]), Vec::<String>::new());
        assert_eq!(uid_sets(&[5, 1, 2, 3, 8, 10, 11, 3]), vec!["1:3,5,8,10:11".to_owned()]);
        let sparse: Vec<u32> = (1..5000).map(|n| n * 2).collect();
        let sets = uid_sets(&sparse);
        assert!(sets.len() > 1);
        assert!(sets.iter().all(|set| set.len() <= MAX_SET_LEN));
        let count: usize = sets.iter().map(|set| set.split(',').count()).sum();
        assert_eq!(count, sparse.len());
    }

    #[test]
    fn the_last_server_line_loses_its_tag_and_status() {
        let mut tail = Tail::default();
        tail.record(b"* CAPABILITY IMAP4rev1\r\nA1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n");
        assert_eq!(tail.last_line(), "[AUTHENTICATIONFAILED] Authentication failed.");
        tail.record(&vec![b'x'; 5000]);
        assert_eq!(tail.0.len(), TAIL_LEN);
        tail.record(b"\r\nA2 BAD Error in IMAP command\r\n");
        assert_eq!(tail.0.len(), TAIL_LEN);
        assert_eq!(tail.last_line(), "Error in IMAP command");
    }

    #[test]
    fn the_read_guard_refuses_an_announced_literal_above_the_bound_before_it_arrives() {
        let mut guard = ReadGuard::default();
        guard.arm(1_000_000, 100);
        // A literal within the bound passes, including text inside it that looks like an announcement.
        let fine = b"* 1 FETCH (UID 5 BODY[]<0> {30}\r\nSubject: {99999}\r\n\r\nbody text.)\r\nA1 OK done\r\n";
        guard.check(fine).expect("a literal within the bound");
        assert_eq!(guard.in_literal, 0);
        // Split across reads, an announcement is still seen.
        guard.check(b"* 2 FETCH (UID 6 BODY[]<0> {10").expect("first half");
        let (accepted, err) = guard.check(b"1}\r\n").expect_err("101 bytes announced");
        assert!(err.contains("101"), "{err}");
        assert_eq!(accepted, 3, "what came before the line's end may go on");
        // Once tripped, nothing more is read.
        assert!(guard.check(b"x").is_err());
        let mut guard = ReadGuard::default();
        guard.arm(1_000_000, u64::MAX - 1);
        assert!(guard.check(b"* 1 FETCH (BODY[] {99999999999999999999999999999999999}\r\n").is_err(), "absurd digit counts");
    }

    #[test]
    fn the_read_guard_bounds_all_bytes_of_a_command() {
        let mut guard = ReadGuard::default();
        guard.arm(50, 1_000);
        guard.check(&[b'x'; 30]).expect("within the total");
        guard.check(&[b'x'; 20]).expect("exactly the total");
        assert_eq!(guard.check(b"y").expect_err("past the total").0, 0);
        let mut guard = ReadGuard::default();
        guard.arm(10, 1_000);
        assert_eq!(guard.check(&[b'x'; 25]).expect_err("past the total").0, 10);
        assert_eq!(announced_literal(b"BODY[] {12}\r"), Some(12));
        assert_eq!(announced_literal(b"BODY[] ~{12}\r"), Some(12));
        assert_eq!(announced_literal(b"OK [x] a} b12}\r"), None);
        assert_eq!(announced_literal(b"12}"), None);
    }

    #[test]
    fn command_verbs_hide_arguments() {
        assert_eq!(command_verb("UID FETCH 1:5 (UID FLAGS BODY.PEEK[])"), "UID FETCH");
        assert_eq!(command_verb("SELECT \"Secret\""), "SELECT");
    }
}
