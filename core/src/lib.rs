//! Postbridge's shared library, read by flow: `connect` (mailboxes and their tokens), `send`, `receive`,
//! `observe` (events, webhooks, audit, health), `jobs` (background units), over `access` (who calls),
//! `store` (tables, tenant wall), `secrets` (sealed columns) and `protocols` (the wire). Both the API and the
//! worker call these; REST and GraphQL only translate to and from them.

pub mod access;
pub mod config;
pub mod connect;
pub mod context;
pub mod error;
pub mod failure;
pub mod jobs;
pub mod metrics;
pub mod model;
pub mod observe;
pub mod protocols;
pub mod receive;
pub mod secrets;
pub mod send;
pub mod store;
pub mod telemetry;
pub mod validate;

pub use config::Settings;
pub use context::AppContext;
pub use error::{AppError, AppResult};
