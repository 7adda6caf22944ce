//! Logging set-up shared by the API and the worker: `RUST_LOG` filters, `POSTBRIDGE_LOG_FORMAT=json` for JSON lines.

use tracing_subscriber::EnvFilter;

pub fn init(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("POSTBRIDGE_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(true);
    // A second initialisation (tests) is harmless; ignore it.
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
