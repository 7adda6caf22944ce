//! `postbridge-bench`: measures against local servers, prints figures (no pass/fail thresholds).
//!
//!   cargo run --release -p postbridge-tests --bin postbridge-bench -- refresh [GRANTS]   (default 10000)
//!   cargo run --release -p postbridge-tests --bin postbridge-bench -- api [REQUESTS]     (default 2000)
//!
//! Needs the local Postgres and Redis (`scripts/ensure-services.sh`); uses a throwaway database.

use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use postbridge_core::crypto::SecretLocation;
use postbridge_core::service::grants;
use postbridge_tests::{spawn_app, TestApp};
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
        _ => {
            eprintln!("usage: postbridge-bench refresh [GRANTS] | api [REQUESTS]");
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

async fn bench_refresh(grant_count: usize) -> anyhow::Result<()> {
    let app = spawn_app().await;
    let setup = app.oauth_setup().await;
    let tenant = Uuid::parse_str(&setup.tenant)?;
    let config = Uuid::parse_str(&setup.config_id)?;
    let concurrency = app.ctx.settings.refresh_concurrency;

    // Baseline: the provider's own speed for the same number of refreshes at the same concurrency.
    let mut baseline_tokens = Vec::with_capacity(grant_count);
    for i in 0..grant_count {
        let minted = setup.provider.mint_tokens(&setup.client_id, &format!("base{i}@bench.example"), "openid email offline_access mail");
        baseline_tokens.push(minted.ok_or_else(|| anyhow::anyhow!("provider refused to mint"))?.refresh_token);
    }
    let http = reqwest::Client::new();
    let started = Instant::now();
    let statuses: Vec<u16> = futures::stream::iter(baseline_tokens)
        .map(|refresh| {
            let (http, url, id, secret) = (http.clone(), setup.provider.token_url(), setup.client_id.clone(), setup.client_secret.clone());
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

    // Seed grants whose access tokens expire within the refresh margin.
    let expires = Utc::now() + chrono::Duration::seconds(60);
    let mut rows = Vec::with_capacity(grant_count);
    for i in 0..grant_count {
        let email = format!("user{i}@bench.example");
        let minted = setup.provider.mint_tokens(&setup.client_id, &email, "openid email offline_access mail").ok_or_else(|| anyhow::anyhow!("mint"))?;
        let id = Uuid::now_v7();
        let seal = |column: &'static str, value: &str| app.ctx.cipher.encrypt(SecretLocation { tenant_id: tenant, table: "grants", column, row_id: id }, value);
        rows.push(vec![
            id.into(),
            tenant.into(),
            config.into(),
            email.into(),
            seal("access_token", &minted.access_token)?.into(),
            seal("refresh_token", &minted.refresh_token)?.into(),
            expires.into(),
            json!(["mail"]).into(),
            "valid".into(),
        ]);
    }
    insert_rows(&app, "grants (id, tenant_id, token_config_id, subject, access_token, refresh_token, expires_at, scopes, status)", rows).await?;
    let before = setup.provider.token_requests("refresh_token");

    let started = Instant::now();
    let mut refreshed = 0;
    loop {
        let pass = grants::refresh_due(&app.ctx, 1_000).await.map_err(|e| anyhow::anyhow!("refresh pass failed: {e:?}"))?;
        refreshed += pass.refreshed;
        anyhow::ensure!(pass.failed == 0 && pass.reauth_required == 0, "refresh failures: {pass:?}");
        if pass.refreshed == 0 {
            break;
        }
    }
    let elapsed = started.elapsed();
    let provider_calls = setup.provider.token_requests("refresh_token") - before;

    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    println!("refresh benchmark: {grant_count} expiring grants, concurrency {concurrency}");
    println!("  provider alone (direct HTTP):   {:>8.0} refreshes/s ({:.2?})", rate(grant_count, baseline), baseline);
    println!("  postbridge refresh_due:         {:>8.0} refreshes/s ({:.2?})", rate(refreshed as usize, elapsed), elapsed);
    println!("  refreshed {refreshed}, provider refresh requests {provider_calls} (one per grant: {})", provider_calls == grant_count);
    Ok(())
}

async fn bench_api(requests: usize) -> anyhow::Result<()> {
    let app = spawn_app().await;
    let (tenant, key) = app.tenant_with_admin().await;
    let tenant = Uuid::parse_str(&tenant)?;
    let now = Utc::now();
    let rows = (0..1_000)
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
        &app,
        "email_accounts (id, tenant_id, name, direction, protocol, host, port, security, auth_method, login, owner_subject, created_at, updated_at)",
        rows,
    )
    .await?;
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
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1).min(latencies.len() - 1)];
    println!("API list benchmark: GET /v1/accounts?limit=50 over 1000 accounts, {requests} requests, 4 concurrent (API key auth)");
    println!("  p50 {:.2?}  p90 {:.2?}  p99 {:.2?}  max {:.2?}  throughput {:.0} req/s", pct(0.50), pct(0.90), pct(0.99), latencies[latencies.len() - 1], requests as f64 / total.as_secs_f64());
    Ok(())
}
