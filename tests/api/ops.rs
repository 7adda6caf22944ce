//! The operator overview, credential health and fix-it hints: counts per tenant over a seeded set, the worst
//! offenders, who may see what, expected break dates and their order, and the reason and next step that accounts,
//! grants and token configurations carry after real failures (provider refusals, Exchange's 5.7.139, consent by
//! the wrong user).

use chrono::{DateTime, Duration, Utc};
use postbridge_core::connect::grants::{self, TokenAccessError};
use postbridge_core::send::delivery::{self, Delivery};
use postbridge_oauth_provider::TokenFailure;
use postbridge_tests::mailflow::{new_login, password_account, spawn_mail_app, MAIL_PASSWORD};
use postbridge_tests::oauth::{CONSENTING_USER, RETURN_ORIGIN};
use postbridge_tests::{assert_error, graphql_error_code, spawn_app, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

fn uuid(id: &str) -> Uuid {
    id.parse().expect("a uuid")
}

/// A password SMTP account on a made-up host; returns its id.
async fn smtp_account(app: &TestApp, key: &str, login: &str) -> String {
    let reply = app.post("/v1/accounts", key, TestApp::smtp_account(login)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    reply.id()
}

async fn set_state(app: &TestApp, account: &str, state: &str, last_error: Option<&str>) {
    let error = last_error.map(|e| format!("'{}'", e.replace('\'', "''"))).unwrap_or_else(|| "NULL".to_owned());
    // The kind beside the words, as the worker writes it: the failing mail step is the text before the first colon.
    app.sql_exec(&format!(
        "UPDATE email_accounts SET state = '{state}', last_error = {error}, \
         last_error_kind = CASE WHEN {error} IS NULL THEN NULL ELSE jsonb_build_object('kind', 'mail', 'step', split_part({error}, ':', 1)) END \
         WHERE id = '{account}'"
    ))
    .await;
}

/// An outbound message row in `status`, last touched `hours_ago`.
async fn message(app: &TestApp, tenant: &str, status: &str, hours_ago: i64) {
    let sent_at = if status == "sent" { format!("now() - interval '{hours_ago} hours'") } else { "NULL".to_owned() };
    app.sql_exec(&format!(
        "INSERT INTO outbound_messages (id, tenant_id, requested_from, routed_by, envelope_from, recipients, subject, \
         message_id, raw, size, status, sent_at, created_at, updated_at) VALUES ('{}', '{tenant}', 'a@example.com', \
         'default', 'a@example.com', '[\"b@example.org\"]', 's', '<{}@example.com>', 'x', 1, '{status}', {sent_at}, \
         now() - interval '{hours_ago} hours', now() - interval '{hours_ago} hours')",
        Uuid::now_v7(),
        Uuid::new_v4()
    ))
    .await;
}

/// A grant row for `config`; `extra` are `column = value` assignments applied after the insert.
async fn grant(app: &TestApp, tenant: &str, config: &str, subject: &str, extra: &str) -> String {
    let id = Uuid::now_v7().to_string();
    app.sql_exec(&format!(
        "INSERT INTO grants (id, tenant_id, token_config_id, subject, refresh_token, status) \
         VALUES ('{id}', '{tenant}', '{config}', '{subject}', 'stored-refresh-token', 'valid')"
    ))
    .await;
    if !extra.is_empty() {
        app.sql_exec(&format!("UPDATE grants SET {extra} WHERE id = '{id}'")).await;
    }
    id
}

async fn token_config(app: &TestApp, key: &str, body: Value) -> String {
    let reply = app.post("/v1/token-configs", key, body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    reply.id()
}

fn google_config(testing_app: bool) -> Value {
    json!({"name": "Gmail app", "provider": "google", "client_id": "123-abc.apps.googleusercontent.com",
           "client_secret": "google-secret", "testing_app": testing_app})
}

fn timestamp(value: &Value) -> DateTime<Utc> {
    value.as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|d| d.with_timezone(&Utc)).expect("a timestamp")
}

#[track_caller]
fn assert_near(actual: DateTime<Utc>, expected: DateTime<Utc>, what: &str) {
    assert!((actual - expected).num_seconds().abs() < 120, "{what}: {actual} is not {expected}");
}

fn tenant_entry<'a>(overview: &'a Value, tenant: &str) -> &'a Value {
    overview["tenants"].as_array().and_then(|t| t.iter().find(|e| e["tenant_id"] == json!(tenant))).expect("tenant listed")
}

