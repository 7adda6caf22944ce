//! Receiving: polling mailboxes into stored messages, and the inbox read by the API.

pub mod inbox;
pub mod poll;
