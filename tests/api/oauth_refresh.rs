//! Keeping grants usable: refresh before expiry, rotated refresh tokens, one refresh at a time, what
//! each provider failure does to a grant, the background pass, the app flow's cached tokens, client
//! secret expiry warnings, and master-key rotation of grant tokens.

use std::time::Duration;

use chrono::{DateTime, Utc};
use postbridge_core::connect::grants::{self, RefreshPass, TokenAccessError};
use postbridge_core::connect::token_configs;
use postbridge_core::jobs::scheduler;
use postbridge_core::observe::ops_metrics;
use postbridge_core::secrets::rekey;
use postbridge_core::secrets::{self, SealedColumn};
use postbridge_core::AppContext;
use postbridge_oauth_provider::TokenFailure;
use postbridge_tests::oauth::{OAuthSetup, CONSENTING_USER, RETURN_ORIGIN};
use postbridge_tests::{assert_error, captured_logs, random_key_b64, spawn_app, spawn_app_with, TestApp, TestEnv};
use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
use serde_json::{json, Value};
use uuid::Uuid;

// ---- helpers ---------------------------------------------------------------------------------

/// A grant row exactly as stored.
#[derive(Debug, Clone, PartialEq)]
struct GrantRow {
    status: String,
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
    refresh_failures: i32,
    next_refresh_at: Option<DateTime<Utc>>,
}

/// One connected mailbox: a setup, its inbound account and the grant consent created.
struct Connected {
    setup: OAuthSetup,
    account: String,
    tenant: Uuid,
    grant: Uuid,
}

async fn sql(app: &TestApp, statement: &str) {
    app.ctx.db.execute_unprepared(statement).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
}

async fn grant_row(app: &TestApp, grant: Uuid) -> GrantRow {
    let row = app
        .ctx
        .db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT status, access_token, refresh_token, expires_at, last_error, refresh_failures, next_refresh_at FROM grants WHERE id = $1",
            [grant.into()],
        ))
        .await
        .expect("query grant")
        .expect("grant row");
    GrantRow {
        status: row.try_get("", "status").expect("status"),
        access_token: row.try_get("", "access_token").expect("access_token"),
        refresh_token: row.try_get("", "refresh_token").expect("refresh_token"),
        expires_at: row.try_get("", "expires_at").expect("expires_at"),
        last_error: row.try_get("", "last_error").expect("last_error"),
        refresh_failures: row.try_get("", "refresh_failures").expect("refresh_failures"),
        next_refresh_at: row.try_get("", "next_refresh_at").expect("next_refresh_at"),
    }
}

async fn count(app: &TestApp, query: &str) -> i64 {
    let row = app
        .ctx
        .db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, query.to_owned()))
        .await
        .expect("count query")
        .expect("a row");
    row.try_get("", "n").expect("n")
}

/// How many events of that type the tenant has about that resource.
async fn events(app: &TestApp, tenant: Uuid, event_type: &str, resource: &str) -> i64 {
    count(
        app,
        &format!("SELECT count(*) AS n FROM events WHERE tenant_id = '{tenant}' AND event_type = '{event_type}' AND resource_id = '{resource}'"),
    )
    .await
}

/// Decrypts a grant token column with `ctx`'s keys.
fn decrypt(ctx: &AppContext, tenant: Uuid, grant: Uuid, column: SealedColumn, stored: &str) -> String {
    column.open(&ctx.cipher, tenant.into(), grant, stored).expect("grant token decrypts")
}

/// Moves the stored access token's expiry to `seconds` from now (negative: already expired), as if it were an
/// hour-long token (the provider's default): due for refresh 5 minutes before it expires.
async fn expire_in(app: &TestApp, grant: Uuid, seconds: i64) {
    sql(
        app,
        &format!(
            "UPDATE grants SET expires_at = now() + interval '{seconds} seconds', \
             refresh_at = now() + interval '{seconds} seconds' - interval '5 minutes' WHERE id = '{grant}'"
        ),
    )
    .await;
}

/// A user-flow setup with one inbound account of `CONSENTING_USER`, consented.
async fn connect(app: &TestApp) -> Connected {
    let setup = app.oauth_setup().await;
    connect_with(app, setup).await
}

async fn connect_with(app: &TestApp, setup: OAuthSetup) -> Connected {
    let account = app.oauth_account(&setup, "imap", CONSENTING_USER).await;
    let grant = consent_grant(app, &setup, &account).await;
    let tenant = Uuid::parse_str(&setup.tenant).expect("tenant uuid");
    Connected { setup, account, tenant, grant }
}

/// Consents for `account` and returns the grant id it now points at.
async fn consent_grant(app: &TestApp, setup: &OAuthSetup, account: &str) -> Uuid {
    let outcome = app.consent(setup, account).await;
    assert_eq!(outcome.param("status").as_deref(), Some("success"), "{outcome:?}");
    assert!(outcome.location.as_deref().is_some_and(|l| l.starts_with(RETURN_ORIGIN)), "{outcome:?}");
    let account = app.account_json(setup, account).await;
    Uuid::parse_str(account["grant_id"].as_str().expect("grant id")).expect("grant uuid")
}

async fn token(app: &TestApp, c: &Connected) -> Result<String, TokenAccessError> {
    grants::access_token(&app.ctx, c.tenant.into(), c.grant.into()).await
}

