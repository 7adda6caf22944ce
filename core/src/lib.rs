//! Postbridge's shared library: configuration, domain model, storage, crypto, auth and the service
//! layer used by both the API and the worker.

pub mod account_lifecycle;
pub mod auth;
pub mod backoff;
pub mod config;
pub mod context;
pub mod crypto;
pub mod entities;
pub mod error;
pub mod failure;
pub mod hints;
pub mod mail;
pub mod metrics;
pub mod model;
pub mod netguard;
pub mod oauth;
pub mod presets;
pub mod secrets;
pub mod service;
pub mod telemetry;
pub mod tenant_wall;
pub mod validate;

pub use config::Settings;
pub use context::AppContext;
pub use error::{AppError, AppResult};
