//! `deployment`: the whole deployment as users run it — the release `postbridge-api` and `postbridge-worker` binaries
//! as their own processes beside Postgres, Redis and the local mail servers — fed over HTTP by this process:
//!
//! 1. `GET /v1/accounts?limit=50` (1,000 accounts, API-key auth) from 16 connections: requests/s and latency.
//! 2. `messages` messages submitted to `POST /v1/messages` from 8 connections, all from one SMTP account, before any
//!    worker runs: submissions/s alone. Then a worker starts and sends them (reusing its connections): sent/s.
//! 3. `messages` more submitted the same way while the worker runs, until the last is sent: messages/s end to end.
//! 4. The peer: nodemailer with a pool of 4 sending `messages` to the same server and login (as it comes, and with
//!    TCP_NODELAY sockets like Postbridge's own client), and the end-to-end rate as a share of each.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use futures::StreamExt;
use postbridge_tests::mail::MailServers;
use postbridge_tests::processes::free_port;
use serde_json::json;
use uuid::Uuid;

const LIST_REQUESTS: usize = 20_000;
const LIST_CONNECTIONS: usize = 16;
const SUBMIT_CONNECTIONS: usize = 8;

/// Kills the child when dropped, so a failed measurement leaves no process behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn run(messages: usize) -> anyhow::Result<()> {
    let servers = MailServers::shared().await;
    // The in-process app only sets the database up (tenant, key, accounts); every measured request goes to the
    // API process.
    let (app, tenant, key) = super::mail_app(servers).await?;
    let port = free_port();
    let address = format!("http://127.0.0.1:{port}");
    let api_binary = super::worker_binary()?.with_file_name("postbridge-api");
    anyhow::ensure!(api_binary.exists(), "build the API first: cargo build --release -p postbridge-api");
    let _api = Running(
        Command::new(api_binary)
            .envs(app.env.vars.iter())
            .env("POSTBRIDGE_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("POSTBRIDGE_PUBLIC_URL", &address)
            .env("RUST_LOG", "warn")
            .spawn()?,
    );
    let http = reqwest::Client::builder().pool_max_idle_per_host(LIST_CONNECTIONS).build()?;
    let started = Instant::now();
    while http.get(format!("{address}/healthz")).send().await.map(|r| r.status().is_success()).ok() != Some(true) {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "the API process did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("deployment: release postbridge-api and postbridge-worker processes, fed over HTTP");

    super::seed_accounts(&app, Uuid::parse_str(&tenant)?, 1_000).await?;
    list_accounts(&http, &address, &key).await?;

    let login = format!("deploy-{}@example.com", Uuid::new_v4().simple());
    servers.add_password_user(&login, "bench-password");
    super::confirmed_account(
        &app,
        &key,
        json!({"protocol": "smtp", "auth": "password", "login": login, "password": "bench-password",
               "host": "127.0.0.1", "port": servers.smtp_port(), "security": "starttls", "from_filter": login}),
    )
    .await?;
    // Submission alone: nothing sends yet.
    let submitted = submit(&http, &address, &key, &login, messages, "queued").await?;
    println!(
        "  {messages} messages submitted from {SUBMIT_CONNECTIONS} connections with no worker running: {:.0} submissions/s",
        messages as f64 / submitted.as_secs_f64()
    );
    let drained = Instant::now();
    let _worker = Running(Command::new(super::worker_binary()?).envs(app.env.vars.iter()).env("RUST_LOG", "warn").spawn()?);
    let all_sent = until_all_sent(&app, messages as i64, drained).await?;
    println!(
        "  a worker process started and sent them all in {all_sent:.2?}: {:.0} messages/s (process start included)",
        messages as f64 / all_sent.as_secs_f64()
    );
    // Both at once, as users see it.
    let started = Instant::now();
    let submitted = submit(&http, &address, &key, &login, messages, "live").await?;
    let all_sent = until_all_sent(&app, 2 * messages as i64, started).await?;
    println!(
        "  {messages} more submitted while the worker sends ({:.0} submissions/s); the last sent {all_sent:.2?} after the first POST: {:.0} messages/s end to end",
        messages as f64 / submitted.as_secs_f64(),
        messages as f64 / all_sent.as_secs_f64()
    );
    let end_to_end = messages as f64 / all_sent.as_secs_f64();
    for (mode, what) in [("default", "as configured by default"), ("nodelay", "with TCP_NODELAY sockets")] {
        let peer = nodemailer_peer(servers, &login, messages, mode)?;
        println!(
            "  the peer, nodemailer with a pool of 4 {what}, {messages} to the same server: {peer:.0} messages/s; end to end is {:.0}% of it",
            100.0 * end_to_end / peer
        );
    }
    let metrics = http.get(format!("{address}/metrics")).send().await?.text().await?;
    let counted = |prefix: &str| metrics.lines().filter(|l| l.starts_with(prefix)).collect::<Vec<_>>().join(", ");
    println!("  API process authentication look-ups: {}", counted("postbridge_api_auth_cache_total"));
    println!("  API process sender look-ups: {}", counted("postbridge_api_route_cache_total"));
    println!("  API process announcements of committed submissions: {}", counted("postbridge_api_sends_announced_total"));
    Ok(())
}

/// nodemailer's pooled rate against the same server and login (`nodemailer-peer.js`, the nodemailer the test SMTP
/// server's package brings); messages/s.
fn nodemailer_peer(servers: &MailServers, login: &str, messages: usize, mode: &str) -> anyhow::Result<f64> {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // Blocking is fine: nothing else of this process runs meanwhile.
    let output = Command::new("node")
        .arg(here.join("bench/nodemailer-peer.js"))
        .args([servers.smtp_port().to_string(), login.to_owned(), "bench-password".to_owned()])
        .arg(servers.ca_file())
        .args([messages.to_string(), mode.to_owned()])
        .env("NODE_PATH", here.join("mail-servers/node_modules"))
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(output.status.success(), "the nodemailer peer failed: {}", String::from_utf8_lossy(&output.stderr));
    let seconds: f64 = stdout
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("the nodemailer peer said {stdout:?}"))?;
    Ok(messages as f64 / seconds)
}

