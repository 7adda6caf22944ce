//! Token configurations: CRUD over REST and GraphQL, provider presets, validation, SSRF rules,
//! the write-only client secret, and who may change what.

use postbridge_tests::{assert_error, graphql_error_code, spawn_app, spawn_app_with, with, Reply, TestApp, TestEnv};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

/// `{PUBLIC_URL}/oauth/callback` for the test settings.
/// The deployment's one redirect URI: `{PUBLIC_URL}/oauth/callback`, the app's own address in tests.
fn redirect_uri(app: &TestApp) -> String {
    format!("{}/oauth/callback", app.address)
}
const DIRECTORY_GUID: &str = "6f1c2d3e-4a5b-4c6d-8e9f-0a1b2c3d4e5f";

const GQL_FIELDS: &str = "id tenantId name provider flow clientId clientSecretSet clientSecretExpiresAt directoryTenantId \
                          authUrl tokenUrl scopes extraAuthParams redirectUri";

/// Asserts a 422 validation error with its `code` and `field`.
#[track_caller]
fn assert_invalid(reply: &Reply, code: &str, field: &str) {
    assert_eq!(
        (reply.status, reply.code(), reply.body["field"].as_str().unwrap_or("")),
        (StatusCode::UNPROCESSABLE_ENTITY, code, field),
        "unexpected reply: {}",
        reply.text
    );
}

/// Asserts the first GraphQL error's `extensions.code` and `extensions.field`.
#[track_caller]
fn assert_gql_invalid(body: &Value, code: &str, field: &str) {
    assert_eq!(
        (graphql_error_code(body), body["errors"][0]["extensions"]["field"].as_str().unwrap_or("")),
        (code, field),
        "unexpected GraphQL reply: {body}"
    );
}

fn microsoft() -> Value {
    TestApp::microsoft_config()
}

fn google() -> Value {
    json!({"name": "Gmail", "provider": "google", "client_id": "1234.apps.googleusercontent.com", "client_secret": "google-secret-value"})
}

fn generic_user() -> Value {
    json!({"name": "Generic IdP", "provider": "generic", "client_id": "generic-client", "client_secret": "generic-secret-value",
           "auth_url": "https://idp.example.com/authorize", "token_url": "https://idp.example.com/token",
           "scopes": ["mail.read", "offline_access"]})
}

fn generic_app() -> Value {
    json!({"name": "Generic app", "provider": "generic", "flow": "app", "client_id": "generic-app-client",
           "client_secret": "generic-app-secret", "token_url": "https://idp.example.com/token", "scopes": ["mail.send"]})
}

/// A generic app-flow configuration whose URL is a public IP literal, so strict mode accepts it without DNS.
fn public_generic_app() -> Value {
    with(generic_app(), json!({"token_url": "https://93.184.216.34/oauth/token"}))
}

async fn create(app: &TestApp, key: &str, body: Value) -> Reply {
    app.post("/v1/token-configs", key, body).await
}

#[track_caller]
fn created_id(reply: &Reply) -> String {
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    reply.id()
}

fn scopes_of(body: &Value) -> Vec<String> {
    body["scopes"].as_array().expect("scopes").iter().map(|s| s.as_str().expect("scope").to_owned()).collect()
}

async fn strict_app() -> TestApp {
    let mut env = TestEnv::new();
    env.set("ALLOW_PRIVATE_HOSTS", "false");
    spawn_app_with(env).await
}

// ---- CRUD ----

