//! Postbridge's HTTP API: REST under `/v1`, GraphQL at `/graphql`, OpenAPI at `/openapi.json`.

pub mod bounds;
mod consent_page;
pub mod error;
pub mod extract;
pub mod graphql;
pub mod live;
pub mod metrics;
pub mod openapi;
pub mod rate_limit;
pub mod rest;
pub mod startup;

pub use startup::Application;