/// A port on loopback where nothing listens.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// Presents a refresh token straight to the provider, as a client would; returns the HTTP status and body.
async fn present_refresh_token(app: &TestApp, setup: &OAuthSetup, refresh_token: &str) -> (StatusCode, Value) {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "refresh_token")
        .append_pair("refresh_token", refresh_token)
        .append_pair("client_id", &setup.client_id)
        .append_pair("client_secret", &setup.client_secret)
        .finish();
    let response = app
        .http
        .post(setup.provider.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("provider reachable");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn expiring_within(app: &TestApp, admin: &str, days: i64) -> postbridge_tests::Reply {
    app.get(&format!("/v1/token-configs/expiring?within_days={days}"), admin).await
}

/// Moves a configuration's client secret expiry behind the API's back (as time passing would).
async fn set_secret_expiry(app: &TestApp, config: &str, days: i64) {
    sql(app, &format!("UPDATE token_configs SET client_secret_expires_at = '{}' WHERE id = '{config}'", today_plus(days))).await;
}

fn today_plus(days: i64) -> String {
    (Utc::now().date_naive() + chrono::Duration::days(days)).to_string()
}

// ---- refresh before expiry and rotation ------------------------------------------------------

#[tokio::test]
async fn access_token_returns_the_stored_token_while_fresh_and_refreshes_once_within_the_margin() {
    let app = spawn_app().await;
    let c = connect(&app).await;
    let provider = &c.setup.provider;
    let before = grant_row(&app, c.grant).await;
    let stored =
        decrypt(&app.ctx, c.tenant, c.grant, secrets::GRANT_ACCESS_TOKEN, before.access_token.as_deref().expect("access token"));

    // An hour left: the stored token, no provider call.
    let first = token(&app, &c).await.expect("a token");
    assert_eq!(first, stored);
    assert_eq!(provider.introspect(&first).as_deref(), Some(CONSENTING_USER));
    assert_eq!(provider.token_requests("refresh_token"), 0, "a fresh token needs no refresh");
    assert_eq!(grant_row(&app, c.grant).await, before, "reading a fresh token changes nothing");

    // One minute left (less than the 5 minute margin): refreshed once.
    expire_in(&app, c.grant, 60).await;
    let refreshed = token(&app, &c).await.expect("a refreshed token");
    assert_ne!(refreshed, first, "a new access token");
    assert_eq!(provider.token_requests("refresh_token"), 1);
    assert_eq!(provider.introspect(&refreshed).as_deref(), Some(CONSENTING_USER), "the provider accepts the new token");
    let after = grant_row(&app, c.grant).await;
    assert_eq!(after.status, "valid");
    let expires_at = after.expires_at.expect("expiry stored");
    assert!(expires_at > Utc::now() + chrono::Duration::minutes(50), "the new expiry is stored: {expires_at}");
    assert_eq!(
        decrypt(&app.ctx, c.tenant, c.grant, secrets::GRANT_ACCESS_TOKEN, after.access_token.as_deref().expect("access")),
        refreshed
    );

    // Fresh again: no further refresh.
    assert_eq!(token(&app, &c).await.expect("a token"), refreshed);
    assert_eq!(provider.token_requests("refresh_token"), 1);
    let grant = app.get(&format!("/v1/grants/{}", c.grant), &c.setup.admin).await;
    assert!(grant.body["last_refreshed_at"].is_string(), "{}", grant.text);
    assert!(!grant.text.contains(&refreshed), "tokens are never shown");

    // Another tenant's id finds nothing, through the API or the service.
    let (other_tenant, other_admin) = app.tenant_with_admin().await;
    assert_error(&app.get(&format!("/v1/grants/{}", c.grant), &other_admin).await, StatusCode::NOT_FOUND, "not_found");
    let other_tenant = Uuid::parse_str(&other_tenant).expect("tenant uuid");
    let err = grants::access_token(&app.ctx, other_tenant.into(), c.grant.into()).await.expect_err("not this tenant's grant");
    assert!(matches!(err, TokenAccessError::App(postbridge_core::AppError::NotFound { .. })), "{err:?}");
    assert_eq!(provider.token_requests("refresh_token"), 1);
}

#[tokio::test]
async fn a_refresh_persists_the_rotated_refresh_token_so_the_next_refresh_works_too() {
    let app = spawn_app().await;
    let c = connect(&app).await;
    let provider = &c.setup.provider;
    // Each access_token call below finds the token due, as it would be 55 minutes later.
    let due_sql = format!("UPDATE grants SET refresh_at = now() WHERE id = '{}'", c.grant);
    let make_due = || sql(&app, &due_sql);
    let decrypt_refresh = |row: &GrantRow| {
        decrypt(&app.ctx, c.tenant, c.grant, secrets::GRANT_REFRESH_TOKEN, row.refresh_token.as_deref().expect("refresh token"))
    };

    let r0 = grant_row(&app, c.grant).await;
    let rt0 = decrypt_refresh(&r0);

    make_due().await;
    let a1 = token(&app, &c).await.expect("first refresh");
    let r1 = grant_row(&app, c.grant).await;
    assert_ne!(r1.refresh_token, r0.refresh_token, "the rotated refresh token is stored");
    let rt1 = decrypt_refresh(&r1);
    assert_ne!(rt1, rt0);
    assert_eq!(provider.introspect(&a1).as_deref(), Some(CONSENTING_USER));

    // The second refresh presents the stored (rotated) token; the original one would now be refused.
    make_due().await;
    let a2 = token(&app, &c).await.expect("second refresh with the rotated token");
    assert_ne!(a2, a1);
    assert_eq!(provider.token_requests("refresh_token"), 2);
    assert_eq!(provider.introspect(&a2).as_deref(), Some(CONSENTING_USER));
    let r2 = grant_row(&app, c.grant).await;
    assert_eq!(r2.status, "valid");
    assert_eq!(r2.refresh_failures, 0);
    let rt2 = decrypt_refresh(&r2);
    assert!(rt2 != rt1 && rt2 != rt0);

    let (status, body) = present_refresh_token(&app, &c.setup, &rt0).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "a rotated-away token is dead: {body}"
    );
    // The stored one is the live one (presenting it rotates it, so this comes last).
    let (status, body) = present_refresh_token(&app, &c.setup, &rt2).await;
    assert_eq!(status, StatusCode::OK, "the stored refresh token is the provider's current one: {body}");

    let logs = captured_logs();
    for secret in [&rt0, &rt1, &rt2, &a1, &a2, &c.setup.client_secret] {
        assert!(!logs.contains(secret.as_str()), "a token reached the logs");
    }
}

#[tokio::test]
async fn without_rotation_a_refresh_response_lacking_a_refresh_token_keeps_the_stored_one() {
    let app = spawn_app().await;
    let c = connect(&app).await;
    c.setup.provider.set_rotate_refresh_tokens(false);
    let before = grant_row(&app, c.grant).await;

    expire_in(&app, c.grant, -10).await;
    let first = token(&app, &c).await.expect("refresh without rotation");
    let after = grant_row(&app, c.grant).await;
    assert_eq!(after.refresh_token, before.refresh_token, "the old refresh token is kept, ciphertext and all");
    assert_ne!(after.access_token, before.access_token);
    assert_eq!(c.setup.provider.introspect(&first).as_deref(), Some(CONSENTING_USER));

    expire_in(&app, c.grant, -10).await;
    let second = token(&app, &c).await.expect("the kept refresh token still works");
    assert_ne!(second, first);
    assert_eq!(c.setup.provider.token_requests("refresh_token"), 2);
    let grant = app.get(&format!("/v1/grants/{}", c.grant), &c.setup.admin).await;
    assert_eq!(
        (grant.body["status"].clone(), grant.body["has_refresh_token"].clone()),
        (json!("valid"), json!(true)),
        "{}",
        grant.text
    );
}

#[tokio::test]
async fn twenty_concurrent_callers_on_an_expired_grant_cause_exactly_one_refresh_and_share_its_token() {
    let app = spawn_app().await;
    let c = connect(&app).await;
    expire_in(&app, c.grant, -30).await;
    // The one refresh takes a while, so the other callers pile up behind the row lock.
    c.setup.provider.fail_next_token_requests(1, TokenFailure::Slow(Duration::from_millis(300)));

    // Half the callers come from a second process (its own pool); the lock lives in Postgres.
    let mut second_env = TestEnv::new();
    second_env.vars = app.env.vars.clone();
    let second = AppContext::build(second_env.settings()).await.expect("a second context");
    let callers =
        (0..20).map(|i| grants::access_token(if i % 2 == 0 { &app.ctx } else { &second }, c.tenant.into(), c.grant.into()));
    let results = futures::future::join_all(callers).await;
    let tokens: Vec<String> = results.into_iter().map(|r| r.expect("every caller gets a token")).collect();

    assert_eq!(c.setup.provider.token_requests("refresh_token"), 1, "exactly one refresh at the provider");
    assert!(tokens.iter().all(|t| *t == tokens[0]), "all callers got the same token");
    assert_eq!(c.setup.provider.introspect(&tokens[0]).as_deref(), Some(CONSENTING_USER));
    let row = grant_row(&app, c.grant).await;
    assert_eq!((row.status.as_str(), row.refresh_failures), ("valid", 0));
}

// ---- failures --------------------------------------------------------------------------------

#[tokio::test]
async fn a_refused_refresh_grant_needs_reauth_puts_its_accounts_in_error_and_later_calls_fail_fast() {
    let app = spawn_app().await;
    let cases = [
        (
            TokenFailure::InvalidGrant {
                description: "AADSTS700082: The refresh token has expired due to inactivity.".to_owned(),
            },
            "AADSTS700082",
        ),
        (TokenFailure::InteractionRequired, "AADSTS50076"),
        (TokenFailure::ConsentRequired, "AADSTS65001"),
    ];
    for (failure, provider_code) in cases {
        let c = connect(&app).await;
        let outbound = app.oauth_account(&c.setup, "smtp", CONSENTING_USER).await;
        let before = grant_row(&app, c.grant).await;
        expire_in(&app, c.grant, 30).await;
        c.setup.provider.fail_next_token_requests(1, failure.clone());

        let err = token(&app, &c).await.expect_err("the refresh is refused");
        assert!(
            matches!(&err, TokenAccessError::ReauthRequired { message: m, .. } if m.contains(provider_code)),
            "{failure:?}: {err:?}"
        );

        let row = grant_row(&app, c.grant).await;
        assert_eq!(row.status, "reauth_required", "{failure:?}");
        assert!(row.last_error.as_deref().is_some_and(|e| e.contains(provider_code)), "{failure:?}: {row:?}");
        assert_eq!(row.refresh_token, before.refresh_token, "nothing is thrown away: a re-consent replaces it");
        for account in [&c.account, &outbound] {
            let json = app.account_json(&c.setup, account).await;
            assert_eq!(json["state"], json!("error"), "{failure:?}: {json}");
            let last_error = json["last_error"].as_str().unwrap_or_default();
            assert!(
                last_error.contains("sign-in needed again") && last_error.contains(provider_code),
                "a readable error: {last_error}"
            );
        }
        let grant = app.get(&format!("/v1/grants/{}", c.grant), &c.setup.admin).await;
        assert_eq!(grant.body["status"], json!("reauth_required"), "{}", grant.text);
        assert_eq!(events(&app, c.tenant, "grant.reauth_required", &c.grant.to_string()).await, 1, "{failure:?}");

        // Later callers (and the background pass) fail fast without asking the provider.
        let err = token(&app, &c).await.expect_err("still dead");
        assert!(matches!(&err, TokenAccessError::ReauthRequired { message: m, .. } if m.contains(provider_code)), "{err:?}");
        assert_eq!(c.setup.provider.token_requests("refresh_token"), 1, "{failure:?}");
        assert_eq!(grants::refresh_due(&app.ctx, 100).await.expect("pass"), RefreshPass::default());
        assert_eq!(c.setup.provider.token_requests("refresh_token"), 1);
        assert_eq!(events(&app, c.tenant, "grant.reauth_required", &c.grant.to_string()).await, 1, "one event only");

        // Consent again revives grant and accounts.
        assert_eq!(consent_grant(&app, &c.setup, &c.account).await, c.grant, "re-consent reuses the grant");
        assert_eq!(grant_row(&app, c.grant).await.status, "valid");
        assert_eq!(app.account_json(&c.setup, &outbound).await["state"], json!("authorized"));
    }
}

