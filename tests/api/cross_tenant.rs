//! Tests: cross_tenant.
