//! Mail-protocol plumbing shared by the IMAP, POP3 and SMTP clients: TLS and guarded connections.

pub mod net;
pub mod tls;
