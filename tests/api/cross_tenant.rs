//! Tenant isolation: another tenant's rows answer 404 (never 403) on every route and GraphQL field, never
//! appear in lists, cannot be referenced, and stay unchanged whatever the other tenant tries.

use postbridge_core::model::Role;
use postbridge_tests::{assert_error, graphql_error_code, spawn_app, Reply, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

/// Tenant A owns a token configuration, an account using it and a spare API key; tenant B has its own admin.
struct World {
    a: String,
    a_admin: String,
    a_key_id: String,
    a_key: String,
    a_config: String,
    a_account: String,
    b: String,
    b_admin: String,
    /// A JWT for an admin of B, the other kind of tenant credential.
    b_jwt: String,
}

async fn world(app: &TestApp) -> World {
    let (a, a_admin) = app.tenant_with_admin().await;
    let (b, b_admin) = app.tenant_with_admin().await;
    let (a_key_id, a_key) = app.api_key_with_id(&a_admin, None, "viewer").await;
    let config = app.post("/v1/token-configs", &a_admin, TestApp::microsoft_config()).await;
    assert_eq!(config.status, StatusCode::CREATED, "{}", config.text);
    let a_config = config.id();
    let account = app
        .post(
            "/v1/accounts",
            &a_admin,
            json!({"protocol": "imap", "auth": "oauth2", "login": "shared@contoso.com", "token_config_id": a_config}),
        )
        .await;
    assert_eq!(account.status, StatusCode::CREATED, "{}", account.text);
    let a_account = account.id();
    let b_id = Uuid::parse_str(&b).expect("uuid");
    let b_jwt = app.ctx.jwt.issue("bob@b.example.com", Role::Admin, Some(b_id.into()), None).expect("issue").access_token;
    World { a, a_admin, a_key_id, a_key, a_config, a_account, b, b_admin, b_jwt }
}

/// A's rows as A (and the operator) see them.
async fn snapshot(app: &TestApp, w: &World) -> Vec<Value> {
    let mut rows = Vec::new();
    for path in [
        format!("/v1/api-keys/{}", w.a_key_id),
        format!("/v1/token-configs/{}", w.a_config),
        format!("/v1/accounts/{}", w.a_account),
    ] {
        let reply = app.get(&path, &w.a_admin).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text);
        rows.push(reply.body);
    }
    let tenant = app.get(&format!("/v1/tenants/{}", w.a), &app.operator_token()).await;
    assert_eq!(tenant.status, StatusCode::OK, "{}", tenant.text);
    rows.push(tenant.body);
    rows
}

/// A's rows are as they were, and A's spare key still works.
async fn assert_a_unchanged(app: &TestApp, w: &World, before: &[Value]) {
    assert_eq!(snapshot(app, w).await, before, "tenant A's rows changed");
    assert_eq!(before[0]["revoked_at"], Value::Null);
    assert_eq!(before[3]["status"], json!("active"));
    let reply = app.get("/v1/accounts", &w.a_key).await;
    assert_eq!(reply.status, StatusCode::OK, "A's key stopped working: {}", reply.text);
}