// ---- overview ----

struct Seeded {
    a: String,
    a_admin: String,
    b: String,
    a_failing: String,
    b_failing: String,
}

/// Two tenants with accounts in every state, grants, secrets and messages (see the counts asserted below).
async fn seed(app: &TestApp) -> Seeded {
    let (a, a_admin) = app.tenant_with_admin().await;
    let (b, b_admin) = app.tenant_with_admin().await;

    // A: draft, confirmed, disabled, error (SMTP AUTH off), and a confirmed inbound account polled 10 minutes ago.
    smtp_account(app, &a_admin, "draft@a.example").await;
    let confirmed = smtp_account(app, &a_admin, "confirmed@a.example").await;
    set_state(app, &confirmed, "confirmed", None).await;
    let disabled = smtp_account(app, &a_admin, "disabled@a.example").await;
    let reply = app.patch(&format!("/v1/accounts/{disabled}"), &a_admin, json!({"enabled": false})).await;
    assert_eq!(reply.body["state"], "disabled", "{}", reply.text);
    let a_failing = smtp_account(app, &a_admin, "blocked@a.example").await;
    set_state(
        app,
        &a_failing,
        "error",
        Some("auth: 535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox."),
    )
    .await;
    let inbound = app
        .post(
            "/v1/accounts",
            &a_admin,
            json!({"protocol": "imap", "auth": "password", "login": "in@a.example", "password": "pw", "host": "imap.example.com"}),
        )
        .await
        .id();
    set_state(app, &inbound, "confirmed", None).await;
    app.sql_exec(&format!("UPDATE email_accounts SET last_polled_at = now() - interval '600 seconds' WHERE id = '{inbound}'"))
        .await;

    // A: one secret expiring in 10 days, one expired yesterday, one far away; one grant needing re-consent.
    let today = Utc::now().date_naive();
    let soon = token_config(
        app,
        &a_admin,
        postbridge_tests::with(TestApp::microsoft_config(), json!({"client_secret_expires_at": today + Duration::days(10)})),
    )
    .await;
    token_config(
        app,
        &a_admin,
        postbridge_tests::with(TestApp::microsoft_config(), json!({"client_secret_expires_at": today - Duration::days(1)})),
    )
    .await;
    token_config(
        app,
        &a_admin,
        postbridge_tests::with(TestApp::microsoft_config(), json!({"client_secret_expires_at": today + Duration::days(200)})),
    )
    .await;
    grant(app, &a, &soon, "dead@a.example", "status = 'reauth_required'").await;
    grant(app, &a, &soon, "fine@a.example", "").await;

    // A: messages — 2 queued (one being sent), 1 failed today, 1 failed two days ago, 2 sent today, 1 sent long ago.
    for (status, hours) in [("queued", 0), ("sending", 0), ("failed", 1), ("failed", 48), ("sent", 2), ("sent", 3), ("sent", 30)]
    {
        message(app, &a, status, hours).await;
    }

    // B: one account failing for two hours (longer than A's), one queued message.
    let b_failing = smtp_account(app, &b_admin, "old@b.example").await;
    set_state(app, &b_failing, "error", Some("connect: Connection refused (os error 111)")).await;
    app.sql_exec(&format!("UPDATE email_accounts SET failing_since = now() - interval '2 hours' WHERE id = '{b_failing}'")).await;
    message(app, &b, "queued", 0).await;

    Seeded { a, a_admin, b, a_failing, b_failing }
}

