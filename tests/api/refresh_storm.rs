//! A refresh storm through real worker processes: many grants of one configuration fall due at once, against a
//! provider that rotates refresh tokens and takes a while to answer. Each grant is refreshed exactly once, in
//! batches (not a job per grant), while on-demand callers share the batches' answers; a worker stopped in the middle
//! finishes what it leased; and every stored refresh token is the one the provider considers current.

use std::time::Duration;

use postbridge_core::connect::grants;
use postbridge_core::secrets::crypto::SecretLocation;
use postbridge_core::secrets::GRANT_REFRESH_TOKEN;
use postbridge_tests::oauth::OAuthSetup;
use postbridge_tests::processes::{PrivateRedis, WorkerProcess};
use postbridge_tests::{spawn_app_with, wait_until, TestApp, TestEnv};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::json;
use uuid::Uuid;

const WORKER: &str = env!("CARGO_BIN_EXE_postbridge-test-worker");
const GRANTS: usize = 120;

/// Inserts `count` grants of the setup's configuration with tokens minted at the provider, good for an hour.
async fn seed_grants(app: &TestApp, setup: &OAuthSetup, count: usize) -> Vec<Uuid> {
    let tenant = Uuid::parse_str(&setup.tenant).expect("tenant id");
    let config = Uuid::parse_str(&setup.config_id).expect("config id");
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let email = format!("storm{i}@example.com");
        let minted = setup.provider.mint_tokens(&setup.client_id, &email, "openid email offline_access mail").expect("minted");
        let id = Uuid::now_v7();
        let seal = |column: &'static str, value: &str| {
            app.ctx
                .cipher
                .encrypt(SecretLocation { tenant_id: tenant.into(), table: "grants", column, row_id: id }, value)
                .expect("sealed")
        };
        app.ctx
            .db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO grants (id, tenant_id, token_config_id, subject, access_token, refresh_token, expires_at, \
                                     refresh_at, scopes, status) \
                 VALUES ($1, $2, $3, $4, $5, $6, now() + interval '1 hour', now() + interval '55 minutes', $7, 'valid')",
                [
                    id.into(),
                    tenant.into(),
                    config.into(),
                    email.into(),
                    seal("access_token", &minted.access_token).into(),
                    seal("refresh_token", &minted.refresh_token).into(),
                    json!(["mail"]).into(),
                ],
            ))
            .await
            .expect("grant inserted");
        ids.push(id);
    }
    ids
}

/// Every grant of the configuration falls due now: tokens with a minute left, `expired` of them already expired.
async fn fall_due(app: &TestApp, setup: &OAuthSetup, expired: &[Uuid]) {
    let config = &setup.config_id;
    app.sql_exec(&format!(
        "UPDATE grants SET expires_at = now() + interval '60 seconds', refresh_at = now() WHERE token_config_id = '{config}'"
    ))
    .await;
    for id in expired {
        app.sql_exec(&format!("UPDATE grants SET expires_at = now() - interval '1 second' WHERE id = '{id}'")).await;
    }
}

async fn refreshed_count(app: &TestApp, setup: &OAuthSetup) -> i64 {
    app.sql_i64(&format!(
        "SELECT count(*) FROM grants WHERE token_config_id = '{}' AND expires_at > now() + interval '10 minutes' \
         AND status = 'valid' AND refreshing_until IS NULL",
        setup.config_id
    ))
    .await
}

/// Each grant's stored refresh token is the provider's current one (a rotated token lost would show here).
async fn assert_every_refresh_token_current(app: &TestApp, setup: &OAuthSetup, ids: &[Uuid]) {
    let tenant = Uuid::parse_str(&setup.tenant).expect("tenant id");
    for id in ids {
        let row = app
            .ctx
            .db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT refresh_token FROM grants WHERE id = $1",
                [(*id).into()],
            ))
            .await
            .expect("query")
            .expect("the grant");
        let sealed: String = row.try_get("", "refresh_token").expect("a refresh token");
        let plain = GRANT_REFRESH_TOKEN.open(&app.ctx.cipher, tenant.into(), *id, &sealed).expect("decrypts");
        assert!(setup.provider.refresh_token_active(&plain), "grant {id}: its stored refresh token is not current");
    }
}