#[tokio::test]
async fn a_grant_revoked_at_the_provider_is_counted_as_reauth_required_by_the_background_pass() {
    let app = spawn_app().await;
    let c = connect(&app).await;
    c.setup.provider.revoke_user(CONSENTING_USER);
    expire_in(&app, c.grant, 60).await;

    let pass = grants::refresh_due(&app.ctx, 100).await.expect("pass");
    assert_eq!(pass, RefreshPass { refreshed: 0, reauth_required: 1, failed: 0 });
    let row = grant_row(&app, c.grant).await;
    assert_eq!(row.status, "reauth_required");
    assert!(row.last_error.as_deref().is_some_and(|e| e.contains("invalid_grant")), "{row:?}");
    assert_eq!(app.account_json(&c.setup, &c.account).await["state"], json!("error"));
    assert_eq!(events(&app, c.tenant, "grant.reauth_required", &c.grant.to_string()).await, 1);
}

#[tokio::test]
async fn invalid_client_flags_the_token_config_for_its_admin_and_a_new_secret_clears_it() {
    let app = spawn_app().await;
    let c = connect(&app).await;
    let config_path = format!("/v1/token-configs/{}", c.setup.config_id);
    let before = grant_row(&app, c.grant).await;
    expire_in(&app, c.grant, 60).await;
    let aged = grant_row(&app, c.grant).await;
    c.setup.provider.fail_next_token_requests(
        2,
        TokenFailure::InvalidClient { description: "AADSTS7000222: The provided client secret keys are expired.".to_owned() },
    );

    let err = token(&app, &c).await.expect_err("the client is refused");
    assert!(matches!(&err, TokenAccessError::NeedsAdmin { message: m, .. } if m.contains("AADSTS7000222")), "{err:?}");
    let config = app.get(&config_path, &c.setup.admin).await;
    assert_eq!(config.body["needs_admin"], json!(true), "{}", config.text);
    assert!(
        config.body["last_error"].as_str().is_some_and(|e| e.contains("invalid_client") && e.contains("AADSTS7000222")),
        "{}",
        config.text
    );
    assert_eq!(events(&app, c.tenant, "token_config.needs_admin", &c.setup.config_id).await, 1);

    let row = grant_row(&app, c.grant).await;
    assert_eq!(row.status, "valid", "the grant is not the problem");
    assert_eq!((&row.access_token, &row.refresh_token), (&before.access_token, &before.refresh_token), "tokens unchanged");
    assert_eq!(row.expires_at, aged.expires_at);
    assert_eq!(app.account_json(&c.setup, &c.account).await["state"], json!("authorized"));

    // Refused again: still flagged, but no second event.
    assert!(matches!(token(&app, &c).await, Err(TokenAccessError::NeedsAdmin { .. })));
    assert_eq!(events(&app, c.tenant, "token_config.needs_admin", &c.setup.config_id).await, 1, "one event per incident");
    assert_eq!(grant_row(&app, c.grant).await.refresh_token, before.refresh_token);

    // The admin registers a new secret (the old one now really is refused) and patches the configuration.
    let new_secret = format!("secret-{}", Uuid::new_v4().simple());
    c.setup.provider.register_client(&c.setup.client_id, Some(&new_secret), &[&format!("{}/oauth/callback", app.address)]);
    let patched = app.patch(&config_path, &c.setup.admin, json!({"client_secret": new_secret})).await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    assert_eq!(
        (patched.body["needs_admin"].clone(), patched.body["last_error"].clone()),
        (json!(false), Value::Null),
        "{}",
        patched.text
    );
    assert!(!patched.text.contains(&new_secret));

    let fresh = token(&app, &c).await.expect("the new secret works");
    assert_eq!(c.setup.provider.introspect(&fresh).as_deref(), Some(CONSENTING_USER));
    let row = grant_row(&app, c.grant).await;
    assert_eq!((row.status.as_str(), row.refresh_failures), ("valid", 0));
    assert_eq!(app.get(&config_path, &c.setup.admin).await.body["needs_admin"], json!(false));
}

#[tokio::test]
async fn provider_outages_keep_the_grant_and_back_off_until_next_refresh_at_then_a_pass_recovers() {
    let app = spawn_app().await;
    let c = connect(&app).await;
    let provider = &c.setup.provider;
    let token_url = provider.token_url();
    let unreachable = format!("http://127.0.0.1:{}/token", dead_port());

    enum Outage {
        Inject(TokenFailure),
        Unreachable,
    }
    let cases = [
        ("HTTP 500", Outage::Inject(TokenFailure::ServerError), 0),
        ("HTTP 503", Outage::Inject(TokenFailure::ServiceUnavailable), 0),
        ("HTTP 429", Outage::Inject(TokenFailure::RateLimited { retry_after_seconds: 900 }), 900),
        ("connection refused", Outage::Unreachable, 0),
    ];
    for (name, outage, retry_after) in cases {
        expire_in(&app, c.grant, -30).await;
        let before = grant_row(&app, c.grant).await;
        assert_eq!(before.refresh_failures, 0, "{name}");
        match &outage {
            Outage::Inject(failure) => provider.fail_next_token_requests(2, failure.clone()),
            Outage::Unreachable => {
                sql(&app, &format!("UPDATE token_configs SET token_url = '{unreachable}' WHERE id = '{}'", c.setup.config_id))
                    .await
            }
        }

        let started = Utc::now();
        let err = token(&app, &c).await.expect_err("the provider is down");
        let TokenAccessError::Unavailable { retry_after: told, .. } = &err else { panic!("{name}: {err:?}") };
        if retry_after > 0 {
            assert_eq!(*told, Some(Duration::from_secs(retry_after)), "{name}: Retry-After is passed on");
        }
        let row = grant_row(&app, c.grant).await;
        assert_eq!(row.status, "valid", "{name}");
        assert_eq!(
            (&row.access_token, &row.refresh_token, row.expires_at),
            (&before.access_token, &before.refresh_token, before.expires_at),
            "{name}: tokens unchanged"
        );
        assert_eq!(row.refresh_failures, 1, "{name}");
        assert!(row.last_error.is_some(), "{name}");
        let next = row.next_refresh_at.unwrap_or_else(|| panic!("{name}: next_refresh_at is set"));
        assert!(next > started + chrono::Duration::seconds(20), "{name}: backs off ({next})");
        if retry_after > 0 {
            assert!(
                next >= started + chrono::Duration::seconds(retry_after as i64),
                "{name}: at least Retry-After ahead ({next})"
            );
        }
        // The background pass leaves it alone until then.
        let requests = provider.token_requests("refresh_token");
        assert_eq!(grants::refresh_due(&app.ctx, 100).await.expect("pass"), RefreshPass::default(), "{name}");
        assert_eq!(provider.token_requests("refresh_token"), requests, "{name}: not attempted during backoff");

        // Backoff over, provider still down: one more failure, counted.
        sql(&app, &format!("UPDATE grants SET next_refresh_at = now() - interval '1 second' WHERE id = '{}'", c.grant)).await;
        assert_eq!(
            grants::refresh_due(&app.ctx, 100).await.expect("pass"),
            RefreshPass { refreshed: 0, reauth_required: 0, failed: 1 },
            "{name}"
        );
        let row = grant_row(&app, c.grant).await;
        assert_eq!((row.status.as_str(), row.refresh_failures), ("valid", 2), "{name}");
        assert_eq!(row.refresh_token, before.refresh_token, "{name}");

        // Provider healthy again and the backoff over: the next pass refreshes and resets the count.
        if let Outage::Unreachable = outage {
            sql(&app, &format!("UPDATE token_configs SET token_url = '{token_url}' WHERE id = '{}'", c.setup.config_id)).await;
        }
        assert_eq!(provider.pending_token_failures(), 0, "{name}");
        assert_eq!(grants::refresh_due(&app.ctx, 100).await.expect("pass"), RefreshPass::default(), "{name}: still backing off");
        sql(&app, &format!("UPDATE grants SET next_refresh_at = now() - interval '1 second' WHERE id = '{}'", c.grant)).await;
        assert_eq!(
            grants::refresh_due(&app.ctx, 100).await.expect("pass"),
            RefreshPass { refreshed: 1, reauth_required: 0, failed: 0 },
            "{name}"
        );
        let row = grant_row(&app, c.grant).await;
        assert_eq!(
            (row.status.as_str(), row.refresh_failures, row.next_refresh_at, row.last_error.as_deref()),
            ("valid", 0, None, None),
            "{name}"
        );
        assert_ne!(row.access_token, before.access_token, "{name}");
        assert_ne!(row.refresh_token, before.refresh_token, "{name}: rotated");
        let current = token(&app, &c).await.expect("a token");
        assert_eq!(provider.introspect(&current).as_deref(), Some(CONSENTING_USER), "{name}");
    }
    assert_eq!(app.account_json(&c.setup, &c.account).await["state"], json!("authorized"), "outages never touch the accounts");
}

