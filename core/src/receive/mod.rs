//! Receiving: polling mailboxes and watching them in IDLE into stored messages, and the inbox read by the API.

pub mod content;
pub mod feed_health;
mod fetch;
pub mod idle;
pub mod inbox;
pub mod poll;
mod pop3;