async fn storm_app(redis: &PrivateRedis) -> (TestApp, OAuthSetup) {
    let mut env = TestEnv::new();
    env.set("REDIS_URL", redis.url());
    env.set("DATABASE_MAX_CONNECTIONS", "10");
    let app = spawn_app_with(env).await;
    let setup = app.oauth_setup().await;
    // A remote provider's round trip: batches overlap their requests, and on-demand callers meet them in flight.
    setup.provider.set_token_latency(Duration::from_millis(40));
    (app, setup)
}

#[tokio::test]
async fn a_storm_through_two_workers_refreshes_each_grant_once_in_batches_while_on_demand_callers_share_the_answers() {
    let redis = PrivateRedis::start().await;
    let (app, setup) = storm_app(&redis).await;
    let ids = seed_grants(&app, &setup, GRANTS).await;
    let workers = [WorkerProcess::spawn(WORKER, &app.env, &[]), WorkerProcess::spawn(WORKER, &app.env, &[])];
    for worker in &workers {
        worker.wait_ready(Duration::from_secs(30)).await;
    }
    let before = setup.provider.token_requests("refresh_token");

    // Ten grants' tokens have already expired: their callers cannot use the current token and must get a new one.
    let expired = &ids[..10];
    fall_due(&app, &setup, expired).await;
    let tenant = Uuid::parse_str(&setup.tenant).expect("tenant id");
    let callers = ids[..20].iter().map(|id| grants::access_token(&app.ctx, tenant.into(), (*id).into()));
    let tokens = futures::future::join_all(callers).await;
    for (id, token) in ids.iter().zip(&tokens) {
        let token = token.as_ref().unwrap_or_else(|e| panic!("grant {id}: {e}"));
        assert!(setup.provider.introspect(token).is_some(), "grant {id}: the caller got a token the provider accepts");
    }

    wait_until("every grant is refreshed", Duration::from_secs(60), async || {
        refreshed_count(&app, &setup).await == GRANTS as i64
    })
    .await;
    assert_eq!(
        setup.provider.token_requests("refresh_token") - before,
        GRANTS,
        "one refresh per grant, whether a batch or an on-demand caller did it"
    );
    assert_every_refresh_token_current(&app, &setup, &ids).await;

    // Batches, not a job per grant: at most 50 grants of one configuration per job.
    let mut jobs = 0.0;
    let mut refreshed = 0.0;
    for worker in &workers {
        jobs += worker.metric("postbridge_worker_dispatched_total{queue=\"refresh\"").await;
        refreshed += worker.metric("postbridge_token_refreshes_total{outcome=\"refreshed\"}").await;
    }
    // The callers refresh some first; the rest go out 50 to a job (a pass may catch a few late ones on their own).
    assert!((2.0..=20.0).contains(&jobs), "{GRANTS} grants went out in {jobs} refresh jobs");
    let on_demand = app.ctx.metrics.token_refreshes.with_label_values(&["refreshed"]).get() as f64;
    assert_eq!(refreshed + on_demand, GRANTS as f64, "the workers' and the callers' refreshes add up to one per grant");
    assert_eq!(app.sql_i64("SELECT count(*) FROM grants WHERE refreshing_until IS NOT NULL").await, 0, "no lease is left");
}