#[tokio::test]
async fn a_slow_provider_that_answers_within_the_timeout_is_an_ordinary_refresh() {
    let app = spawn_app().await;
    let c = connect(&app).await;
    expire_in(&app, c.grant, 60).await;
    c.setup.provider.fail_next_token_requests(1, TokenFailure::Slow(Duration::from_millis(1500)));
    let started = std::time::Instant::now();
    let refreshed = token(&app, &c).await.expect("a slow answer is still an answer");
    assert!(started.elapsed() >= Duration::from_millis(1400), "the provider was slow");
    assert_eq!(c.setup.provider.introspect(&refreshed).as_deref(), Some(CONSENTING_USER));
    let row = grant_row(&app, c.grant).await;
    assert_eq!((row.status.as_str(), row.refresh_failures, row.next_refresh_at), ("valid", 0, None));
}

// ---- the background pass ---------------------------------------------------------------------

#[tokio::test]
async fn refresh_due_refreshes_only_grants_expiring_within_the_margin_and_counts_outcomes() {
    let app = spawn_app().await;
    let setup = app.oauth_setup().await;
    let provider_ref = &setup.provider;
    // Seven mailboxes at one configuration.
    let mut grants_by_login = Vec::new();
    for name in ["fresh", "soon", "expired", "due1", "due2", "revoked", "backoff"] {
        let login = format!("{name}@example.com");
        provider_ref.set_consenting_user(&login);
        let account = app.oauth_account(&setup, "imap", &login).await;
        grants_by_login.push((name, consent_grant(&app, &setup, &account).await));
    }
    let grant = |name: &str| grants_by_login.iter().find(|(n, _)| *n == name).map(|(_, g)| *g).expect("grant");
    // Another tenant's grant, due, whose provider cannot be reached.
    let other = connect(&app).await;
    sql(
        &app,
        &format!(
            "UPDATE token_configs SET token_url = 'http://127.0.0.1:{}/token' WHERE id = '{}'",
            dead_port(),
            other.setup.config_id
        ),
    )
    .await;

    expire_in(&app, grant("fresh"), 3600).await;
    expire_in(&app, grant("soon"), 120).await;
    expire_in(&app, grant("expired"), -600).await;
    expire_in(&app, grant("due1"), 10).await;
    expire_in(&app, grant("due2"), 200).await;
    expire_in(&app, grant("revoked"), 30).await;
    expire_in(&app, grant("backoff"), 30).await;
    expire_in(&app, other.grant, 30).await;
    provider_ref.revoke_user("revoked@example.com");
    sql(&app, &format!("UPDATE grants SET next_refresh_at = now() + interval '10 minutes' WHERE id = '{}'", grant("backoff")))
        .await;
    let rows_before: Vec<(String, GrantRow)> = {
        let mut rows = Vec::new();
        for (name, id) in &grants_by_login {
            rows.push((name.to_string(), grant_row(&app, *id).await));
        }
        rows
    };

    let pass = grants::refresh_due(&app.ctx, 100).await.expect("the pass runs");
    assert_eq!(pass, RefreshPass { refreshed: 4, reauth_required: 1, failed: 1 });
    assert_eq!(provider_ref.token_requests("refresh_token"), 5, "soon, expired, due1, due2 and revoked were attempted");
    for (name, before) in rows_before {
        let after = grant_row(&app, grant(&name)).await;
        match name.as_str() {
            "fresh" | "backoff" => assert_eq!(after, before, "{name} is left alone"),
            "revoked" => assert_eq!(after.status, "reauth_required"),
            _ => {
                assert_ne!(after.access_token, before.access_token, "{name} was refreshed");
                assert!(after.expires_at.is_some_and(|e| e > Utc::now() + chrono::Duration::minutes(50)), "{name}");
            }
        }
    }
    let other_row = grant_row(&app, other.grant).await;
    assert_eq!((other_row.status.as_str(), other_row.refresh_failures), ("valid", 1));

    // Nothing is due any more (the failed one backs off).
    assert_eq!(grants::refresh_due(&app.ctx, 100).await.expect("pass"), RefreshPass::default());
    assert_eq!(provider_ref.token_requests("refresh_token"), 5);

    // The limit caps one pass; the next pass takes the rest.
    for (name, id) in &grants_by_login {
        if !matches!(*name, "revoked" | "backoff") {
            expire_in(&app, *id, 60).await;
        }
    }
    assert_eq!(grants::refresh_due(&app.ctx, 2).await.expect("pass").refreshed, 2);
    assert_eq!(grants::refresh_due(&app.ctx, 100).await.expect("pass").refreshed, 3);
    assert_eq!(grants::refresh_due(&app.ctx, 100).await.expect("pass"), RefreshPass::default());
}

/// The ids a claim returned, in claim order.
fn claimed_ids(batches: &[Vec<postbridge_core::store::ids::GrantId>]) -> Vec<Uuid> {
    batches.iter().flatten().map(|&id| Uuid::from(id)).collect()
}

#[tokio::test]
async fn a_round_of_refresh_claims_goes_on_along_the_due_index_and_each_due_grant_is_claimed_once() {
    let app = spawn_app().await;
    let c = connect(&app).await;
    // 24 more grants of the same configuration (the claim reads no token): 20 due at one moment, as a storm is,
    // 2 due before it, 2 not due yet.
    sql(
        &app,
        &format!(
            "INSERT INTO grants (id, tenant_id, token_config_id, subject, access_token, refresh_token, expires_at, \
                                 refresh_at, scopes, status) \
             SELECT gen_random_uuid(), tenant_id, token_config_id, 'storm' || i || '@example.com', access_token, \
                    refresh_token, now() + interval '1 minute', \
                    CASE WHEN i <= 20 THEN now() - interval '1 second' \
                         WHEN i <= 22 THEN now() - interval '1 minute' ELSE now() + interval '10 minutes' END, \
                    scopes, status \
             FROM grants, generate_series(1, 24) AS i WHERE id = '{}'",
            c.grant
        ),
    )
    .await;
    let due_in_order: Vec<Uuid> = {
        let rows = app
            .ctx
            .db
            .query_all_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT id FROM grants WHERE refresh_at <= now() ORDER BY refresh_at, id".to_owned(),
            ))
            .await
            .expect("due grants");
        rows.iter().map(|row| row.try_get::<Uuid>("", "id").expect("id")).collect()
    };
    assert_eq!(due_in_order.len(), 22, "the consented grant is not due, 22 of the others are");

    // One grant is held by an on-demand refresh (its row locked): the round passes it by.
    let held = due_in_order[5];
    let blocker = app.ctx.db.begin().await.expect("begin");
    blocker.execute_unprepared(&format!("SELECT 1 FROM grants WHERE id = '{held}' FOR UPDATE")).await.expect("lock one grant");

    // A round of claims of 5: each goes on from where the last ended, in due order, and ends with an empty claim.
    let mut round: Vec<Uuid> = Vec::new();
    let mut after = None;
    let mut claims = 0;
    loop {
        let (batches, last) = scheduler::claim_due_refreshes(&app.ctx, 5, after).await.expect("claim");
        claims += 1;
        let ids = claimed_ids(&batches);
        assert!(ids.len() <= 5, "a claim takes at most its limit: {}", ids.len());
        if ids.is_empty() {
            assert_eq!(last, after, "an empty claim leaves the round's key where it was");
            break;
        }
        assert!(last > after, "the key moves on with every claim");
        round.extend(ids);
        after = last;
        assert!(claims < 10, "the round ends");
    }
    let expected: Vec<Uuid> = due_in_order.iter().copied().filter(|id| *id != held).collect();
    assert_eq!(round.len(), 21, "every due grant but the held one, once");
    let mut in_due_order = round.clone();
    in_due_order.sort_by_key(|id| expected.iter().position(|e| e == id));
    assert_eq!(in_due_order, expected, "each due grant claimed once");
    assert_eq!(claims, 6, "21 grants in claims of 5, then one that finds none");

    // All claimed: a new round finds nothing but the held grant once it is let go (its mark never came).
    assert!(claimed_ids(&scheduler::claim_due_refreshes(&app.ctx, 5, None).await.expect("claim").0).is_empty());
    blocker.rollback().await.expect("let go");
    let (batches, _) = scheduler::claim_due_refreshes(&app.ctx, 5, None).await.expect("claim");
    assert_eq!(claimed_ids(&batches), vec![held], "the next round takes the grant the last one passed by");

    // The next grant to fall due is the soonest of those not due yet (the consented grant's, or the 10-minute ones).
    let next = scheduler::next_refresh_in(&app.ctx).await.expect("next due").expect("some grant falls due");
    let soonest =
        count(&app, "SELECT EXTRACT(EPOCH FROM min(refresh_at) - now())::bigint AS n FROM grants WHERE refresh_at > now()").await;
    assert!((next.as_secs() as i64 - soonest).abs() <= 1, "next due in {next:?}, the soonest in {soonest} s");
}

