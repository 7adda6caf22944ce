//! Tenants: the operator's lifecycle over REST and GraphQL, pagination, validation, and what a tenant
//! credential may see of tenants.

use std::collections::HashSet;

use postbridge_core::model::Role;
use postbridge_tests::{assert_error, graphql_error_code, spawn_app, Reply, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

const TENANT_FIELDS: &str = "id slug name status createdAt updatedAt";

fn ids_of(items: &Value) -> Vec<String> {
    items.as_array().expect("items").iter().map(|t| t["id"].as_str().expect("id").to_owned()).collect()
}

/// Sends `body` as is (not necessarily JSON) with the operator token.
async fn send_raw(app: &TestApp, method: Method, path: &str, body: &'static str) -> Reply {
    let resp = app
        .http
        .request(method, format!("{}{path}", app.address))
        .bearer_auth(app.operator_token())
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request sent");
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply { status, body, text }
}

/// A GraphQL call by the operator; panics on errors and returns `data`.
async fn gql_ok(app: &TestApp, query: &str, variables: Value) -> Value {
    let body = app.graphql(Some(&app.operator_token()), query, variables).await;
    assert!(body["errors"].is_null(), "{body}");
    body["data"].clone()
}

#[tokio::test]
async fn an_operator_creates_reads_renames_and_deletes_a_tenant_over_rest() {
    let app = spawn_app().await;
    let op = app.operator_token();
    let created = app.post("/v1/tenants", &op, json!({"slug": "acme", "name": "  Acme Corp  "})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let id = created.id();
    assert!(Uuid::parse_str(&id).is_ok(), "{id}");
    assert_eq!(created.body["slug"], json!("acme"));
    assert_eq!(created.body["name"], json!("Acme Corp"), "names are trimmed");
    assert_eq!(created.body["status"], json!("active"));

    let fetched = app.get(&format!("/v1/tenants/{id}"), &op).await;
    assert_eq!((fetched.status, &fetched.body), (StatusCode::OK, &created.body), "{}", fetched.text);
    let listed = app.get("/v1/tenants", &op).await;
    assert_eq!(listed.body["items"], json!([created.body]), "{}", listed.text);

    let renamed = app.patch(&format!("/v1/tenants/{id}"), &op, json!({"name": "Acme Inc"})).await;
    assert_eq!(renamed.status, StatusCode::OK, "{}", renamed.text);
    assert_eq!((&renamed.body["name"], &renamed.body["slug"]), (&json!("Acme Inc"), &json!("acme")));
    assert_eq!(renamed.body["created_at"], created.body["created_at"]);
    assert_ne!(renamed.body["updated_at"], created.body["updated_at"]);
    assert_eq!(app.get(&format!("/v1/tenants/{id}"), &op).await.body["name"], json!("Acme Inc"));

    // Status changes through PATCH and through the suspend/resume actions.
    let suspended = app.patch(&format!("/v1/tenants/{id}"), &op, json!({"status": "suspended"})).await;
    assert_eq!((suspended.status, &suspended.body["status"]), (StatusCode::OK, &json!("suspended")), "{}", suspended.text);
    let resumed = app.post(&format!("/v1/tenants/{id}/resume"), &op, json!({})).await;
    assert_eq!((resumed.status, &resumed.body["status"]), (StatusCode::OK, &json!("active")), "{}", resumed.text);
    let suspended = app.post(&format!("/v1/tenants/{id}/suspend"), &op, json!({})).await;
    assert_eq!((suspended.status, &suspended.body["status"]), (StatusCode::OK, &json!("suspended")), "{}", suspended.text);

    let deleted = app.delete(&format!("/v1/tenants/{id}"), &op).await;
    assert_eq!((deleted.status, deleted.text.as_str()), (StatusCode::NO_CONTENT, ""));
    assert_error(&app.get(&format!("/v1/tenants/{id}"), &op).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(
        &app.patch(&format!("/v1/tenants/{id}"), &op, json!({"name": "Back"})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(&app.post(&format!("/v1/tenants/{id}/resume"), &op, json!({})).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(&app.delete(&format!("/v1/tenants/{id}"), &op).await, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(app.get("/v1/tenants", &op).await.body["items"], json!([]));
    // The slug is free again.
    let again = app.post("/v1/tenants", &op, json!({"slug": "acme", "name": "Acme again"})).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text);
}

#[tokio::test]
async fn tenants_are_listed_page_by_page_following_the_cursor() {
    let app = spawn_app().await;
    let op = app.operator_token();
    let mut created = HashSet::new();
    for slug in ["alpha", "bravo", "charlie"] {
        created.insert(app.create_tenant(slug).await);
    }

    let first = app.get("/v1/tenants?limit=2", &op).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let mut seen = ids_of(&first.body["items"]);
    assert_eq!(seen.len(), 2, "{}", first.text);
    let cursor = first.body["next_cursor"].as_str().expect("a next cursor after a full page").to_owned();
    assert_eq!(cursor, seen[1], "the cursor is the last id of the page");

    let second = app.get(&format!("/v1/tenants?limit=2&cursor={cursor}"), &op).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.text);
    seen.extend(ids_of(&second.body["items"]));
    assert_eq!(second.body["items"].as_array().map(Vec::len), Some(1), "{}", second.text);
    assert!(second.body["next_cursor"].is_null(), "the last page has no cursor: {}", second.text);
    assert_eq!(seen.len(), 3);
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), created, "every tenant once, no duplicates");

    // A page exactly as long as what is left says there is nothing more.
    let exact = app.get("/v1/tenants?limit=3", &op).await;
    assert_eq!(ids_of(&exact.body["items"]), seen);
    assert!(exact.body["next_cursor"].is_null(), "{}", exact.text);
    let default = app.get("/v1/tenants", &op).await;
    assert_eq!(ids_of(&default.body["items"]), seen, "the default page holds them all, in the same order");

    // GraphQL pages the same way.
    let query = "query($c: UUID) { tenants(limit: 2, cursor: $c) { items { id } nextCursor } }";
    let page1 = gql_ok(&app, query, json!({"c": null})).await;
    let next = page1["tenants"]["nextCursor"].as_str().expect("cursor").to_owned();
    let page2 = gql_ok(&app, query, json!({"c": next})).await;
    let mut gql_seen = ids_of(&page1["tenants"]["items"]);
    gql_seen.extend(ids_of(&page2["tenants"]["items"]));
    assert_eq!(gql_seen, seen);
    assert!(page2["tenants"]["nextCursor"].is_null(), "{page2}");
}

#[tokio::test]
async fn deleting_a_tenant_stops_its_api_keys_and_tokens() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let (other, other_admin) = app.tenant_with_admin().await;
    let account = app.post("/v1/accounts", &admin, TestApp::smtp_account("a@example.com")).await;
    assert_eq!(account.status, StatusCode::CREATED, "{}", account.text);
    let jwt = app
        .ctx
        .jwt
        .issue("alice", Role::Admin, Some(Uuid::parse_str(&tenant).expect("uuid").into()), None)
        .expect("issue")
        .access_token;
    assert_eq!(app.get("/v1/accounts", &jwt).await.status, StatusCode::OK);

    let deleted = app.delete(&format!("/v1/tenants/{tenant}"), &app.operator_token()).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    for token in [&admin, &jwt] {
        assert_error(&app.get("/v1/accounts", token).await, StatusCode::UNAUTHORIZED, "unauthenticated");
        assert_error(&app.get(&format!("/v1/tenants/{tenant}"), token).await, StatusCode::UNAUTHORIZED, "unauthenticated");
    }
    // The operator cannot act in it any more; the other tenant is untouched.
    let reply = app.request(Method::GET, "/v1/accounts", Some(&app.operator_token()), Some(&tenant), None).await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found");
    let other_tenant = app.get(&format!("/v1/tenants/{other}"), &other_admin).await;
    assert_eq!(other_tenant.status, StatusCode::OK, "{}", other_tenant.text);
}

#[tokio::test]
async fn an_operator_manages_tenants_over_graphql() {
    let app = spawn_app().await;
    let create = format!("mutation($input: CreateTenant!) {{ createTenant(input: $input) {{ {TENANT_FIELDS} }} }}");
    let created = gql_ok(&app, &create, json!({"input": {"slug": "globex", "name": "Globex"}})).await["createTenant"].clone();
    assert_eq!((&created["slug"], &created["name"], &created["status"]), (&json!("globex"), &json!("Globex"), &json!("ACTIVE")));
    let id = created["id"].as_str().expect("id").to_owned();
    // GraphQL and REST show the same tenant.
    let rest = app.get(&format!("/v1/tenants/{id}"), &app.operator_token()).await;
    assert_eq!((&rest.body["slug"], &rest.body["status"]), (&json!("globex"), &json!("active")), "{}", rest.text);

    let listed = gql_ok(&app, "{ tenants { items { id slug } nextCursor } }", json!({})).await;
    assert_eq!(listed["tenants"], json!({"items": [{"id": id, "slug": "globex"}], "nextCursor": null}));
    let fetched =
        gql_ok(&app, &format!("query($id: UUID!) {{ tenant(id: $id) {{ {TENANT_FIELDS} }} }}"), json!({"id": id})).await;
    assert_eq!(fetched["tenant"], created);

    let update = "mutation($id: UUID!, $input: UpdateTenant!) { updateTenant(id: $id, input: $input) { name status } }";
    let renamed = gql_ok(&app, update, json!({"id": id, "input": {"name": "Globex Corp"}})).await;
    assert_eq!(renamed["updateTenant"], json!({"name": "Globex Corp", "status": "ACTIVE"}));

    let key = app.api_key(&id, "admin").await;
    let suspended = gql_ok(&app, "mutation($id: UUID!) { suspendTenant(id: $id) { status } }", json!({"id": id})).await;
    assert_eq!(suspended["suspendTenant"]["status"], json!("SUSPENDED"));
    assert_error(&app.get("/v1/accounts", &key).await, StatusCode::FORBIDDEN, "tenant_suspended");
    let resumed = gql_ok(&app, "mutation($id: UUID!) { resumeTenant(id: $id) { status } }", json!({"id": id})).await;
    assert_eq!(resumed["resumeTenant"]["status"], json!("ACTIVE"));
    assert_eq!(app.get("/v1/accounts", &key).await.status, StatusCode::OK);

    let deleted = gql_ok(&app, "mutation($id: UUID!) { deleteTenant(id: $id) }", json!({"id": id})).await;
    assert_eq!(deleted["deleteTenant"], json!(id));
    let gone = app.graphql(Some(&app.operator_token()), "query($id: UUID!) { tenant(id: $id) { id } }", json!({"id": id})).await;
    assert_eq!(graphql_error_code(&gone), "not_found", "{gone}");
    let again =
        app.graphql(Some(&app.operator_token()), "mutation($id: UUID!) { deleteTenant(id: $id) }", json!({"id": id})).await;
    assert_eq!(graphql_error_code(&again), "not_found", "{again}");
    assert_error(&app.get("/v1/accounts", &key).await, StatusCode::UNAUTHORIZED, "unauthenticated");
}

#[tokio::test]
async fn a_duplicate_slug_is_a_conflict() {
    let app = spawn_app().await;
    let op = app.operator_token();
    let first = app.create_tenant("acme").await;
    for slug in ["acme", "  acme  "] {
        let reply = app.post("/v1/tenants", &op, json!({"slug": slug, "name": "Another Acme"})).await;
        assert_error(&reply, StatusCode::CONFLICT, "slug_taken");
    }
    let body =
        app.graphql(Some(&op), "mutation { createTenant(input: {slug: \"acme\", name: \"Again\"}) { id } }", json!({})).await;
    assert_eq!(graphql_error_code(&body), "slug_taken", "{body}");
    let list = app.get("/v1/tenants", &op).await;
    assert_eq!(ids_of(&list.body["items"]), [first]);
    assert_eq!(list.body["items"][0]["name"], json!("Tenant acme"), "the first tenant is untouched");
}

#[tokio::test]
async fn an_invalid_slug_is_rejected_naming_the_field() {
    let app = spawn_app().await;
    let op = app.operator_token();
    let too_long = "a".repeat(64);
    for slug in ["", "a", "Acme", "-acme", "acme-", "ac me", "acme_co", "acmé", "acme.io", too_long.as_str()] {
        let reply = app.post("/v1/tenants", &op, json!({"slug": slug, "name": "Acme"})).await;
        assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_slug");
        assert_eq!(reply.body["field"], json!("slug"), "{slug:?}: {}", reply.text);
    }
    let body =
        app.graphql(Some(&op), "mutation { createTenant(input: {slug: \"Bad Slug\", name: \"Acme\"}) { id } }", json!({})).await;
    assert_eq!(graphql_error_code(&body), "invalid_slug", "{body}");
    assert_eq!(body["errors"][0]["extensions"]["field"], json!("slug"), "{body}");
    // The limits themselves are fine.
    for slug in ["ab", "a-1", &"a".repeat(63)] {
        let reply = app.post("/v1/tenants", &op, json!({"slug": slug, "name": "Ok"})).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{slug}: {}", reply.text);
    }
    assert_eq!(app.get("/v1/tenants", &op).await.body["items"].as_array().map(Vec::len), Some(3), "only valid slugs were stored");
}

#[tokio::test]
async fn an_empty_tenant_name_is_required() {
    let app = spawn_app().await;
    let op = app.operator_token();
    for name in ["", "   "] {
        let reply = app.post("/v1/tenants", &op, json!({"slug": "acme", "name": name})).await;
        assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "required");
        assert_eq!(reply.body["field"], json!("name"), "{}", reply.text);
    }
    assert_eq!(app.get("/v1/tenants", &op).await.body["items"], json!([]));

    let id = app.create_tenant("acme").await;
    let reply = app.patch(&format!("/v1/tenants/{id}"), &op, json!({"name": " "})).await;
    assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "required");
    assert_eq!(reply.body["field"], json!("name"));
    let body = app
        .graphql(Some(&op), "mutation($id: UUID!) { updateTenant(id: $id, input: {name: \"\"}) { id } }", json!({"id": id}))
        .await;
    assert_eq!(graphql_error_code(&body), "required", "{body}");
    assert_eq!(app.get(&format!("/v1/tenants/{id}"), &op).await.body["name"], json!("Tenant acme"), "nothing changed");
}

