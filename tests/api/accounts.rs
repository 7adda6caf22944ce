//! Email accounts: CRUD over REST and GraphQL, defaults and provider presets, validation, the default
//! sender, the state machine, SSRF rules, the write-only password, and nothing half-written.

use postbridge_tests::{assert_error, graphql_error_code, spawn_app, spawn_app_with, with, Reply, TestApp, TestEnv};
use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::{json, Value};
use uuid::Uuid;

const GQL_FIELDS: &str = "id tenantId name direction protocol host port security auth login passwordSet tokenConfigId state \
                          lastError enabled fromFilter isDefault sharedMailbox folder pollIntervalSeconds afterFetch moveToFolder owner";

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

fn smtp(login: &str) -> Value {
    TestApp::smtp_account(login)
}

fn imap(login: &str) -> Value {
    json!({"protocol": "imap", "auth": "password", "login": login, "password": "imap-password-1", "host": "imap.example.com"})
}

fn pop3(login: &str) -> Value {
    json!({"protocol": "pop3", "auth": "password", "login": login, "password": "pop-password-1", "host": "pop.example.com"})
}

fn oauth(protocol: &str, login: &str, config: &str) -> Value {
    json!({"protocol": protocol, "auth": "oauth2", "login": login, "token_config_id": config})
}

async fn create(app: &TestApp, key: &str, body: Value) -> Reply {
    app.post("/v1/accounts", key, body).await
}

#[track_caller]
fn created(reply: &Reply) -> String {
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    reply.id()
}

async fn create_ok(app: &TestApp, key: &str, body: Value) -> Reply {
    let reply = create(app, key, body).await;
    created(&reply);
    reply
}

async fn token_config(app: &TestApp, key: &str, body: Value) -> String {
    let reply = app.post("/v1/token-configs", key, body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    reply.id()
}

async fn microsoft_config(app: &TestApp, key: &str) -> String {
    token_config(app, key, TestApp::microsoft_config()).await
}

async fn google_config(app: &TestApp, key: &str) -> String {
    token_config(
        app,
        key,
        json!({"name": "Gmail", "provider": "google", "client_id": "1.apps.googleusercontent.com", "client_secret": "g-secret"}),
    )
    .await
}

async fn generic_config(app: &TestApp, key: &str) -> String {
    token_config(
        app,
        key,
        json!({"name": "IdP", "provider": "generic", "client_id": "c", "auth_url": "https://idp.example.com/authorize",
               "token_url": "https://idp.example.com/token", "scopes": ["mail"]}),
    )
    .await
}

async fn account_count(app: &TestApp) -> i64 {
    let row = app
        .ctx
        .db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, "SELECT count(*) AS n FROM email_accounts".to_owned()))
        .await
        .expect("count query")
        .expect("count row");
    row.try_get("", "n").expect("count")
}

async fn set_state(app: &TestApp, id: &str, state: &str) {
    app.ctx
        .db
        .execute_unprepared(&format!("UPDATE email_accounts SET state = '{state}' WHERE id = '{id}'"))
        .await
        .expect("state updated");
}

async fn strict_app() -> TestApp {
    let mut env = TestEnv::new();
    env.set("ALLOW_PRIVATE_HOSTS", "false");
    spawn_app_with(env).await
}

fn path(id: &str) -> String {
    format!("/v1/accounts/{id}")
}

// ---- CRUD ----

