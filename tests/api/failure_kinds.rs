//! Failure kinds: the fix-it `reason` follows the stored kind, and rows that failed before kinds existed get
//! theirs read once, by the migration, from the sentences that wrote them.

use postbridge_tests::{spawn_app, TestApp};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use sea_orm_migration::MigratorTrait;
use serde_json::{json, Value};

/// Words a failing row carried before failure kinds, and the reason (plus a fact) the hints give it after.
const LEGACY_ACCOUNT_ERRORS: &[(&str, &str, &str)] = &[
    (
        "wrong mailbox: consent was given by bob@contoso.com, but this account is ann@contoso.com: sign in as ann@contoso.com, or mark the account as a shared mailbox",
        "wrong_mailbox",
        "bob@contoso.com",
    ),
    (
        "sign-in needed again: the provider refused: invalid_grant (AADSTS700082: The refresh token has expired due to inactivity.)",
        "reauth_required",
        "90 days without use",
    ),
    (
        "auth: the token configuration needs its admin: the provider refused: invalid_client (AADSTS7000215: Invalid client secret provided.)",
        "client_secret_invalid",
        "Certificates & secrets",
    ),
    ("auth: the grant needs re-consent: the provider refused: consent_required", "admin_consent_required", "Grant admin consent"),
    ("sign-in needed again: the provider refused: invalid_grant (no refresh token stored)", "refresh_token_missing", "refresh token"),
    ("tls: invalid peer certificate: UnknownIssuer", "tls_failed", "TLS"),
    ("connect: Connection refused (os error 111)", "server_unreachable", "(connect)"),
    (
        "auth: 535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox.",
        "smtp_auth_disabled",
        "Authenticated SMTP",
    ),
    ("timeout: token provider unavailable: HTTP 503", "provider_unavailable", "retries"),
];

async fn owner_exec(owner: &sea_orm::DatabaseConnection, sql: &str, values: Vec<sea_orm::Value>) {
    owner.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await.expect(sql);
}

async fn problem_of(app: &TestApp, key: &str, path: &str) -> Value {
    let reply = app.get(path, key).await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.text);
    let body: Value = serde_json::from_str(&reply.text).expect("json");
    body["problem"].clone()
}

#[tokio::test]
async fn rows_failing_before_failure_kinds_keep_their_reasons_after_the_migration() {
    let app = spawn_app().await;
    let (tenant, key) = app.tenant_with_admin().await;
    let config = app.post("/v1/token-configs", &key, TestApp::microsoft_config()).await;
    assert_eq!(config.status.as_u16(), 201, "{}", config.text);
    let config_id = serde_json::from_str::<Value>(&config.text).expect("json")["id"].as_str().expect("id").to_owned();
    let mut accounts = Vec::new();
    for (i, _) in LEGACY_ACCOUNT_ERRORS.iter().enumerate() {
        let reply = app.post("/v1/accounts", &key, TestApp::smtp_account(&format!("legacy{i}@example.com"))).await;
        assert_eq!(reply.status.as_u16(), 201, "{}", reply.text);
        accounts.push(serde_json::from_str::<Value>(&reply.text).expect("json")["id"].as_str().expect("id").to_owned());
    }

    // Back to the schema before failure kinds, with rows as the old code left them.
    let owner = app.owner_db().await;
    // Every migration from failure kinds on is reverted (later ones first), however many came after it.
    let names: Vec<String> = postbridge_migration::Migrator::migrations().iter().map(|m| m.name().to_owned()).collect();
    let position = names.iter().position(|n| n == "m20261205_000011_failure_kinds").expect("the failure-kinds migration");
    let steps = u32::try_from(names.len() - position).expect("few migrations");
    postbridge_migration::Migrator::down(&owner, Some(steps)).await.expect("revert the failure-kinds migration");
    for ((error, _, _), id) in LEGACY_ACCOUNT_ERRORS.iter().zip(&accounts) {
        owner_exec(
            &owner,
            "UPDATE email_accounts SET state = 'error', last_error = $2 WHERE id = $1::uuid",
            vec![id.as_str().into(), (*error).into()],
        )
        .await;
    }
    let grant_id = uuid::Uuid::new_v4();
    owner_exec(
        &owner,
        "INSERT INTO grants (id, tenant_id, token_config_id, subject, status, last_error) \
         VALUES ($1, $2::uuid, $3::uuid, 'carol@contoso.com', 'reauth_required', \
                 'the provider refused: invalid_grant (AADSTS50173: The provided grant has expired due to it being revoked.)')",
        vec![grant_id.into(), tenant.as_str().into(), config_id.as_str().into()],
    )
    .await;
    postbridge_migration::Migrator::up(&owner, None).await.expect("apply it again");

    for ((_, reason, fact), id) in LEGACY_ACCOUNT_ERRORS.iter().zip(&accounts) {
        let problem = problem_of(&app, &key, &format!("/v1/accounts/{id}")).await;
        assert_eq!(problem["reason"], *reason, "{problem}");
        assert!(problem.to_string().contains(fact), "{reason}: {problem}");
    }
    let grant = problem_of(&app, &key, &format!("/v1/grants/{grant_id}")).await;
    assert_eq!(grant["reason"], "reauth_required", "{grant}");
    assert!(grant["next_step"].as_str().unwrap_or_default().contains("password changed"), "{grant}");
    let kind = app.sql_text(&format!("SELECT last_error_kind::text FROM grants WHERE id = '{grant_id}'")).await.expect("a kind");
    let kind: Value = serde_json::from_str(&kind).expect("json");
    assert_eq!(kind, json!({"kind": "reauth_required", "oauth_error": "invalid_grant", "provider_code": "AADSTS50173"}));
}