#[tokio::test]
async fn a_page_limit_out_of_range_is_rejected() {
    let app = spawn_app().await;
    let op = app.operator_token();
    app.create_tenant("acme").await;
    for limit in ["0", "201"] {
        let reply = app.get(&format!("/v1/tenants?limit={limit}"), &op).await;
        assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_limit");
        assert_eq!(reply.body["field"], json!("limit"));
    }
    assert_eq!(app.get("/v1/tenants?limit=200", &op).await.status, StatusCode::OK);
    let body = app.graphql(Some(&op), "{ tenants(limit: 0) { items { id } } }", json!({})).await;
    assert_eq!(graphql_error_code(&body), "invalid_limit", "{body}");
    // Parameters that cannot be read at all.
    for query in ["limit=-1", "limit=ten", "cursor=not-an-id"] {
        let reply = app.get(&format!("/v1/tenants?{query}"), &op).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_query");
    }
}

#[tokio::test]
async fn a_malformed_json_body_is_a_bad_request() {
    let app = spawn_app().await;
    let id = app.create_tenant("acme").await;
    for body in ["{not json", "", "[]", "{\"slug\": \"globex\"}", "{\"slug\": 42, \"name\": \"Globex\"}"] {
        let reply = send_raw(&app, Method::POST, "/v1/tenants", body).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_body");
    }
    for body in ["{\"name\": ", "{\"status\": \"deleted\"}"] {
        let reply = send_raw(&app, Method::PATCH, &format!("/v1/tenants/{id}"), body).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_body");
    }
    let list = app.get("/v1/tenants", &app.operator_token()).await;
    assert_eq!(ids_of(&list.body["items"]), [id.as_str()], "nothing was created");
    assert_eq!(list.body["items"][0]["name"], json!("Tenant acme"), "nothing was changed");
}