/// Seconds between the grant's `refresh_at` and `expires_at`.
async fn refresh_lead_seconds(app: &TestApp, grant: Uuid) -> i64 {
    count(app, &format!("SELECT EXTRACT(EPOCH FROM expires_at - refresh_at)::bigint AS n FROM grants WHERE id = '{grant}'")).await
}

#[tokio::test]
async fn a_five_minute_token_is_not_refreshed_on_every_pass_but_once_a_third_of_its_lifetime_is_left() {
    let app = spawn_app().await;
    let setup = app.oauth_setup().await;
    setup.provider.set_access_token_ttl(300);
    let c = connect_with(&app, setup).await;
    let provider = &c.setup.provider;
    let lead = refresh_lead_seconds(&app, c.grant).await;
    assert!((99..=101).contains(&lead), "a 5-minute token is due with a third (100 s) left, not 5 minutes: {lead}");
    let stored = grant_row(&app, c.grant).await;

    // Consecutive passes (the worker's come every 30 seconds): every reader of "due" agrees nothing is.
    for pass in 0..3 {
        assert_eq!(grants::refresh_due(&app.ctx, 100).await.expect("pass"), RefreshPass::default(), "pass {pass}");
        assert!(scheduler::claim_due_refreshes(&app.ctx, 100, None).await.expect("claim").0.is_empty(), "pass {pass}");
        assert_eq!(
            grants::refresh_grants(&app.ctx, &[c.grant.into()]).await.expect("job"),
            RefreshPass::default(),
            "pass {pass}"
        );
        let backlog = ops_metrics::backlog(&app.ctx).await.expect("backlog");
        assert_eq!(backlog.iter().find(|b| b.queue == "refresh").map(|b| b.due), Some(0), "pass {pass}");
        token(&app, &c).await.expect("the stored token");
    }
    assert_eq!(provider.token_requests("refresh_token"), 0, "a 5-minute token is not refreshed on every pass");
    assert_eq!(grant_row(&app, c.grant).await, stored);

    // 3m21s later less than a third of its lifetime is left: now it is due, for every reader, and refreshed once.
    sql(
        &app,
        &format!(
            "UPDATE grants SET expires_at = expires_at - interval '201 seconds', refresh_at = refresh_at - interval '201 seconds' \
             WHERE id = '{}'",
            c.grant
        ),
    )
    .await;
    let backlog = ops_metrics::backlog(&app.ctx).await.expect("backlog");
    assert_eq!(backlog.iter().find(|b| b.queue == "refresh").map(|b| b.due), Some(1));
    assert_eq!(scheduler::claim_due_refreshes(&app.ctx, 100, None).await.expect("claim").0, vec![vec![c.grant]]);
    assert_eq!(
        grants::refresh_grants(&app.ctx, &[c.grant.into()]).await.expect("job"),
        RefreshPass { refreshed: 1, ..Default::default() }
    );
    assert_eq!(provider.token_requests("refresh_token"), 1);
    assert_eq!(grants::refresh_due(&app.ctx, 100).await.expect("pass"), RefreshPass::default(), "the new token is fresh");
    assert_eq!(provider.token_requests("refresh_token"), 1);
    let lead = refresh_lead_seconds(&app, c.grant).await;
    assert!((99..=101).contains(&lead), "the refreshed token's due time follows its lifetime again: {lead}");
}

#[test]
fn the_refresh_margin_is_five_minutes_or_a_third_of_the_lifetime_whichever_is_less() {
    let now = Utc::now();
    let at = |lifetime_secs: i64| {
        let expires = now + chrono::Duration::seconds(lifetime_secs);
        (expires - grants::refresh_at_for(Some(expires), now).expect("a due time")).num_seconds()
    };
    assert_eq!(at(3600), 300);
    assert_eq!(at(900), 300);
    assert_eq!(at(300), 100);
    assert_eq!(at(60), 20);
    assert_eq!(at(0), 0);
    assert_eq!(at(-60), 0, "an expired token is due at once");
    assert_eq!(grants::refresh_at_for(None, now), None, "a token without expiry is never refreshed ahead");
}

#[tokio::test]
async fn a_failed_commit_after_a_rotating_refresh_is_retried_so_the_new_refresh_token_is_kept() {
    let app = spawn_app().await;
    let c = connect(&app).await;
    let provider = &c.setup.provider;
    let rt0 = decrypt(
        &app.ctx,
        c.tenant,
        c.grant,
        secrets::GRANT_REFRESH_TOKEN,
        &grant_row(&app, c.grant).await.refresh_token.expect("rt"),
    );
    // The first COMMIT that stores a new refresh token fails (a deferred constraint trigger raises at COMMIT; the
    // sequence counts outside the failing transaction), later ones pass. Only the tables' owner may add a trigger.
    app.owner_db()
        .await
        .execute_unprepared(
            "CREATE SEQUENCE test_grant_commits; \
         CREATE FUNCTION test_fail_first_grant_commit() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF nextval('test_grant_commits') = 1 THEN RAISE EXCEPTION 'injected: COMMIT fails'; END IF; RETURN NULL; END $$; \
         CREATE CONSTRAINT TRIGGER test_fail_first_grant_commit AFTER UPDATE OF refresh_token ON grants \
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_fail_first_grant_commit();",
        )
        .await
        .expect("the fault-injecting trigger is installed");
    expire_in(&app, c.grant, 60).await;

    let access = token(&app, &c).await.expect("the refresh succeeds although its first COMMIT failed");
    assert_eq!(provider.token_requests("refresh_token"), 1, "the provider was asked once; the tokens were stored again");
    assert_eq!(count(&app, "SELECT last_value AS n FROM test_grant_commits").await, 2, "one failed COMMIT, one that held");
    let row = grant_row(&app, c.grant).await;
    assert_eq!((row.status.as_str(), row.refresh_failures), ("valid", 0));
    assert_eq!(
        decrypt(&app.ctx, c.tenant, c.grant, secrets::GRANT_ACCESS_TOKEN, row.access_token.as_deref().expect("at")),
        access
    );
    let rt1 = decrypt(&app.ctx, c.tenant, c.grant, secrets::GRANT_REFRESH_TOKEN, row.refresh_token.as_deref().expect("rt"));
    assert_ne!(rt1, rt0, "the rotated refresh token is stored");
    let (status, _) = present_refresh_token(&app, &c.setup, &rt0).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the provider rotated the old one away");
    let (status, body) = present_refresh_token(&app, &c.setup, &rt1).await;
    assert_eq!(status, StatusCode::OK, "the stored refresh token is the live one: {body}");
}

