//! Sending: the outbox (submit, list), routing a sender to its outbound account, and delivery over SMTP.

pub mod delivery;
pub mod outbox;
pub mod routing;
pub mod settle;
pub mod steer;
