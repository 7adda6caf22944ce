//! Tests: tenants.
