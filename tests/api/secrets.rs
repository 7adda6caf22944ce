//! Secrets are encrypted at rest, bound to their row, rotatable, and never returned or logged.

use postbridge_core::secrets::crypto::SecretLocation;
use postbridge_core::secrets::rekey;
use postbridge_tests::{captured_logs, random_key_b64, spawn_app, spawn_app_with, TestApp, TestEnv};
use reqwest::{Method, StatusCode};
use sea_orm::ConnectionTrait;
use serde_json::json;
use uuid::Uuid;

async fn stored_secret(app: &TestApp, table: &str, column: &str, id: &str) -> String {
    app.stored_value(table, column, id).await.expect("a stored value")
}

fn location<'a>(tenant: &str, table: &'a str, column: &'a str, id: &str) -> SecretLocation<'a> {
    SecretLocation {
        tenant_id: Uuid::parse_str(tenant).expect("tenant uuid").into(),
        table,
        column,
        row_id: Uuid::parse_str(id).expect("row uuid"),
    }
}

#[tokio::test]
async fn secrets_are_stored_encrypted_and_fail_to_decrypt_when_moved_to_another_row() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let first = app.post("/v1/accounts", &admin, json!({"protocol": "imap", "auth": "password", "login": "a", "password": "first-secret-pw", "host": "imap.example.com"})).await;
    let second = app.post("/v1/accounts", &admin, json!({"protocol": "imap", "auth": "password", "login": "b", "password": "second-secret-pw", "host": "imap.example.com"})).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let (first_id, second_id) = (first.id(), second.id());

    let stored = stored_secret(&app, "email_accounts", "password", &first_id).await;
    assert!(stored.starts_with("k1:"), "envelope carries the key id: {stored}");
    assert!(!stored.contains("first-secret-pw"));
    let plain =
        app.ctx.cipher.decrypt(location(&tenant, "email_accounts", "password", &first_id), &stored).expect("decrypts in place");
    assert_eq!(plain, "first-secret-pw");

    // Copy the ciphertext onto the second row: it must not decrypt there, nor under another tenant or column.
    app.ctx
        .db
        .execute_unprepared(&format!("UPDATE email_accounts SET password = (SELECT password FROM email_accounts WHERE id = '{first_id}') WHERE id = '{second_id}'"))
        .await
        .expect("copy ciphertext");
    let moved = stored_secret(&app, "email_accounts", "password", &second_id).await;
    assert!(app.ctx.cipher.decrypt(location(&tenant, "email_accounts", "password", &second_id), &moved).is_err());
    let other_tenant = Uuid::new_v4().to_string();
    assert!(app.ctx.cipher.decrypt(location(&other_tenant, "email_accounts", "password", &first_id), &stored).is_err());
    assert!(app.ctx.cipher.decrypt(location(&tenant, "token_configs", "client_secret", &first_id), &stored).is_err());
}

#[tokio::test]
async fn secrets_never_appear_in_responses_errors_or_logs() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let marker = Uuid::new_v4().simple().to_string();
    let client_secret = format!("cs-{marker}");
    let password = format!("pw-{marker}");
    let graphql_password = format!("gqlpw-{marker}");

    let mut responses = Vec::new();
    let config = app
        .post("/v1/token-configs", &admin, json!({"name": "M", "provider": "microsoft", "client_id": "cid", "client_secret": client_secret, "directory_tenant_id": "contoso.onmicrosoft.com"}))
        .await;
    assert_eq!(config.status, StatusCode::CREATED, "{}", config.text);
    assert_eq!(config.body["client_secret_set"], json!(true));
    responses.push(config.text.clone());
    let account = app
        .post(
            "/v1/accounts",
            &admin,
            json!({"protocol": "smtp", "auth": "password", "login": "bob", "password": password, "host": "smtp.example.com"}),
        )
        .await;
    assert_eq!(account.status, StatusCode::CREATED, "{}", account.text);
    assert_eq!(account.body["password_set"], json!(true));
    responses.push(account.text.clone());
    responses.push(app.get(&format!("/v1/accounts/{}", account.id()), &admin).await.text);
    responses.push(app.get("/v1/accounts", &admin).await.text);
    responses.push(app.get("/v1/token-configs", &admin).await.text);
    responses.push(app.patch(&format!("/v1/accounts/{}", account.id()), &admin, json!({"password": password})).await.text);

    // Failing requests that carry a secret: validation error, malformed body, wrong type for the secret.
    let invalid = app.post("/v1/accounts", &admin, json!({"protocol": "smtp", "auth": "password", "login": "bob", "password": password, "host": "smtp.example.com", "port": 0})).await;
    assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);
    responses.push(invalid.text);
    let malformed = app.request(Method::POST, "/v1/accounts", Some(&admin), None, None).await;
    responses.push(malformed.text);
    let raw = app
        .http
        .post(format!("{}/v1/token-configs", app.address))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(format!("{{\"name\": \"x\", \"client_secret\": \"{client_secret}\", \"provider\": 7"))
        .send()
        .await
        .expect("send");
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    responses.push(raw.text().await.expect("body"));

    let created = app
        .graphql(
            Some(&admin),
            "mutation($input: CreateAccount!) { createAccount(input: $input) { id passwordSet } }",
            json!({"input": {"protocol": "IMAP", "auth": "PASSWORD", "login": "gql", "password": graphql_password, "host": "imap.example.com"}}),
        )
        .await;
    assert_eq!(created["data"]["createAccount"]["passwordSet"], json!(true), "{created}");
    responses.push(created.to_string());
    let failed = app
        .graphql(
            Some(&admin),
            "mutation($input: CreateAccount!) { createAccount(input: $input) { id } }",
            json!({"input": {"protocol": "IMAP", "auth": "PASSWORD", "login": "gql", "password": graphql_password, "host": "imap.example.com", "port": 0}}),
        )
        .await;
    assert_eq!(failed["errors"][0]["extensions"]["code"], json!("invalid_port"), "{failed}");
    responses.push(failed.to_string());
    let listed = app
        .graphql(
            Some(&admin),
            "{ accounts { items { id login passwordSet } } tokenConfigs { items { clientSecretSet } } }",
            json!({}),
        )
        .await;
    responses.push(listed.to_string());

    let operator_token = app.operator_token();
    for text in &responses {
        for secret in [&client_secret, &password, &graphql_password] {
            assert!(!text.contains(secret.as_str()), "a response holds a secret: {text}");
        }
    }
    let logs = captured_logs();
    assert!(logs.contains("/v1/accounts"), "the request log is captured");
    for secret in [&client_secret, &password, &graphql_password, &admin, &operator_token] {
        assert!(!logs.contains(secret.as_str()), "a secret reached the logs");
    }
    let _ = tenant;
}

