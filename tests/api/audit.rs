//! The audit log: every configuration change with who, when and which fields, never a secret's value.

use postbridge_tests::{assert_error, graphql_error_code, spawn_app, TestApp};
use reqwest::{Method, StatusCode};
use sea_orm::ConnectionTrait;
use serde_json::{json, Value};

const CLIENT_SECRET: &str = "audit-client-secret-1";
const NEW_CLIENT_SECRET: &str = "audit-client-secret-2";
const PASSWORD: &str = "audit-mailbox-password-1";

async fn audit_log(app: &TestApp, token: &str, query: &str) -> Vec<Value> {
    let reply = app.get(&format!("/v1/audit-log{query}"), token).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body["items"].as_array().cloned().unwrap_or_default()
}

fn actions(entries: &[Value]) -> Vec<&str> {
    entries.iter().filter_map(|e| e["action"].as_str()).collect()
}

/// An admin changes a token configuration, an account and an API key: each change is one entry, newest first.
async fn admin_changes_everything(app: &TestApp, admin: &str) -> (String, String, String) {
    let config = app.post("/v1/token-configs", admin, with_secret(TestApp::microsoft_config(), CLIENT_SECRET)).await;
    assert_eq!(config.status, StatusCode::CREATED, "{}", config.text);
    let config_id = config.id();
    let updated = app
        .patch(&format!("/v1/token-configs/{config_id}"), admin, json!({"client_secret": NEW_CLIENT_SECRET, "name": "Renamed"}))
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.text);
    let account = app.post("/v1/accounts", admin, with_secret(TestApp::smtp_account("sales@example.com"), PASSWORD)).await;
    assert_eq!(account.status, StatusCode::CREATED, "{}", account.text);
    let account_id = account.id();
    let patched = app.patch(&format!("/v1/accounts/{account_id}"), admin, json!({"name": "Sales"})).await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    let key = app.post("/v1/api-keys", admin, json!({"name": "integration", "role": "viewer"})).await;
    assert_eq!(key.status, StatusCode::CREATED, "{}", key.text);
    let key_id = key.body["api_key"]["id"].as_str().expect("key id").to_owned();
    let revoked = app.delete(&format!("/v1/api-keys/{key_id}"), admin).await;
    assert!(revoked.status.is_success(), "{}", revoked.text);
    let deleted = app.delete(&format!("/v1/accounts/{account_id}"), admin).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    (config_id, account_id, key_id)
}

fn with_secret(mut body: Value, secret: &str) -> Value {
    let field = if body.get("client_secret").is_some() { "client_secret" } else { "password" };
    body[field] = json!(secret);
    body
}

#[tokio::test]
async fn configuration_changes_are_logged_with_actor_and_fields_but_never_secret_values() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let (config_id, account_id, key_id) = admin_changes_everything(&app, &admin).await;

    let entries = audit_log(&app, &admin, "").await;
    assert_eq!(
        actions(&entries),
        [
            "account.deleted",
            "api_key.revoked",
            "api_key.created",
            "account.updated",
            "account.created",
            "token_config.updated",
            "token_config.created",
            "api_key.created",
            "tenant.created",
        ],
        "{entries:?}"
    );
    // The operator made the tenant and its first key (the harness's admin key); that key made the rest.
    let admin_key_actor = entries[0]["actor"].as_str().expect("actor").to_owned();
    assert!(admin_key_actor.starts_with("apikey:"), "{admin_key_actor}");
    assert!(entries[..7].iter().all(|e| e["actor"] == json!(admin_key_actor) && e["actor_role"] == json!("admin")));
    assert!(entries[7..].iter().all(|e| e["actor"] == json!("operator") && e["actor_role"] == json!("operator")));
    assert!(entries.iter().all(|e| e["tenant_id"] == json!(tenant)));

    let config_update = &entries[5];
    assert_eq!(config_update["resource_type"], json!("token_config"));
    assert_eq!(config_update["resource_id"], json!(config_id));
    assert_eq!(config_update["changes"], json!({"client_secret": "(secret changed)", "name": "Renamed"}));
    let account_created = &entries[4];
    assert_eq!(account_created["resource_id"], json!(account_id));
    assert_eq!(account_created["changes"]["password"], json!("(secret changed)"));
    assert_eq!(account_created["changes"]["login"], json!("sales@example.com"));
    assert_eq!(entries[1]["resource_id"], json!(key_id));

    // Neither the API nor the stored rows hold any secret value.
    let everything = app.get("/v1/audit-log", &admin).await.text;
    let stored = app
        .ctx
        .db
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT changes::text AS changes FROM audit_log".to_owned(),
        ))
        .await
        .expect("audit rows");
    let stored: Vec<String> = stored.iter().map(|r| r.try_get::<String>("", "changes").expect("changes")).collect();
    for secret in [CLIENT_SECRET, NEW_CLIENT_SECRET, PASSWORD, admin.as_str()] {
        assert!(!everything.contains(secret), "the audit API leaked a secret");
        assert!(stored.iter().all(|c| !c.contains(secret)), "the audit table holds a secret");
    }
}

#[tokio::test]
async fn a_refused_change_writes_no_entry() {
    let app = spawn_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let before = audit_log(&app, &admin, "").await.len();
    let bad = app.post("/v1/token-configs", &admin, json!({"name": "x", "provider": "microsoft", "client_id": ""})).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.text);
    let bad_account = app.post("/v1/accounts", &admin, json!({"protocol": "smtp", "auth": "password", "login": "nope"})).await;
    assert_eq!(bad_account.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad_account.text);
    assert_eq!(audit_log(&app, &admin, "").await.len(), before);
}