#[tokio::test]
async fn accounts_can_be_created_read_listed_updated_and_deleted_over_rest() {
    let app = spawn_app().await;
    let (tenant, key) = app.tenant_with_admin().await;

    let reply =
        create(&app, &key, with(smtp("sales@example.com"), json!({"name": "Sales", "from_filter": "sales@example.com"}))).await;
    let id = created(&reply);
    let account = &reply.body;
    assert_eq!(account["tenant_id"], json!(tenant));
    assert_eq!(account["name"], json!("Sales"));
    assert_eq!(account["direction"], json!("outbound"));
    assert_eq!(account["protocol"], json!("smtp"));
    assert_eq!(account["host"], json!("smtp.example.com"));
    assert_eq!(account["auth"], json!("password"));
    assert_eq!(account["login"], json!("sales@example.com"));
    assert_eq!(account["password_set"], json!(true));
    assert_eq!(account["token_config_id"], Value::Null);
    assert_eq!(account["state"], json!("draft"));
    assert_eq!(account["enabled"], json!(true));
    assert_eq!(account["is_default"], json!(false));
    assert_eq!(account["shared_mailbox"], json!(false));
    assert_eq!(account["from_filter"], json!("sales@example.com"));
    assert_eq!(account["folder"], Value::Null, "outbound accounts have no folder");
    assert_eq!(account["poll_interval_seconds"], Value::Null);
    assert_eq!(account["after_fetch"], Value::Null);
    assert!(account["owner"].as_str().is_some_and(|o| !o.is_empty()), "{}", reply.text);

    let got = app.get(&path(&id), &key).await;
    assert_eq!((got.status, &got.body), (StatusCode::OK, account), "{}", got.text);
    let listed = app.get("/v1/accounts", &key).await;
    assert_eq!(listed.body["items"], json!([account.clone()]), "{}", listed.text);
    assert_eq!(listed.body["next_cursor"], Value::Null);

    let updated = app.patch(&path(&id), &key, json!({"name": "Sales team", "from_filter": "example.com", "port": 2525})).await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.text);
    assert_eq!(updated.body["name"], json!("Sales team"));
    assert_eq!(updated.body["from_filter"], json!("example.com"));
    assert_eq!(updated.body["port"], json!(2525));
    assert_eq!(updated.body["host"], json!("smtp.example.com"), "fields not in the patch are kept");
    assert_eq!(updated.body["password_set"], json!(true), "the stored password is kept");
    assert_eq!(app.get(&path(&id), &key).await.body, updated.body, "the update is stored");

    let cleared = app.patch(&path(&id), &key, json!({"from_filter": null})).await;
    assert_eq!(cleared.body["from_filter"], Value::Null, "null clears the from filter: {}", cleared.text);

    let deleted = app.delete(&path(&id), &key).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    assert_error(&app.get(&path(&id), &key).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(&app.patch(&path(&id), &key, json!({"name": "x"})).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(&app.delete(&path(&id), &key).await, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(app.get("/v1/accounts", &key).await.body["items"], json!([]));
    assert_error(&app.get("/v1/accounts/not-a-uuid", &key).await, StatusCode::BAD_REQUEST, "invalid_id");
}

#[tokio::test]
async fn accounts_can_be_created_read_listed_updated_and_deleted_over_graphql() {
    let app = spawn_app().await;
    let (tenant, key) = app.tenant_with_admin().await;
    let config = microsoft_config(&app, &key).await;

    let created = app
        .graphql(
            Some(&key),
            &format!("mutation($input: CreateAccount!) {{ createAccount(input: $input) {{ {GQL_FIELDS} }} }}"),
            json!({"input": {"protocol": "IMAP", "auth": "OAUTH_2", "login": "jane@contoso.com", "tokenConfigId": config,
                             "afterFetch": "MOVE", "moveToFolder": "Archive", "pollIntervalSeconds": 300}}),
        )
        .await;
    assert!(created["errors"].is_null(), "{created}");
    let account = created["data"]["createAccount"].clone();
    let id = account["id"].as_str().expect("id").to_owned();
    assert_eq!(account["tenantId"], json!(tenant));
    assert_eq!(account["direction"], json!("INBOUND"));
    assert_eq!(account["protocol"], json!("IMAP"));
    assert_eq!(account["auth"], json!("OAUTH_2"));
    assert_eq!(account["host"], json!("outlook.office365.com"));
    assert_eq!(account["port"], json!(993));
    assert_eq!(account["security"], json!("TLS"));
    assert_eq!(account["state"], json!("DRAFT"));
    assert_eq!(account["passwordSet"], json!(false));
    assert_eq!(account["tokenConfigId"], json!(config));
    assert_eq!(account["folder"], json!("INBOX"));
    assert_eq!(account["afterFetch"], json!("MOVE"));
    assert_eq!(account["moveToFolder"], json!("Archive"));
    assert_eq!(account["pollIntervalSeconds"], json!(300));
    assert_eq!(account["name"], json!("jane@contoso.com"), "the name defaults to the login");

    let one =
        app.graphql(Some(&key), &format!("query($id: UUID!) {{ account(id: $id) {{ {GQL_FIELDS} }} }}"), json!({"id": id})).await;
    assert_eq!(one["data"]["account"], account, "{one}");
    let list = app.graphql(Some(&key), &format!("{{ accounts {{ items {{ {GQL_FIELDS} }} nextCursor }} }}"), json!({})).await;
    assert_eq!(list["data"]["accounts"]["items"], json!([account.clone()]), "{list}");
    assert_eq!(list["data"]["accounts"]["nextCursor"], Value::Null);

    let updated = app
        .graphql(
            Some(&key),
            &format!(
                "mutation($id: UUID!, $input: UpdateAccount!) {{ updateAccount(id: $id, input: $input) {{ {GQL_FIELDS} }} }}"
            ),
            json!({"id": id, "input": {"name": "Jane's inbox", "afterFetch": "MARK_SEEN", "moveToFolder": null}}),
        )
        .await;
    assert!(updated["errors"].is_null(), "{updated}");
    assert_eq!(updated["data"]["updateAccount"]["name"], json!("Jane's inbox"));
    assert_eq!(updated["data"]["updateAccount"]["afterFetch"], json!("MARK_SEEN"));
    assert_eq!(updated["data"]["updateAccount"]["moveToFolder"], Value::Null);

    // Validation errors carry the same code and field as REST.
    let refused = app
        .graphql(
            Some(&key),
            "mutation($id: UUID!, $input: UpdateAccount!) { updateAccount(id: $id, input: $input) { id } }",
            json!({"id": id, "input": {"pollIntervalSeconds": 5}}),
        )
        .await;
    assert_eq!(graphql_error_code(&refused), "invalid_interval", "{refused}");
    assert_eq!(refused["errors"][0]["extensions"]["field"], json!("poll_interval_seconds"), "{refused}");
    let refused = app
        .graphql(
            Some(&key),
            "mutation($input: CreateAccount!) { createAccount(input: $input) { id } }",
            json!({"input": {"protocol": "SMTP", "auth": "PASSWORD", "login": "x@example.com", "host": "smtp.example.com"}}),
        )
        .await;
    assert_eq!(graphql_error_code(&refused), "required", "{refused}");
    assert_eq!(refused["errors"][0]["extensions"]["field"], json!("password"), "{refused}");

    let deleted = app.graphql(Some(&key), "mutation($id: UUID!) { deleteAccount(id: $id) }", json!({"id": id})).await;
    assert_eq!(deleted["data"]["deleteAccount"], json!(id), "{deleted}");
    let gone = app.graphql(Some(&key), "query($id: UUID!) { account(id: $id) { id } }", json!({"id": id})).await;
    assert_eq!(graphql_error_code(&gone), "not_found", "{gone}");
    assert_eq!(account_count(&app).await, 0);
}

#[tokio::test]
async fn account_list_pages_with_limit_and_next_cursor() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(created(&create(&app, &key, smtp(&format!("user{n}@example.com"))).await));
    }
    // Another tenant's accounts never show up.
    let (_, other) = app.tenant_with_admin().await;
    created(&create(&app, &other, smtp("other@example.org")).await);

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let url = match &cursor {
            Some(c) => format!("/v1/accounts?limit=2&cursor={c}"),
            None => "/v1/accounts?limit=2".to_owned(),
        };
        let page = app.get(&url, &key).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        let items = page.body["items"].as_array().expect("items");
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|i| i["id"].as_str().expect("id").to_owned()));
        pages += 1;
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids, "every account exactly once, oldest first");
    assert_invalid(&app.get("/v1/accounts?limit=0", &key).await, "invalid_limit", "limit");
    assert_invalid(&app.get("/v1/accounts?limit=500", &key).await, "invalid_limit", "limit");

    let first = app.graphql(Some(&key), "{ accounts(limit: 4) { items { id } nextCursor } }", json!({})).await;
    let next = first["data"]["accounts"]["nextCursor"].as_str().expect("next cursor").to_owned();
    assert_eq!(next, ids[3]);
    let second = app
        .graphql(Some(&key), "query($c: UUID) { accounts(limit: 4, cursor: $c) { items { id } nextCursor } }", json!({"c": next}))
        .await;
    assert_eq!(second["data"]["accounts"]["items"], json!([{"id": ids[4]}]), "{second}");
    assert_eq!(second["data"]["accounts"]["nextCursor"], Value::Null);
}

