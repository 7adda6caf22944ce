//! The worker binary for the tests' real processes: the same `main` as `postbridge-worker`, built with the
//! test crate so that `CARGO_BIN_EXE_postbridge-test-worker` always points at a fresh build.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    postbridge_worker::main_entry().await
}
