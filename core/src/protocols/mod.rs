//! The wire: IMAP, POP3 and SMTP clients, OAuth2 token requests, message composition, and the TLS and guarded
//! connections (`netguard`: which hosts a tenant's credentials may reach) under them.

pub mod compose;
pub mod error;
pub mod imap;
pub mod net;
pub mod netguard;
pub mod oauth;
pub mod pop3;
pub mod smtp;
mod smtp_stream;
pub mod tls;
