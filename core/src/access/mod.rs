//! Who is calling and what they may do: credentials (API keys, JWTs), tenants, per-tenant rate limits.

pub mod api_keys;
pub mod auth;
pub mod auth_cache;
pub mod jwt;
pub mod rate_limit;
pub mod tenants;