#[tokio::test]
async fn a_worker_stopped_in_the_middle_of_a_storm_stores_what_it_asked_for_and_the_other_finishes() {
    let redis = PrivateRedis::start().await;
    let (app, setup) = storm_app(&redis).await;
    // Slower answers, so the stop lands while batches are asking.
    setup.provider.set_token_latency(Duration::from_millis(150));
    let ids = seed_grants(&app, &setup, GRANTS).await;
    let mut stopping = WorkerProcess::spawn(WORKER, &app.env, &[("REFRESH_CONCURRENCY", "8")]);
    stopping.wait_ready(Duration::from_secs(30)).await;
    let before = setup.provider.token_requests("refresh_token");
    fall_due(&app, &setup, &[]).await;

    wait_until("the worker is refreshing", Duration::from_secs(20), async || {
        setup.provider.token_requests("refresh_token") > before + 8
    })
    .await;
    let status = stopping.terminate(Duration::from_secs(60)).await.expect("the worker stops within a minute");
    assert!(status.success(), "a clean stop: {status:?}");
    // Whatever it leased, it either stored or released: nothing is left leased by a stopped worker.
    assert_eq!(app.sql_i64("SELECT count(*) FROM grants WHERE refreshing_until IS NOT NULL").await, 0);

    let other = WorkerProcess::spawn(WORKER, &app.env, &[]);
    other.wait_ready(Duration::from_secs(30)).await;
    wait_until("every grant is refreshed", Duration::from_secs(60), async || {
        refreshed_count(&app, &setup).await == GRANTS as i64
    })
    .await;
    assert_eq!(setup.provider.token_requests("refresh_token") - before, GRANTS, "one refresh per grant across the stop");
    assert_every_refresh_token_current(&app, &setup, &ids).await;
}

#[tokio::test]
async fn grants_falling_due_between_passes_are_dispatched_at_their_due_time_not_at_the_next_pass() {
    let redis = PrivateRedis::start().await;
    let (app, setup) = storm_app(&redis).await;
    let ids = seed_grants(&app, &setup, GRANTS).await;
    // A pass only every 10 s (the longest allowed), so a dispatch between passes is the due time's.
    let worker = WorkerProcess::spawn(WORKER, &app.env, &[("DISPATCH_INTERVAL", "10s")]);
    worker.wait_ready(Duration::from_secs(30)).await;
    let before = setup.provider.token_requests("refresh_token");

    // The moment is written ahead, as refreshed tokens write theirs: 12 s on, so one of the next two passes
    // (10 s apart) sees it coming within its interval, and the moment itself falls between passes.
    let config = &setup.config_id;
    app.sql_exec(&format!(
        "UPDATE grants SET expires_at = now() + interval '72 seconds', refresh_at = now() + interval '12 seconds' \
         WHERE token_config_id = '{config}'"
    ))
    .await;
    let written = std::time::Instant::now();
    wait_until("the provider is asked", Duration::from_secs(40), async || {
        setup.provider.token_requests("refresh_token") > before
    })
    .await;
    assert!(written.elapsed() >= Duration::from_millis(11_900), "no grant is refreshed before it is due");
    wait_until("every grant is refreshed", Duration::from_secs(60), async || {
        refreshed_count(&app, &setup).await == GRANTS as i64
    })
    .await;

    let refresh_jobs = |trigger: &str| format!("postbridge_worker_dispatched_total{{queue=\"refresh\",trigger=\"{trigger}\"}}");
    assert!(worker.metric(&refresh_jobs("due_time")).await >= 3.0, "{GRANTS} grants went out at their due time, 50 to a job");
    assert_eq!(worker.metric(&refresh_jobs("pass")).await, 0.0, "no pass had to find them");
    assert_eq!(setup.provider.token_requests("refresh_token") - before, GRANTS, "one refresh per grant");
    assert_every_refresh_token_current(&app, &setup, &ids).await;
}

/// The grant's row as the lease tests read it: its lease and its sealed access token.
async fn lease_and_access(app: &TestApp, id: Uuid) -> (Option<chrono::DateTime<chrono::Utc>>, Option<String>) {
    let row = app
        .ctx
        .db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT refreshing_until, access_token FROM grants WHERE id = $1",
            [id.into()],
        ))
        .await
        .expect("query")
        .expect("the grant");
    (row.try_get("", "refreshing_until").expect("lease"), row.try_get("", "access_token").expect("access token"))
}