#[tokio::test]
async fn the_overview_counts_each_tenants_accounts_grants_secrets_and_messages_and_lists_the_worst_offenders() {
    let app = spawn_app().await;
    let s = seed(&app).await;

    let reply = app.get("/v1/ops/overview", &app.operator_token()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let a = tenant_entry(&reply.body, &s.a);
    assert_eq!(a["accounts"], json!({"draft": 1, "authorized": 0, "confirmed": 2, "error": 1, "disabled": 1}), "{a}");
    assert_eq!(a["grants_needing_reconsent"], 1, "{a}");
    assert_eq!((a["client_secrets_expiring"].clone(), a["client_secrets_expired"].clone()), (json!(1), json!(1)), "{a}");
    assert_eq!(a["token_configs_needing_admin"], 0, "{a}");
    assert_eq!(
        (a["messages_queued"].clone(), a["messages_failed_last_24h"].clone(), a["messages_sent_last_24h"].clone()),
        (json!(2), json!(1), json!(2)),
        "{a}"
    );
    let lag = a["poll_lag_seconds"].as_i64().expect("a lag");
    assert!((600..700).contains(&lag), "the inbound account was polled 10 minutes ago: {lag}");

    let b = tenant_entry(&reply.body, &s.b);
    assert_eq!(b["accounts"], json!({"draft": 0, "authorized": 0, "confirmed": 0, "error": 1, "disabled": 0}), "{b}");
    assert_eq!((b["messages_queued"].clone(), b["poll_lag_seconds"].clone()), (json!(1), Value::Null), "{b}");

    // Failing longest first, each with its tenant, error and hint.
    let offenders = reply.body["worst_offenders"].as_array().expect("offenders");
    let ids: Vec<&str> = offenders.iter().filter_map(|o| o["account_id"].as_str()).collect();
    assert_eq!(ids, [s.b_failing.as_str(), s.a_failing.as_str()], "{offenders:?}");
    assert_eq!(offenders[0]["tenant_id"], json!(s.b));
    assert_eq!(offenders[0]["problem"]["reason"], "server_unreachable");
    assert_eq!(offenders[1]["login"], "blocked@a.example");
    assert_eq!(offenders[1]["problem"]["reason"], "smtp_auth_disabled");
    assert!(offenders[1]["last_error"].as_str().unwrap_or_default().contains("5.7.139"));
    assert!(timestamp(&offenders[0]["failing_since"]) < timestamp(&offenders[1]["failing_since"]));

    let limited = app.get("/v1/ops/overview?limit=1", &app.operator_token()).await;
    assert_eq!(limited.body["worst_offenders"].as_array().map(Vec::len), Some(1), "{}", limited.text);
    assert_error(
        &app.get("/v1/ops/overview?limit=0", &app.operator_token()).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_limit",
    );

    // The same in one GraphQL query.
    let gql = app
        .graphql(
            Some(&app.operator_token()),
            "{ opsOverview { tenants { tenantId accounts { error confirmed } grantsNeedingReconsent messagesQueued } \
               worstOffenders { accountId problem { reason action { method path } } } } }",
            json!({}),
        )
        .await;
    let tenants = gql["data"]["opsOverview"]["tenants"].as_array().expect("tenants");
    let a = tenants.iter().find(|t| t["tenantId"] == json!(s.a)).expect("A");
    assert_eq!(
        a,
        &json!({"tenantId": s.a, "accounts": {"error": 1, "confirmed": 2}, "grantsNeedingReconsent": 1, "messagesQueued": 2})
    );
    let worst = &gql["data"]["opsOverview"]["worstOffenders"];
    assert_eq!(worst[1]["problem"]["action"], json!({"method": "POST", "path": format!("/v1/accounts/{}/test", s.a_failing)}));
}

#[tokio::test]
async fn tenant_admins_and_viewers_see_only_their_own_tenant_and_members_are_refused() {
    let app = spawn_app().await;
    let s = seed(&app).await;

    for key in [s.a_admin.clone(), app.api_key(&s.a, "viewer").await] {
        let reply = app.get("/v1/ops/overview", &key).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        let tenants: Vec<&str> =
            reply.body["tenants"].as_array().expect("tenants").iter().filter_map(|t| t["tenant_id"].as_str()).collect();
        assert_eq!(tenants, [s.a.as_str()]);
        let offenders: Vec<&str> = reply.body["worst_offenders"]
            .as_array()
            .expect("offenders")
            .iter()
            .filter_map(|o| o["account_id"].as_str())
            .collect();
        assert_eq!(offenders, [s.a_failing.as_str()], "B's account stays hidden");
        // Naming another tenant answers as if it did not exist.
        assert_error(&app.get(&format!("/v1/ops/overview?tenant_id={}", s.b), &key).await, StatusCode::NOT_FOUND, "not_found");
    }
    let member = app.api_key(&s.a, "member").await;
    assert_error(&app.get("/v1/ops/overview", &member).await, StatusCode::FORBIDDEN, "forbidden");
    assert_error(&app.get("/v1/credential-health", &member).await, StatusCode::FORBIDDEN, "forbidden");
    let gql = app.graphql(Some(&member), "{ opsOverview { generatedAt } }", json!({})).await;
    assert_eq!(graphql_error_code(&gql), "forbidden", "{gql}");

    // Operators may narrow to one tenant.
    let one = app.get(&format!("/v1/ops/overview?tenant_id={}", s.b), &app.operator_token()).await;
    let tenants: Vec<&str> =
        one.body["tenants"].as_array().expect("tenants").iter().filter_map(|t| t["tenant_id"].as_str()).collect();
    assert_eq!(tenants, [s.b.as_str()], "{}", one.text);

    // GraphQL as A's admin: A only.
    let gql = app.graphql(Some(&s.a_admin), "{ opsOverview { tenants { tenantId } } }", json!({})).await;
    assert_eq!(gql["data"]["opsOverview"]["tenants"], json!([{"tenantId": s.a}]), "{gql}");
}

// ---- credential health ----

#[tokio::test]
async fn credential_health_lists_broken_items_first_then_each_items_earliest_expected_break() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let today = Utc::now().date_naive();
    let now = Utc::now();

    // Microsoft: secret expires in 20 days; its grant was last refreshed 80 days ago (90-day limit: 10 days left).
    let microsoft = token_config(
        &app,
        &admin,
        postbridge_tests::with(TestApp::microsoft_config(), json!({"client_secret_expires_at": today + Duration::days(20)})),
    )
    .await;
    let inactive = grant(&app, &tenant, &microsoft, "ann@contoso.com", "last_refreshed_at = now() - interval '80 days'").await;
    // Google app in Testing: consented 2 days ago, so 5 days left.
    let google = token_config(&app, &admin, google_config(true)).await;
    let reply = app.get(&format!("/v1/token-configs/{google}"), &admin).await;
    assert_eq!(reply.body["testing_app"], json!(true), "{}", reply.text);
    let testing = grant(&app, &tenant, &google, "bob@gmail.com", "created_at = now() - interval '2 days'").await;
    // Already broken: a grant needing re-consent (an hour ago) and a configuration the provider refuses.
    let dead = grant(
        &app,
        &tenant,
        &microsoft,
        "carl@contoso.com",
        "status = 'reauth_required', updated_at = now() - interval '1 hour', \
         last_error = 'the provider refused: invalid_grant (AADSTS700082: The refresh token has expired due to inactivity.)'",
    )
    .await;
    let refused = token_config(
        &app,
        &admin,
        json!({"name": "Refused", "provider": "generic", "client_id": "c", "client_secret": "s",
        "auth_url": "https://idp.example.com/authorize", "token_url": "https://idp.example.com/token", "scopes": ["mail"]}),
    )
    .await;
    app.sql_exec(&format!(
        "UPDATE token_configs SET needs_admin = true, last_error = 'the provider refused: invalid_client (bad secret)', \
         updated_at = now() - interval '30 minutes' WHERE id = '{refused}'"
    ))
    .await;
    // Nothing expected to break: a Google app in production with no secret expiry.
    let published = token_config(&app, &admin, google_config(false)).await;
    grant(&app, &tenant, &published, "dan@gmail.com", "").await;

    let reply = app.get("/v1/credential-health", &admin).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let items = reply.body.as_array().expect("a list");
    let order: Vec<(&str, &str, &str)> = items
        .iter()
        .map(|i| (i["id"].as_str().unwrap_or(""), i["kind"].as_str().unwrap_or(""), i["cause"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        order,
        [
            (dead.as_str(), "grant", "reauth_required"),
            (refused.as_str(), "token_config", "needs_admin"),
            (testing.as_str(), "grant", "testing_app_consent_expiry"),
            (inactive.as_str(), "grant", "refresh_token_inactivity"),
            (microsoft.as_str(), "token_config", "client_secret_expiry"),
        ],
        "{}",
        reply.text
    );
    assert_eq!(
        items.iter().map(|i| i["broken"].as_bool()).collect::<Vec<_>>(),
        [Some(true), Some(true), Some(false), Some(false), Some(false)]
    );
    assert_near(timestamp(&items[0]["breaks_at"]), now - Duration::hours(1), "the dead grant broke an hour ago");
    assert_near(timestamp(&items[1]["breaks_at"]), now - Duration::minutes(30), "the refused configuration");
    assert_near(timestamp(&items[2]["breaks_at"]), now + Duration::days(5), "Google testing app: 7 days after consent");
    assert_near(timestamp(&items[3]["breaks_at"]), now + Duration::days(10), "Microsoft: 90 days after the last refresh");
    assert_eq!(timestamp(&items[4]["breaks_at"]), (today + Duration::days(20)).and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    assert_eq!((items[2]["days_left"].clone(), items[4]["days_left"].clone()), (json!(4), json!(19)));
    assert_eq!(items[0]["problem"]["reason"], "reauth_required");
    assert!(items[0]["problem"]["next_step"].as_str().unwrap_or("").contains("90 days"), "{}", items[0]);
    assert_eq!(items[1]["problem"]["reason"], "client_secret_invalid");
    assert_eq!(items[2]["problem"]["reason"], "testing_app_consent_expiring");
    assert_eq!(items[3]["problem"]["reason"], "refresh_token_inactive");
    assert_eq!(items[4]["problem"]["reason"], "client_secret_expiring");
    assert_eq!(items[4]["problem"]["action"], json!({"method": "PATCH", "path": format!("/v1/token-configs/{microsoft}")}));

    // A narrower window keeps the broken items and what breaks within it.
    let week = app.get("/v1/credential-health?within_days=7", &admin).await;
    let ids: Vec<&str> = week.body.as_array().expect("a list").iter().filter_map(|i| i["id"].as_str()).collect();
    assert_eq!(ids, [dead.as_str(), refused.as_str(), testing.as_str()], "{}", week.text);
    assert_error(
        &app.get("/v1/credential-health?within_days=400", &admin).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_window",
    );

    // Viewers read it; the operator-wide list is for operators only and spans tenants.
    let viewer = app.api_key(&tenant, "viewer").await;
    assert_eq!(app.get("/v1/credential-health", &viewer).await.body, reply.body);
    assert_error(&app.get("/v1/ops/credential-health", &admin).await, StatusCode::FORBIDDEN, "forbidden");
    let (other, other_admin) = app.tenant_with_admin().await;
    let other_config = token_config(
        &app,
        &other_admin,
        postbridge_tests::with(TestApp::microsoft_config(), json!({"client_secret_expires_at": today + Duration::days(3)})),
    )
    .await;
    let all = app.get("/v1/ops/credential-health", &app.operator_token()).await;
    let all: Vec<(String, String)> = all
        .body
        .as_array()
        .expect("a list")
        .iter()
        .map(|i| (i["id"].as_str().unwrap_or("").to_owned(), i["tenant_id"].as_str().unwrap_or("").to_owned()))
        .collect();
    assert_eq!(all[2], (other_config.clone(), other.clone()), "the other tenant's secret (3 days) sorts among A's: {all:?}");
    assert_eq!(all.len(), 6);
    assert!(!app.get("/v1/credential-health", &admin).await.text.contains(&other_config), "tenants see only their own");

    // GraphQL: the operator without a tenant gets every tenant's; a tenant admin their own.
    let gql = app.graphql(Some(&app.operator_token()), "{ credentialHealth { id cause } }", json!({})).await;
    assert_eq!(gql["data"]["credentialHealth"].as_array().map(Vec::len), Some(6), "{gql}");
    let gql = app.graphql(Some(&admin), "{ credentialHealth(withinDays: 7) { id } }", json!({})).await;
    assert_eq!(gql["data"]["credentialHealth"].as_array().map(Vec::len), Some(3), "{gql}");
}

#[tokio::test]
async fn testing_app_is_a_google_setting_that_can_be_switched_off() {
    let app = spawn_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let refused = app
        .post("/v1/token-configs", &admin, postbridge_tests::with(TestApp::microsoft_config(), json!({"testing_app": true})))
        .await;
    assert_error(&refused, StatusCode::UNPROCESSABLE_ENTITY, "not_applicable");
    assert_eq!(refused.body["field"], "testing_app");
    let google = token_config(&app, &admin, google_config(true)).await;
    let published = app.patch(&format!("/v1/token-configs/{google}"), &admin, json!({"testing_app": false})).await;
    assert_eq!((published.status, published.body["testing_app"].clone()), (StatusCode::OK, json!(false)), "{}", published.text);
    let microsoft = token_config(&app, &admin, TestApp::microsoft_config()).await;
    assert_eq!(app.get(&format!("/v1/token-configs/{microsoft}"), &admin).await.body["testing_app"], json!(false));
}

// ---- hints after real failures ----

#[tokio::test]
async fn an_account_whose_grant_got_invalid_grant_shows_reauth_required_with_the_reconsent_action() {
    let app = spawn_app().await;
    let setup = app.oauth_setup().await;
    let account = app.oauth_account(&setup, "imap", CONSENTING_USER).await;
    let outcome = app.consent(&setup, &account).await;
    assert_eq!(outcome.param("status").as_deref(), Some("success"), "{outcome:?}");
    let before = app.account_json(&setup, &account).await;
    assert_eq!(before["problem"], Value::Null, "a healthy account has no problem: {before}");
    let grant_id = before["grant_id"].as_str().expect("grant").to_owned();

    setup
        .provider
        .fail_next_token_requests(1, TokenFailure::InvalidGrant { description: "Token has been expired or revoked.".into() });
    app.sql_exec(&format!("UPDATE grants SET expires_at = now() - interval '1 second', refresh_at = now() - interval '1 second' WHERE id = '{grant_id}'")).await;
    let refused = grants::access_token(&app.ctx, uuid(&setup.tenant).into(), uuid(&grant_id).into()).await;
    assert!(matches!(refused, Err(TokenAccessError::ReauthRequired { .. })), "{refused:?}");

    let body = app.account_json(&setup, &account).await;
    assert_eq!(body["state"], "error", "{body}");
    assert_eq!(body["problem"]["reason"], "reauth_required", "{body}");
    assert_eq!(body["problem"]["action"], json!({"method": "POST", "path": format!("/v1/accounts/{account}/authorize")}));
    assert!(body["problem"]["next_step"].as_str().unwrap_or("").contains("expired or was revoked"), "{body}");
    let grant = app.get(&format!("/v1/grants/{grant_id}"), &setup.admin).await;
    assert_eq!(
        (grant.body["status"].clone(), grant.body["problem"]["reason"].clone()),
        (json!("reauth_required"), json!("reauth_required")),
        "{}",
        grant.text
    );

    // The action works: consenting again clears the problem.
    let again = app.consent(&setup, &account).await;
    assert_eq!(again.param("status").as_deref(), Some("success"), "{again:?}");
    assert_eq!(app.account_json(&setup, &account).await["problem"], Value::Null);
    assert!(again.location.as_deref().is_some_and(|l| l.starts_with(RETURN_ORIGIN)));
}

#[tokio::test]
async fn a_token_config_whose_secret_the_provider_refuses_shows_client_secret_invalid() {
    let app = spawn_app().await;
    let setup = app.oauth_setup().await;
    let account = app.oauth_account(&setup, "imap", CONSENTING_USER).await;
    assert_eq!(app.consent(&setup, &account).await.param("status").as_deref(), Some("success"));
    let grant_id = app.account_json(&setup, &account).await["grant_id"].as_str().expect("grant").to_owned();

    setup.provider.fail_next_token_requests(
        1,
        TokenFailure::InvalidClient { description: "AADSTS7000215: Invalid client secret provided.".into() },
    );
    app.sql_exec(&format!("UPDATE grants SET expires_at = now() - interval '1 second', refresh_at = now() - interval '1 second' WHERE id = '{grant_id}'")).await;
    let refused = grants::access_token(&app.ctx, uuid(&setup.tenant).into(), uuid(&grant_id).into()).await;
    assert!(matches!(refused, Err(TokenAccessError::NeedsAdmin { .. })), "{refused:?}");

    let config = app.get(&format!("/v1/token-configs/{}", setup.config_id), &setup.admin).await;
    assert_eq!(config.body["needs_admin"], json!(true), "{}", config.text);
    let problem = &config.body["problem"];
    assert_eq!(problem["reason"], "client_secret_invalid", "{problem}");
    assert_eq!(problem["action"], json!({"method": "PATCH", "path": format!("/v1/token-configs/{}", setup.config_id)}));
    assert!(problem["next_step"].as_str().unwrap_or("").contains("Certificates & secrets → New client secret"), "{problem}");
    assert_eq!(problem["details"], json!({"provider_code": "AADSTS7000215"}));

    // Pasting a new secret is the fix: the problem goes away.
    let fixed = app
        .patch(&format!("/v1/token-configs/{}", setup.config_id), &setup.admin, json!({"client_secret": setup.client_secret}))
        .await;
    assert_eq!((fixed.status, fixed.body["problem"].clone()), (StatusCode::OK, Value::Null), "{}", fixed.text);
}

#[tokio::test]
async fn smtp_auth_disabled_at_microsoft_shows_the_admin_setting_to_change() {
    let (app, servers) = spawn_mail_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let sender = new_login();
    servers.add_password_user(&sender, MAIL_PASSWORD);
    let account = app
        .confirmed_mail_account(&admin, password_account(servers, "smtp", "starttls", &sender, json!({"is_default": true})))
        .await;
    servers.disable_smtp_auth(&sender);
    let sent = app
        .post("/v1/messages", &admin, json!({"from": sender, "to": ["blocked@example.org"], "subject": "Blocked", "text": "Hi"}))
        .await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.text);
    assert_eq!(delivery::deliver(&app.ctx, uuid(&sent.id()).into()).await.expect("deliver runs"), Delivery::Failed);

    let body = app.get(&format!("/v1/accounts/{account}"), &admin).await.body;
    assert_eq!(body["state"], "error", "{body}");
    let problem = &body["problem"];
    assert_eq!(problem["reason"], "smtp_auth_disabled", "{problem}");
    let step = problem["next_step"].as_str().unwrap_or("");
    assert!(step.contains("Manage email apps → tick Authenticated SMTP"), "{step}");
    assert!(step.contains(&format!("Set-CASMailbox -Identity {sender} -SmtpClientAuthenticationDisabled $false")), "{step}");
    assert_eq!(problem["action"], json!({"method": "POST", "path": format!("/v1/accounts/{account}/test")}));

    let overview = app.get("/v1/ops/overview", &admin).await;
    assert_eq!(overview.body["worst_offenders"][0]["account_id"], json!(account), "{}", overview.text);
    assert_eq!(overview.body["worst_offenders"][0]["problem"]["reason"], "smtp_auth_disabled");
}

#[tokio::test]
async fn consent_for_the_wrong_mailbox_shows_who_consented_and_who_was_expected() {
    let app = spawn_app().await;
    let setup = app.oauth_setup().await;
    let account = app.oauth_account(&setup, "imap", CONSENTING_USER).await;
    setup.provider.set_consenting_user("someone.else@example.com");
    let outcome = app.consent(&setup, &account).await;
    assert_eq!(outcome.param("reason").as_deref(), Some("wrong_mailbox"), "{outcome:?}");

    let body = app.account_json(&setup, &account).await;
    assert_eq!((body["state"].clone(), body["grant_id"].clone()), (json!("draft"), Value::Null), "the state stays: {body}");
    let problem = &body["problem"];
    assert_eq!(problem["reason"], "wrong_mailbox", "{body}");
    assert_eq!(problem["details"], json!({"consented": "someone.else@example.com", "expected": CONSENTING_USER}));
    assert_eq!(problem["action"], json!({"method": "POST", "path": format!("/v1/accounts/{account}/authorize")}));
    assert!(problem["next_step"].as_str().unwrap_or("").contains("shared_mailbox"), "{problem}");

    // The right user consenting clears it.
    setup.provider.set_consenting_user(CONSENTING_USER);
    assert_eq!(app.consent(&setup, &account).await.param("status").as_deref(), Some("success"));
    let body = app.account_json(&setup, &account).await;
    assert_eq!((body["state"].clone(), body["problem"].clone()), (json!("authorized"), Value::Null), "{body}");
}