#[tokio::test]
async fn a_failed_test_stores_the_failing_step_as_the_kind() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    // Nothing listens on port 1 of the loopback address: the connect step fails.
    let body = json!({"protocol": "smtp", "auth": "password", "login": "kind@example.com", "password": "pw",
                      "host": "127.0.0.1", "port": 1, "security": "none"});
    let reply = app.post("/v1/accounts", &key, body).await;
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.text);
    let id = serde_json::from_str::<Value>(&reply.text).expect("json")["id"].as_str().expect("id").to_owned();
    let tested = app.post(&format!("/v1/accounts/{id}/test"), &key, json!({})).await;
    assert_eq!(tested.status.as_u16(), 200, "{}", tested.text);
    let kind =
        app.sql_text(&format!("SELECT last_error_kind::text FROM email_accounts WHERE id = '{id}'")).await.expect("a kind");
    let kind: Value = serde_json::from_str(&kind).expect("json");
    assert_eq!(kind["kind"], "mail", "{kind}");
    let step = kind["step"].as_str().unwrap_or_default().to_owned();
    assert!(["connect", "forbidden"].contains(&step.as_str()), "{kind}");
    // Rewording: whatever the words now say, the reason follows the kind.
    app.sql_exec(&format!("UPDATE email_accounts SET last_error = 'reworded entirely' WHERE id = '{id}'")).await;
    let problem = problem_of(&app, &key, &format!("/v1/accounts/{id}")).await;
    let expected = if step == "connect" { "server_unreachable" } else { "host_forbidden" };
    assert_eq!(problem["reason"], expected, "{problem}");
}

#[tokio::test]
async fn a_providers_flood_of_words_is_kept_bounded_in_the_error_and_its_kind() {
    let app = spawn_app().await;
    let setup = app.oauth_setup().await;
    let account = app.oauth_account(&setup, "imap", postbridge_tests::oauth::CONSENTING_USER).await;
    let outcome = app.consent(&setup, &account).await;
    assert_eq!(outcome.param("status").as_deref(), Some("success"), "{outcome:?}");
    let grant_id = app.account_json(&setup, &account).await["grant_id"].as_str().expect("grant").to_owned();

    // 200 KB of description after the AADSTS code: a hostile or broken provider.
    let flood = format!("AADSTS70008: expired. {}", "x".repeat(200_000));
    setup.provider.fail_next_token_requests(1, postbridge_oauth_provider::TokenFailure::InvalidGrant { description: flood });
    app.sql_exec(&format!(
        "UPDATE grants SET expires_at = now() - interval '1 second', refresh_at = now() - interval '1 second' WHERE id = '{grant_id}'"
    ))
    .await;
    let tenant = uuid::Uuid::parse_str(&setup.tenant).expect("tenant");
    let grant = uuid::Uuid::parse_str(&grant_id).expect("grant");
    assert!(
        postbridge_core::connect::grants::access_token(&app.ctx, tenant.into(), grant.into()).await.is_err(),
        "the refresh is refused"
    );

    let stored = app
        .sql_i64(&format!(
            "SELECT greatest(octet_length(g.last_error), octet_length(g.last_error_kind::text), \
                    octet_length(a.last_error), octet_length(a.last_error_kind::text))::bigint \
             FROM grants g JOIN email_accounts a ON a.grant_id = g.id WHERE g.id = '{grant_id}'"
        ))
        .await;
    assert!(stored < 2_000, "at most a few hundred bytes of the provider's words are kept, not {stored}");
    let body = app.account_json(&setup, &account).await;
    assert_eq!(body["problem"]["reason"], "reauth_required", "{body}");
    assert_eq!(body["problem"]["details"]["provider_code"], "AADSTS70008", "{body}");
}