/// An app with one grant of a configuration of its own, due for refresh; `expired`: its access token has expired
/// too, so a caller cannot use it while a refresh is under way.
async fn one_due_grant(expired: bool) -> (TestApp, OAuthSetup, Vec<Uuid>) {
    let app = spawn_app_with(TestEnv::new()).await;
    let setup = app.oauth_setup().await;
    let ids = seed_grants(&app, &setup, 1).await;
    fall_due(&app, &setup, if expired { &ids } else { &[] }).await;
    (app, setup, ids)
}

/// Asks for the grant's access token in a task of its own, as a request or a job does.
fn token_caller(
    app: &TestApp,
    setup: &OAuthSetup,
    id: Uuid,
) -> tokio::task::JoinHandle<Result<String, grants::TokenAccessError>> {
    let ctx = app.ctx.clone();
    let tenant = Uuid::parse_str(&setup.tenant).expect("tenant id");
    tokio::spawn(async move { grants::access_token(&ctx, tenant.into(), id.into()).await })
}

/// Waits until a refresh holds the grant; the lease's first value.
async fn leased(app: &TestApp, id: Uuid) -> chrono::DateTime<chrono::Utc> {
    wait_until("the grant is leased", Duration::from_secs(10), async || lease_and_access(app, id).await.0.is_some()).await;
    lease_and_access(app, id).await.0.expect("leased")
}

/// Starts a batch refreshing the grant and waits until it holds it; the batch, and its lease's first value.
async fn batch_holding(
    app: &TestApp,
    id: Uuid,
) -> (tokio::task::JoinHandle<postbridge_core::AppResult<grants::RefreshPass>>, chrono::DateTime<chrono::Utc>) {
    let ctx = app.ctx.clone();
    let batch = tokio::spawn(async move { grants::refresh_grants(&ctx, &[id.into()]).await });
    (batch, leased(app, id).await)
}

/// A batch refreshes one grant whose token has expired, its provider answering after `answer_after`, while a caller
/// needs the token: the caller waits for the batch and gets its answer, one refresh in all. With `until_renewed`,
/// the caller is still waiting once the batch's lease has been renewed, and the answer is stored under the new value.
async fn a_caller_waits_for_a_batch(answer_after: Duration, until_renewed: bool) {
    let (app, setup, ids) = one_due_grant(true).await;
    let id = ids[0];
    setup.provider.fail_next_token_requests(1, postbridge_oauth_provider::TokenFailure::Slow(answer_after));
    let before = setup.provider.token_requests("refresh_token");

    let (batch, first) = batch_holding(&app, id).await;
    let caller = token_caller(&app, &setup, id);
    if until_renewed {
        lease_renewed(&app, id, first).await;
    }

    let pass = batch.await.expect("the batch ran").expect("the batch succeeded");
    assert_eq!(pass, grants::RefreshPass { refreshed: 1, ..Default::default() }, "stored under the lease as it stands");
    let token = caller.await.expect("the caller ran").expect("the caller gets a token");
    assert_eq!(setup.provider.token_requests("refresh_token") - before, 1, "the caller did not refresh a second time");
    assert!(setup.provider.introspect(&token).is_some(), "the caller got the batch's new token");
    assert_every_refresh_token_current(&app, &setup, &ids).await;
    assert_eq!(lease_and_access(&app, id).await.0, None, "the lease ended with the answer");
}

#[tokio::test]
async fn a_caller_whose_token_expired_waits_for_the_batch_refreshing_it_and_gets_its_answer_without_a_second_refresh() {
    a_caller_waits_for_a_batch(Duration::from_millis(600), false).await;
}

