//! Mail-protocol plumbing shared by the IMAP, POP3 and SMTP clients: TLS and guarded connections.

pub mod compose;
pub mod error;
pub mod imap;
pub mod net;
pub mod pop3;
pub mod smtp;
pub mod tls;
