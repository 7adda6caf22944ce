//! `postbridge-bench`: measures against local servers, prints figures (no pass/fail thresholds).
//!
//!   cargo run --release -p postbridge-tests --bin postbridge-bench -- refresh [GRANTS]   (default 10000)
//!   cargo run --release -p postbridge-tests --bin postbridge-bench -- api [REQUESTS]     (default 2000)
//!   cargo run --release -p postbridge-tests --bin postbridge-bench -- inbound [MESSAGES] (default 10000)
//!   cargo run --release -p postbridge-tests --bin postbridge-bench -- send [MESSAGES]    (default 2000)
//!   cargo run --release -p postbridge-tests --bin postbridge-bench -- memory [ACCOUNTS]  (default 1000; needs a
//!       release `postbridge-worker` beside the bench binary: `cargo build --release -p postbridge-worker`)
//!   cargo run --release -p postbridge-tests --bin postbridge-bench -- deployment [MESSAGES] (default 2000; needs the
//!       release `postbridge-api` and `postbridge-worker` beside the bench binary)
//!   cargo run --release -p postbridge-tests --bin postbridge-bench -- scale [MAILBOXES] [slow] (default 50; 1, 2 and 3
//!       release `postbridge-worker` processes sending 100 messages per mailbox and first-syncing 500 per mailbox;
//!       `slow`: 20 messages per mailbox to a server that answers each after 200 ms, and no inbound phase)
//!
//! Needs the local Postgres and Redis (`scripts/ensure-services.sh`); uses a throwaway database.

mod deployment;

use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use postbridge_core::connect::grants;
use postbridge_core::jobs::workers;
use postbridge_core::receive::poll;
use postbridge_core::secrets::crypto::SecretLocation;
use postbridge_core::send::outbox;
use postbridge_tests::mail::MailServers;
use postbridge_tests::{spawn_app, spawn_app_with, TestApp, TestEnv};
use sea_orm::{ConnectionTrait, DbBackend, Statement, Value as SqlValue};
use serde_json::json;
use uuid::Uuid;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count = |default: usize| args.get(1).and_then(|n| n.parse().ok()).unwrap_or(default);
    match args.first().map(String::as_str) {
        Some("refresh") => bench_refresh(count(10_000)).await,
        Some("api") => bench_api(count(2_000)).await,
        Some("inbound") => bench_inbound(count(10_000)).await,
        Some("send") => bench_send(count(2_000)).await,
        Some("latency") => bench_latency(count(50)).await,
        Some("idle") => bench_idle(count(1_000)).await,
        Some("memory") => bench_memory(count(1_000)).await,
        Some("deployment") => deployment::run(count(2_000)).await,
        Some("scale") => bench_scale(count(50), args.get(2).is_some_and(|a| a == "slow")).await,
        _ => {
            eprintln!("usage: postbridge-bench refresh [GRANTS] | api [REQUESTS] | inbound [MESSAGES] | send [MESSAGES] | latency [MESSAGES] | idle [MAILBOXES] | memory [ACCOUNTS] | scale [MAILBOXES] | deployment [MESSAGES]");
            std::process::exit(2);
        }
    }
}

/// Inserts rows in multi-row statements (the bench measures refreshing, not seeding).
async fn insert_rows(app: &TestApp, table_and_columns: &str, rows: Vec<Vec<SqlValue>>) -> anyhow::Result<()> {
    for chunk in rows.chunks(500) {
        let width = chunk[0].len();
        let tuples: Vec<String> = (0..chunk.len())
            .map(|r| format!("({})", (1..=width).map(|c| format!("${}", r * width + c)).collect::<Vec<_>>().join(", ")))
            .collect();
        let sql = format!("INSERT INTO {table_and_columns} VALUES {}", tuples.join(", "));
        let values: Vec<SqlValue> = chunk.iter().flatten().cloned().collect();
        app.ctx.db.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
    }
    Ok(())
}