fn ids_in(items: &Value) -> Vec<String> {
    items
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {items}"))
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn every_rest_route_on_another_tenants_resource_answers_not_found() {
    let app = spawn_app().await;
    let w = world(&app).await;
    let before = snapshot(&app, &w).await;
    let rename = json!({"name": "hijacked"});
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/v1/api-keys/{}", w.a_key_id), None),
        (Method::DELETE, format!("/v1/api-keys/{}", w.a_key_id), None),
        (Method::GET, format!("/v1/token-configs/{}", w.a_config), None),
        (Method::PATCH, format!("/v1/token-configs/{}", w.a_config), Some(rename.clone())),
        (Method::DELETE, format!("/v1/token-configs/{}", w.a_config), None),
        (Method::GET, format!("/v1/accounts/{}", w.a_account), None),
        (Method::PATCH, format!("/v1/accounts/{}", w.a_account), Some(json!({"name": "hijacked", "enabled": false}))),
        (Method::DELETE, format!("/v1/accounts/{}", w.a_account), None),
        (Method::GET, format!("/v1/tenants/{}", w.a), None),
        (Method::PATCH, format!("/v1/tenants/{}", w.a), Some(json!({"name": "hijacked", "status": "suspended"}))),
        (Method::POST, format!("/v1/tenants/{}/suspend", w.a), Some(json!({}))),
        (Method::POST, format!("/v1/tenants/{}/resume", w.a), Some(json!({}))),
        (Method::DELETE, format!("/v1/tenants/{}", w.a), None),
    ];
    for token in [&w.b_admin, &w.b_jwt] {
        for (method, path, body) in &routes {
            let reply = app.request(method.clone(), path, Some(token), None, body.clone()).await;
            assert_eq!((reply.status, reply.code()), (StatusCode::NOT_FOUND, "not_found"), "{method} {path}: {}", reply.text);
            // Word for word what an id that exists nowhere answers: nothing tells B the row exists.
            let nowhere = path
                .replace(&w.a_key_id, &Uuid::new_v4().to_string())
                .replace(&w.a_config, &Uuid::new_v4().to_string())
                .replace(&w.a_account, &Uuid::new_v4().to_string())
                .replace(&w.a, &Uuid::new_v4().to_string());
            let missing = app.request(method.clone(), &nowhere, Some(token), None, body.clone()).await;
            assert_eq!((reply.status, &reply.body), (missing.status, &missing.body), "{method} {path}");
        }
        // API keys have no PATCH route at all (405 with Allow): B's answer is the same as A's own.
        let path = format!("/v1/api-keys/{}", w.a_key_id);
        let b_reply = app.request(Method::PATCH, &path, Some(token), None, Some(rename.clone())).await;
        let a_reply = app.request(Method::PATCH, &path, Some(&w.a_admin), None, Some(rename.clone())).await;
        assert_eq!(b_reply.status, StatusCode::METHOD_NOT_ALLOWED, "{}", b_reply.text);
        assert_eq!((b_reply.status, &b_reply.text), (a_reply.status, &a_reply.text));
    }
    assert_a_unchanged(&app, &w, &before).await;
}

#[tokio::test]
async fn every_graphql_field_taking_an_id_answers_not_found_for_another_tenant() {
    let app = spawn_app().await;
    let w = world(&app).await;
    let before = snapshot(&app, &w).await;
    let (k, c, a, t) = (&w.a_key_id, &w.a_config, &w.a_account, &w.a);
    let operations = [
        ("query($id: UUID!) { apiKey(id: $id) { id prefix } }", k),
        ("query($id: UUID!) { tokenConfig(id: $id) { id name } }", c),
        ("query($id: UUID!) { account(id: $id) { id login } }", a),
        ("query($id: UUID!) { tenant(id: $id) { id name } }", t),
        ("mutation($id: UUID!) { revokeApiKey(id: $id) { id revokedAt } }", k),
        ("mutation($id: UUID!) { updateTokenConfig(id: $id, input: {name: \"hijacked\"}) { id } }", c),
        ("mutation($id: UUID!) { deleteTokenConfig(id: $id) }", c),
        ("mutation($id: UUID!) { updateAccount(id: $id, input: {name: \"hijacked\", enabled: false}) { id } }", a),
        ("mutation($id: UUID!) { deleteAccount(id: $id) }", a),
        ("mutation($id: UUID!) { updateTenant(id: $id, input: {name: \"hijacked\"}) { id } }", t),
        ("mutation($id: UUID!) { suspendTenant(id: $id) { id } }", t),
        ("mutation($id: UUID!) { resumeTenant(id: $id) { id } }", t),
        ("mutation($id: UUID!) { deleteTenant(id: $id) }", t),
    ];
    for token in [&w.b_admin, &w.b_jwt] {
        for (operation, id) in operations {
            let body = app.graphql(Some(token), operation, json!({"id": id})).await;
            assert_eq!(graphql_error_code(&body), "not_found", "{operation}: {body}");
            assert!(body["data"].is_null(), "{operation}: {body}");
            let missing = app.graphql(Some(token), operation, json!({"id": Uuid::new_v4()})).await;
            assert_eq!(body["errors"][0]["message"], missing["errors"][0]["message"], "{operation}");
        }
    }
    // The same operations work for A: the ids are real.
    let own = app.graphql(Some(&w.a_admin), operations[2].0, json!({"id": a})).await;
    assert_eq!(own["data"]["account"]["id"], json!(a), "{own}");
    assert_a_unchanged(&app, &w, &before).await;
}