// ---- defaults ----

#[tokio::test]
async fn imap_password_account_with_only_a_host_gets_inbound_defaults() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let reply = create_ok(&app, &key, imap("reader@example.com")).await;
    let a = &reply.body;
    assert_eq!(a["direction"], json!("inbound"));
    assert_eq!(a["port"], json!(993));
    assert_eq!(a["security"], json!("tls"));
    assert_eq!(a["folder"], json!("INBOX"));
    assert_eq!(a["poll_interval_seconds"], json!(60));
    assert_eq!(a["after_fetch"], json!("keep"));
    assert_eq!(a["move_to_folder"], Value::Null);
    assert_eq!(a["state"], json!("draft"));
    assert_eq!(a["enabled"], json!(true));
    assert_eq!(a["name"], json!("reader@example.com"));
    assert_eq!(a["is_default"], json!(false));

    // IMAP over STARTTLS defaults to 143; an explicit port is kept.
    let starttls = create_ok(&app, &key, with(imap("b@example.com"), json!({"security": "starttls"}))).await;
    assert_eq!(starttls.body["port"], json!(143));
    let explicit = create_ok(&app, &key, with(imap("c@example.com"), json!({"port": 10993, "host": "IMAP.Example.COM"}))).await;
    assert_eq!((explicit.body["port"].clone(), explicit.body["security"].clone()), (json!(10993), json!("tls")));
    assert_eq!(explicit.body["host"], json!("imap.example.com"), "hosts are stored lower-cased");
    let disabled = create_ok(&app, &key, with(imap("d@example.com"), json!({"enabled": false}))).await;
    assert_eq!((disabled.body["state"].clone(), disabled.body["enabled"].clone()), (json!("disabled"), json!(false)));
}

#[tokio::test]
async fn pop3_defaults_to_port_995_over_tls() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let reply = create_ok(&app, &key, pop3("pop@example.com")).await;
    assert_eq!(reply.body["direction"], json!("inbound"));
    assert_eq!(reply.body["port"], json!(995));
    assert_eq!(reply.body["security"], json!("tls"));
    assert_eq!(reply.body["folder"], Value::Null, "POP3 has no folders");
    assert_eq!(reply.body["after_fetch"], json!("keep"));
    assert_eq!(reply.body["poll_interval_seconds"], json!(60));
    let deleting =
        create_ok(&app, &key, with(pop3("pop2@example.com"), json!({"after_fetch": "delete", "security": "starttls"}))).await;
    assert_eq!((deleting.body["after_fetch"].clone(), deleting.body["port"].clone()), (json!("delete"), json!(110)));
}

#[tokio::test]
async fn smtp_defaults_to_starttls_on_587_and_to_465_with_tls() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let plain = create_ok(&app, &key, smtp("a@example.com")).await;
    assert_eq!((plain.body["port"].clone(), plain.body["security"].clone()), (json!(587), json!("starttls")));
    assert_eq!(plain.body["direction"], json!("outbound"));
    let tls = create_ok(&app, &key, with(smtp("b@example.com"), json!({"security": "tls"}))).await;
    assert_eq!((tls.body["port"].clone(), tls.body["security"].clone()), (json!(465), json!("tls")));
    let explicit = create_ok(&app, &key, with(smtp("c@example.com"), json!({"port": 2525}))).await;
    assert_eq!((explicit.body["port"].clone(), explicit.body["security"].clone()), (json!(2525), json!("starttls")));
    let explicit_tls = create_ok(&app, &key, with(smtp("d@example.com"), json!({"port": 587, "security": "tls"}))).await;
    assert_eq!(explicit_tls.body["port"], json!(587), "an explicit port is never replaced");
    let none = create_ok(&app, &key, with(smtp("e@example.com"), json!({"security": "none"}))).await;
    assert_eq!((none.body["port"].clone(), none.body["security"].clone()), (json!(25), json!("none")));
}

#[tokio::test]
async fn oauth2_accounts_take_the_microsoft_mail_servers_when_no_host_is_given() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let config = microsoft_config(&app, &key).await;
    let inbound = create_ok(&app, &key, oauth("imap", "jane@contoso.com", &config)).await;
    assert_eq!(
        (inbound.body["host"].clone(), inbound.body["port"].clone(), inbound.body["security"].clone()),
        (json!("outlook.office365.com"), json!(993), json!("tls"))
    );
    assert_eq!(inbound.body["auth"], json!("oauth2"));
    assert_eq!(inbound.body["password_set"], json!(false));
    let outbound = create_ok(&app, &key, oauth("smtp", "jane@contoso.com", &config)).await;
    assert_eq!(
        (outbound.body["host"].clone(), outbound.body["port"].clone(), outbound.body["security"].clone()),
        (json!("smtp.office365.com"), json!(587), json!("starttls"))
    );
    let pop = create_ok(&app, &key, oauth("pop3", "jane@contoso.com", &config)).await;
    assert_eq!((pop.body["host"].clone(), pop.body["port"].clone()), (json!("outlook.office365.com"), json!(995)));

    // An explicit host among Microsoft's is used as is, with the protocol's defaults; any other host would get the token.
    let own =
        create_ok(&app, &key, with(oauth("imap", "jane@contoso.com", &config), json!({"host": "outlook.office.com"}))).await;
    assert_eq!((own.body["host"].clone(), own.body["port"].clone()), (json!("outlook.office.com"), json!(993)));
    let elsewhere =
        create(&app, &key, with(oauth("imap", "jane@contoso.com", &config), json!({"host": "mail.contoso.com"}))).await;
    assert_invalid(&elsewhere, "mail_host_not_allowed", "host");
}