async fn list_accounts(http: &reqwest::Client, address: &str, key: &str) -> anyhow::Result<()> {
    let url = format!("{address}/v1/accounts?limit=50");
    for _ in 0..200 {
        http.get(&url).bearer_auth(key).send().await?.error_for_status()?;
    }
    let started = Instant::now();
    let mut latencies: Vec<Duration> = futures::stream::iter(0..LIST_REQUESTS)
        .map(|_| {
            let request = http.get(&url).bearer_auth(key);
            async move {
                let t = Instant::now();
                let ok = match request.send().await {
                    Ok(reply) => reply.status().is_success() && reply.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    t.elapsed()
                } else {
                    Duration::MAX
                }
            }
        })
        .buffer_unordered(LIST_CONNECTIONS)
        .collect()
        .await;
    let total = started.elapsed();
    let failed = latencies.iter().filter(|d| **d == Duration::MAX).count();
    println!(
        "  GET /v1/accounts?limit=50, {LIST_REQUESTS} requests from {LIST_CONNECTIONS} connections: {:.0} requests/s, {} ({failed} failed)",
        LIST_REQUESTS as f64 / total.as_secs_f64(),
        super::percentiles(&mut latencies)
    );
    Ok(())
}

/// How long until none of the `total` submitted messages waits any more, then checks that every one was sent. The
/// frequent poll counts the waiting ones through the queue's own small index, so watching costs Postgres little.
async fn until_all_sent(app: &postbridge_tests::TestApp, total: i64, started: Instant) -> anyhow::Result<Duration> {
    let settled = format!("SELECT {total} - count(*) AS n FROM outbound_messages WHERE status IN ('queued', 'sending')");
    let took = super::time_until(app, &settled, total, started).await?;
    let sent = app.sql_i64("SELECT count(*) FROM outbound_messages WHERE status = 'sent'").await;
    anyhow::ensure!(sent == total, "only {sent} of {total} messages were sent");
    Ok(took)
}

/// Submits `messages` messages from [`SUBMIT_CONNECTIONS`] connections; how long it took.
async fn submit(
    http: &reqwest::Client,
    address: &str,
    key: &str,
    login: &str,
    messages: usize,
    tag: &str,
) -> anyhow::Result<Duration> {
    let url = format!("{address}/v1/messages");
    let started = Instant::now();
    let answers = futures::stream::iter(0..messages)
        .map(|i| {
            let body =
                json!({"from": login, "to": ["rcpt@example.org"], "subject": format!("deployment {tag} {i}"), "text": "hello"});
            let request = http.post(&url).bearer_auth(key).json(&body);
            async move {
                match request.send().await {
                    Ok(r) if r.status().as_u16() == 202 => Ok(()),
                    Ok(r) => Err(format!("{}: {}", r.status(), r.text().await.unwrap_or_default())),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .buffer_unordered(SUBMIT_CONNECTIONS)
        .collect::<Vec<_>>()
        .await;
    let refused: Vec<String> = answers.into_iter().filter_map(Result::err).collect();
    anyhow::ensure!(refused.is_empty(), "{} of {messages} submissions were refused, the first: {}", refused.len(), refused[0]);
    Ok(started.elapsed())
}