/// A refresh storm as users meet it: `grant_count` grants of one configuration fall due at the same moment while a
/// release `postbridge-worker` process runs. Measured from that moment: the first refresh stored, and the last.
/// The baseline is the provider's own speed for as many refreshes at the same concurrency, asked directly.
/// `BENCH_PROVIDER_LATENCY_MS` makes every token request wait that long at the provider (a remote provider's round
/// trip); `BENCH_REFRESH_CONCURRENCY` sets `POSTBRIDGE_REFRESH_CONCURRENCY` (default 32).
async fn bench_refresh(grant_count: usize) -> anyhow::Result<()> {
    let mut env = TestEnv::new();
    env.set("REFRESH_CONCURRENCY", std::env::var("BENCH_REFRESH_CONCURRENCY").unwrap_or_else(|_| "32".to_owned()));
    let app = spawn_app_with(env).await;
    let setup = app.oauth_setup().await;
    let latency_ms: u64 = std::env::var("BENCH_PROVIDER_LATENCY_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    setup.provider.set_token_latency(Duration::from_millis(latency_ms));
    let tenant = Uuid::parse_str(&setup.tenant)?;
    let config = Uuid::parse_str(&setup.config_id)?;
    let concurrency = app.ctx.settings.refresh_concurrency;

    // Baseline: the provider's own speed for the same number of refreshes at the same concurrency.
    let mut baseline_tokens = Vec::with_capacity(grant_count);
    for i in 0..grant_count {
        let minted =
            setup.provider.mint_tokens(&setup.client_id, &format!("base{i}@bench.example"), "openid email offline_access mail");
        baseline_tokens.push(minted.ok_or_else(|| anyhow::anyhow!("provider refused to mint"))?.refresh_token);
    }
    let http = reqwest::Client::new();
    let started = Instant::now();
    let statuses: Vec<u16> = futures::stream::iter(baseline_tokens)
        .map(|refresh| {
            let (http, url, id, secret) =
                (http.clone(), setup.provider.token_url(), setup.client_id.clone(), setup.client_secret.clone());
            async move {
                let form = [("grant_type", "refresh_token"), ("refresh_token", refresh.as_str())];
                http.post(url).basic_auth(id, Some(secret)).form(&form).send().await.map(|r| r.status().as_u16()).unwrap_or(0)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let baseline = started.elapsed();
    anyhow::ensure!(statuses.iter().all(|s| *s == 200), "baseline refreshes failed");

    // Seed grants whose access tokens are good for another hour: nothing is due yet.
    let expires = Utc::now() + chrono::Duration::hours(1);
    let mut rows = Vec::with_capacity(grant_count);
    for i in 0..grant_count {
        let email = format!("user{i}@bench.example");
        let minted = setup
            .provider
            .mint_tokens(&setup.client_id, &email, "openid email offline_access mail")
            .ok_or_else(|| anyhow::anyhow!("mint"))?;
        let id = Uuid::now_v7();
        let seal = |column: &'static str, value: &str| {
            app.ctx.cipher.encrypt(SecretLocation { tenant_id: tenant.into(), table: "grants", column, row_id: id }, value)
        };
        rows.push(vec![
            id.into(),
            tenant.into(),
            config.into(),
            email.into(),
            seal("access_token", &minted.access_token)?.into(),
            seal("refresh_token", &minted.refresh_token)?.into(),
            expires.into(),
            grants::refresh_at_for(Some(expires), Utc::now()).into(),
            json!(["mail"]).into(),
            "valid".into(),
        ]);
    }
    insert_rows(
        &app,
        "grants (id, tenant_id, token_config_id, subject, access_token, refresh_token, expires_at, refresh_at, scopes, status)",
        rows,
    )
    .await?;
    let before = setup.provider.token_requests("refresh_token");

    let mut worker = std::process::Command::new(worker_binary()?).envs(app.env.vars.iter()).env("RUST_LOG", "warn").spawn()?;
    let measured = async {
        // The worker settles in (consumers registered, first pass done), then every token falls due at one moment,
        // a second on. The moment is written ahead, as stored tokens write theirs (an hour ahead), so the worker
        // can start on it; it is timed from the moment itself.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let written = Instant::now();
        // The moment by Postgres's clock: the refreshes are dated by the same machine's clock.
        let row = one_row(
            &app,
            format!(
                "WITH due AS (UPDATE grants SET expires_at = now() + interval '61 seconds', \
                                                refresh_at = now() + interval '1 second' \
                              WHERE token_config_id = '{config}') \
                 SELECT now() + interval '1 second' AS moment"
            ),
        )
        .await?;
        let moment: chrono::DateTime<Utc> = row.try_get("", "moment")?;
        let started = written + Duration::from_secs(1);
        // Waits for the last one with a light probe (is one still due, along the due index, every 100 ms: counting
        // refreshed rows by a scan every 20 ms took a quarter of the two cores from the storm it measured), then
        // reads the first and last refresh from the rows themselves.
        let left = format!(
            "SELECT count(*) AS n FROM (SELECT 1 FROM grants WHERE status = 'valid' \
             AND refresh_at <= now() + interval '5 minutes' AND token_config_id = '{config}' LIMIT 1) AS due"
        );
        wait_until_none(&app, &left, started).await?;
        let row = one_row(
            &app,
            format!(
                "SELECT min(last_refreshed_at) AS first, max(last_refreshed_at) AS last, \
                        count(*) FILTER (WHERE last_refreshed_at > '{}') AS n \
                 FROM grants WHERE token_config_id = '{config}'",
                moment - chrono::Duration::seconds(1)
            ),
        )
        .await?;
        let refreshed: i64 = row.try_get("", "n")?;
        anyhow::ensure!(refreshed == grant_count as i64, "{refreshed} of {grant_count} grants refreshed");
        let since_moment = |at: chrono::DateTime<Utc>| (at - moment).to_std().unwrap_or_default();
        let first = since_moment(row.try_get("", "first")?);
        let last = since_moment(row.try_get("", "last")?);
        anyhow::Ok((first, last))
    }
    .await;
    let _ = worker.kill();
    let _ = worker.wait();
    let (first, elapsed) = measured?;
    let provider_calls = setup.provider.token_requests("refresh_token") - before;

    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    let (ours, theirs) = (rate(grant_count, elapsed), rate(grant_count, baseline));
    println!(
        "refresh benchmark: {grant_count} grants due at once, provider latency {latency_ms} ms, refresh concurrency {concurrency}"
    );
    println!("  provider alone (direct HTTP):   {theirs:>8.0} refreshes/s ({baseline:.2?})");
    println!(
        "  postbridge-worker process:      {ours:>8.0} refreshes/s ({elapsed:.2?}; first stored after {first:.2?}) = {:.0}% of the provider",
        100.0 * ours / theirs
    );
    // The worker wakes at the moment (a pass would come up to one dispatch interval, 500 ms, after it); from then on:
    let steady = rate(grant_count.saturating_sub(1), elapsed.saturating_sub(first));
    println!("  from the first refresh stored:  {steady:>8.0} refreshes/s = {:.0}% of the provider", 100.0 * steady / theirs);
    println!("  provider refresh requests {provider_calls} (one per grant: {})", provider_calls == grant_count);
    Ok(())
}

/// p50, p90, p99 and max of `latencies` (sorted in place; a failed request counts as `Duration::MAX`).
fn percentiles(latencies: &mut [Duration]) -> String {
    latencies.sort();
    let Some(max) = latencies.last().copied() else { return "no requests".to_owned() };
    let at = |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1).min(latencies.len() - 1)];
    format!("p50 {:.2?}  p90 {:.2?}  p99 {:.2?}  max {max:.2?}", at(0.50), at(0.90), at(0.99))
}

/// `count` IMAP accounts of `tenant`, inserted directly (the benches measure reading them, not creating them).
async fn seed_accounts(app: &TestApp, tenant: Uuid, count: usize) -> anyhow::Result<()> {
    let now = Utc::now();
    let rows = (0..count)
        .map(|i| {
            vec![
                Uuid::now_v7().into(),
                tenant.into(),
                format!("mailbox {i}").into(),
                "inbound".into(),
                "imap".into(),
                "imap.example.com".into(),
                993i32.into(),
                "tls".into(),
                "password".into(),
                format!("user{i}@example.com").into(),
                "admin".into(),
                now.into(),
                now.into(),
            ]
        })
        .collect();
    insert_rows(
        app,
        "email_accounts (id, tenant_id, name, direction, protocol, host, port, security, auth_method, login, owner_subject, created_at, updated_at)",
        rows,
    )
    .await?;
    Ok(())
}

async fn bench_api(requests: usize) -> anyhow::Result<()> {
    let app = spawn_app().await;
    let (tenant, key) = app.tenant_with_admin().await;
    // The tenant's rate limit stays on (its Redis check is part of every request) but high enough not to refuse.
    let limit =
        app.patch(&format!("/v1/tenants/{tenant}"), &app.operator_token(), json!({"api_rate_limit_per_minute": 1_000_000})).await;
    anyhow::ensure!(limit.status.is_success(), "raising the tenant's rate limit failed: {}", limit.text);
    seed_accounts(&app, Uuid::parse_str(&tenant)?, 1_000).await?;
    let url = format!("{}/v1/accounts?limit=50", app.address);
    for _ in 0..50 {
        app.http.get(&url).bearer_auth(&key).send().await?.error_for_status()?;
    }
    let started = Instant::now();
    let mut latencies: Vec<Duration> = futures::stream::iter(0..requests)
        .map(|_| {
            let (http, url, key) = (app.http.clone(), url.clone(), key.clone());
            async move {
                let t = Instant::now();
                let ok = http.get(url).bearer_auth(key).send().await.map(|r| r.status().is_success()).unwrap_or(false);
                (ok, t.elapsed())
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(|(ok, d)| if ok { d } else { Duration::MAX })
        .collect();
    let total = started.elapsed();
    println!(
        "API list benchmark: GET /v1/accounts?limit=50 over 1000 accounts, {requests} requests, 4 concurrent (API key auth)"
    );
    println!("  {}  throughput {:.0} req/s", percentiles(&mut latencies), requests as f64 / total.as_secs_f64());
    Ok(())
}

/// An app that trusts the test servers' CA, with a tenant and an admin key.
async fn mail_app(servers: &MailServers) -> anyhow::Result<(TestApp, String, String)> {
    let mut env = TestEnv::new();
    env.set("EXTRA_CA_FILE", servers.ca_file().to_string_lossy().into_owned());
    env.set("DATABASE_MAX_CONNECTIONS", "20");
    // The bench drives the API faster than a tenant's default rate limit allows.
    env.set("API_RATE_LIMIT_PER_MINUTE", "0");
    let app = spawn_app_with(env).await;
    let (tenant, key) = app.tenant_with_admin().await;
    Ok((app, tenant, key))
}

/// Creates a password account on the test servers and confirms it; returns its id.
async fn confirmed_account(app: &TestApp, key: &str, body: serde_json::Value) -> anyhow::Result<Uuid> {
    let created = app.post("/v1/accounts", key, body).await;
    anyhow::ensure!(created.status.is_success(), "account: {}", created.text);
    let id = created.id();
    let tested = app.post(&format!("/v1/accounts/{id}/test"), key, json!({})).await;
    anyhow::ensure!(tested.body["ok"] == json!(true), "test & confirm: {}", tested.text);
    Ok(Uuid::parse_str(&id)?)
}

fn sample_message(i: usize) -> Vec<u8> {
    let body = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(30);
    format!(
        "From: Sender {i} <sender{i}@example.net>\r\nTo: bench@example.com\r\nSubject: Benchmark message {i}\r\n\
         Message-ID: <bench-{i}-{}@example.net>\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\nContent-Type: text/plain\r\n\r\n{body}\r\n",
        Uuid::new_v4().simple()
    )
    .into_bytes()
}

async fn bench_inbound(messages: usize) -> anyhow::Result<()> {
    let servers = MailServers::shared().await;
    let login = format!("bench-{}@example.com", Uuid::new_v4().simple());
    servers.add_password_user(&login, "bench-password");
    let seeded: Vec<Vec<u8>> = (0..messages).map(sample_message).collect();
    servers.seed_messages(&login, "INBOX", &seeded);
    let (app, _, key) = mail_app(servers).await?;
    let account = confirmed_account(
        &app,
        &key,
        json!({"protocol": "imap", "auth": "password", "login": login, "password": "bench-password",
               "host": "127.0.0.1", "port": servers.imaps_port(), "security": "tls"}),
    )
    .await?;
    let started = Instant::now();
    let report = poll::poll_account(&app.ctx, account.into()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let elapsed = started.elapsed();
    anyhow::ensure!(report.stored == messages as u64, "stored {} of {messages}", report.stored);
    let bytes: usize = seeded.iter().map(Vec::len).sum();

    // One new message: the time from its arrival to its storage, for one poll (the scheduler adds the poll interval).
    app.ctx.db.execute_unprepared(&format!("UPDATE email_accounts SET lease_until = NULL WHERE id = '{account}'")).await?;
    servers.seed_messages(&login, "INBOX", &[sample_message(messages + 1)]);
    let arrived = Instant::now();
    let one = poll::poll_account(&app.ctx, account.into()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let latency = arrived.elapsed();
    anyhow::ensure!(one.stored == 1, "the new message was not stored");

    println!(
        "inbound benchmark: first sync of {messages} messages ({:.1} MB) over IMAPS from the local Dovecot into Postgres",
        bytes as f64 / 1e6
    );
    println!("  {:>8.0} messages/s ({:.2?})", messages as f64 / elapsed.as_secs_f64(), elapsed);
    println!("  new message → stored: {latency:.2?} for one poll (plus up to the poll interval, min 10 s, when the scheduler drives it)");
    Ok(())
}

async fn bench_send(messages: usize) -> anyhow::Result<()> {
    let servers = MailServers::shared().await;
    let login = format!("sender-{}@example.com", Uuid::new_v4().simple());
    servers.add_password_user(&login, "bench-password");
    let (app, tenant, key) = mail_app(servers).await?;
    let account = confirmed_account(
        &app,
        &key,
        json!({"protocol": "smtp", "auth": "password", "login": login, "password": "bench-password",
               "host": "127.0.0.1", "port": servers.smtp_port(), "security": "starttls", "from_filter": login}),
    )
    .await?;
    let scope = admin_scope(Uuid::parse_str(&tenant)?);
    let submit = |i: usize| postbridge_core::send::outbox::SendMessage {
        from: login.clone(),
        to: vec![format!("rcpt{i}@example.org")],
        cc: vec![],
        bcc: vec![],
        reply_to: None,
        subject: format!("Benchmark {i}"),
        text: Some("Hello from the benchmark.\r\n".repeat(20)),
        html: None,
        headers: None,
        attachments: None,
        idempotency_key: None,
    };

    // Baseline: the same number of messages in a plain loop of direct sends over the pooled connection.
    let mut composed = Vec::with_capacity(messages);
    for i in 0..messages {
        let row = outbox::submit(&app.ctx, &scope, submit(i)).await?;
        composed.push(row.id);
    }
    let raws = app
        .ctx
        .db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT envelope_from, recipients, raw FROM outbound_messages WHERE account_id = $1",
            [account.into()],
        ))
        .await?;
    let endpoint = postbridge_core::protocols::error::Endpoint::new(
        "127.0.0.1",
        servers.smtp_port(),
        postbridge_core::model::Security::Starttls,
    );
    let auth = postbridge_core::protocols::error::MailAuth::Password { login: login.clone(), password: "bench-password".into() };
    let started = Instant::now();
    for row in &raws {
        let from: String = row.try_get("", "envelope_from")?;
        let to: Vec<String> = serde_json::from_value(row.try_get("", "recipients")?)?;
        let raw: Vec<u8> = row.try_get("", "raw")?;
        app.ctx.smtp.send_raw(&endpoint, &auth, &from, &to, &raw).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let direct = started.elapsed();

    // Through the product: the scheduler claims the queued rows, Redis dispatches, the send workers deliver.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(postbridge_worker::run(app.ctx.clone(), stop_rx));
    let started = Instant::now();
    loop {
        let row = app
            .ctx
            .db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT count(*) FILTER (WHERE status = 'sent') AS sent, count(*) FILTER (WHERE status IN ('failed', 'unknown')) AS bad FROM outbound_messages WHERE account_id = $1",
                [account.into()],
            ))
            .await?
            .ok_or_else(|| anyhow::anyhow!("no count"))?;
        let (sent, bad): (i64, i64) = (row.try_get("", "sent")?, row.try_get("", "bad")?);
        anyhow::ensure!(bad == 0, "{bad} messages failed");
        if sent as usize == messages {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "only {sent} of {messages} sent in 10 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let queued = started.elapsed();
    let _ = stop_tx.send(true);
    let _ = worker.await;
    let rate = |d: Duration| messages as f64 / d.as_secs_f64();
    println!("send benchmark: {messages} messages to the local SMTP server (STARTTLS, AUTH PLAIN), one worker process");
    println!("  plain loop of direct sends:   {:>8.0} messages/s ({direct:.2?})", rate(direct));
    println!(
        "  through the queue (worker):   {:>8.0} messages/s ({queued:.2?}); queue cost x{:.2}",
        rate(queued),
        queued.as_secs_f64() / direct.as_secs_f64()
    );
    println!("  SMTP connections opened: {}", app.ctx.smtp.connections_opened());
    Ok(())
}

/// Submit → SMTP 250 on an idle system: one message at a time over HTTP, through a release worker process, each
/// after the previous one was sent and a pause. Reported from the row (`sent_at - created_at`: the insert's commit to
/// the server's 250) and from the client (the POST to seeing the row sent).
async fn bench_latency(messages: usize) -> anyhow::Result<()> {
    let servers = MailServers::shared().await;
    let login = format!("latency-{}@example.com", Uuid::new_v4().simple());
    servers.add_password_user(&login, "bench-password");
    let (app, _tenant, key) = mail_app(servers).await?;
    confirmed_account(
        &app,
        &key,
        json!({"protocol": "smtp", "auth": "password", "login": login, "password": "bench-password",
               "host": "127.0.0.1", "port": servers.smtp_port(), "security": "starttls", "from_filter": login}),
    )
    .await?;
    let mut worker = std::process::Command::new(worker_binary()?).envs(app.env.vars.iter()).env("RUST_LOG", "warn").spawn()?;
    let result = async {
        let mut server_side = Vec::with_capacity(messages);
        let mut client_side = Vec::with_capacity(messages);
        // The first message also opens the pooled SMTP connection; it is sent, then left out of the figures.
        for i in 0..=messages {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let started = Instant::now();
            let reply = app
                .post("/v1/messages", &key, json!({"from": login, "to": ["rcpt@example.org"], "subject": format!("latency {i}"), "text": "hi"}))
                .await;
            anyhow::ensure!(reply.status.as_u16() == 202, "submit: {}", reply.text);
            let id = Uuid::parse_str(&reply.id())?;
            let row = loop {
                let row = app
                    .ctx
                    .db
                    .query_one_raw(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        "SELECT status, (extract(epoch FROM sent_at - created_at) * 1000)::float8 AS ms FROM outbound_messages WHERE id = $1",
                        [id.into()],
                    ))
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("the message row is gone"))?;
                let status: String = row.try_get("", "status")?;
                if status == "sent" {
                    break row;
                }
                anyhow::ensure!(status == "queued" || status == "sending", "message {i} ended {status}");
                anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "message {i} not sent within 30 s");
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            if i > 0 {
                client_side.push(started.elapsed().as_secs_f64() * 1000.0);
                server_side.push(row.try_get::<f64>("", "ms")?);
            }
        }
        Ok::<_, anyhow::Error>((server_side, client_side))
    }
    .await;
    let _ = worker.kill();
    let _ = worker.wait();
    let (mut server_side, mut client_side) = result?;
    let describe = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        format!("median {:.1} ms, p90 {:.1} ms, max {:.1} ms", at(0.5), at(0.9), at(1.0))
    };
    println!("submit → SMTP 250, {messages} messages one at a time on an idle system (release worker process):");
    println!("  row committed → 250 recorded: {}", describe(&mut server_side));
    println!("  POST sent → client sees it sent: {}", describe(&mut client_side));
    Ok(())
}

/// A release worker process watching `mailboxes` IMAP mailboxes in IDLE on the local Dovecot: its memory once it
/// watches them all, then delivery → stored for 20 messages, one at a time, to mailboxes picked across the set.
async fn bench_idle(mailboxes: usize) -> anyhow::Result<()> {
    let servers = MailServers::shared().await;
    let (app, _tenant, key) = mail_app(servers).await?;
    let mut watched = Vec::with_capacity(mailboxes);
    let seeding = Instant::now();
    for i in 0..mailboxes {
        let login = format!("idle{i}-{}@example.com", Uuid::new_v4().simple());
        servers.add_password_user(&login, "bench-password");
        let id = confirmed_account(
            &app,
            &key,
            json!({"protocol": "imap", "auth": "password", "login": login, "password": "bench-password",
                   "host": "127.0.0.1", "port": servers.imaps_port(), "security": "tls", "poll_interval_seconds": 3600}),
        )
        .await?;
        watched.push((login, id));
    }
    println!("{mailboxes} IMAP mailboxes confirmed in {:.1?}", seeding.elapsed());
    let worker_path = worker_binary()?;
    let worker = postbridge_tests::processes::WorkerProcess::spawn(
        worker_path.to_str().ok_or_else(|| anyhow::anyhow!("worker path"))?,
        &app.env,
        &[("IDLE_MAILBOXES", &mailboxes.to_string())],
    );
    let started = Instant::now();
    loop {
        let held = worker.metric("postbridge_worker_idle_mailboxes").await;
        if held as usize >= mailboxes {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(300), "only {held} mailboxes watched after 5 minutes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("  all {mailboxes} watched {:.1?} after the worker started", started.elapsed());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", worker.pid()))?;
    let field = |name: &str| status.lines().find(|l| l.starts_with(name)).map(|l| l.trim().to_owned()).unwrap_or_default();
    println!("  worker memory holding {mailboxes} IDLE connections: {} / {}", field("VmRSS"), field("VmHWM"));

    let inotify = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances").unwrap_or_default();
    let mut latencies = Vec::new();
    for n in 0..20.min(mailboxes) {
        let (login, id) = &watched[n * mailboxes / 20.min(mailboxes)];
        let count = |app: &TestApp, id: Uuid| {
            let app_db = app.ctx.db.clone();
            async move {
                let row = app_db
                    .query_one_raw(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        "SELECT count(*) AS n FROM inbound_messages WHERE account_id = $1",
                        [id.into()],
                    ))
                    .await?;
                Ok::<i64, anyhow::Error>(row.map(|r| r.try_get("", "n")).transpose()?.unwrap_or(0))
            }
        };
        let before = count(&app, *id).await?;
        let raw = format!("From: <a@example.net>\r\nTo: <{login}>\r\nSubject: idle {n}\r\nMessage-ID: <idle{n}-{}@example.net>\r\n\r\nhello\r\n", Uuid::new_v4().simple());
        let delivered = Instant::now();
        servers.deliver(login, "INBOX", raw.as_bytes());
        while count(&app, *id).await? == before {
            anyhow::ensure!(delivered.elapsed() < Duration::from_secs(60), "message {n} not stored within 60 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        latencies.push(delivered.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    println!(
        "  delivered → stored, {} messages one at a time: median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        latencies.len(),
        at(0.5),
        at(0.9),
        at(1.0)
    );
    println!(
        "  (Dovecot notices a delivery through inotify; beyond fs.inotify.max_user_instances = {} of its IDLE sessions it looks every 30 s instead)",
        inotify.trim()
    );
    drop(worker);
    Ok(())
}

async fn bench_memory(accounts: usize) -> anyhow::Result<()> {
    let app = spawn_app().await;
    let (tenant, _) = app.tenant_with_admin().await;
    let tenant = Uuid::parse_str(&tenant)?;
    let later = Utc::now() + chrono::Duration::hours(1);
    let rows = (0..accounts)
        .map(|i| {
            vec![
                Uuid::now_v7().into(),
                tenant.into(),
                format!("idle {i}").into(),
                "inbound".into(),
                "imap".into(),
                "imap.example.com".into(),
                993i32.into(),
                "tls".into(),
                "password".into(),
                format!("idle{i}@example.com").into(),
                "admin".into(),
                "confirmed".into(),
                later.into(),
            ]
        })
        .collect();
    insert_rows(
        &app,
        "email_accounts (id, tenant_id, name, direction, protocol, host, port, security, auth_method, login, owner_subject, state, next_poll_at)",
        rows,
    )
    .await?;
    let mut child = std::process::Command::new(worker_binary()?).envs(app.env.vars.iter()).env("RUST_LOG", "warn").spawn()?;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))?;
    let field = |name: &str| status.lines().find(|l| l.starts_with(name)).map(|l| l.trim().to_owned()).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    println!("worker memory with {accounts} idle inbound accounts after 20 s: {} / {}", field("VmRSS"), field("VmHWM"));
    Ok(())
}

/// The service layer's view of a tenant admin (the bench submits through the service, as the API does).
fn admin_scope(tenant: Uuid) -> postbridge_core::access::auth::TenantScope {
    postbridge_core::access::auth::TenantScope {
        tenant_id: tenant.into(),
        principal: postbridge_core::access::auth::Principal {
            subject: "bench".into(),
            role: postbridge_core::model::Role::Admin,
            tenant_id: Some(tenant.into()),
            api_rate_limit_per_minute: None,
            credential: postbridge_core::access::auth::Credential::ApiKey,
        },
    }
}

/// The release worker binary beside the bench binary.
fn worker_binary() -> anyhow::Result<std::path::PathBuf> {
    let worker = std::env::current_exe()?.with_file_name("postbridge-worker");
    anyhow::ensure!(worker.exists(), "build the worker first: cargo build --release -p postbridge-worker");
    Ok(worker)
}

/// The one row `sql` returns.
async fn one_row(app: &TestApp, sql: String) -> anyhow::Result<sea_orm::QueryResult> {
    let row = app.ctx.db.query_one_raw(Statement::from_string(DbBackend::Postgres, sql)).await?;
    row.ok_or_else(|| anyhow::anyhow!("the query returned no row"))
}

/// Polls `sql`'s count every 100 ms until it is zero (or 10 minutes pass).
async fn wait_until_none(app: &TestApp, sql: &str, started: Instant) -> anyhow::Result<()> {
    loop {
        let left: i64 = one_row(app, sql.to_owned()).await?.try_get("", "n")?;
        if left == 0 {
            return Ok(());
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "{left} still due after 10 minutes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Counts rows until `target` is reached (or 10 minutes pass); the time it took.
async fn time_until(app: &TestApp, sql: &str, target: i64, started: Instant) -> anyhow::Result<Duration> {
    loop {
        let row = app.ctx.db.query_one_raw(Statement::from_string(DbBackend::Postgres, sql.to_owned())).await?;
        let done: i64 = row.map(|r| r.try_get("", "n")).transpose()?.unwrap_or(0);
        if done >= target {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "only {done} of {target} in 10 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Scale-out: the same load on 1, 2 and 3 worker processes (the release binary, one Redis, one Postgres).
/// Sending: `mailboxes` SMTP accounts with 100 queued messages each. Receiving: `mailboxes` IMAP mailboxes with 500
/// messages each, first-synced. Each process count gets a fresh database and Redis prefix; every message is
/// checked to have been sent or stored exactly once. The sends are held back until every process reports ready in
/// its heartbeat row and timed from their release; the start-up time is printed apart. `slow`: a server that takes
/// 200 ms per message (so the workers wait on it, not on the two cores), 20 messages per account, no inbound phase.
async fn bench_scale(mailboxes: usize, slow: bool) -> anyhow::Result<()> {
    let worker = worker_binary()?;
    let servers = MailServers::shared().await;
    let (per_account, inbound) = if slow { (20, 0) } else { (100, mailboxes) };
    let rcpt_prefix = if slow { "slow+scale" } else { "scale" };
    println!(
        "scale-out benchmark: {mailboxes} outbound accounts x {per_account} messages{}, {inbound} inbound mailboxes x 500 messages",
        if slow { " (the server answers each after 200 ms)" } else { "" }
    );
    let mut baseline: Option<(f64, f64)> = None;
    for processes in [1usize, 2, 3] {
        let (app, tenant, key) = mail_app(servers).await?;
        let tenant = Uuid::parse_str(&tenant)?;
        // Outbound: accounts confirmed over the API, messages queued straight into the outbox (seeding is not timed).
        let mut senders = Vec::new();
        for _ in 0..mailboxes {
            let login = format!("scale-{}@example.com", Uuid::new_v4().simple());
            servers.add_password_user(&login, "bench-password");
            let id = confirmed_account(
                &app,
                &key,
                json!({"protocol": "smtp", "auth": "password", "login": login, "password": "bench-password",
                       "host": "127.0.0.1", "port": servers.smtp_port(), "security": "starttls", "from_filter": login}),
            )
            .await?;
            senders.push((id, login));
        }
        let scope = admin_scope(tenant);
        // Submitted before the workers start, through the service (composition and routing as for the API).
        let mut submitted = 0;
        for (_, login) in &senders {
            for i in 0..per_account {
                let message = postbridge_core::send::outbox::SendMessage {
                    from: login.clone(),
                    to: vec![format!("{rcpt_prefix}{i}@example.org")],
                    cc: vec![],
                    bcc: vec![],
                    reply_to: None,
                    subject: format!("Scale {i}"),
                    text: Some("Hello from the scale-out benchmark.\r\n".repeat(20)),
                    html: None,
                    headers: None,
                    attachments: None,
                    idempotency_key: None,
                };
                outbox::submit(&app.ctx, &scope, message).await?;
                submitted += 1;
            }
        }
        // Inbound: mailboxes seeded in Maildir and confirmed; confirmation does not sync, the workers do.
        let mut receivers = 0;
        for _ in 0..inbound {
            let login = format!("scale-in-{}@example.com", Uuid::new_v4().simple());
            servers.add_password_user(&login, "bench-password");
            let seeded: Vec<Vec<u8>> = (0..500).map(sample_message).collect();
            servers.seed_messages(&login, "INBOX", &seeded);
            confirmed_account(
                &app,
                &key,
                json!({"protocol": "imap", "auth": "password", "login": login, "password": "bench-password",
                       "host": "127.0.0.1", "port": servers.imaps_port(), "security": "tls"}),
            )
            .await?;
            receivers += 1;
        }
        // Inbound polls wait until the sends are done, so each phase is timed alone. The sends wait until every
        // process is up: the figure is what the processes do together, not how long one takes to start.
        app.ctx
            .db
            .execute_unprepared("UPDATE email_accounts SET next_poll_at = now() + interval '1 day' WHERE direction = 'inbound'")
            .await?;
        app.ctx.db.execute_unprepared("UPDATE outbound_messages SET next_attempt_at = now() + interval '1 day'").await?;

        let mut children = Vec::new();
        for _ in 0..processes {
            children.push(
                std::process::Command::new(&worker)
                    .envs(app.env.vars.iter())
                    .env("RUST_LOG", "warn")
                    .env("POSTBRIDGE_DATABASE_MAX_CONNECTIONS", "20")
                    // Polled only: an IDLE watch would first-sync its mailbox at once, during the send phase, and
                    // leave the inbound phase nothing to time.
                    .env("POSTBRIDGE_IDLE_MAILBOXES", "0")
                    .spawn()?,
            );
        }
        let spawned = Instant::now();
        let ready = format!("SELECT count(*) AS n FROM worker_processes WHERE ready AND {}", workers::live());
        let start_up = time_until(&app, &ready, processes as i64, spawned).await?;
        // The trigger on `next_attempt_at` wakes every process's send listener at once.
        app.ctx.db.execute_unprepared("UPDATE outbound_messages SET next_attempt_at = now()").await?;
        let started = Instant::now();
        let sent =
            time_until(&app, "SELECT count(*) AS n FROM outbound_messages WHERE status = 'sent'", submitted, started).await?;
        let bad = app
            .ctx
            .db
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT count(*) AS n FROM outbound_messages WHERE status <> 'sent'".to_owned(),
            ))
            .await?
            .map(|r| r.try_get::<i64>("", "n"))
            .transpose()?
            .unwrap_or(0);
        app.ctx.db.execute_unprepared("UPDATE email_accounts SET next_poll_at = now() WHERE direction = 'inbound'").await?;
        let started = Instant::now();
        let expected = receivers * 500;
        let received = time_until(&app, "SELECT count(*) AS n FROM inbound_messages", expected as i64, started)
            .await?
            .max(Duration::from_millis(1));
        for child in &mut children {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
        }
        for child in &mut children {
            let _ = child.wait();
        }
        let stored = app
            .ctx
            .db
            .query_one_raw(Statement::from_string(DbBackend::Postgres, "SELECT count(*) AS n FROM inbound_messages".to_owned()))
            .await?
            .map(|r| r.try_get::<i64>("", "n"))
            .transpose()?
            .unwrap_or(0);
        anyhow::ensure!(bad == 0 && stored == expected as i64, "{bad} messages not sent, {stored} of {expected} stored");
        let send_rate = submitted as f64 / sent.as_secs_f64();
        let receive_rate = expected as f64 / received.as_secs_f64();
        let (send_base, receive_base) = *baseline.get_or_insert((send_rate, receive_rate));
        let inbound_figures = if expected == 0 {
            String::new()
        } else {
            format!("   first sync {receive_rate:>7.0} messages/s ({received:.2?}, x{:.2})", receive_rate / receive_base)
        };
        println!(
            "  {processes} worker process(es): send {send_rate:>7.0} messages/s ({sent:.2?}, x{:.2}){inbound_figures}   \
             (all ready {start_up:.2?} after start)",
            send_rate / send_base
        );
    }
    Ok(())
}
