//! Sending: the outbox (submit, list), routing a sender to its outbound account, and delivery over SMTP (in
//! batches of one account's messages, at the account's pace).

pub mod announce;
pub mod batches;
pub mod delivery;
pub mod give_back;
pub mod outbox;
mod outcome;
pub mod pace;
pub mod route_cache;
pub mod routing;
pub mod settle;
pub mod steer;