#[tokio::test]
async fn oauth2_accounts_take_the_google_mail_servers_when_no_host_is_given() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let config = google_config(&app, &key).await;
    let inbound = create_ok(&app, &key, oauth("imap", "joe@gmail.com", &config)).await;
    assert_eq!(
        (inbound.body["host"].clone(), inbound.body["port"].clone(), inbound.body["security"].clone()),
        (json!("imap.gmail.com"), json!(993), json!("tls"))
    );
    let outbound = create_ok(&app, &key, oauth("smtp", "joe@gmail.com", &config)).await;
    assert_eq!(
        (outbound.body["host"].clone(), outbound.body["port"].clone(), outbound.body["security"].clone()),
        (json!("smtp.gmail.com"), json!(465), json!("tls"))
    );
    let starttls = create_ok(&app, &key, with(oauth("smtp", "joe@gmail.com", &config), json!({"security": "starttls"}))).await;
    assert_eq!(
        (starttls.body["host"].clone(), starttls.body["port"].clone()),
        (json!("smtp.gmail.com"), json!(587)),
        "Gmail's STARTTLS port follows the chosen security"
    );

    // A generic configuration has no servers to offer.
    let generic = generic_config(&app, &key).await;
    assert_invalid(&create(&app, &key, oauth("imap", "joe@example.com", &generic)).await, "required", "host");
    assert_invalid(&create(&app, &key, with(imap("x@example.com"), json!({"host": null}))).await, "required", "host");
}

// ---- validation ----

#[tokio::test]
async fn password_accounts_need_a_password_and_no_token_config() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    assert_invalid(&create(&app, &key, with(smtp("a@example.com"), json!({"password": null}))).await, "required", "password");
    assert_invalid(&create(&app, &key, with(smtp("a@example.com"), json!({"password": ""}))).await, "required", "password");
    let config = microsoft_config(&app, &key).await;
    let reply = create(&app, &key, with(smtp("a@example.com"), json!({"token_config_id": config}))).await;
    assert_invalid(&reply, "not_applicable", "token_config_id");
    assert_invalid(&create(&app, &key, with(smtp("a@example.com"), json!({"login": "  "}))).await, "required", "login");
    assert_eq!(account_count(&app).await, 0);
}

#[tokio::test]
async fn oauth2_accounts_need_a_known_token_config_no_password_and_an_email_login() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let config = microsoft_config(&app, &key).await;
    let reply = create(&app, &key, json!({"protocol": "imap", "auth": "oauth2", "login": "jane@contoso.com"})).await;
    assert_invalid(&reply, "required", "token_config_id");
    let reply = create(&app, &key, with(oauth("imap", "jane@contoso.com", &config), json!({"password": "secret-pw"}))).await;
    assert_invalid(&reply, "not_applicable", "password");
    for login in ["jane", "jane@contoso", "Jane Doe <jane@contoso.com>", "@contoso.com"] {
        let reply = create(&app, &key, oauth("imap", login, &config)).await;
        assert_invalid(&reply, "invalid_email", "login");
    }
    let reply = create(&app, &key, oauth("imap", "jane@contoso.com", &Uuid::new_v4().to_string())).await;
    assert_invalid(&reply, "unknown_token_config", "token_config_id");

    // Another tenant's configuration is as unknown as a missing one.
    let (_, other_key) = app.tenant_with_admin().await;
    let reply = create(&app, &other_key, oauth("imap", "jane@contoso.com", &config)).await;
    assert_invalid(&reply, "unknown_token_config", "token_config_id");
    assert_eq!(account_count(&app).await, 0);
    let their_config = microsoft_config(&app, &other_key).await;
    let id = created(&create(&app, &key, oauth("imap", "jane@contoso.com", &config)).await);
    let reply = app.patch(&path(&id), &key, json!({"token_config_id": their_config})).await;
    assert_invalid(&reply, "unknown_token_config", "token_config_id");
    assert_eq!(app.get(&path(&id), &key).await.body["token_config_id"], json!(config));
}

#[tokio::test]
async fn invalid_hosts_and_ports_are_refused() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    for host in [
        "bad_host!",
        "bad_host.example.com",
        "-x.example.com",
        "a..b",
        "http://smtp.example.com",
        "smtp.example.com:25",
        "[::1]",
        "",
    ] {
        let reply = create(&app, &key, with(smtp("a@example.com"), json!({"host": host}))).await;
        assert_invalid(&reply, "invalid_host", "host");
    }
    for port in [0, -1, 65536, 70000] {
        let reply = create(&app, &key, with(smtp("a@example.com"), json!({"port": port}))).await;
        assert_invalid(&reply, "invalid_port", "port");
    }
    let id = created(&create(&app, &key, smtp("a@example.com")).await);
    assert_invalid(&app.patch(&path(&id), &key, json!({"port": 0})).await, "invalid_port", "port");
    assert_invalid(&app.patch(&path(&id), &key, json!({"host": "bad_host!"})).await, "invalid_host", "host");
}

#[tokio::test]
async fn from_filter_must_be_an_address_or_a_domain_and_only_on_outbound_accounts() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    for bad in ["not a filter", "@example.com", "example", "Sales <sales@example.com>", ""] {
        let reply = create(&app, &key, with(smtp("a@example.com"), json!({"from_filter": bad}))).await;
        assert_invalid(&reply, "invalid_from_filter", "from_filter");
    }
    let reply = create(&app, &key, with(imap("a@example.com"), json!({"from_filter": "example.com"}))).await;
    assert_invalid(&reply, "not_applicable", "from_filter");

    let address = create_ok(&app, &key, with(smtp("a@example.com"), json!({"from_filter": "Sales@Example.COM"}))).await;
    assert_eq!(address.body["from_filter"], json!("sales@example.com"), "addresses are lower-cased");
    let domain = create_ok(&app, &key, with(smtp("b@example.com"), json!({"from_filter": "Example.org"}))).await;
    assert_eq!(domain.body["from_filter"], json!("example.org"));

    let id = address.id();
    assert_invalid(&app.patch(&path(&id), &key, json!({"from_filter": "nope nope"})).await, "invalid_from_filter", "from_filter");
    let inbound = created(&create(&app, &key, imap("in@example.com")).await);
    assert_invalid(
        &app.patch(&path(&inbound), &key, json!({"from_filter": "example.com"})).await,
        "not_applicable",
        "from_filter",
    );
}