#[tokio::test]
async fn token_configs_can_be_created_read_listed_updated_and_deleted_over_rest() {
    let app = spawn_app().await;
    let (tenant, key) = app.tenant_with_admin().await;

    let created = create(&app, &key, generic_user()).await;
    let id = created_id(&created);
    assert_eq!(created.body["tenant_id"], json!(tenant));
    assert_eq!(created.body["name"], json!("Generic IdP"));
    assert_eq!(created.body["provider"], json!("generic"));
    assert_eq!(created.body["flow"], json!("user"), "the flow defaults to user");
    assert_eq!(created.body["client_id"], json!("generic-client"));
    assert_eq!(created.body["auth_url"], json!("https://idp.example.com/authorize"));
    assert_eq!(created.body["token_url"], json!("https://idp.example.com/token"));
    assert_eq!(scopes_of(&created.body), ["mail.read", "offline_access"]);
    assert_eq!(created.body["extra_auth_params"], json!({}));
    assert_eq!(created.body["directory_tenant_id"], Value::Null);

    let got = app.get(&format!("/v1/token-configs/{id}"), &key).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert_eq!(got.body, created.body, "GET returns what POST returned");

    let listed = app.get("/v1/token-configs", &key).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    assert_eq!(listed.body["items"], json!([created.body.clone()]));
    assert_eq!(listed.body["next_cursor"], Value::Null);

    let updated = app
        .patch(
            &format!("/v1/token-configs/{id}"),
            &key,
            json!({"name": "  Renamed IdP  ", "client_id": "client-2", "scopes": ["mail.send"],
                   "token_url": "https://idp2.example.com/token", "extra_auth_params": {"login_hint": "x@example.com"},
                   "client_secret": "s3cret-2"}),
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.text);
    assert_eq!(updated.body["name"], json!("Renamed IdP"), "names are trimmed");
    assert_eq!(updated.body["client_id"], json!("client-2"));
    assert_eq!(scopes_of(&updated.body), ["mail.send"]);
    assert_eq!(updated.body["token_url"], json!("https://idp2.example.com/token"));
    assert_eq!(updated.body["auth_url"], json!("https://idp.example.com/authorize"), "fields not in the patch are kept");
    assert_eq!(updated.body["extra_auth_params"], json!({"login_hint": "x@example.com"}));
    assert_eq!(updated.body["created_at"], created.body["created_at"]);
    assert_eq!(app.get(&format!("/v1/token-configs/{id}"), &key).await.body, updated.body, "the update is stored");

    let deleted = app.delete(&format!("/v1/token-configs/{id}"), &key).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    assert_error(&app.get(&format!("/v1/token-configs/{id}"), &key).await, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(app.get("/v1/token-configs", &key).await.body["items"], json!([]));
    assert_error(&app.delete(&format!("/v1/token-configs/{id}"), &key).await, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn token_configs_can_be_created_read_listed_updated_and_deleted_over_graphql() {
    let app = spawn_app().await;
    let (tenant, key) = app.tenant_with_admin().await;

    let created = app
        .graphql(
            Some(&key),
            &format!("mutation($input: CreateTokenConfig!) {{ createTokenConfig(input: $input) {{ {GQL_FIELDS} }} }}"),
            json!({"input": {"name": "M365", "provider": "MICROSOFT", "clientId": "app-id-1", "clientSecret": "gql-secret-value",
                             "directoryTenantId": DIRECTORY_GUID, "clientSecretExpiresAt": "2030-01-31"}}),
        )
        .await;
    assert!(created["errors"].is_null(), "{created}");
    let config = &created["data"]["createTokenConfig"];
    let id = config["id"].as_str().expect("id").to_owned();
    assert_eq!(config["tenantId"], json!(tenant));
    assert_eq!(config["provider"], json!("MICROSOFT"));
    assert_eq!(config["flow"], json!("USER"));
    assert_eq!(config["clientSecretSet"], json!(true));
    assert_eq!(config["clientSecretExpiresAt"], json!("2030-01-31"));
    assert_eq!(config["tokenUrl"], json!(format!("https://login.microsoftonline.com/{DIRECTORY_GUID}/oauth2/v2.0/token")));
    assert_eq!(config["redirectUri"], json!(redirect_uri(&app)));
    assert!(!created.to_string().contains("gql-secret-value"), "the secret is never returned: {created}");

    let one = app
        .graphql(Some(&key), &format!("query($id: UUID!) {{ tokenConfig(id: $id) {{ {GQL_FIELDS} }} }}"), json!({"id": id}))
        .await;
    assert_eq!(&one["data"]["tokenConfig"], config, "{one}");

    let list = app.graphql(Some(&key), &format!("{{ tokenConfigs {{ items {{ {GQL_FIELDS} }} nextCursor }} }}"), json!({})).await;
    assert_eq!(list["data"]["tokenConfigs"]["items"], json!([config.clone()]), "{list}");
    assert_eq!(list["data"]["tokenConfigs"]["nextCursor"], Value::Null);

    let updated = app
        .graphql(
            Some(&key),
            &format!("mutation($id: UUID!, $input: UpdateTokenConfig!) {{ updateTokenConfig(id: $id, input: $input) {{ {GQL_FIELDS} }} }}"),
            json!({"id": id, "input": {"name": "M365 renamed", "clientSecretExpiresAt": null}}),
        )
        .await;
    assert!(updated["errors"].is_null(), "{updated}");
    assert_eq!(updated["data"]["updateTokenConfig"]["name"], json!("M365 renamed"));
    assert_eq!(updated["data"]["updateTokenConfig"]["clientSecretExpiresAt"], Value::Null, "null clears the expiry date");
    assert_eq!(updated["data"]["updateTokenConfig"]["clientSecretSet"], json!(true));

    // Validation errors carry the same code and field as REST.
    let refused = app
        .graphql(
            Some(&key),
            "mutation($id: UUID!, $input: UpdateTokenConfig!) { updateTokenConfig(id: $id, input: $input) { id } }",
            json!({"id": id, "input": {"scopes": ["has space"]}}),
        )
        .await;
    assert_gql_invalid(&refused, "invalid_scope", "scopes");
    let refused = app
        .graphql(
            Some(&key),
            "mutation($input: CreateTokenConfig!) { createTokenConfig(input: $input) { id } }",
            json!({"input": {"name": "No dir", "provider": "MICROSOFT", "clientId": "x", "clientSecret": "y"}}),
        )
        .await;
    assert_gql_invalid(&refused, "required", "directory_tenant_id");

    let deleted = app.graphql(Some(&key), "mutation($id: UUID!) { deleteTokenConfig(id: $id) }", json!({"id": id})).await;
    assert_eq!(deleted["data"]["deleteTokenConfig"], json!(id), "{deleted}");
    let gone = app.graphql(Some(&key), "query($id: UUID!) { tokenConfig(id: $id) { id } }", json!({"id": id})).await;
    assert_eq!(graphql_error_code(&gone), "not_found", "{gone}");
    assert_error(&app.get(&format!("/v1/token-configs/{id}"), &key).await, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn token_config_list_pages_with_limit_and_next_cursor() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(created_id(&create(&app, &key, with(generic_user(), json!({"name": format!("config {n}")}))).await));
    }

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/token-configs?limit=2&cursor={c}"),
            None => "/v1/token-configs?limit=2".to_owned(),
        };
        let page = app.get(&path, &key).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        let items = page.body["items"].as_array().expect("items");
        assert!(items.len() <= 2, "a page holds at most `limit` items");
        seen.extend(items.iter().map(|i| i["id"].as_str().expect("id").to_owned()));
        pages += 1;
        match page.body["next_cursor"].as_str() {
            Some(next) => {
                assert_eq!(Some(next), items.last().and_then(|i| i["id"].as_str()), "the cursor is the last id of the page");
                cursor = Some(next.to_owned());
            }
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3, "5 items in pages of 2");
    assert_eq!(seen, ids, "every config exactly once, oldest first");

    let exact = app.get("/v1/token-configs?limit=5", &key).await;
    assert_eq!(exact.body["items"].as_array().map(Vec::len), Some(5));
    assert_eq!(exact.body["next_cursor"], Value::Null, "no next page when everything fits");

    for bad in ["0", "201"] {
        let reply = app.get(&format!("/v1/token-configs?limit={bad}"), &key).await;
        assert_invalid(&reply, "invalid_limit", "limit");
    }
    assert_error(&app.get("/v1/token-configs?cursor=not-a-uuid", &key).await, StatusCode::BAD_REQUEST, "invalid_query");

    // The same pages over GraphQL.
    let first = app.graphql(Some(&key), "{ tokenConfigs(limit: 3) { items { id } nextCursor } }", json!({})).await;
    let page = &first["data"]["tokenConfigs"];
    assert_eq!(page["items"].as_array().map(Vec::len), Some(3), "{first}");
    let next = page["nextCursor"].as_str().expect("next cursor").to_owned();
    let second = app
        .graphql(
            Some(&key),
            "query($c: UUID) { tokenConfigs(limit: 3, cursor: $c) { items { id } nextCursor } }",
            json!({"c": next}),
        )
        .await;
    let rest: Vec<&str> =
        second["data"]["tokenConfigs"]["items"].as_array().expect("items").iter().filter_map(|i| i["id"].as_str()).collect();
    assert_eq!(rest, [ids[3].as_str(), ids[4].as_str()]);
    assert_eq!(second["data"]["tokenConfigs"]["nextCursor"], Value::Null);
}

#[tokio::test]
async fn unknown_or_malformed_token_config_ids_answer_not_found_or_bad_request() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let missing = Uuid::new_v4();
    assert_error(&app.get(&format!("/v1/token-configs/{missing}"), &key).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(
        &app.patch(&format!("/v1/token-configs/{missing}"), &key, json!({"name": "x"})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(&app.delete(&format!("/v1/token-configs/{missing}"), &key).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(&app.get("/v1/token-configs/not-a-uuid", &key).await, StatusCode::BAD_REQUEST, "invalid_id");
}

// ---- Microsoft preset ----

#[tokio::test]
async fn microsoft_config_needs_only_name_client_id_secret_and_directory() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let reply = create(&app, &key, microsoft()).await;
    created_id(&reply);
    let body = &reply.body;
    assert_eq!(body["provider"], json!("microsoft"));
    assert_eq!(body["flow"], json!("user"));
    assert_eq!(body["directory_tenant_id"], json!("contoso.onmicrosoft.com"));
    assert_eq!(body["auth_url"], json!("https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize"));
    assert_eq!(body["token_url"], json!("https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"));
    let scopes = scopes_of(body);
    for needed in [
        "offline_access",
        "https://outlook.office.com/IMAP.AccessAsUser.All",
        "https://outlook.office.com/SMTP.Send",
        "https://outlook.office.com/POP.AccessAsUser.All",
        "openid",
        "profile",
        "email",
    ] {
        assert!(scopes.iter().any(|s| s == needed), "user-flow scopes lack {needed}: {scopes:?}");
    }
    assert!(!scopes.iter().any(|s| s.ends_with("/.default")), "user flow does not ask for .default: {scopes:?}");
    assert_eq!(body["extra_auth_params"], json!({}));
    assert_eq!(body["client_secret_set"], json!(true));
    assert_eq!(body["redirect_uri"], json!(redirect_uri(&app)));

    // A tenant GUID and the multi-tenant words work for the user flow too.
    for directory in [DIRECTORY_GUID, "common", "organizations"] {
        let reply = create(&app, &key, with(microsoft(), json!({"directory_tenant_id": directory}))).await;
        created_id(&reply);
        assert_eq!(reply.body["token_url"], json!(format!("https://login.microsoftonline.com/{directory}/oauth2/v2.0/token")));
        assert_eq!(reply.body["auth_url"], json!(format!("https://login.microsoftonline.com/{directory}/oauth2/v2.0/authorize")));
    }
}

#[tokio::test]
async fn microsoft_app_flow_gets_the_default_scope_and_needs_a_real_directory() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let reply = create(&app, &key, with(microsoft(), json!({"flow": "app", "directory_tenant_id": DIRECTORY_GUID}))).await;
    created_id(&reply);
    assert_eq!(reply.body["flow"], json!("app"));
    assert_eq!(scopes_of(&reply.body), ["https://outlook.office365.com/.default"]);
    assert_eq!(reply.body["auth_url"], Value::Null, "the app flow has no authorization endpoint");
    assert_eq!(reply.body["token_url"], json!(format!("https://login.microsoftonline.com/{DIRECTORY_GUID}/oauth2/v2.0/token")));

    for directory in ["common", "organizations", "consumers"] {
        let reply = create(&app, &key, with(microsoft(), json!({"flow": "app", "directory_tenant_id": directory}))).await;
        assert_invalid(&reply, "invalid_directory", "directory_tenant_id");
    }
    // An app-flow config may not be moved to a multi-tenant directory later either.
    let id = reply_id(&app, &key, with(microsoft(), json!({"flow": "app", "directory_tenant_id": "fabrikam.com"}))).await;
    let refused = app.patch(&format!("/v1/token-configs/{id}"), &key, json!({"directory_tenant_id": "common"})).await;
    assert_invalid(&refused, "invalid_directory", "directory_tenant_id");
    let kept = app.get(&format!("/v1/token-configs/{id}"), &key).await;
    assert_eq!(kept.body["directory_tenant_id"], json!("fabrikam.com"));
}

async fn reply_id(app: &TestApp, key: &str, body: Value) -> String {
    created_id(&create(app, key, body).await)
}

#[tokio::test]
async fn microsoft_config_without_a_usable_directory_is_refused() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    for directory in [Value::Null, json!(""), json!("   ")] {
        let reply = create(&app, &key, with(microsoft(), json!({"directory_tenant_id": directory}))).await;
        assert_invalid(&reply, "required", "directory_tenant_id");
    }
    for directory in ["not a directory", "../../evil", "contoso", "x/y.com", "tenant?x=1.com"] {
        let reply = create(&app, &key, with(microsoft(), json!({"directory_tenant_id": directory}))).await;
        assert_invalid(&reply, "invalid_directory", "directory_tenant_id");
    }
    assert_eq!(app.get("/v1/token-configs", &key).await.body["items"], json!([]), "nothing was stored");
}

#[tokio::test]
async fn a_directory_on_a_non_microsoft_config_is_not_applicable() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let reply = create(&app, &key, with(google(), json!({"directory_tenant_id": DIRECTORY_GUID}))).await;
    assert_invalid(&reply, "not_applicable", "directory_tenant_id");
    let reply = create(&app, &key, with(generic_user(), json!({"directory_tenant_id": "contoso.com"}))).await;
    assert_invalid(&reply, "not_applicable", "directory_tenant_id");

    let id = reply_id(&app, &key, google()).await;
    let reply = app.patch(&format!("/v1/token-configs/{id}"), &key, json!({"directory_tenant_id": "contoso.com"})).await;
    assert_invalid(&reply, "not_applicable", "directory_tenant_id");
}

#[tokio::test]
async fn changing_the_directory_of_a_microsoft_config_re_derives_its_urls() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let id = reply_id(&app, &key, microsoft()).await;
    let path = format!("/v1/token-configs/{id}");

    let renamed = app.patch(&path, &key, json!({"name": "Renamed"})).await;
    assert_eq!(renamed.status, StatusCode::OK, "{}", renamed.text);
    assert_eq!(renamed.body["token_url"], json!("https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"));

    let moved = app.patch(&path, &key, json!({"directory_tenant_id": DIRECTORY_GUID})).await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.text);
    assert_eq!(moved.body["directory_tenant_id"], json!(DIRECTORY_GUID));
    assert_eq!(
        moved.body["auth_url"],
        json!(format!("https://login.microsoftonline.com/{DIRECTORY_GUID}/oauth2/v2.0/authorize"))
    );
    assert_eq!(moved.body["token_url"], json!(format!("https://login.microsoftonline.com/{DIRECTORY_GUID}/oauth2/v2.0/token")));
    assert_eq!(moved.body["scopes"], renamed.body["scopes"], "scopes are kept");

    let stored = app.get(&path, &key).await;
    assert_eq!(stored.body["token_url"], moved.body["token_url"], "the derived URLs are stored");
    assert_eq!(stored.body["auth_url"], moved.body["auth_url"]);

    // Explicit URLs in the same patch win over the derived ones; another host needs the secret given again.
    let body = json!({"directory_tenant_id": "common", "token_url": "https://login.example.com/custom/token"});
    assert_invalid(&app.patch(&path, &key, body.clone()).await, "required", "client_secret");
    let explicit = app.patch(&path, &key, with(body, json!({"client_secret": "given-again"}))).await;
    assert_eq!(explicit.status, StatusCode::OK, "{}", explicit.text);
    assert_eq!(explicit.body["token_url"], json!("https://login.example.com/custom/token"));
    assert_eq!(explicit.body["auth_url"], json!("https://login.microsoftonline.com/common/oauth2/v2.0/authorize"));
}