#[tokio::test]
async fn rotating_keys_reencrypts_every_secret_and_retires_the_old_key() {
    let mut env = TestEnv::new();
    let old_key = random_key_b64();
    env.set("MASTER_KEYS", format!("old:{old_key}"));
    let app = spawn_app_with(env).await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let config = app.post("/v1/token-configs", &admin, TestApp::microsoft_config()).await;
    let account = app.post("/v1/accounts", &admin, TestApp::smtp_account("rotating")).await;
    assert_eq!(account.status, StatusCode::CREATED, "{}", account.text);
    let (config_id, account_id) = (config.id(), account.id());
    assert!(stored_secret(&app, "token_configs", "client_secret", &config_id).await.starts_with("old:"));
    // A webhook endpoint with a rotated secret: both its current and its previous secret are encrypted.
    let hook = app.post("/v1/webhooks", &admin, json!({"url": "https://hooks.example.com/postbridge"})).await;
    assert_eq!(hook.status, StatusCode::CREATED, "{}", hook.text);
    let hook_id = hook.body["endpoint"]["id"].as_str().expect("endpoint id").to_owned();
    let rotated_hook = app.post(&format!("/v1/webhooks/{hook_id}/rotate-secret"), &admin, json!({})).await;
    assert!(rotated_hook.status.is_success(), "{}", rotated_hook.text);
    let hook_secret = rotated_hook.body["secret"].as_str().expect("new webhook secret").to_owned();

    // A deployment that adds a new active key and runs the rotation command.
    let new_key = random_key_b64();
    let rotated = app.context_with_master_keys(&format!("old:{old_key},new:{new_key}"), Some("new")).await;
    let report = rekey::reencrypt_all(&rotated).await.expect("rotation runs");
    assert_eq!(report, rekey::RekeyReport { reencrypted: 4, failed: 0 });
    let again = rekey::reencrypt_all(&rotated).await.expect("second rotation runs");
    assert_eq!(again.reencrypted, 0, "already current values are left alone");

    // The old key can now be removed: everything decrypts with the new key alone.
    let new_only = app.context_with_master_keys(&format!("new:{new_key}"), None).await;
    let secret = stored_secret(&app, "token_configs", "client_secret", &config_id).await;
    let password = stored_secret(&app, "email_accounts", "password", &account_id).await;
    assert!(secret.starts_with("new:") && password.starts_with("new:"));
    assert_eq!(
        new_only.cipher.decrypt(location(&tenant, "token_configs", "client_secret", &config_id), &secret).expect("secret"),
        "ms-client-secret-value"
    );
    assert_eq!(
        new_only.cipher.decrypt(location(&tenant, "email_accounts", "password", &account_id), &password).expect("password"),
        "app-password-1"
    );
    for column in ["secret", "previous_secret"] {
        assert!(stored_secret(&app, "webhook_endpoints", column, &hook_id).await.starts_with("new:"), "{column}");
    }
    let stored_hook_secret = stored_secret(&app, "webhook_endpoints", "secret", &hook_id).await;
    assert_eq!(
        new_only.cipher.decrypt(location(&tenant, "webhook_endpoints", "secret", &hook_id), &stored_hook_secret).expect("hook"),
        hook_secret
    );
}