#[tokio::test]
async fn inbound_settings_are_checked() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let cases = [
        (with(pop3("a@example.com"), json!({"folder": "INBOX"})), "not_applicable", "folder"),
        (with(pop3("a@example.com"), json!({"after_fetch": "mark_seen"})), "unsupported_action", "after_fetch"),
        (
            with(pop3("a@example.com"), json!({"after_fetch": "move", "move_to_folder": "Done"})),
            "unsupported_action",
            "after_fetch",
        ),
        (with(imap("a@example.com"), json!({"after_fetch": "move"})), "required", "move_to_folder"),
        (with(imap("a@example.com"), json!({"move_to_folder": "Archive"})), "not_applicable", "move_to_folder"),
        (with(imap("a@example.com"), json!({"poll_interval_seconds": 5})), "invalid_interval", "poll_interval_seconds"),
        (with(imap("a@example.com"), json!({"poll_interval_seconds": 86_401})), "invalid_interval", "poll_interval_seconds"),
        (with(imap("a@example.com"), json!({"folder": "  "})), "required", "folder"),
        (with(smtp("a@example.com"), json!({"folder": "INBOX"})), "not_applicable", "folder"),
        (with(smtp("a@example.com"), json!({"poll_interval_seconds": 60})), "not_applicable", "poll_interval_seconds"),
        (with(smtp("a@example.com"), json!({"after_fetch": "keep"})), "not_applicable", "after_fetch"),
    ];
    for (body, code, field) in cases {
        let reply = create(&app, &key, body.clone()).await;
        assert_eq!(
            (reply.status, reply.code(), reply.body["field"].as_str().unwrap_or("")),
            (StatusCode::UNPROCESSABLE_ENTITY, code, field),
            "{body}: {}",
            reply.text
        );
    }
    assert_eq!(account_count(&app).await, 0);

    let moving = create_ok(
        &app,
        &key,
        with(
            imap("a@example.com"),
            json!({"after_fetch": "move", "move_to_folder": "Archive", "folder": "Support", "poll_interval_seconds": 10}),
        ),
    )
    .await;
    assert_eq!(moving.body["after_fetch"], json!("move"));
    assert_eq!(moving.body["move_to_folder"], json!("Archive"));
    assert_eq!(moving.body["folder"], json!("Support"));
    assert_eq!(moving.body["poll_interval_seconds"], json!(10));
    let id = moving.id();
    assert_invalid(&app.patch(&path(&id), &key, json!({"move_to_folder": null})).await, "required", "move_to_folder");
    let kept = app.patch(&path(&id), &key, json!({"after_fetch": "keep", "move_to_folder": null})).await;
    assert_eq!(
        (kept.body["after_fetch"].clone(), kept.body["move_to_folder"].clone()),
        (json!("keep"), Value::Null),
        "{}",
        kept.text
    );
}

#[tokio::test]
async fn the_direction_must_match_the_protocol() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let reply = create(&app, &key, with(smtp("a@example.com"), json!({"direction": "inbound"}))).await;
    assert_invalid(&reply, "direction_mismatch", "direction");
    let reply = create(&app, &key, with(imap("a@example.com"), json!({"direction": "outbound"}))).await;
    assert_invalid(&reply, "direction_mismatch", "direction");
    let reply = create(&app, &key, with(pop3("a@example.com"), json!({"direction": "outbound"}))).await;
    assert_invalid(&reply, "direction_mismatch", "direction");
    let ok = create_ok(&app, &key, with(smtp("a@example.com"), json!({"direction": "outbound"}))).await;
    assert_eq!(ok.body["direction"], json!("outbound"));
    let ok = create_ok(&app, &key, with(imap("a@example.com"), json!({"direction": "inbound"}))).await;
    assert_eq!(ok.body["direction"], json!("inbound"));
}

#[tokio::test]
async fn unknown_enum_values_and_wrong_types_are_a_malformed_body() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    for body in [
        with(smtp("a@example.com"), json!({"protocol": "exchange"})),
        with(smtp("a@example.com"), json!({"protocol": "SMTP"})),
        with(smtp("a@example.com"), json!({"protocol": null})),
        with(smtp("a@example.com"), json!({"auth": "kerberos"})),
        with(smtp("a@example.com"), json!({"security": "ssl"})),
        with(smtp("a@example.com"), json!({"direction": "sideways"})),
        with(imap("a@example.com"), json!({"after_fetch": "archive"})),
        with(smtp("a@example.com"), json!({"port": "587"})),
        with(smtp("a@example.com"), json!({"token_config_id": "not-a-uuid"})),
    ] {
        let reply = create(&app, &key, body.clone()).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_body");
    }
    assert_eq!(account_count(&app).await, 0);
}

// ---- default sender ----

#[tokio::test]
async fn a_tenant_has_at_most_one_default_sender() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let a = create_ok(&app, &key, with(smtp("a@example.com"), json!({"is_default": true}))).await;
    assert_eq!(a.body["is_default"], json!(true));
    let a = a.id();
    let b = create_ok(&app, &key, with(smtp("b@example.com"), json!({"is_default": true}))).await;
    assert_eq!(b.body["is_default"], json!(true));
    let b = b.id();
    assert_eq!(app.get(&path(&a), &key).await.body["is_default"], json!(false), "A is no longer the default");
    assert_eq!(app.get(&path(&b), &key).await.body["is_default"], json!(true));

    // Making A the default again through an update moves the flag back.
    let again = app.patch(&path(&a), &key, json!({"is_default": true})).await;
    assert_eq!(again.body["is_default"], json!(true), "{}", again.text);
    assert_eq!(app.get(&path(&b), &key).await.body["is_default"], json!(false));

    // Another tenant's default is independent.
    let (_, other) = app.tenant_with_admin().await;
    let theirs = create_ok(&app, &other, with(smtp("c@example.org"), json!({"is_default": true}))).await;
    assert_eq!(theirs.body["is_default"], json!(true));
    assert_eq!(app.get(&path(&a), &key).await.body["is_default"], json!(true), "other tenants do not touch ours");

    let list = app.get("/v1/accounts", &key).await;
    let defaults = list.body["items"].as_array().expect("items").iter().filter(|i| i["is_default"] == json!(true)).count();
    assert_eq!(defaults, 1, "{}", list.text);
}