// ---- Google preset ----

#[tokio::test]
async fn google_preset_fills_urls_scope_and_offline_consent_params() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let reply = create(&app, &key, google()).await;
    created_id(&reply);
    assert_eq!(reply.body["provider"], json!("google"));
    assert_eq!(reply.body["auth_url"], json!("https://accounts.google.com/o/oauth2/v2/auth"));
    assert_eq!(reply.body["token_url"], json!("https://oauth2.googleapis.com/token"));
    assert!(scopes_of(&reply.body).iter().any(|s| s == "https://mail.google.com/"), "{}", reply.text);
    assert_eq!(reply.body["extra_auth_params"]["access_type"], json!("offline"));
    assert_eq!(reply.body["extra_auth_params"]["prompt"], json!("consent"));
    assert_eq!(reply.body["directory_tenant_id"], Value::Null);

    // The tenant's own parameters sit beside the preset ones.
    let reply = create(&app, &key, with(google(), json!({"extra_auth_params": {"hd": "example.com"}}))).await;
    created_id(&reply);
    assert_eq!(reply.body["extra_auth_params"], json!({"access_type": "offline", "prompt": "consent", "hd": "example.com"}));
}

#[tokio::test]
async fn google_app_flow_is_refused_as_unsupported() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let reply = create(&app, &key, with(google(), json!({"flow": "app"}))).await;
    assert_invalid(&reply, "unsupported_flow", "flow");
    assert_eq!(app.get("/v1/token-configs", &key).await.body["items"], json!([]));
}

