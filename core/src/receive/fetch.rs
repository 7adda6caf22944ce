//! What a poll fetches at a time and what it reports, shared by the IMAP poll (and IDLE watch) and the POP3 poll.

use crate::connect::mailbox;
use crate::context::AppContext;
use crate::error::AppError;
use crate::protocols::error::MailError;

/// Messages fetched and committed per round trip.
pub(super) const BATCH: usize = 1_000;

/// The most of an oversized message's header that is kept.
pub(super) const HEADER_BYTES: u64 = 512 * 1024;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct PollReport {
    /// False when another worker held the mailbox.
    pub polled: bool,
    pub fetched: u64,
    pub stored: u64,
    /// UIDVALIDITY changed (or the folder did) and the mailbox was matched again from the start.
    pub resynchronised: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Mail(#[from] MailError),
    #[error(transparent)]
    App(#[from] AppError),
}

impl PollError {
    /// The failure kind recorded on the account.
    pub fn failure_kind(&self) -> crate::failure::FailureKind {
        match self {
            PollError::Mail(e) => e.kind(),
            PollError::App(_) => crate::failure::FailureKind::Internal,
        }
    }
}

impl From<mailbox::CredentialError> for PollError {
    fn from(err: mailbox::CredentialError) -> Self {
        match err {
            mailbox::CredentialError::Mail(e) => PollError::Mail(e),
            mailbox::CredentialError::Internal(e) => PollError::App(e),
        }
    }
}

impl From<sea_orm::DbErr> for PollError {
    fn from(err: sea_orm::DbErr) -> Self {
        PollError::App(err.into())
    }
}

/// The byte bounds of one poll, from the settings.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// Largest message stored whole.
    pub(super) max_message: u64,
    /// Message bytes fetched and committed at a time.
    pub(super) batch_bytes: u64,
}

impl Limits {
    pub(super) fn of(ctx: &AppContext) -> Limits {
        Limits { max_message: ctx.settings.max_inbound_message_bytes, batch_bytes: ctx.settings.inbound_batch_bytes }
    }

    /// Placeholders fetched at a time: their headers (each at most `HEADER_BYTES`) stay within a batch's bytes.
    pub(super) fn headers_per_run(&self) -> usize {
        usize::try_from(self.batch_bytes / HEADER_BYTES).unwrap_or(BATCH).clamp(1, BATCH)
    }

    /// What the server may send for a run of messages announced at `declared` bytes in all: that with a quarter
    /// more (servers' sizes are not always exact), and at least one whole message, plus the responses' framing.
    pub(super) fn budget(&self, declared: u64, count: usize, each: u64) -> u64 {
        let framing = 64 * 1024 + 512 * count as u64;
        declared.saturating_add(declared / 4).max(each).saturating_add(framing)
    }
}

/// The header of a message's start (up to and with the blank line), at most [`HEADER_BYTES`].
pub(super) fn header_of(raw: &[u8]) -> &[u8] {
    let limit = raw.len().min(HEADER_BYTES as usize);
    let head = &raw[..limit];
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
        .or_else(|| head.windows(2).position(|w| w == b"\n\n").map(|at| at + 2));
    &head[..end.unwrap_or(limit)]
}