#[tokio::test]
async fn concurrent_default_senders_leave_exactly_one_default() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let existing = created(&create(&app, &key, with(smtp("first@example.com"), json!({"is_default": true}))).await);
    let replies = create_concurrent_defaults(&app, &key, 6).await;
    let mut winners = 0;
    for reply in &replies {
        match reply.status {
            StatusCode::CREATED => winners += 1,
            StatusCode::CONFLICT => assert_eq!(reply.code(), "default_sender_conflict", "{}", reply.text),
            _ => panic!("unexpected reply to a concurrent default sender: {}", reply.text),
        }
    }
    assert!(winners >= 1, "at least one concurrent default sender was stored");
    let list = app.get("/v1/accounts", &key).await;
    let items = list.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 1 + winners, "a refused default sender left no row: {}", list.text);
    let defaults: Vec<&Value> = items.iter().filter(|i| i["is_default"] == json!(true)).collect();
    assert_eq!(defaults.len(), 1, "exactly one default sender: {}", list.text);
    assert_ne!(defaults[0]["id"], json!(existing), "the earlier default was replaced");
}

/// Creates `n` default senders at the same time.
async fn create_concurrent_defaults(app: &TestApp, key: &str, n: usize) -> Vec<Reply> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let http = app.http.clone();
        let url = format!("{}/v1/accounts", app.address);
        let key = key.to_owned();
        set.spawn(async move {
            let body = with(smtp(&format!("racer{i}@example.com")), json!({"is_default": true}));
            let resp = http.post(url).bearer_auth(key).json(&body).send().await.expect("request sent");
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            Reply { status, body: serde_json::from_str(&text).unwrap_or(Value::Null), text }
        });
    }
    let mut replies = Vec::new();
    while let Some(reply) = set.join_next().await {
        replies.push(reply.expect("task"));
    }
    replies
}

#[tokio::test]
async fn an_inbound_account_cannot_be_the_default_sender() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let sender = created(&create(&app, &key, with(smtp("a@example.com"), json!({"is_default": true}))).await);
    let reply = create(&app, &key, with(imap("in@example.com"), json!({"is_default": true}))).await;
    assert_invalid(&reply, "not_applicable", "is_default");
    let inbound = created(&create(&app, &key, imap("in@example.com")).await);
    assert_invalid(&app.patch(&path(&inbound), &key, json!({"is_default": true})).await, "not_applicable", "is_default");
    assert_eq!(
        app.get(&path(&sender), &key).await.body["is_default"],
        json!(true),
        "the refused attempts left the default alone"
    );
}

// ---- state machine ----

#[tokio::test]
async fn a_confirmed_account_stays_confirmed_until_its_server_or_credentials_change() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let id = created(&create(&app, &key, smtp("a@example.com")).await);
    let p = path(&id);

    set_state(&app, &id, "confirmed").await;
    assert_eq!(app.get(&p, &key).await.body["state"], json!("confirmed"));
    let renamed = app.patch(&p, &key, json!({"name": "Renamed"})).await;
    assert_eq!(renamed.body["state"], json!("confirmed"), "a new name does not need a new test: {}", renamed.text);
    let same_enabled = app.patch(&p, &key, json!({"enabled": true, "from_filter": "example.com"})).await;
    assert_eq!(same_enabled.body["state"], json!("confirmed"), "{}", same_enabled.text);
    let same_host = app.patch(&p, &key, json!({"host": "SMTP.example.com"})).await;
    assert_eq!(same_host.body["state"], json!("confirmed"), "the same host in other case is no change: {}", same_host.text);

    for change in [
        json!({"host": "smtp2.example.com"}),
        json!({"password": "new-password"}),
        json!({"login": "b@example.com"}),
        json!({"port": 2525}),
        json!({"security": "tls"}),
    ] {
        set_state(&app, &id, "confirmed").await;
        let reply = app.patch(&p, &key, change.clone()).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert_eq!(reply.body["state"], json!("draft"), "{change} needs a new test");
        assert_eq!(app.get(&p, &key).await.body["state"], json!("draft"));
    }

    set_state(&app, &id, "confirmed").await;
    let disabled = app.patch(&p, &key, json!({"enabled": false})).await;
    assert_eq!((disabled.body["state"].clone(), disabled.body["enabled"].clone()), (json!("disabled"), json!(false)));
    let still = app.patch(&p, &key, json!({"name": "Paused"})).await;
    assert_eq!(still.body["state"], json!("disabled"), "a disabled account stays disabled");
    let enabled = app.patch(&p, &key, json!({"enabled": true})).await;
    assert_eq!((enabled.body["state"].clone(), enabled.body["enabled"].clone()), (json!("draft"), json!(true)));

    // An oauth2 account goes back to draft when it moves to another token configuration.
    let first = microsoft_config(&app, &key).await;
    let second = google_config(&app, &key).await;
    let oauth_id = created(&create(&app, &key, oauth("smtp", "jane@contoso.com", &first)).await);
    set_state(&app, &oauth_id, "confirmed").await;
    let moved = app.patch(&path(&oauth_id), &key, json!({"token_config_id": second, "host": "smtp.gmail.com"})).await;
    assert_eq!(moved.body["state"], json!("draft"), "{}", moved.text);
}

// ---- SSRF ----