// ---- generic ----

#[tokio::test]
async fn generic_config_requires_its_urls() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    assert_invalid(&create(&app, &key, with(generic_user(), json!({"token_url": null}))).await, "required", "token_url");
    assert_invalid(&create(&app, &key, with(generic_user(), json!({"auth_url": null}))).await, "required", "auth_url");
    assert_invalid(&create(&app, &key, with(generic_app(), json!({"token_url": null}))).await, "required", "token_url");
    assert_invalid(&create(&app, &key, with(generic_user(), json!({"scopes": []}))).await, "required", "scopes");

    // The app flow needs no authorization URL and drops one that is given.
    let reply = create(&app, &key, with(generic_app(), json!({"auth_url": "https://idp.example.com/authorize"}))).await;
    created_id(&reply);
    assert_eq!(reply.body["auth_url"], Value::Null);
    assert_eq!(reply.body["flow"], json!("app"));
    assert_eq!(scopes_of(&reply.body), ["mail.send"]);
}

#[tokio::test]
async fn generic_user_flow_secret_is_optional_but_app_flow_and_presets_require_it() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let public_client = create(&app, &key, with(generic_user(), json!({"client_secret": null}))).await;
    created_id(&public_client);
    assert_eq!(public_client.body["client_secret_set"], json!(false));

    let blank = create(&app, &key, with(generic_user(), json!({"client_secret": "   "}))).await;
    created_id(&blank);
    assert_eq!(blank.body["client_secret_set"], json!(false), "a blank secret is no secret");

    assert_invalid(&create(&app, &key, with(generic_app(), json!({"client_secret": null}))).await, "required", "client_secret");
    assert_invalid(&create(&app, &key, with(generic_app(), json!({"client_secret": ""}))).await, "required", "client_secret");
    assert_invalid(&create(&app, &key, with(microsoft(), json!({"client_secret": null}))).await, "required", "client_secret");
    assert_invalid(&create(&app, &key, with(google(), json!({"client_secret": null}))).await, "required", "client_secret");
}

#[tokio::test]
async fn reserved_extra_auth_params_are_refused() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    for reserved in ["redirect_uri", "state", "client_id", "response_type", "scope", "code_challenge", "code_challenge_method"] {
        let reply = create(&app, &key, with(generic_user(), json!({"extra_auth_params": {reserved: "mine"}}))).await;
        assert_invalid(&reply, "reserved_param", "extra_auth_params");
    }
    let reply = create(&app, &key, with(microsoft(), json!({"extra_auth_params": {"state": "fixed"}}))).await;
    assert_invalid(&reply, "reserved_param", "extra_auth_params");
    // Case variants name the same parameter at case-insensitive servers.
    for variant in ["Redirect_URI", "STATE", "Code_Challenge"] {
        let reply = create(&app, &key, with(generic_user(), json!({"extra_auth_params": {variant: "mine"}}))).await;
        assert_invalid(&reply, "reserved_param", "extra_auth_params");
    }
    let reply = create(&app, &key, with(generic_user(), json!({"extra_auth_params": {"": "empty key"}}))).await;
    assert_invalid(&reply, "invalid_param", "extra_auth_params");

    let id = reply_id(&app, &key, with(generic_user(), json!({"extra_auth_params": {"domain_hint": "contoso.com"}}))).await;
    let reply = app
        .patch(
            &format!("/v1/token-configs/{id}"),
            &key,
            json!({"extra_auth_params": {"redirect_uri": "https://evil.example/cb"}}),
        )
        .await;
    assert_invalid(&reply, "reserved_param", "extra_auth_params");
    let kept = app.get(&format!("/v1/token-configs/{id}"), &key).await;
    assert_eq!(kept.body["extra_auth_params"], json!({"domain_hint": "contoso.com"}));
}