/// A batch asks the provider for one grant, which answers after 600 ms (`answer`: how, for the batch's request);
/// meanwhile a new consent replaces the grant's tokens and ends the lease. Whatever the batch then met is for tokens
/// that are gone: it writes nothing, and the grant keeps the consent's tokens, valid, without error or backoff.
async fn a_new_consent_overtakes_a_batch(answer: postbridge_oauth_provider::TokenFailure) -> grants::RefreshPass {
    let (app, setup, ids) = one_due_grant(false).await;
    let id = ids[0];
    setup.provider.set_token_latency(Duration::from_millis(600));
    setup.provider.fail_next_token_requests(1, answer);

    let (batch, _) = batch_holding(&app, id).await;
    // What a new consent does to the row meanwhile: new tokens, the lease gone.
    app.sql_exec(&format!(
        "UPDATE grants SET access_token = 'replaced-by-consent', refreshing_until = NULL, \
                expires_at = now() + interval '1 hour', refresh_at = now() + interval '55 minutes' WHERE id = '{id}'"
    ))
    .await;

    let pass = batch.await.expect("the batch ran").expect("the batch succeeded");
    assert_eq!(lease_and_access(&app, id).await, (None, Some("replaced-by-consent".to_owned())));
    let untouched = format!(
        "SELECT count(*) FROM grants WHERE id = '{id}' AND status = 'valid' AND last_error IS NULL \
         AND refresh_failures = 0 AND next_refresh_at IS NULL"
    );
    assert_eq!(app.sql_i64(&untouched).await, 1, "the consent's grant is as the consent left it");
    pass
}

#[tokio::test]
async fn a_batch_whose_lease_was_taken_away_meanwhile_drops_its_answer_instead_of_overwriting_newer_tokens() {
    let pass = a_new_consent_overtakes_a_batch(postbridge_oauth_provider::TokenFailure::Slow(Duration::ZERO)).await;
    assert_eq!(pass.refreshed, 0, "the answer came under a lease that no longer held");
}

#[tokio::test]
async fn a_refusal_for_tokens_a_new_consent_replaced_meanwhile_does_not_bury_the_new_grant() {
    let revoked = postbridge_oauth_provider::TokenFailure::InvalidGrant { description: "token revoked".to_owned() };
    let pass = a_new_consent_overtakes_a_batch(revoked).await;
    assert_eq!(pass, grants::RefreshPass::default(), "the refusal was for tokens that are gone");
}

#[tokio::test]
async fn a_batch_whose_client_was_refused_once_and_then_worked_leaves_the_configuration_working_with_one_event() {
    let app = spawn_app_with(TestEnv::new()).await;
    let setup = app.oauth_setup().await;
    let ids = seed_grants(&app, &setup, 4).await;
    fall_due(&app, &setup, &[]).await;
    // The first request of the batch meets a refused client; the others go through with the same secret.
    let refused = postbridge_oauth_provider::TokenFailure::InvalidClient { description: "secret rotated".to_owned() };
    setup.provider.fail_next_token_requests(1, refused);

    let grant_ids: Vec<_> = ids.iter().map(|id| (*id).into()).collect();
    let pass = grants::refresh_grants(&app.ctx, &grant_ids).await.expect("the batch runs");
    assert_eq!(pass, grants::RefreshPass { refreshed: 3, reauth_required: 0, failed: 1 });
    let config = &setup.config_id;
    let needs_admin = app.sql_i64(&format!("SELECT count(*) FROM token_configs WHERE id = '{config}' AND needs_admin")).await;
    assert_eq!(needs_admin, 0, "its credentials worked after the refusal, so it waits for nobody");
    let events = app
        .sql_i64(&format!(
            "SELECT count(*) FROM events WHERE event_type = 'token_config.needs_admin' AND resource_id = '{config}'"
        ))
        .await;
    assert_eq!(events, 1, "the refusal is reported once");
}