#[tokio::test]
async fn a_grant_whose_refresh_token_does_not_decrypt_is_recorded_and_skipped_and_the_pass_refreshes_the_others() {
    let app = spawn_app().await;
    let setup = app.oauth_setup().await;
    let mut grants_by_login = Vec::new();
    for name in ["healthy1", "broken", "healthy2"] {
        let login = format!("{name}@example.com");
        setup.provider.set_consenting_user(&login);
        let account = app.oauth_account(&setup, "imap", &login).await;
        grants_by_login.push((name, account.clone(), consent_grant(&app, &setup, &account).await));
    }
    let (_, broken_account, broken) = grants_by_login[1].clone();
    let (_, _, healthy1) = grants_by_login[0].clone();
    // A ciphertext bound to another row (as a bad copy or restore would leave it) fails authentication.
    sql(
        &app,
        &format!(
            "UPDATE grants SET refresh_token = (SELECT refresh_token FROM grants WHERE id = '{healthy1}') WHERE id = '{broken}'"
        ),
    )
    .await;
    for (_, _, grant) in &grants_by_login {
        expire_in(&app, *grant, 60).await;
    }
    let broken_before = grant_row(&app, broken).await;

    let pass = grants::refresh_due(&app.ctx, 100).await.expect("the pass goes on past the broken grant");
    assert_eq!(pass, RefreshPass { refreshed: 2, reauth_required: 0, failed: 1 });
    assert_eq!(setup.provider.token_requests("refresh_token"), 2);
    for (name, _, grant) in &grants_by_login {
        let row = grant_row(&app, *grant).await;
        if *grant == broken {
            assert_eq!(row.status, "valid", "a decryption error is not the grant's fault");
            assert_eq!(row.access_token, broken_before.access_token, "its tokens are kept");
            assert_eq!(row.refresh_failures, 1);
            assert_eq!(row.last_error.as_deref(), Some(grants::INTERNAL_REFRESH_ERROR));
            assert!(row.next_refresh_at.is_some_and(|at| at > Utc::now()), "it backs off");
        } else {
            assert!(row.expires_at.is_some_and(|e| e > Utc::now() + chrono::Duration::minutes(50)), "{name} refreshed");
        }
    }
    assert_eq!(app.account_json(&setup, &broken_account).await["state"], json!("authorized"), "its account is not in error");

    // Backing off, the next pass leaves it alone; once due again, the worker's job records it as failed, not an error.
    assert_eq!(grants::refresh_due(&app.ctx, 100).await.expect("pass"), RefreshPass::default());
    sql(&app, &format!("UPDATE grants SET next_refresh_at = NULL WHERE id = '{broken}'")).await;
    assert_eq!(
        grants::refresh_grants(&app.ctx, &[broken.into()]).await.expect("the job does not fail"),
        RefreshPass { failed: 1, ..Default::default() }
    );
    assert_eq!(grant_row(&app, broken).await.refresh_failures, 2);
}

// ---- app flow --------------------------------------------------------------------------------

#[tokio::test]
async fn app_flow_authorize_gets_a_client_credentials_grant_whose_token_is_cached_until_the_margin() {
    let app = spawn_app().await;
    let setup = app.oauth_setup_with_flow("app").await;
    let provider = &setup.provider;
    let account = app.oauth_account(&setup, "smtp", "sender@example.com").await;

    let reply = app.authorize(&setup, &account, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["status"], json!("authorized"), "{}", reply.text);
    assert!(reply.body["authorization_url"].is_null(), "no browser involved: {}", reply.text);
    assert_eq!(reply.body["account"]["state"], json!("authorized"), "{}", reply.text);
    assert_eq!(provider.token_requests("client_credentials"), 1);

    let json = app.account_json(&setup, &account).await;
    assert_eq!(json["state"], json!("authorized"));
    let grant_id = json["grant_id"].as_str().expect("grant id").to_owned();
    let grant = app.get(&format!("/v1/grants/{grant_id}"), &setup.admin).await;
    assert_eq!(grant.body["subject"], json!("app"), "{}", grant.text);
    assert_eq!(
        (grant.body["status"].clone(), grant.body["has_refresh_token"].clone()),
        (json!("valid"), json!(false)),
        "{}",
        grant.text
    );
    let (tenant, grant) = (Uuid::parse_str(&setup.tenant).expect("tenant"), Uuid::parse_str(&grant_id).expect("grant"));
    assert_eq!(app.stored_value("grants", "refresh_token", &grant_id).await, None);

    // Fresh: the cached token, no new client-credentials request.
    let stored = grant_row(&app, grant).await;
    let cached = grants::access_token(&app.ctx, tenant.into(), grant.into()).await.expect("cached app token");
    assert_eq!(
        cached,
        decrypt(&app.ctx, tenant, grant, secrets::GRANT_ACCESS_TOKEN, stored.access_token.as_deref().expect("access"))
    );
    assert_eq!(provider.introspect(&cached), Some(setup.client_id.clone()), "an app token is the client's");
    assert_eq!(grants::access_token(&app.ctx, tenant.into(), grant.into()).await.expect("cached"), cached);
    assert_eq!(provider.token_requests("client_credentials"), 1);
    assert_eq!(provider.token_requests("refresh_token"), 0);

    // Within the margin: a new client-credentials token (app grants are fetched on demand, not by the pass).
    expire_in(&app, grant, 60).await;
    assert_eq!(grants::refresh_due(&app.ctx, 100).await.expect("pass"), RefreshPass::default());
    let renewed = grants::access_token(&app.ctx, tenant.into(), grant.into()).await.expect("a new app token");
    assert_ne!(renewed, cached);
    assert_eq!(provider.token_requests("client_credentials"), 2);
    assert_eq!(provider.token_requests("refresh_token"), 0);
    assert_eq!(provider.introspect(&renewed), Some(setup.client_id.clone()));
    assert_eq!(grants::access_token(&app.ctx, tenant.into(), grant.into()).await.expect("cached again"), renewed);
    assert_eq!(provider.token_requests("client_credentials"), 2);
    let row = grant_row(&app, grant).await;
    assert_eq!((row.status.as_str(), row.refresh_token), ("valid", None));
}

#[tokio::test]
async fn app_flow_authorize_with_a_refused_client_secret_answers_409_and_stores_nothing() {
    let app = spawn_app().await;
    let setup = app.oauth_setup_with_flow("app").await;
    let account = app.oauth_account(&setup, "smtp", "sender@example.com").await;
    setup.provider.fail_next_token_requests(
        1,
        TokenFailure::InvalidClient { description: "AADSTS7000215: Invalid client secret provided.".to_owned() },
    );

    let reply = app.authorize(&setup, &account, None).await;
    assert_error(&reply, StatusCode::CONFLICT, "provider_rejected_client");
    assert!(reply.text.contains("AADSTS7000215"), "the provider's message is shown: {}", reply.text);
    assert!(!reply.text.contains(&setup.client_secret));
    assert_eq!(setup.provider.token_requests("client_credentials"), 1);
    let json = app.account_json(&setup, &account).await;
    assert_eq!((json["state"].clone(), json["grant_id"].clone()), (json!("draft"), Value::Null), "{json}");
    assert_eq!(count(&app, &format!("SELECT count(*) AS n FROM grants WHERE tenant_id = '{}'", setup.tenant)).await, 0);
    assert_eq!(count(&app, &format!("SELECT count(*) AS n FROM events WHERE tenant_id = '{}'", setup.tenant)).await, 0);

    // With the provider accepting the secret, the same request authorizes.
    let reply = app.authorize(&setup, &account, None).await;
    assert_eq!((reply.status, reply.body["status"].clone()), (StatusCode::OK, json!("authorized")), "{}", reply.text);
}

// ---- client secret expiry --------------------------------------------------------------------