#[tokio::test]
async fn extra_auth_params_with_nul_or_control_characters_are_refused_not_a_server_error() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    for extra in
        [json!({"hint": "a\u{0000}b"}), json!({"hi\u{0000}nt": "x"}), json!({"hi\nnt": "x"}), json!({"x": "y".repeat(2001)})]
    {
        let reply = create(&app, &key, with(generic_user(), json!({"extra_auth_params": extra}))).await;
        assert_invalid(&reply, "invalid_param", "extra_auth_params");
    }
    let id = reply_id(&app, &key, generic_user()).await;
    let reply = app.patch(&format!("/v1/token-configs/{id}"), &key, json!({"extra_auth_params": {"hint": "\u{0000}"}})).await;
    assert_invalid(&reply, "invalid_param", "extra_auth_params");
    // Ordinary values, even multi-line ones such as a JSON `claims` request, are kept as given.
    let claims = "{\n  \"id_token\": {}\n}";
    let reply =
        create(&app, &key, with(generic_user(), json!({"extra_auth_params": {"claims": claims, "domain_hint": "contoso.com"}})))
            .await;
    created_id(&reply);
    assert_eq!(reply.body["extra_auth_params"], json!({"claims": claims, "domain_hint": "contoso.com"}));
}

#[tokio::test]
async fn scopes_must_be_single_tokens() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    for bad in [json!(["mail read"]), json!(["ok", ""]), json!(["tab\tscope"]), json!(["line\nbreak"])] {
        let reply = create(&app, &key, with(generic_user(), json!({"scopes": bad}))).await;
        assert_invalid(&reply, "invalid_scope", "scopes");
    }
    let reply =
        create(&app, &key, with(microsoft(), json!({"scopes": ["offline_access https://outlook.office.com/SMTP.Send"]}))).await;
    assert_invalid(&reply, "invalid_scope", "scopes");
}

#[tokio::test]
async fn unknown_enum_values_and_wrong_types_are_a_malformed_body() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    for body in [
        with(generic_user(), json!({"provider": "yahoo"})),
        with(generic_user(), json!({"provider": "Microsoft"})),
        with(generic_user(), json!({"flow": "device_code"})),
        with(generic_user(), json!({"scopes": "mail.read"})),
        with(generic_user(), json!({"client_secret_expires_at": "next tuesday"})),
        with(generic_user(), json!({"provider": null})),
    ] {
        let reply = create(&app, &key, body).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_body");
    }
    assert_eq!(app.get("/v1/token-configs", &key).await.body["items"], json!([]));
}

#[tokio::test]
async fn updates_are_validated_like_creates_and_a_refused_update_changes_nothing() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let id = reply_id(&app, &key, generic_user()).await;
    let path = format!("/v1/token-configs/{id}");
    let before = app.get(&path, &key).await;

    assert_invalid(&app.patch(&path, &key, json!({"name": "   "})).await, "required", "name");
    assert_invalid(&app.patch(&path, &key, json!({"client_id": ""})).await, "required", "client_id");
    assert_invalid(&app.patch(&path, &key, json!({"name": "ok", "scopes": ["a b"]})).await, "invalid_scope", "scopes");
    assert_invalid(&app.patch(&path, &key, json!({"name": "ok", "token_url": "not a url"})).await, "invalid_url", "token_url");
    assert_invalid(
        &app.patch(&path, &key, json!({"name": "ok", "auth_url": "ftp://idp.example.com/x"})).await,
        "insecure_url",
        "auth_url",
    );
    assert_error(&app.patch(&path, &key, json!({"name": 7})).await, StatusCode::BAD_REQUEST, "invalid_body");

    assert_eq!(app.get(&path, &key).await.body, before.body, "refused updates leave the configuration as it was");
}

// ---- redirect URI and the write-only secret ----

#[tokio::test]
async fn every_token_config_response_carries_the_public_redirect_uri() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let mut ids = Vec::new();
    for body in [microsoft(), google(), generic_user(), generic_app()] {
        let reply = create(&app, &key, body).await;
        ids.push(created_id(&reply));
        assert_eq!(reply.body["redirect_uri"], json!(redirect_uri(&app)));
    }
    for id in &ids {
        assert_eq!(app.get(&format!("/v1/token-configs/{id}"), &key).await.body["redirect_uri"], json!(redirect_uri(&app)));
        let patched = app.patch(&format!("/v1/token-configs/{id}"), &key, json!({"name": "patched"})).await;
        assert_eq!(patched.body["redirect_uri"], json!(redirect_uri(&app)), "{}", patched.text);
    }
    let list = app.get("/v1/token-configs", &key).await;
    let items = list.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 4);
    assert!(items.iter().all(|i| i["redirect_uri"] == json!(redirect_uri(&app))), "{}", list.text);
    let gql = app.graphql(Some(&key), "{ tokenConfigs { items { redirectUri } } }", json!({})).await;
    let items = gql["data"]["tokenConfigs"]["items"].as_array().expect("items");
    assert!(items.len() == 4 && items.iter().all(|i| i["redirectUri"] == json!(redirect_uri(&app))), "{gql}");
}

async fn stored_secret(app: &TestApp, id: &str) -> Option<String> {
    app.stored_value("token_configs", "client_secret", id).await
}

#[tokio::test]
async fn the_client_secret_is_write_only_in_every_response() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let secret = "s3cr3t-Client-Value-0xA1";
    let created = create(&app, &key, with(microsoft(), json!({"client_secret": secret}))).await;
    let id = created_id(&created);
    assert_eq!(created.body["client_secret_set"], json!(true));
    assert!(created.body.get("client_secret").is_none(), "{}", created.text);

    let stored = stored_secret(&app, &id).await.expect("a secret is stored");
    assert!(!stored.contains(secret), "the secret is stored encrypted, not in clear");

    let path = format!("/v1/token-configs/{id}");
    let mut texts = vec![created.text.clone(), app.get(&path, &key).await.text, app.get("/v1/token-configs", &key).await.text];

    let new_secret = "rotated-Secret-Value-0xB2";
    let rotated = app.patch(&path, &key, json!({"client_secret": new_secret})).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text);
    assert_eq!(rotated.body["client_secret_set"], json!(true), "a new secret keeps client_secret_set");
    assert_ne!(stored_secret(&app, &id).await, Some(stored), "the new secret replaced the old one");
    texts.push(rotated.text.clone());

    // An empty secret in a patch keeps the stored one.
    let kept = app.patch(&path, &key, json!({"client_secret": "", "name": "still secret"})).await;
    assert_eq!(kept.body["client_secret_set"], json!(true), "{}", kept.text);
    texts.push(kept.text);

    let gql = app
        .graphql(
            Some(&key),
            &format!(
                "query($id: UUID!) {{ tokenConfig(id: $id) {{ {GQL_FIELDS} }} tokenConfigs {{ items {{ {GQL_FIELDS} }} }} }}"
            ),
            json!({"id": id}),
        )
        .await;
    assert_eq!(gql["data"]["tokenConfig"]["clientSecretSet"], json!(true), "{gql}");
    texts.push(gql.to_string());
    let gql_update = app
        .graphql(
            Some(&key),
            "mutation($id: UUID!, $input: UpdateTokenConfig!) { updateTokenConfig(id: $id, input: $input) { id clientSecretSet } }",
            json!({"id": id, "input": {"clientSecret": "graphql-Secret-0xC3"}}),
        )
        .await;
    assert_eq!(gql_update["data"]["updateTokenConfig"]["clientSecretSet"], json!(true), "{gql_update}");
    texts.push(gql_update.to_string());
    texts.push(app.get(&path, &key).await.text);

    for text in texts {
        for value in [secret, new_secret, "graphql-Secret-0xC3"] {
            assert!(!text.contains(value), "a response revealed a client secret: {text}");
        }
    }
}

