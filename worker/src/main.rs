//! `postbridge-worker`: polls inbound mailboxes, sends queued messages, keeps OAuth grants fresh, delivers
//! webhooks and announces expiring client secrets (see the library for how).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    postbridge_worker::main_entry().await
}
