//! Tests: health.