#[tokio::test]
async fn client_secret_expiry_is_set_kept_changed_and_cleared_with_null() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let created = create(&app, &key, with(microsoft(), json!({"client_secret_expires_at": "2027-06-30"}))).await;
    let id = created_id(&created);
    assert_eq!(created.body["client_secret_expires_at"], json!("2027-06-30"));
    let path = format!("/v1/token-configs/{id}");

    let untouched = app.patch(&path, &key, json!({"name": "other"})).await;
    assert_eq!(untouched.body["client_secret_expires_at"], json!("2027-06-30"), "absent means unchanged: {}", untouched.text);

    let changed = app.patch(&path, &key, json!({"client_secret_expires_at": "2028-01-15"})).await;
    assert_eq!(changed.body["client_secret_expires_at"], json!("2028-01-15"), "{}", changed.text);

    let cleared = app.patch(&path, &key, json!({"client_secret_expires_at": null})).await;
    assert_eq!(cleared.status, StatusCode::OK, "{}", cleared.text);
    assert_eq!(cleared.body["client_secret_expires_at"], Value::Null, "null clears the date");
    assert_eq!(app.get(&path, &key).await.body["client_secret_expires_at"], Value::Null);

    let set_again = app.patch(&path, &key, json!({"client_secret_expires_at": "2029-12-31"})).await;
    assert_eq!(set_again.body["client_secret_expires_at"], json!("2029-12-31"));
    assert_eq!(app.get(&path, &key).await.body["client_secret_expires_at"], json!("2029-12-31"));
}

// ---- SSRF ----

#[tokio::test]
async fn strict_mode_refuses_plain_http_urls() {
    let app = strict_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let reply = create(&app, &key, with(public_generic_app(), json!({"token_url": "http://93.184.216.34/token"}))).await;
    assert_invalid(&reply, "insecure_url", "token_url");
    let reply = create(
        &app,
        &key,
        json!({"name": "g", "provider": "generic", "client_id": "c", "scopes": ["s"],
               "auth_url": "http://93.184.216.34/authorize", "token_url": "https://93.184.216.34/token"}),
    )
    .await;
    assert_invalid(&reply, "insecure_url", "auth_url");
    for scheme in ["ftp://93.184.216.34/token", "file:///etc/passwd", "javascript:alert(1)"] {
        let reply = create(&app, &key, with(public_generic_app(), json!({"token_url": scheme}))).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{scheme}: {}", reply.text);
        assert_eq!(reply.body["field"], json!("token_url"), "{}", reply.text);
        assert!(["insecure_url", "invalid_url"].contains(&reply.code()), "{scheme}: {}", reply.text);
    }
    // The positive control: https to a public address is fine.
    let ok = create(&app, &key, public_generic_app()).await;
    created_id(&ok);
    assert_eq!(ok.body["token_url"], json!("https://93.184.216.34/oauth/token"));
}

const FORBIDDEN_URLS: &[&str] = &[
    "https://127.0.0.1/token",
    "https://127.0.0.1:8443/token",
    "https://10.0.0.1/token",
    "https://172.16.5.4/token",
    "https://192.168.1.1/token",
    "https://169.254.169.254/latest/meta-data",
    "https://[::1]/token",
    "https://[::ffff:127.0.0.1]/",
    "https://[fd00::1]/token",
    "https://100.64.0.1/",
    "https://0.0.0.0/token",
    "https://localhost/",
    "https://LOCALHOST:8443/token",
    "https://idp.localhost/token",
    "https://localhost./token",
    "https://idp.localhost./token",
    "https://2130706433/token",
    "https://0x7f.0.0.1/token",
];

#[tokio::test]
async fn strict_mode_refuses_token_urls_pointing_at_loopback_private_or_metadata_addresses() {
    let app = strict_app().await;
    let (_, key) = app.tenant_with_admin().await;
    for url in FORBIDDEN_URLS {
        let reply = create(&app, &key, with(public_generic_app(), json!({"token_url": url}))).await;
        assert_eq!(
            (reply.status, reply.code(), reply.body["field"].as_str().unwrap_or("")),
            (StatusCode::UNPROCESSABLE_ENTITY, "forbidden_address", "token_url"),
            "{url}: {}",
            reply.text
        );
    }
    assert_eq!(app.get("/v1/token-configs", &key).await.body["items"], json!([]), "nothing was stored");
}

#[tokio::test]
async fn strict_mode_refuses_auth_urls_pointing_at_loopback_private_or_metadata_addresses() {
    let app = strict_app().await;
    let (_, key) = app.tenant_with_admin().await;
    for url in FORBIDDEN_URLS {
        let body = json!({"name": "g", "provider": "generic", "client_id": "c", "scopes": ["s"],
                          "auth_url": url, "token_url": "https://93.184.216.34/token"});
        let reply = create(&app, &key, body).await;
        assert_eq!(
            (reply.status, reply.code(), reply.body["field"].as_str().unwrap_or("")),
            (StatusCode::UNPROCESSABLE_ENTITY, "forbidden_address", "auth_url"),
            "{url}: {}",
            reply.text
        );
    }
}

#[tokio::test]
async fn strict_mode_checks_urls_on_update_too() {
    let app = strict_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let id = reply_id(&app, &key, public_generic_app()).await;
    let path = format!("/v1/token-configs/{id}");
    let reply = app.patch(&path, &key, json!({"token_url": "https://169.254.169.254/latest/meta-data/iam"})).await;
    assert_invalid(&reply, "forbidden_address", "token_url");
    let reply = app.patch(&path, &key, json!({"token_url": "http://93.184.216.34/token"})).await;
    assert_invalid(&reply, "insecure_url", "token_url");
    assert_eq!(app.get(&path, &key).await.body["token_url"], json!("https://93.184.216.34/oauth/token"));
}