#[tokio::test]
async fn expiring_token_configs_lists_only_secrets_expiring_within_the_window_soonest_first() {
    let app = spawn_app().await;
    let (_tenant, admin) = app.tenant_with_admin().await;
    let create = |name: &str, expires: Option<String>| {
        let mut body = TestApp::microsoft_config();
        body["name"] = json!(name);
        if let Some(date) = expires {
            body["client_secret_expires_at"] = json!(date);
        }
        body
    };
    let mut ids = std::collections::HashMap::new();
    for (name, days) in
        [("in-20", Some(20)), ("in-5", Some(5)), ("in-60", Some(60)), ("today", Some(0)), ("expired", Some(-3)), ("never", None)]
    {
        let reply = app.post("/v1/token-configs", &admin, create(name, days.map(today_plus))).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        ids.insert(name, reply.id());
    }
    let names = |body: &Value| -> Vec<String> {
        body.as_array()
            .unwrap_or_else(|| panic!("a list: {body}"))
            .iter()
            .map(|c| c["name"].as_str().expect("name").to_owned())
            .collect()
    };

    let within = |days: i64| expiring_within(&app, &admin, days);
    let reply = within(30).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(names(&reply.body), ["expired", "today", "in-5", "in-20"]);
    assert_eq!(reply.body[0]["client_secret_expires_at"], json!(today_plus(-3)), "an already expired secret is the most urgent");
    assert_eq!(names(&within(5).await.body), ["expired", "today", "in-5"]);
    assert_eq!(names(&within(4).await.body), ["expired", "today"]);
    assert_eq!(names(&within(60).await.body), ["expired", "today", "in-5", "in-20", "in-60"]);
    assert_eq!(
        names(&app.get("/v1/token-configs/expiring", &admin).await.body),
        ["expired", "today", "in-5", "in-20"],
        "30 days by default"
    );
    assert!(!within(365).await.text.contains("never"));
    let too_far = within(400).await;
    assert_eq!(
        (too_far.status, too_far.code(), too_far.body["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_window", Some("within_days")),
        "{}",
        too_far.text
    );
    assert_eq!(within(-1).await.status, StatusCode::UNPROCESSABLE_ENTITY);

    let gql = app
        .graphql(
            Some(&admin),
            "query($d: Int) { expiringTokenConfigs(withinDays: $d) { id name clientSecretExpiresAt } }",
            json!({"d": 10}),
        )
        .await;
    let list = gql["data"]["expiringTokenConfigs"].as_array().unwrap_or_else(|| panic!("{gql}"));
    let gql_names: Vec<&str> = list.iter().map(|c| c["name"].as_str().expect("name")).collect();
    assert_eq!(gql_names, ["expired", "today", "in-5"]);
    assert_eq!(list[2]["id"], json!(ids["in-5"]));
    let gql_error = app.graphql(Some(&admin), "{ expiringTokenConfigs(withinDays: 400) { id } }", json!({})).await;
    assert_eq!(postbridge_tests::graphql_error_code(&gql_error), "invalid_window", "{gql_error}");

    // Another tenant sees only its own.
    let (_other, other_admin) = app.tenant_with_admin().await;
    let theirs = app.post("/v1/token-configs", &other_admin, create("theirs", Some(today_plus(3)))).await;
    assert_eq!(theirs.status, StatusCode::CREATED, "{}", theirs.text);
    assert_eq!(names(&app.get("/v1/token-configs/expiring?within_days=365", &other_admin).await.body), ["theirs"]);
    assert_eq!(names(&within(365).await.body), ["expired", "today", "in-5", "in-20", "in-60"]);
    let gql = app.graphql(Some(&other_admin), "{ expiringTokenConfigs(withinDays: 365) { name } }", json!({})).await;
    assert_eq!(gql["data"]["expiringTokenConfigs"], json!([{"name": "theirs"}]), "{gql}");
}

#[tokio::test]
async fn scan_secret_expiry_records_one_event_per_window_and_a_new_date_starts_over() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let tenant = Uuid::parse_str(&tenant).expect("tenant");
    let mut body = TestApp::microsoft_config();
    body["client_secret_expires_at"] = json!(today_plus(20));
    let config = app.post("/v1/token-configs", &admin, body).await;
    assert_eq!(config.status, StatusCode::CREATED, "{}", config.text);
    let id = config.id();
    let mut quiet = TestApp::microsoft_config();
    quiet["client_secret_expires_at"] = json!(today_plus(90));
    assert_eq!(app.post("/v1/token-configs", &admin, quiet).await.status, StatusCode::CREATED);
    let warnings = || events(&app, tenant, "token_config.secret_expiring", &id);
    let set_date = |days: i64| set_secret_expiry(&app, &id, days);
    let scan = || token_configs::scan_secret_expiry(&app.ctx);

    // 20 days left: the 30-day window, once.
    assert_eq!(scan().await.expect("scan"), 1);
    assert_eq!(warnings().await, 1);
    assert_eq!(scan().await.expect("scan"), 0, "the same window is not announced twice");
    set_date(15).await;
    assert_eq!(scan().await.expect("scan"), 0, "still the 30-day window");
    assert_eq!(warnings().await, 1);
    let data =
        count(&app, &format!("SELECT count(*) AS n FROM events WHERE resource_id = '{id}' AND data->>'window_days' = '30'"))
            .await;
    assert_eq!(data, 1, "the event names its window");

    // Closer: the 14-day window, then the 1-day window, each once.
    set_date(10).await;
    assert_eq!(scan().await.expect("scan"), 1);
    assert_eq!(scan().await.expect("scan"), 0);
    assert_eq!(warnings().await, 2);
    set_date(1).await;
    assert_eq!(scan().await.expect("scan"), 1);
    assert_eq!(scan().await.expect("scan"), 0);
    assert_eq!(warnings().await, 3);

    // A new secret date far away resets the windows: nothing now, the 30-day window again once it comes near.
    let patched =
        app.patch(&format!("/v1/token-configs/{id}"), &admin, json!({"client_secret_expires_at": today_plus(200)})).await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    assert_eq!(scan().await.expect("scan"), 0);
    set_date(25).await;
    assert_eq!(scan().await.expect("scan"), 1, "a new date starts over");
    assert_eq!(scan().await.expect("scan"), 0);
    assert_eq!(warnings().await, 4);
    // Clearing the date stops the warnings.
    let cleared = app.patch(&format!("/v1/token-configs/{id}"), &admin, json!({"client_secret_expires_at": null})).await;
    assert_eq!(cleared.status, StatusCode::OK, "{}", cleared.text);
    assert_eq!(scan().await.expect("scan"), 0);
    assert_eq!(warnings().await, 4);
}

// ---- key rotation ----------------------------------------------------------------------------

#[tokio::test]
async fn rekeying_reencrypts_grant_tokens_and_access_token_works_with_only_the_new_key() {
    let mut env = TestEnv::new();
    let old_key = random_key_b64();
    env.set("MASTER_KEYS", format!("old:{old_key}"));
    let app = spawn_app_with(env).await;
    let c = connect(&app).await;
    let before = grant_row(&app, c.grant).await;
    let (access_before, refresh_before) =
        (before.access_token.clone().expect("access"), before.refresh_token.clone().expect("refresh"));
    assert!(access_before.starts_with("old:") && refresh_before.starts_with("old:"));
    let plain_access = decrypt(&app.ctx, c.tenant, c.grant, secrets::GRANT_ACCESS_TOKEN, &access_before);
    let plain_refresh = decrypt(&app.ctx, c.tenant, c.grant, secrets::GRANT_REFRESH_TOKEN, &refresh_before);

    let new_key = random_key_b64();
    let rotated = app.context_with_master_keys(&format!("old:{old_key},new:{new_key}"), Some("new")).await;
    let report = rekey::reencrypt_all(&rotated).await.expect("rotation runs");
    // Client secret, access token, refresh token and the (consumed) PKCE verifier.
    assert_eq!(report, rekey::RekeyReport { reencrypted: 4, failed: 0 });

    let after = grant_row(&app, c.grant).await;
    let (access_after, refresh_after) =
        (after.access_token.clone().expect("access"), after.refresh_token.clone().expect("refresh"));
    assert!(access_after.starts_with("new:") && refresh_after.starts_with("new:"), "{after:?}");

    let new_only = app.context_with_master_keys(&format!("new:{new_key}"), None).await;
    assert_eq!(decrypt(&new_only, c.tenant, c.grant, secrets::GRANT_REFRESH_TOKEN, &refresh_after), plain_refresh);

    // The fresh token, then a refresh (client secret and refresh token decrypted with the new key alone).
    assert_eq!(grants::access_token(&new_only, c.tenant.into(), c.grant.into()).await.expect("fresh token"), plain_access);
    expire_in(&app, c.grant, 60).await;
    let refreshed =
        grants::access_token(&new_only, c.tenant.into(), c.grant.into()).await.expect("refresh with the new key only");
    assert_ne!(refreshed, plain_access);
    assert_eq!(c.setup.provider.introspect(&refreshed).as_deref(), Some(CONSENTING_USER));
    let stored = grant_row(&app, c.grant).await;
    assert!(stored.access_token.as_deref().is_some_and(|t| t.starts_with("new:")));
    assert!(stored.refresh_token.as_deref().is_some_and(|t| t.starts_with("new:")));
    assert_eq!(
        decrypt(&new_only, c.tenant, c.grant, secrets::GRANT_ACCESS_TOKEN, stored.access_token.as_deref().expect("access")),
        refreshed
    );
}