#[tokio::test]
async fn strict_mode_refuses_loopback_private_and_metadata_hosts() {
    let app = strict_app().await;
    let (_, key) = app.tenant_with_admin().await;
    for host in [
        "127.0.0.1",
        "10.1.2.3",
        "172.20.0.5",
        "192.168.0.10",
        "169.254.169.254",
        "::1",
        "localhost",
        "LocalHost",
        "mail.localhost",
        "localhost.",
        "Mail.LocalHost.",
        "100.64.0.1",
        "fd00::1",
        "fe80::1",
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
        "2130706433",
        "127.1",
    ] {
        for body in [with(smtp("a@example.com"), json!({"host": host})), with(imap("a@example.com"), json!({"host": host}))] {
            let reply = create(&app, &key, body).await;
            assert_eq!(
                (reply.status, reply.code(), reply.body["field"].as_str().unwrap_or("")),
                (StatusCode::UNPROCESSABLE_ENTITY, "forbidden_address", "host"),
                "{host}: {}",
                reply.text
            );
        }
    }
    assert_eq!(account_count(&app).await, 0);

    // A public address is fine, and an update to a private one is refused too.
    let id = created(&create(&app, &key, with(smtp("a@example.com"), json!({"host": "93.184.216.34"}))).await);
    assert_invalid(&app.patch(&path(&id), &key, json!({"host": "169.254.169.254"})).await, "forbidden_address", "host");
    assert_eq!(app.get(&path(&id), &key).await.body["host"], json!("93.184.216.34"));
}

#[tokio::test]
async fn strict_mode_refuses_connections_without_transport_security() {
    let app = strict_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let reply = create(&app, &key, with(smtp("a@example.com"), json!({"host": "93.184.216.34", "security": "none"}))).await;
    assert_invalid(&reply, "insecure_connection", "security");
    let reply =
        create(&app, &key, with(imap("a@example.com"), json!({"host": "93.184.216.34", "security": "none", "port": 143}))).await;
    assert_invalid(&reply, "insecure_connection", "security");
    let id = created(&create(&app, &key, with(smtp("a@example.com"), json!({"host": "93.184.216.34"}))).await);
    assert_invalid(&app.patch(&path(&id), &key, json!({"security": "none"})).await, "insecure_connection", "security");
    assert_eq!(app.get(&path(&id), &key).await.body["security"], json!("starttls"));
}

#[tokio::test]
async fn development_mode_accepts_loopback_hosts() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    for host in ["127.0.0.1", "localhost", "::1", "10.1.2.3"] {
        let reply = create_ok(&app, &key, with(imap("a@example.com"), json!({"host": host, "port": 3993}))).await;
        assert_eq!(reply.body["host"], json!(host));
    }
    let plain =
        create_ok(&app, &key, with(smtp("a@example.com"), json!({"host": "127.0.0.1", "port": 2525, "security": "none"}))).await;
    assert_eq!(plain.body["security"], json!("none"));
}

// ---- the write-only password ----

async fn stored_password(app: &TestApp, id: &str) -> Option<String> {
    app.stored_value("email_accounts", "password", id).await
}

#[tokio::test]
async fn the_password_is_write_only_in_every_response() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let password = "Pa55-word-Never-Shown-1";
    let created_reply = create(&app, &key, with(smtp("a@example.com"), json!({"password": password}))).await;
    let id = created(&created_reply);
    assert_eq!(created_reply.body["password_set"], json!(true));
    assert!(created_reply.body.get("password").is_none(), "{}", created_reply.text);
    let stored = stored_password(&app, &id).await.expect("stored");
    assert!(!stored.contains(password), "the password is stored encrypted");

    let mut texts =
        vec![created_reply.text.clone(), app.get(&path(&id), &key).await.text, app.get("/v1/accounts", &key).await.text];
    let new_password = "Rotated-Pa55-Hidden-2";
    let updated = app.patch(&path(&id), &key, json!({"password": new_password})).await;
    assert_eq!(updated.body["password_set"], json!(true), "{}", updated.text);
    assert_ne!(stored_password(&app, &id).await, Some(stored), "the new password replaced the old one");
    texts.push(updated.text);

    let gql_password = "Gql-Pa55-Hidden-3";
    let gql_created = app
        .graphql(
            Some(&key),
            &format!("mutation($input: CreateAccount!) {{ createAccount(input: $input) {{ {GQL_FIELDS} }} }}"),
            json!({"input": {"protocol": "IMAP", "auth": "PASSWORD", "login": "b@example.com", "password": gql_password, "host": "imap.example.com"}}),
        )
        .await;
    assert_eq!(gql_created["data"]["createAccount"]["passwordSet"], json!(true), "{gql_created}");
    let gql_id = gql_created["data"]["createAccount"]["id"].as_str().expect("id").to_owned();
    texts.push(gql_created.to_string());
    let gql_update = app
        .graphql(
            Some(&key),
            &format!(
                "mutation($id: UUID!, $input: UpdateAccount!) {{ updateAccount(id: $id, input: $input) {{ {GQL_FIELDS} }} }}"
            ),
            json!({"id": gql_id, "input": {"password": "Gql-Pa55-Hidden-4"}}),
        )
        .await;
    assert_eq!(gql_update["data"]["updateAccount"]["passwordSet"], json!(true), "{gql_update}");
    texts.push(gql_update.to_string());
    let gql_read = app
        .graphql(
            Some(&key),
            &format!("query($id: UUID!) {{ account(id: $id) {{ {GQL_FIELDS} }} accounts {{ items {{ {GQL_FIELDS} }} }} }}"),
            json!({"id": id}),
        )
        .await;
    assert!(gql_read["errors"].is_null(), "{gql_read}");
    texts.push(gql_read.to_string());
    // A refused update does not echo the password either.
    let refused = app.patch(&path(&id), &key, json!({"password": "x".repeat(2000)})).await;
    assert_invalid(&refused, "too_long", "password");
    assert!(!refused.text.contains("xxxxxxxx"), "{}", refused.text);

    for text in texts {
        for value in [password, new_password, gql_password, "Gql-Pa55-Hidden-4"] {
            assert!(!text.contains(value), "a response revealed a password: {text}");
        }
    }
}

#[tokio::test]
async fn switching_from_password_to_oauth2_drops_the_stored_password() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let config = microsoft_config(&app, &key).await;
    let id = created(&create(&app, &key, smtp("jane@contoso.com")).await);

    let reply = app.patch(&path(&id), &key, json!({"auth": "oauth2"})).await;
    assert_invalid(&reply, "required", "token_config_id");
    let reply = app.patch(&path(&id), &key, json!({"auth": "oauth2", "token_config_id": config, "password": "still-here"})).await;
    assert_invalid(&reply, "not_applicable", "password");

    let switched =
        app.patch(&path(&id), &key, json!({"auth": "oauth2", "token_config_id": config, "host": "smtp.office365.com"})).await;
    assert_eq!(switched.status, StatusCode::OK, "{}", switched.text);
    assert_eq!(switched.body["auth"], json!("oauth2"));
    assert_eq!(switched.body["password_set"], json!(false), "the old password is dropped");
    assert_eq!(switched.body["token_config_id"], json!(config));
    assert_eq!(stored_password(&app, &id).await, None, "and gone from the database");
}

