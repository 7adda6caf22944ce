//! Connecting mailboxes: provider presets, token configurations, accounts, OAuth2 authorize/callback and
//! grants (tokens kept fresh), test & confirm, and the account's state machine.

pub mod account_lifecycle;
pub mod accounts;
pub mod confirm;
pub mod grants;
pub mod mailbox;
pub mod presets;
pub mod token_configs;