#[tokio::test]
async fn a_token_endpoint_that_hangs_does_not_hold_up_the_worker_dispatching_other_refreshes() {
    let app = spawn_app().await;
    let slow = connect(&app).await;
    let other = connect(&app).await;
    expire_in(&app, slow.grant, 60).await;
    expire_in(&app, other.grant, 3600).await;
    slow.setup.provider.fail_next_token_requests(1, TokenFailure::Slow(Duration::from_secs(10)));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(postbridge_worker::run(app.ctx.clone(), stop_rx));

    // The worker's refresh job is now waiting on the slow provider.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while slow.setup.provider.pending_token_failures() > 0 {
        assert!(std::time::Instant::now() < deadline, "the worker never asked the slow provider");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Another grant falls due meanwhile: it is dispatched and refreshed at once, not after the slow one.
    let before = grant_row(&app, other.grant).await;
    expire_in(&app, other.grant, 60).await;
    let fell_due = std::time::Instant::now();
    loop {
        let row = grant_row(&app, other.grant).await;
        if row.access_token != before.access_token {
            assert!(row.expires_at.is_some_and(|at| at > Utc::now() + chrono::Duration::minutes(30)), "{row:?}");
            break;
        }
        assert!(fell_due.elapsed() < Duration::from_secs(5), "the second refresh waited behind the slow one");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let slow_row = grant_row(&app, slow.grant).await;
    assert!(
        slow_row.expires_at.is_some_and(|at| at < Utc::now() + chrono::Duration::minutes(2)),
        "the slow one is still waiting"
    );
    // The slow answer still lands, once.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while grant_row(&app, slow.grant).await.expires_at.is_some_and(|at| at < Utc::now() + chrono::Duration::minutes(30)) {
        assert!(std::time::Instant::now() < deadline, "the slow refresh never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(true);
    worker.await.expect("worker task").expect("worker stops cleanly");
    assert_eq!(grant_row(&app, slow.grant).await.status, "valid");
}

// ---- providers are untrusted input -------------------------------------------------------------

#[tokio::test]
async fn a_refresh_whose_caller_goes_away_lets_the_grant_go_for_the_next_caller() {
    let app = spawn_app().await;
    let c = connect(&app).await;
    expire_in(&app, c.grant, -10).await;
    c.setup.provider.set_token_latency(Duration::from_secs(5));
    let (ctx, tenant, grant) = (app.ctx.clone(), c.tenant, c.grant);
    let cancelled = tokio::spawn(async move { grants::access_token(&ctx, tenant.into(), grant.into()).await });
    for _ in 0..200 {
        if c.setup.provider.token_requests("refresh_token") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let leased = format!("SELECT (refreshing_until IS NOT NULL)::text FROM grants WHERE id = '{}'", c.grant);
    assert_eq!(app.sql_text(&leased).await.as_deref(), Some("true"), "the refresh holds the grant");
    // The request (or job) that asked is cancelled while the provider takes its time.
    cancelled.abort();
    let _ = cancelled.await;
    for _ in 0..200 {
        if app.sql_text(&leased).await.as_deref() == Some("false") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(app.sql_text(&leased).await.as_deref(), Some("false"), "the lease went with its caller");
    // The next caller refreshes at once instead of waiting out the lease.
    c.setup.provider.set_token_latency(Duration::ZERO);
    let token = token(&app, &c).await.expect("refreshed");
    assert_eq!(c.setup.provider.introspect(&token).as_deref(), Some(CONSENTING_USER));
}

#[tokio::test]
async fn refreshes_waiting_on_a_slow_provider_hold_no_database_connection() {
    // Two connections for the whole process: refreshes that held one each while the provider took its time used to
    // leave none for the API.
    let mut env = TestEnv::new();
    env.set("DATABASE_MAX_CONNECTIONS", "2");
    let app = spawn_app_with(env).await;
    let mut connected = Vec::new();
    for _ in 0..3 {
        let c = connect(&app).await;
        expire_in(&app, c.grant, -10).await;
        c.setup.provider.set_token_latency(Duration::from_secs(3));
        connected.push(c);
    }
    let refreshes: Vec<_> = connected
        .iter()
        .map(|c| {
            let (ctx, tenant, grant) = (app.ctx.clone(), c.tenant, c.grant);
            tokio::spawn(async move { grants::access_token(&ctx, tenant.into(), grant.into()).await })
        })
        .collect();
    // Every refresh is at its provider now.
    for c in &connected {
        for _ in 0..200 {
            if c.setup.provider.token_requests("refresh_token") == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(c.setup.provider.token_requests("refresh_token"), 1, "the refresh reached the provider");
    }
    let listed = app.get("/v1/accounts", &connected[0].setup.admin).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    assert!(refreshes.iter().all(|r| !r.is_finished()), "the API answered while every refresh still waited on its provider");
    for refresh in refreshes {
        refresh.await.expect("task").expect("refreshed");
    }
}

#[tokio::test]
async fn an_absurd_expires_in_is_taken_as_a_year_at_most_and_crashes_nothing() {
    let app = spawn_app().await;
    let c = connect(&app).await;
    expire_in(&app, c.grant, 60).await;
    c.setup.provider.set_access_token_ttl(10_000_000_000_000);
    let refreshed = token(&app, &c).await.expect("the refresh succeeds");
    assert_eq!(c.setup.provider.introspect(&refreshed).as_deref(), Some(CONSENTING_USER));
    let row = grant_row(&app, c.grant).await;
    let expires_at = row.expires_at.expect("an expiry");
    assert!(expires_at <= Utc::now() + chrono::Duration::days(366), "clamped to a year: {expires_at}");
    assert!(expires_at >= Utc::now() + chrono::Duration::days(364), "but a long lifetime is kept: {expires_at}");
    assert_eq!(row.status, "valid");
}

#[tokio::test]
async fn an_expires_in_of_zero_is_taken_as_a_minute_so_the_grant_is_not_refreshed_on_every_use() {
    let app = spawn_app().await;
    let c = connect(&app).await;
    expire_in(&app, c.grant, -10).await;
    c.setup.provider.set_access_token_ttl(0);
    let before = c.setup.provider.token_requests("refresh_token");
    let first = token(&app, &c).await.expect("the refresh succeeds");
    let expires_at = grant_row(&app, c.grant).await.expires_at.expect("an expiry");
    assert!(expires_at >= Utc::now() + chrono::Duration::seconds(55), "at least a minute: {expires_at}");
    let again = token(&app, &c).await.expect("the stored token");
    assert_eq!((again, c.setup.provider.token_requests("refresh_token") - before), (first, 1), "one refresh, not one per use");
}

#[tokio::test]
async fn an_absurd_retry_after_backs_off_a_day_at_most() {
    let app = spawn_app().await;
    let c = connect(&app).await;
    expire_in(&app, c.grant, -10).await;
    c.setup.provider.fail_next_token_requests(1, TokenFailure::RateLimited { retry_after_seconds: 10_000_000_000_000 });
    assert!(matches!(token(&app, &c).await, Err(TokenAccessError::Unavailable { .. })));
    let row = grant_row(&app, c.grant).await;
    let next = row.next_refresh_at.expect("a backoff");
    assert!(next <= Utc::now() + chrono::Duration::hours(24) + chrono::Duration::minutes(1), "at most a day: {next}");
    assert!(next >= Utc::now() + chrono::Duration::hours(23), "Retry-After is still honoured up to its ceiling: {next}");
    assert_eq!((row.status.as_str(), row.refresh_failures), ("valid", 1));
}

#[tokio::test]
async fn a_token_response_over_a_mebibyte_is_refused_unread_and_changes_no_tokens() {
    let app = spawn_app().await;
    let c = connect(&app).await;
    expire_in(&app, c.grant, -10).await;
    let before = grant_row(&app, c.grant).await;
    c.setup.provider.fail_next_token_requests(1, TokenFailure::Oversized { bytes: 2 * 1024 * 1024 });
    let outcome = token(&app, &c).await;
    assert!(matches!(outcome, Err(TokenAccessError::Unavailable { .. })), "{outcome:?}");
    let after = grant_row(&app, c.grant).await;
    assert_eq!((&after.access_token, &after.refresh_token), (&before.access_token, &before.refresh_token));
    assert!(after.last_error.as_deref().is_some_and(|e| e.contains("larger than")), "{after:?}");
    assert_eq!((after.status.as_str(), after.refresh_failures), ("valid", 1), "an outage of the provider, not a dead grant");
    assert!(after.next_refresh_at.is_some(), "the grant backs off");
}