#[tokio::test]
async fn a_path_id_that_is_not_a_uuid_is_a_bad_request() {
    let app = spawn_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let op = app.operator_token();
    for (method, path) in [
        (Method::GET, "/v1/tenants/acme"),
        (Method::PATCH, "/v1/tenants/123"),
        (Method::DELETE, "/v1/tenants/not-a-uuid"),
        (Method::POST, "/v1/tenants/acme/suspend"),
        (Method::POST, "/v1/tenants/acme/resume"),
    ] {
        let reply = app.request(method, path, Some(&op), None, Some(json!({"name": "x"}))).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_id");
    }
    for path in ["/v1/accounts/1", "/v1/token-configs/x", "/v1/api-keys/0000"] {
        assert_error(&app.get(path, &admin).await, StatusCode::BAD_REQUEST, "invalid_id");
    }
}

#[tokio::test]
async fn a_tenant_credential_reads_its_own_tenant_but_no_other() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let viewer = app.api_key(&tenant, "viewer").await;
    let (other, _) = app.tenant_with_admin().await;
    for key in [&admin, &viewer] {
        let own = app.get(&format!("/v1/tenants/{tenant}"), key).await;
        assert_eq!((own.status, own.id()), (StatusCode::OK, tenant.clone()), "{}", own.text);
        let foreign = app.get(&format!("/v1/tenants/{other}"), key).await;
        assert_error(&foreign, StatusCode::NOT_FOUND, "not_found");
        // Exactly what a tenant that does not exist answers.
        let missing = app.get(&format!("/v1/tenants/{}", Uuid::new_v4()), key).await;
        assert_eq!(foreign.body, missing.body);
    }
    let query = "query($id: UUID!) { tenant(id: $id) { id slug } }";
    let own = app.graphql(Some(&viewer), query, json!({"id": tenant})).await;
    assert_eq!(own["data"]["tenant"]["id"], json!(tenant), "{own}");
    let foreign = app.graphql(Some(&viewer), query, json!({"id": other})).await;
    assert_eq!(graphql_error_code(&foreign), "not_found", "{foreign}");
}