#[tokio::test]
async fn another_tenants_rows_never_appear_in_lists() {
    let app = spawn_app().await;
    let w = world(&app).await;
    let b_config = app.post("/v1/token-configs", &w.b_admin, TestApp::microsoft_config()).await.id();
    let b_account = app.post("/v1/accounts", &w.b_admin, TestApp::smtp_account("b@b.example.com")).await.id();
    let a_ids = [&w.a_key_id, &w.a_config, &w.a_account, &w.a];

    for token in [&w.b_admin, &w.b_jwt] {
        let mut b_seen = Vec::new();
        for path in ["/v1/api-keys", "/v1/token-configs", "/v1/accounts"] {
            let reply = app.get(path, token).await;
            assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text);
            for id in a_ids {
                assert!(!reply.text.contains(id.as_str()), "{path} shows A's {id}: {}", reply.text);
            }
            for row in reply.body["items"].as_array().expect("items") {
                assert_eq!(row["tenant_id"], json!(w.b), "{path}: {row}");
            }
            b_seen.extend(ids_in(&reply.body["items"]));
        }
        assert!(b_seen.contains(&b_config) && b_seen.contains(&b_account), "B's lists hold B's own rows: {b_seen:?}");

        let gql = app
            .graphql(
                Some(token),
                "{ apiKeys { items { id tenantId } } tokenConfigs { items { id tenantId } } accounts { items { id tenantId } } }",
                json!({}),
            )
            .await;
        assert!(gql["errors"].is_null(), "{gql}");
        for list in ["apiKeys", "tokenConfigs", "accounts"] {
            for row in gql["data"][list]["items"].as_array().expect("items") {
                assert_eq!(row["tenantId"], json!(w.b), "{list}: {row}");
            }
        }
        let text = gql.to_string();
        assert!(a_ids.iter().all(|id| !text.contains(id.as_str())), "{text}");
        // B cannot list tenants at all.
        assert_error(&app.get("/v1/tenants", token).await, StatusCode::FORBIDDEN, "forbidden");
    }
    // And the other way round.
    let a_accounts = app.get("/v1/accounts", &w.a_admin).await;
    assert_eq!(ids_in(&a_accounts.body["items"]), [w.a_account.as_str()]);
    let a_configs = app.get("/v1/token-configs", &w.a_admin).await;
    assert_eq!(ids_in(&a_configs.body["items"]), [w.a_config.as_str()]);
}

#[tokio::test]
async fn an_account_cannot_reference_another_tenants_token_config() {
    let app = spawn_app().await;
    let w = world(&app).await;
    let before = snapshot(&app, &w).await;
    let oauth_account =
        |config: &str| json!({"protocol": "smtp", "auth": "oauth2", "login": "bob@b.example.com", "token_config_id": config});

    let reply = app.post("/v1/accounts", &w.b_admin, oauth_account(&w.a_config)).await;
    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "unknown_token_config");
    assert_eq!(reply.body["field"], json!("token_config_id"), "{}", reply.text);
    // Indistinguishable from an id that exists nowhere.
    let missing = app.post("/v1/accounts", &w.b_admin, oauth_account(&Uuid::new_v4().to_string())).await;
    assert_eq!(missing.body, reply.body);

    let create = "mutation($id: UUID!) { createAccount(input: {protocol: SMTP, auth: OAUTH_2, login: \"bob@b.example.com\", tokenConfigId: $id}) { id } }";
    let body = app.graphql(Some(&w.b_admin), create, json!({"id": w.a_config})).await;
    assert_eq!(graphql_error_code(&body), "unknown_token_config", "{body}");
    assert_eq!(body["errors"][0]["extensions"]["field"], json!("token_config_id"), "{body}");

    // Re-pointing B's own account at A's configuration fails the same way and leaves the account as it was.
    let b_account = app.post("/v1/accounts", &w.b_admin, TestApp::smtp_account("bob@b.example.com")).await.id();
    let b_before = app.get(&format!("/v1/accounts/{b_account}"), &w.b_admin).await.body;
    let patch = json!({"auth": "oauth2", "token_config_id": w.a_config});
    let reply = app.patch(&format!("/v1/accounts/{b_account}"), &w.b_admin, patch).await;
    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "unknown_token_config");
    assert_eq!(reply.body["field"], json!("token_config_id"));
    assert_eq!(app.get(&format!("/v1/accounts/{b_account}"), &w.b_admin).await.body, b_before);
    assert_eq!(ids_in(&app.get("/v1/accounts", &w.b_admin).await.body["items"]), [b_account], "nothing else was created in B");

    // B's own configuration works: the refusal is about the tenant, not the body.
    let b_config = app.post("/v1/token-configs", &w.b_admin, TestApp::microsoft_config()).await.id();
    let ok = app.post("/v1/accounts", &w.b_admin, oauth_account(&b_config)).await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.text);
    assert_a_unchanged(&app, &w, &before).await;
}