// ---- the lease: short, renewed while its holder works ------------------------------------------

/// Longer than a refresh lease lasts unrenewed (20 s): an answer this slow lands only if its lease was renewed.
const SLOWER_THAN_A_LEASE: Duration = Duration::from_secs(24);

/// Waits until the grant's lease has been renewed past `first` (renewals come every 5 s).
async fn lease_renewed(app: &TestApp, id: Uuid, first: chrono::DateTime<chrono::Utc>) {
    wait_until("the lease is renewed", Duration::from_secs(12), async || {
        lease_and_access(app, id).await.0.is_some_and(|until| until > first)
    })
    .await;
}

#[tokio::test]
async fn a_batch_whose_provider_answers_after_its_lease_would_have_run_out_renews_it_and_a_waiting_caller_shares_the_answer() {
    a_caller_waits_for_a_batch(SLOWER_THAN_A_LEASE, true).await;
}

#[tokio::test]
async fn an_on_demand_refresh_slower_than_its_lease_renews_it_so_a_second_caller_waits_instead_of_refreshing_again() {
    let (app, setup, ids) = one_due_grant(true).await;
    let id = ids[0];
    setup.provider.fail_next_token_requests(1, postbridge_oauth_provider::TokenFailure::Slow(SLOWER_THAN_A_LEASE));
    let before = setup.provider.token_requests("refresh_token");

    let first_caller = token_caller(&app, &setup, id);
    let first = leased(&app, id).await;
    let second_caller = token_caller(&app, &setup, id);
    lease_renewed(&app, id, first).await;

    let first_token = first_caller.await.expect("the first caller ran").expect("a token");
    let second_token = second_caller.await.expect("the second caller ran").expect("a token");
    assert_eq!(setup.provider.token_requests("refresh_token") - before, 1, "one refresh for both callers");
    assert_eq!(first_token, second_token, "the second caller got the first one's answer");
    assert_every_refresh_token_current(&app, &setup, &ids).await;
    assert_eq!(lease_and_access(&app, id).await.0, None, "the lease ended with the answer");
}

#[tokio::test]
async fn a_worker_killed_while_its_batch_waits_on_the_provider_holds_the_grant_only_until_its_short_lease_runs_out() {
    let redis = PrivateRedis::start().await;
    let (app, setup) = storm_app(&redis).await;
    let ids = seed_grants(&app, &setup, 1).await;
    let id = ids[0];
    let mut worker = WorkerProcess::spawn(WORKER, &app.env, &[]);
    worker.wait_ready(Duration::from_secs(30)).await;
    // The provider hangs on the worker's request; its token has expired, so a caller cannot use it meanwhile.
    setup.provider.set_token_latency(Duration::from_secs(300));
    let before = setup.provider.token_requests("refresh_token");
    fall_due(&app, &setup, &ids).await;
    wait_until("the worker's batch asks the provider", Duration::from_secs(20), async || {
        setup.provider.token_requests("refresh_token") > before
    })
    .await;
    let first = lease_and_access(&app, id).await.0.expect("the batch leased the grant");
    lease_renewed(&app, id, first).await;

    worker.kill_9();
    setup.provider.set_token_latency(Duration::ZERO);
    let killed = std::time::Instant::now();
    let token = token_caller(&app, &setup, id).await.expect("the caller ran").expect("the caller gets a token");
    // The lease it renewed last had at most 20 s to run (a batch's lease used to be 2 minutes, however it was cut).
    assert!(killed.elapsed() < Duration::from_secs(30), "the caller waited {:?} for a dead worker", killed.elapsed());
    assert!(setup.provider.introspect(&token).is_some(), "a token the provider issued");
    assert_eq!(setup.provider.token_requests("refresh_token") - before, 2, "the killed request and the caller's");
    assert_every_refresh_token_current(&app, &setup, &ids).await;
    assert_eq!(lease_and_access(&app, id).await.0, None, "no lease is left");
}