#[tokio::test]
async fn urls_carrying_credentials_are_refused() {
    for strict in [true, false] {
        let app = if strict { strict_app().await } else { spawn_app().await };
        let (_, key) = app.tenant_with_admin().await;
        for url in ["https://user:pass@93.184.216.34/token", "https://user@93.184.216.34/token"] {
            let reply = create(&app, &key, with(public_generic_app(), json!({"token_url": url}))).await;
            assert_invalid(&reply, "invalid_url", "token_url");
            assert!(!reply.text.contains("pass@"), "the error does not echo credentials: {}", reply.text);
        }
        let body = with(generic_user(), json!({"auth_url": "https://admin:hunter2@idp.example.com/authorize"}));
        assert_invalid(&create(&app, &key, body).await, "invalid_url", "auth_url");
    }
}

#[tokio::test]
async fn development_mode_accepts_plain_http_to_loopback() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let reply = create(
        &app,
        &key,
        with(generic_user(), json!({"auth_url": "http://127.0.0.1:9999/authorize", "token_url": "http://127.0.0.1:9999/token"})),
    )
    .await;
    created_id(&reply);
    assert_eq!(reply.body["token_url"], json!("http://127.0.0.1:9999/token"));
    assert_eq!(reply.body["auth_url"], json!("http://127.0.0.1:9999/authorize"));
    let reply = create(&app, &key, with(generic_app(), json!({"token_url": "http://localhost:9999/token"}))).await;
    created_id(&reply);
    // Even here only http and https are URLs Postbridge calls.
    let reply = create(&app, &key, with(generic_app(), json!({"token_url": "ftp://127.0.0.1/token"}))).await;
    assert_invalid(&reply, "insecure_url", "token_url");
}

// ---- in use, roles ----

#[tokio::test]
async fn a_token_config_used_by_an_account_cannot_be_deleted_until_the_account_is_gone() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let config = reply_id(&app, &key, microsoft()).await;
    let account = app
        .post(
            "/v1/accounts",
            &key,
            json!({"protocol": "imap", "auth": "oauth2", "login": "user@contoso.com", "token_config_id": config}),
        )
        .await;
    assert_eq!(account.status, StatusCode::CREATED, "{}", account.text);
    let account = account.id();

    let refused = app.delete(&format!("/v1/token-configs/{config}"), &key).await;
    assert_error(&refused, StatusCode::CONFLICT, "token_config_in_use");
    assert_eq!(app.get(&format!("/v1/token-configs/{config}"), &key).await.status, StatusCode::OK, "the config still exists");
    let gql = app.graphql(Some(&key), "mutation($id: UUID!) { deleteTokenConfig(id: $id) }", json!({"id": config})).await;
    assert_eq!(graphql_error_code(&gql), "token_config_in_use", "{gql}");
    assert_eq!(app.get(&format!("/v1/accounts/{account}"), &key).await.body["token_config_id"], json!(config));

    let removed = app.delete(&format!("/v1/accounts/{account}"), &key).await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT, "{}", removed.text);
    let deleted = app.delete(&format!("/v1/token-configs/{config}"), &key).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    assert_error(&app.get(&format!("/v1/token-configs/{config}"), &key).await, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn viewers_and_members_can_read_token_configs_but_not_change_them() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let id = reply_id(&app, &admin, microsoft()).await;
    let path = format!("/v1/token-configs/{id}");
    let original = app.get(&path, &admin).await.body;

    for role in ["viewer", "member"] {
        let key = app.api_key(&tenant, role).await;
        let got = app.get(&path, &key).await;
        assert_eq!((got.status, &got.body), (StatusCode::OK, &original), "{role} reads: {}", got.text);
        let listed = app.get("/v1/token-configs", &key).await;
        assert_eq!(listed.body["items"], json!([original.clone()]), "{role} lists");

        assert_error(&create(&app, &key, google()).await, StatusCode::FORBIDDEN, "forbidden");
        assert_error(&app.patch(&path, &key, json!({"name": "hijacked"})).await, StatusCode::FORBIDDEN, "forbidden");
        assert_error(&app.delete(&path, &key).await, StatusCode::FORBIDDEN, "forbidden");

        let gql = app
            .graphql(
                Some(&key),
                "mutation($input: CreateTokenConfig!) { createTokenConfig(input: $input) { id } }",
                json!({"input": {"name": "x", "provider": "GOOGLE", "clientId": "c", "clientSecret": "s"}}),
            )
            .await;
        assert_eq!(graphql_error_code(&gql), "forbidden", "{gql}");
        let gql = app.graphql(Some(&key), "mutation($id: UUID!) { deleteTokenConfig(id: $id) }", json!({"id": id})).await;
        assert_eq!(graphql_error_code(&gql), "forbidden", "{gql}");
    }
    assert_eq!(app.get(&path, &admin).await.body, original, "nothing changed");
    assert_eq!(app.get("/v1/token-configs", &admin).await.body["items"].as_array().map(Vec::len), Some(1));
}

// ---- moving a configuration's endpoints ----

/// A row count from the test database.
async fn count(app: &TestApp, sql: &str) -> i64 {
    app.sql_text(&format!("SELECT ({sql})::text")).await.expect("a count").parse().expect("a number")
}