#[tokio::test]
async fn tenants_see_only_their_own_log_and_only_admins_read_it() {
    let app = spawn_app().await;
    let (tenant_a, admin_a) = app.tenant_with_admin().await;
    let (_, admin_b) = app.tenant_with_admin().await;
    let (config_id, _, _) = admin_changes_everything(&app, &admin_a).await;

    let b_entries = audit_log(&app, &admin_b, "").await;
    assert_eq!(actions(&b_entries), ["api_key.created", "tenant.created"], "tenant B sees only its own: {b_entries:?}");
    assert!(audit_log(&app, &admin_b, &format!("?resource_id={config_id}")).await.is_empty());
    // Naming another tenant is answered as if it did not exist.
    let cross = app.request(Method::GET, "/v1/audit-log", Some(&admin_b), Some(&tenant_a), None).await;
    assert_error(&cross, StatusCode::NOT_FOUND, "not_found");

    let filtered = audit_log(&app, &admin_a, &format!("?resource_id={config_id}")).await;
    assert_eq!(actions(&filtered), ["token_config.updated", "token_config.created"]);
    let by_type = audit_log(&app, &admin_a, "?resource_type=api_key&limit=2").await;
    assert_eq!(actions(&by_type), ["api_key.revoked", "api_key.created"]);
    let first_page = app.get("/v1/audit-log?limit=3", &admin_a).await;
    let cursor = first_page.body["next_cursor"].as_str().expect("a next page").to_owned();
    let second_page = audit_log(&app, &admin_a, &format!("?limit=3&cursor={cursor}")).await;
    let first_ids: Vec<&Value> = first_page.body["items"].as_array().expect("items").iter().map(|e| &e["id"]).collect();
    assert_eq!(second_page.len(), 3);
    assert!(second_page.iter().all(|e| !first_ids.contains(&&e["id"])), "pages do not overlap");

    for role in ["viewer", "member"] {
        let key = app.api_key(&tenant_a, role).await;
        assert_error(&app.get("/v1/audit-log", &key).await, StatusCode::FORBIDDEN, "forbidden");
    }
}

#[tokio::test]
async fn operators_see_tenant_lifecycle_including_deleted_tenants() {
    let app = spawn_app().await;
    let operator = app.operator_token();
    let tenant = app.create_tenant("audited").await;
    let renamed = app.patch(&format!("/v1/tenants/{tenant}"), &operator, json!({"name": "Audited Inc"})).await;
    assert_eq!(renamed.status, StatusCode::OK, "{}", renamed.text);
    let suspended = app.post(&format!("/v1/tenants/{tenant}/suspend"), &operator, json!({})).await;
    assert_eq!(suspended.status, StatusCode::OK, "{}", suspended.text);

    let in_tenant = app.request(Method::GET, "/v1/audit-log", Some(&operator), Some(&tenant), None).await;
    assert_eq!(in_tenant.status, StatusCode::OK, "{}", in_tenant.text);
    let entries = in_tenant.body["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(actions(&entries), ["tenant.updated", "tenant.updated", "tenant.created"]);
    assert_eq!(entries[0]["changes"], json!({"status": "suspended"}));
    assert_eq!(entries[1]["changes"], json!({"name": "Audited Inc"}));

    let deleted = app.delete(&format!("/v1/tenants/{tenant}"), &operator).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    let all = audit_log(&app, &operator, "").await;
    assert_eq!(all[0]["action"], json!("tenant.deleted"));
    assert_eq!(all[0]["resource_id"], json!(tenant));
    assert_eq!(all[0]["tenant_id"], Value::Null, "kept outside the deleted tenant: {:?}", all[0]);
}

#[tokio::test]
async fn graphql_reads_the_same_log() {
    let app = spawn_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    admin_changes_everything(&app, &admin).await;
    let query = "query($type: String) { auditLog(resourceType: $type, limit: 10) { items { action actor changes } nextCursor } }";
    let body = app.graphql(Some(&admin), query, json!({"type": "token_config"})).await;
    let items = body["data"]["auditLog"]["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(actions(&items), ["token_config.updated", "token_config.created"], "{body}");
    assert_eq!(items[0]["changes"]["client_secret"], json!("(secret changed)"));
    let viewer_body = {
        let (tenant, _) = app.tenant_with_admin().await;
        let viewer = app.api_key(&tenant, "viewer").await;
        app.graphql(Some(&viewer), query, json!({})).await
    };
    assert_eq!(graphql_error_code(&viewer_body), "forbidden", "{viewer_body}");
}

#[tokio::test]
async fn a_field_cleared_with_null_is_logged_as_cleared() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let operator = app.operator_token();
    for limit in [json!(100), Value::Null] {
        let reply = app.patch(&format!("/v1/tenants/{tenant}"), &operator, json!({"api_rate_limit_per_minute": limit})).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    }
    let entries = audit_log(&app, &admin, "?resource_type=tenant").await;
    let changes: Vec<&Value> = entries.iter().filter(|e| e["action"] == "tenant.updated").map(|e| &e["changes"]).collect();
    // Newest first: the clearing, then the setting.
    assert_eq!(changes, vec![&json!({"api_rate_limit_per_minute": null}), &json!({"api_rate_limit_per_minute": 100})]);
}