#[tokio::test]
async fn switching_from_oauth2_to_password_requires_a_new_password() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let config = microsoft_config(&app, &key).await;
    let id = created(&create(&app, &key, oauth("imap", "jane@contoso.com", &config)).await);

    let reply = app.patch(&path(&id), &key, json!({"auth": "password"})).await;
    assert_invalid(&reply, "required", "password");
    let reply = app.patch(&path(&id), &key, json!({"auth": "password", "password": ""})).await;
    assert_invalid(&reply, "required", "password");
    let reply = app.patch(&path(&id), &key, json!({"auth": "password", "password": "pw", "token_config_id": config})).await;
    assert_invalid(&reply, "not_applicable", "token_config_id");
    assert_eq!(app.get(&path(&id), &key).await.body["auth"], json!("oauth2"), "the refused switches changed nothing");

    let switched = app.patch(&path(&id), &key, json!({"auth": "password", "password": "new-imap-password"})).await;
    assert_eq!(switched.status, StatusCode::OK, "{}", switched.text);
    assert_eq!(switched.body["auth"], json!("password"));
    assert_eq!(switched.body["password_set"], json!(true));
    assert_eq!(switched.body["token_config_id"], Value::Null, "the token configuration is released");
    // The configuration is free again.
    let deleted = app.delete(&format!("/v1/token-configs/{config}"), &key).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
}

// ---- nothing half-written ----

#[tokio::test]
async fn a_refused_create_or_update_writes_nothing() {
    let app = spawn_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let default = create_ok(&app, &key, with(smtp("a@example.com"), json!({"is_default": true}))).await;
    let id = default.id();
    let before_count = account_count(&app).await;
    let before_list = app.get("/v1/accounts", &key).await.body;

    for (body, code, field) in [
        (with(smtp("b@example.com"), json!({"is_default": true, "port": 0})), "invalid_port", "port"),
        (
            with(smtp("b@example.com"), json!({"is_default": true, "from_filter": "bad filter"})),
            "invalid_from_filter",
            "from_filter",
        ),
        (with(smtp("b@example.com"), json!({"is_default": true, "password": null})), "required", "password"),
        (with(imap("b@example.com"), json!({"poll_interval_seconds": 1})), "invalid_interval", "poll_interval_seconds"),
        (with(smtp("b@example.com"), json!({"host": "bad_host!"})), "invalid_host", "host"),
    ] {
        let reply = create(&app, &key, body.clone()).await;
        assert_eq!(
            (reply.status, reply.code(), reply.body["field"].as_str().unwrap_or("")),
            (StatusCode::UNPROCESSABLE_ENTITY, code, field),
            "{body}: {}",
            reply.text
        );
    }
    assert_error(
        &create(&app, &key, with(smtp("b@example.com"), json!({"protocol": "nntp"}))).await,
        StatusCode::BAD_REQUEST,
        "invalid_body",
    );
    assert_eq!(account_count(&app).await, before_count, "no refused create left a row");
    assert_eq!(app.get("/v1/accounts", &key).await.body, before_list, "the list is unchanged");

    set_state(&app, &id, "confirmed").await;
    let before = app.get(&path(&id), &key).await.body;
    let stored = stored_password(&app, &id).await;
    for (patch, code, field) in [
        (json!({"name": "New name", "host": "bad_host!"}), "invalid_host", "host"),
        (json!({"host": "smtp2.example.com", "port": 70000}), "invalid_port", "port"),
        (json!({"password": "new-password", "from_filter": "not a filter"}), "invalid_from_filter", "from_filter"),
        (json!({"enabled": false, "folder": "INBOX"}), "not_applicable", "folder"),
        (json!({"auth": "oauth2", "login": "a@example.com"}), "required", "token_config_id"),
    ] {
        let reply = app.patch(&path(&id), &key, patch.clone()).await;
        assert_eq!(
            (reply.status, reply.code(), reply.body["field"].as_str().unwrap_or("")),
            (StatusCode::UNPROCESSABLE_ENTITY, code, field),
            "{patch}: {}",
            reply.text
        );
    }
    assert_error(
        &app.patch(&path(&id), &key, json!({"is_default": false, "port": "x"})).await,
        StatusCode::BAD_REQUEST,
        "invalid_body",
    );
    assert_eq!(stored_password(&app, &id).await, stored, "the stored password is untouched");
    let after = app.get(&path(&id), &key).await.body;
    assert_eq!(after, before, "refused updates leave the account as it was (state, default flag, password)");
}

// ---- roles ----

#[tokio::test]
async fn viewers_read_accounts_but_cannot_change_them() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let id = created(&create(&app, &admin, smtp("a@example.com")).await);
    let viewer = app.api_key(&tenant, "viewer").await;
    assert_eq!(app.get(&path(&id), &viewer).await.status, StatusCode::OK);
    assert_eq!(app.get("/v1/accounts", &viewer).await.body["items"].as_array().map(Vec::len), Some(1));
    assert_error(&create(&app, &viewer, smtp("b@example.com")).await, StatusCode::FORBIDDEN, "forbidden");
    assert_error(&app.patch(&path(&id), &viewer, json!({"name": "x"})).await, StatusCode::FORBIDDEN, "forbidden");
    assert_error(&app.delete(&path(&id), &viewer).await, StatusCode::FORBIDDEN, "forbidden");
    // Members may add their own accounts, but not the tenant's default sender.
    let member = app.api_key(&tenant, "member").await;
    created(&create(&app, &member, smtp("m@example.com")).await);
    assert_error(
        &create(&app, &member, with(smtp("d@example.com"), json!({"is_default": true}))).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_eq!(account_count(&app).await, 2);
}