#[tokio::test]
async fn moving_the_endpoints_while_grants_exist_needs_the_client_secret_and_sends_every_grant_to_re_consent() {
    let app = spawn_app().await;
    let setup = app.oauth_setup().await;
    let inbound = app.oauth_account(&setup, "imap", postbridge_tests::oauth::CONSENTING_USER).await;
    let outbound = app.oauth_account(&setup, "smtp", postbridge_tests::oauth::CONSENTING_USER).await;
    assert_eq!(app.consent(&setup, &inbound).await.param("status").as_deref(), Some("success"));
    let grant = app.account_json(&setup, &inbound).await["grant_id"].as_str().expect("grant").to_owned();
    let config_url = format!("/v1/token-configs/{}", setup.config_id);
    let elsewhere = postbridge_oauth_provider::MockProvider::start().await;
    let grant_row = format!("SELECT status || ':' || (refresh_token IS NOT NULL)::text FROM grants WHERE id = '{grant}'");
    let config_before = app.get(&config_url, &setup.admin).await.body;

    // Without the secret, neither URL moves and nothing changes.
    for body in [json!({"token_url": elsewhere.token_url()}), json!({"auth_url": elsewhere.authorize_url(), "name": "Moved"})] {
        assert_invalid(&app.patch(&config_url, &setup.admin, body).await, "required", "client_secret");
    }
    let gql = app
        .graphql(
            Some(&setup.admin),
            "mutation($id: UUID!, $input: UpdateTokenConfig!) { updateTokenConfig(id: $id, input: $input) { id } }",
            json!({"id": setup.config_id, "input": {"tokenUrl": elsewhere.token_url()}}),
        )
        .await;
    assert_gql_invalid(&gql, "required", "client_secret");
    assert_eq!(app.get(&config_url, &setup.admin).await.body, config_before);
    assert_eq!(app.sql_text(&grant_row).await.as_deref(), Some("valid:true"));
    // Other changes need no secret.
    assert_eq!(app.patch(&config_url, &setup.admin, json!({"name": "Renamed"})).await.status, StatusCode::OK);
    assert_eq!(app.sql_text(&grant_row).await.as_deref(), Some("valid:true"));

    // With the secret the URL moves; the grant needs consent again and keeps no token the new endpoint could get.
    let moved = app
        .patch(&config_url, &setup.admin, json!({"token_url": elsewhere.token_url(), "client_secret": setup.client_secret}))
        .await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.text);
    assert_eq!(moved.body["token_url"], json!(elsewhere.token_url()));
    assert_eq!(app.sql_text(&grant_row).await.as_deref(), Some("reauth_required:false"));
    let grant_view = app.get(&format!("/v1/grants/{grant}"), &setup.admin).await;
    assert_eq!(
        (grant_view.body["status"].clone(), grant_view.body["has_refresh_token"].clone()),
        (json!("reauth_required"), json!(false))
    );
    for account in [&inbound, &outbound] {
        assert_eq!(app.account_json(&setup, account).await["state"], json!("error"), "the mailbox's accounts say so");
    }
    let tenant = &setup.tenant;
    let events = format!(
        "SELECT count(*) FROM events WHERE tenant_id = '{tenant}' AND event_type = 'grant.reauth_required' AND resource_id = '{grant}'"
    );
    assert_eq!(count(&app, &events).await, 1);
    let audit = format!(
        "SELECT count(*) FROM audit_log WHERE tenant_id = '{tenant}' AND action = 'token_config.updated' \
         AND (changes->>'grants_reauth_required')::int = 1 AND changes ? 'token_url'"
    );
    assert_eq!(count(&app, &audit).await, 1, "the audit log records the move and its consequence");
    let tenant_id = Uuid::parse_str(tenant).expect("tenant uuid");
    let refused =
        postbridge_core::connect::grants::access_token(&app.ctx, tenant_id.into(), Uuid::parse_str(&grant).expect("uuid").into())
            .await;
    assert!(matches!(refused, Err(postbridge_core::connect::grants::TokenAccessError::ReauthRequired { .. })), "{refused:?}");
    assert_eq!(elsewhere.token_requests("refresh_token"), 0, "no refresh token reached the new endpoint");
    assert_eq!(setup.provider.token_requests("refresh_token"), 0);

    // Moving it again: the grant holds nothing any more, but it still exists, so the secret is asked for again.
    assert_invalid(
        &app.patch(&config_url, &setup.admin, json!({"token_url": setup.provider.token_url()})).await,
        "required",
        "client_secret",
    );
}

#[tokio::test]
async fn without_grants_the_endpoints_move_without_the_secret_only_within_the_hosts_it_already_reaches() {
    let app = spawn_app().await;
    let setup = app.oauth_setup().await;
    let config_url = format!("/v1/token-configs/{}", setup.config_id);
    // Same host, another path (a directory change at Microsoft is one): the secret goes nowhere new.
    let same_host = format!("{}/v2/token", setup.provider.base_url());
    let moved = app
        .patch(&config_url, &setup.admin, json!({"token_url": same_host, "revocation_url": setup.provider.revocation_url()}))
        .await;
    assert_eq!((moved.status, moved.body["token_url"].clone()), (StatusCode::OK, json!(same_host)), "{}", moved.text);

    // Another host would receive the stored secret with its first token request: whoever moves it there gives it.
    let elsewhere = postbridge_oauth_provider::MockProvider::start().await;
    let before = app.get(&config_url, &setup.admin).await.body;
    for body in [
        json!({"token_url": elsewhere.token_url(), "auth_url": elsewhere.authorize_url()}),
        json!({"revocation_url": elsewhere.revocation_url()}),
    ] {
        assert_invalid(&app.patch(&config_url, &setup.admin, body).await, "required", "client_secret");
    }
    assert_eq!(app.get(&config_url, &setup.admin).await.body, before, "nothing moved");
    let moved = app
        .patch(
            &config_url,
            &setup.admin,
            json!({"token_url": elsewhere.token_url(), "auth_url": elsewhere.authorize_url(), "client_secret": "given-again"}),
        )
        .await;
    assert_eq!((moved.status, moved.body["token_url"].clone()), (StatusCode::OK, json!(elsewhere.token_url())), "{}", moved.text);
}

#[tokio::test]
async fn an_issuer_is_a_generic_configurations_https_identifier_and_can_be_cleared() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    assert_invalid(
        &create(&app, &key, with(microsoft(), json!({"issuer": "https://login.microsoftonline.com/x/v2.0"}))).await,
        "not_applicable",
        "issuer",
    );
    for bad in ["not a url", "https://id.example.com/?tenant=1", "https://id.example.com/#x", "https://user:pw@id.example.com"] {
        assert_invalid(&create(&app, &key, with(generic_user(), json!({"issuer": bad}))).await, "invalid_url", "issuer");
    }
    let created = create(&app, &key, with(generic_user(), json!({"issuer": "https://id.example.com"}))).await;
    assert_eq!(
        (created.status, created.body["issuer"].clone()),
        (StatusCode::CREATED, json!("https://id.example.com")),
        "{}",
        created.text
    );
    let id = created_id(&created);
    let kept = app.patch(&format!("/v1/token-configs/{id}"), &key, json!({"name": "Renamed"})).await;
    assert_eq!(kept.body["issuer"], json!("https://id.example.com"));
    let cleared = app.patch(&format!("/v1/token-configs/{id}"), &key, json!({"issuer": null})).await;
    assert_eq!((cleared.status, cleared.body["issuer"].clone()), (StatusCode::OK, Value::Null), "{}", cleared.text);
}
