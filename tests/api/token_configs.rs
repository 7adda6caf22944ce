//! Tests: token_configs.