#[tokio::test]
async fn an_operator_acting_in_one_tenant_cannot_reach_another_tenants_rows() {
    let app = spawn_app().await;
    let w = world(&app).await;
    let before = snapshot(&app, &w).await;
    let op = app.operator_token();
    let in_b = |method: Method, path: String, body: Option<Value>| {
        let (app, op, b) = (&app, &op, &w.b);
        async move { app.request(method, &path, Some(op), Some(b), body).await }
    };
    let refused: Vec<Reply> = vec![
        in_b(Method::GET, format!("/v1/accounts/{}", w.a_account), None).await,
        in_b(Method::PATCH, format!("/v1/accounts/{}", w.a_account), Some(json!({"name": "hijacked"}))).await,
        in_b(Method::DELETE, format!("/v1/accounts/{}", w.a_account), None).await,
        in_b(Method::GET, format!("/v1/token-configs/{}", w.a_config), None).await,
        in_b(Method::DELETE, format!("/v1/token-configs/{}", w.a_config), None).await,
        in_b(Method::GET, format!("/v1/api-keys/{}", w.a_key_id), None).await,
        in_b(Method::DELETE, format!("/v1/api-keys/{}", w.a_key_id), None).await,
    ];
    for reply in &refused {
        assert_error(reply, StatusCode::NOT_FOUND, "not_found");
    }
    let list = in_b(Method::GET, "/v1/accounts".to_owned(), None).await;
    assert_eq!((list.status, &list.body["items"]), (StatusCode::OK, &json!([])), "{}", list.text);
    let query = json!({"query": "query($id: UUID!) { account(id: $id) { id } }", "variables": {"id": w.a_account}});
    let body = app.request(Method::POST, "/graphql", Some(&op), Some(&w.b), Some(query.clone())).await.body;
    assert_eq!(graphql_error_code(&body), "not_found", "{body}");

    // Naming A reaches it.
    let reply = app.request(Method::GET, &format!("/v1/accounts/{}", w.a_account), Some(&op), Some(&w.a), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let body = app.request(Method::POST, "/graphql", Some(&op), Some(&w.a), Some(query)).await.body;
    assert_eq!(body["data"]["account"]["id"], json!(w.a_account), "{body}");
    assert_a_unchanged(&app, &w, &before).await;
}

#[tokio::test]
async fn a_tenant_credential_naming_another_tenant_in_the_header_gets_not_found() {
    let app = spawn_app().await;
    let w = world(&app).await;
    let before = snapshot(&app, &w).await;
    let nowhere = Uuid::new_v4().to_string();
    for token in [&w.b_admin, &w.b_jwt] {
        for tenant in [&w.a, &nowhere] {
            for (method, path, body) in [
                (Method::GET, "/v1/accounts".to_owned(), None),
                (Method::GET, format!("/v1/accounts/{}", w.a_account), None),
                (Method::POST, "/v1/accounts".to_owned(), Some(TestApp::smtp_account("intruder@b.example.com"))),
                (Method::GET, "/v1/token-configs".to_owned(), None),
                (Method::POST, "/v1/api-keys".to_owned(), Some(json!({"name": "backdoor", "role": "admin"}))),
            ] {
                let reply = app.request(method, &path, Some(token), Some(tenant), body).await;
                assert_error(&reply, StatusCode::NOT_FOUND, "not_found");
            }
            let query = json!({"query": "{ accounts { items { id } } }"});
            let body = app.request(Method::POST, "/graphql", Some(token), Some(tenant), Some(query)).await.body;
            assert_eq!(graphql_error_code(&body), "not_found", "{body}");
        }
        // Naming its own tenant is allowed.
        let own = app.request(Method::GET, "/v1/accounts", Some(token), Some(&w.b), None).await;
        assert_eq!(own.status, StatusCode::OK, "{}", own.text);
    }
    let a_keys = app.get("/v1/api-keys", &w.a_admin).await;
    assert_eq!(a_keys.body["items"].as_array().map(Vec::len), Some(2), "no key was added to A: {}", a_keys.text);
    assert_eq!(ids_in(&app.get("/v1/accounts", &w.a_admin).await.body["items"]), [w.a_account.as_str()]);
    assert_a_unchanged(&app, &w, &before).await;
}
