//! Walls between the members of a tenant and toward hosts the tenant's admin did not allow: grants are linked only
//! to accounts their connector may manage, tokens go only to allowed mail hosts, from filters, the route
//! explainer and webhook URLs stay within what each role may see, and only Postbridge's own JWT key makes operators.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::Utc;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use postbridge_tests::oauth::{CONSENTING_USER, OAUTH_MAIL_HOST};
use postbridge_tests::{assert_error, random_key_b64, spawn_app, spawn_app_with, TestApp, TestEnv};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

fn imap_account(login: &str, config_id: &str) -> Value {
    json!({"protocol": "imap", "auth": "oauth2", "login": login, "token_config_id": config_id, "host": OAUTH_MAIL_HOST})
}

async fn create(app: &TestApp, key: &str, body: Value) -> Value {
    let reply = app.post("/v1/accounts", key, body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    reply.body
}

// ---- grants are linked only to accounts their connector may manage ----

#[tokio::test]
async fn a_member_cannot_borrow_a_mailbox_an_admin_connected_and_must_consent_itself() {
    let app = spawn_app().await;
    let setup = app.oauth_setup().await;
    let admins = app.oauth_account(&setup, "imap", CONSENTING_USER).await;
    let member = app.api_key(&setup.tenant, "member").await;
    // A member's draft account for the same mailbox, made before the admin connects it.
    let early = create(&app, &member, imap_account(CONSENTING_USER, &setup.config_id)).await;

    let outcome = app.consent(&setup, &admins).await;
    assert_eq!(outcome.param("status").as_deref(), Some("success"), "{outcome:?}");
    let early = app.get(&format!("/v1/accounts/{}", early["id"].as_str().expect("id")), &member).await;
    assert_eq!((early.body["state"].clone(), early.body["grant_id"].clone()), (json!("draft"), Value::Null), "{}", early.text);

    // A new account of the member for that mailbox is not linked to the admin's grant either.
    let late = create(&app, &member, imap_account(CONSENTING_USER, &setup.config_id)).await;
    assert_eq!((late["state"].clone(), late["grant_id"].clone()), (json!("draft"), Value::Null), "{late}");
    let late_id = late["id"].as_str().expect("id").to_owned();
    let messages = app.get(&format!("/v1/accounts/{late_id}/messages"), &member).await;
    assert!(messages.body["items"].as_array().is_none_or(|items| items.is_empty()), "{}", messages.text);
    let probe = app.post(&format!("/v1/accounts/{late_id}/test"), &member, json!({})).await;
    assert_eq!(probe.body["ok"], json!(false), "an unlinked account has no token to test with: {}", probe.text);

    // An admin's new account of the mailbox is linked at once (admins manage every account).
    let admins_smtp = create(
        &app,
        &setup.admin,
        json!({"protocol": "smtp", "auth": "oauth2", "login": CONSENTING_USER, "token_config_id": setup.config_id, "host": OAUTH_MAIL_HOST}),
    )
    .await;
    assert_eq!(admins_smtp["state"], json!("authorized"), "{admins_smtp}");

    // The member consents as the mailbox's user: its own accounts are linked, and from then on its new ones too.
    let started = app.post(&format!("/v1/accounts/{late_id}/authorize"), &member, json!({})).await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.text);
    let url = started.body["authorization_url"].as_str().expect("authorization_url").to_owned();
    // The admin's grant holds a refresh token, but it is not the member's: the user sees the consent screen.
    assert!(url.contains("prompt=consent"), "{url}");
    let outcome = app.follow_authorization(&url).await;
    assert_eq!(outcome.status, StatusCode::OK, "{outcome:?}");
    let late = app.get(&format!("/v1/accounts/{late_id}"), &member).await;
    assert_eq!(late.body["state"], json!("authorized"), "{}", late.text);
    let again = create(&app, &member, imap_account(CONSENTING_USER, &setup.config_id)).await;
    assert_eq!(again["state"], json!("authorized"), "{again}");
    // Another member still cannot borrow it.
    let other = app.api_key(&setup.tenant, "member").await;
    let borrowed = create(&app, &other, imap_account(CONSENTING_USER, &setup.config_id)).await;
    assert_eq!((borrowed["state"].clone(), borrowed["grant_id"].clone()), (json!("draft"), Value::Null), "{borrowed}");
}

#[tokio::test]
async fn an_app_flow_grant_serves_only_accounts_an_admin_created_or_authorized() {
    let app = spawn_app().await;
    let setup = app.oauth_setup_with_flow("app").await;
    let member = app.api_key(&setup.tenant, "member").await;
    let smtp = |login: &str| json!({"protocol": "smtp", "auth": "oauth2", "login": login, "token_config_id": setup.config_id, "host": OAUTH_MAIL_HOST});
    // A member's account made before the admin authorizes the app stays unlinked by that authorization.
    let members_early = create(&app, &member, smtp("ceo@example.com")).await;
    let admins = app.oauth_account(&setup, "smtp", "sender@example.com").await;
    let authorized = app.authorize(&setup, &admins, None).await;
    assert_eq!(authorized.body["status"], json!("authorized"), "{}", authorized.text);
    let early_id = members_early["id"].as_str().expect("id").to_owned();
    let early = app.get(&format!("/v1/accounts/{early_id}"), &member).await;
    assert_eq!((early.body["state"].clone(), early.body["grant_id"].clone()), (json!("draft"), Value::Null), "{}", early.text);

    // A member's new account is not linked to the app grant, and the member cannot authorize it.
    let members_late = create(&app, &member, smtp("cfo@example.com")).await;
    assert_eq!((members_late["state"].clone(), members_late["grant_id"].clone()), (json!("draft"), Value::Null));
    let late_id = members_late["id"].as_str().expect("id").to_owned();
    let refused = app.post(&format!("/v1/accounts/{late_id}/authorize"), &member, json!({})).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(setup.provider.token_requests("client_credentials"), 1, "the refusal asked the provider for nothing");

    // An admin's new account is linked at once; an admin authorizing the member's account approves it.
    let admins_late = create(&app, &setup.admin, smtp("billing@example.com")).await;
    assert_eq!(admins_late["state"], json!("authorized"), "{admins_late}");
    let approved = app.post(&format!("/v1/accounts/{late_id}/authorize"), &setup.admin, json!({})).await;
    assert_eq!(approved.body["account"]["state"], json!("authorized"), "{}", approved.text);
    let early = app.get(&format!("/v1/accounts/{early_id}"), &member).await;
    assert_eq!(early.body["state"], json!("draft"), "approving one account approves no other: {}", early.text);
}

// ---- tokens go only to allowed mail hosts ----

#[tokio::test]
async fn an_oauth2_account_on_a_host_the_configuration_does_not_allow_is_refused() {
    let app = spawn_app().await;
    let setup = app.oauth_setup().await;
    let member = app.api_key(&setup.tenant, "member").await;
    let mut body = imap_account("member@example.com", &setup.config_id);
    body["host"] = json!("mail.attacker.test");
    let refused = app.post("/v1/accounts", &member, body).await;
    assert_error(&refused, StatusCode::UNPROCESSABLE_ENTITY, "mail_host_not_allowed");
    assert_eq!(refused.body["field"], json!("host"), "{}", refused.text);
    assert!(refused.text.contains(OAUTH_MAIL_HOST), "the refusal names the allowed hosts: {}", refused.text);

    let account = create(&app, &member, imap_account("member@example.com", &setup.config_id)).await;
    let id = account["id"].as_str().expect("id");
    let moved = app.patch(&format!("/v1/accounts/{id}"), &member, json!({"host": "mail.attacker.test"})).await;
    assert_error(&moved, StatusCode::UNPROCESSABLE_ENTITY, "mail_host_not_allowed");
    assert_eq!(app.get(&format!("/v1/accounts/{id}"), &member).await.body["host"], json!(OAUTH_MAIL_HOST), "nothing changed");

    // Wildcards match subdomains only; a password account goes anywhere (it carries no token).
    let listed = app
        .patch(&format!("/v1/token-configs/{}", setup.config_id), &setup.admin, json!({"allowed_mail_hosts": ["*.corp.example"]}))
        .await;
    assert_eq!(listed.body["allowed_mail_hosts"], json!(["*.corp.example"]), "{}", listed.text);
    let mut sub = imap_account("member@example.com", &setup.config_id);
    sub["host"] = json!("imap.corp.example");
    create(&app, &member, sub.clone()).await;
    sub["host"] = json!("corp.example.attacker.test");
    assert_error(&app.post("/v1/accounts", &member, sub).await, StatusCode::UNPROCESSABLE_ENTITY, "mail_host_not_allowed");
    create(
        &app,
        &member,
        json!({"protocol": "imap", "auth": "password", "login": "u", "password": "p", "host": "mail.attacker.test"}),
    )
    .await;

    // A generic configuration without allowed hosts takes no oauth2 account; bad entries are refused.
    for (hosts, code) in [(json!(["bad host"]), "invalid_host"), (json!(["*.com.", "ok.example"]), "invalid_host")] {
        let reply = app
            .patch(&format!("/v1/token-configs/{}", setup.config_id), &setup.admin, json!({"allowed_mail_hosts": hosts}))
            .await;
        assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, code);
    }
    let cleared =
        app.patch(&format!("/v1/token-configs/{}", setup.config_id), &setup.admin, json!({"allowed_mail_hosts": []})).await;
    assert_eq!(cleared.status, StatusCode::OK, "{}", cleared.text);
    let none = app.post("/v1/accounts", &member, imap_account("member@example.com", &setup.config_id)).await;
    assert_error(&none, StatusCode::UNPROCESSABLE_ENTITY, "mail_host_not_allowed");
    assert!(none.text.contains("allowed_mail_hosts"), "the refusal says what an admin must do: {}", none.text);
}

#[tokio::test]
async fn microsoft_and_google_tokens_go_only_to_their_providers_mail_hosts() {
    let app = spawn_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let google = app
        .post(
            "/v1/token-configs",
            &admin,
            json!({"name": "Google", "provider": "google", "client_id": "c.apps.googleusercontent.com", "client_secret": "s"}),
        )
        .await;
    assert_eq!(google.status, StatusCode::CREATED, "{}", google.text);
    assert_eq!(google.body["allowed_mail_hosts"], json!(["imap.gmail.com", "pop.gmail.com", "smtp.gmail.com"]));
    let id = google.id();
    let preset =
        create(&app, &admin, json!({"protocol": "imap", "auth": "oauth2", "login": "a@example.com", "token_config_id": id}))
            .await;
    assert_eq!(preset["host"], json!("imap.gmail.com"));
    let elsewhere = app
        .post(
            "/v1/accounts",
            &admin,
            json!({"protocol": "imap", "auth": "oauth2", "login": "a@example.com", "token_config_id": id, "host": "imap.gmail.com.attacker.test"}),
        )
        .await;
    assert_error(&elsewhere, StatusCode::UNPROCESSABLE_ENTITY, "mail_host_not_allowed");
    let own_list =
        app.patch(&format!("/v1/token-configs/{id}"), &admin, json!({"allowed_mail_hosts": ["mail.attacker.test"]})).await;
    assert_error(&own_list, StatusCode::UNPROCESSABLE_ENTITY, "not_applicable");
}

/// A TCP listener that counts connections and closes each at once.
async fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    (port, accepted)
}

#[tokio::test]
async fn no_token_is_sent_to_a_host_the_configuration_stopped_allowing() {
    let app = spawn_app().await;
    let setup = app.oauth_setup().await;
    let config = format!("/v1/token-configs/{}", setup.config_id);
    let allow = |hosts: Value| app.patch(&config, &setup.admin, json!({"allowed_mail_hosts": hosts}));
    assert_eq!(allow(json!([OAUTH_MAIL_HOST, "127.0.0.1"])).await.status, StatusCode::OK);
    let (port, accepted) = counting_listener().await;
    let account = create(
        &app,
        &setup.admin,
        json!({"protocol": "imap", "auth": "oauth2", "login": CONSENTING_USER, "token_config_id": setup.config_id,
               "host": "127.0.0.1", "port": port, "security": "none"}),
    )
    .await;
    let id = account["id"].as_str().expect("id").to_owned();
    let outcome = app.consent(&setup, &id).await;
    assert_eq!(outcome.param("status").as_deref(), Some("success"), "{outcome:?}");

    // Allowed: the test connects (and fails at the greeting, since the listener says nothing).
    let first = app.post(&format!("/v1/accounts/{id}/test"), &setup.admin, json!({})).await;
    assert_eq!(first.body["ok"], json!(false), "{}", first.text);
    let connections = accepted.load(Ordering::SeqCst);
    assert!(connections >= 1, "the allowed host was contacted");

    // No longer allowed: the token is never fetched for, nor sent to, that host.
    assert_eq!(allow(json!([OAUTH_MAIL_HOST])).await.status, StatusCode::OK);
    let second = app.post(&format!("/v1/accounts/{id}/test"), &setup.admin, json!({})).await;
    assert_eq!((second.body["ok"].clone(), second.body["step"].clone()), (json!(false), json!("auth")), "{}", second.text);
    assert!(second.body["message"].as_str().is_some_and(|m| m.contains("not an allowed mail host")), "{}", second.text);
    assert_eq!(accepted.load(Ordering::SeqCst), connections, "no connection to the host once it is not allowed");
}

// ---- from filters ----

#[tokio::test]
async fn members_may_only_claim_their_own_proven_address_as_from_filter() {
    let app = spawn_app().await;
    let setup = app.oauth_setup().await;
    let (tenant, admin) = (setup.tenant.clone(), setup.admin.clone());
    let member = app.api_key(&tenant, "member").await;
    let smtp = |login: &str, filter: &str| {
        json!({"protocol": "smtp", "auth": "oauth2", "login": login, "token_config_id": setup.config_id,
               "host": OAUTH_MAIL_HOST, "from_filter": filter})
    };
    for filter in ["ceo@example.com", "example.com", "other.test"] {
        let reply = app.post("/v1/accounts", &member, smtp("alice@example.com", filter)).await;
        assert_error(&reply, StatusCode::FORBIDDEN, "forbidden");
    }
    // A password proves only that some server takes it (perhaps the member's own): no filter, not even the login,
    // and a login that is a domain routes nothing either.
    let password = |login: &str| {
        json!({"protocol": "smtp", "auth": "password", "login": login, "password": "p", "host": "smtp.attacker.test",
               "from_filter": login})
    };
    for login in ["alice@example.com", "example.com"] {
        assert_error(&app.post("/v1/accounts", &member, password(login)).await, StatusCode::FORBIDDEN, "forbidden");
    }

    let own = create(&app, &member, smtp("alice@example.com", "Alice@Example.com")).await;
    assert_eq!(own["from_filter"], json!("alice@example.com"));
    let id = own["id"].as_str().expect("id").to_owned();
    let path = format!("/v1/accounts/{id}");
    assert_error(&app.patch(&path, &member, json!({"from_filter": "example.com"})).await, StatusCode::FORBIDDEN, "forbidden");
    // Moving the account to another login keeps a filter that is no longer its own address: refused too; so is
    // switching it to a password, which would no longer prove the address.
    assert_error(&app.patch(&path, &member, json!({"login": "bob@example.com"})).await, StatusCode::FORBIDDEN, "forbidden");
    let to_password = json!({"auth": "password", "password": "p", "token_config_id": null});
    assert_error(&app.patch(&path, &member, to_password).await, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(app.get(&path, &member).await.body["login"], json!("alice@example.com"));

    // An admin may route a domain through the member's account; the member may still edit other fields.
    let set = app.patch(&path, &admin, json!({"from_filter": "example.com"})).await;
    assert_eq!(set.body["from_filter"], json!("example.com"), "{}", set.text);
    let renamed = app.patch(&path, &member, json!({"name": "Alice's mail"})).await;
    assert_eq!(renamed.status, StatusCode::OK, "{}", renamed.text);
    let cleared = app.patch(&path, &member, json!({"from_filter": null})).await;
    assert_eq!(cleared.body["from_filter"], Value::Null, "{}", cleared.text);
}

#[tokio::test]
async fn an_admins_shared_mailbox_marking_and_a_stored_password_stay_with_the_identity_and_server_they_were_given_for() {
    let app = spawn_app().await;
    let setup = app.oauth_setup().await;
    let member = app.api_key(&setup.tenant, "member").await;
    let account = create(&app, &member, imap_account("support@example.com", &setup.config_id)).await;
    let path = format!("/v1/accounts/{}", account["id"].as_str().expect("id"));
    let marked = app.patch(&path, &setup.admin, json!({"shared_mailbox": true})).await;
    assert_eq!(marked.body["shared_mailbox"], json!(true), "{}", marked.text);
    // The member moves it to another mailbox: its consent is held to the new login again.
    let moved = app.patch(&path, &member, json!({"login": "ceo@example.com"})).await;
    assert_eq!((moved.status, moved.body["shared_mailbox"].clone()), (StatusCode::OK, json!(false)), "{}", moved.text);

    // A password an admin set goes only to the server and login it was given for.
    let imap = create(
        &app,
        &member,
        json!({"protocol": "imap", "auth": "password", "login": "desk@example.com", "password": "member-pw", "host": "imap.example.com"}),
    )
    .await;
    let path = format!("/v1/accounts/{}", imap["id"].as_str().expect("id"));
    assert_eq!(app.patch(&path, &setup.admin, json!({"password": "admins-secret"})).await.status, StatusCode::OK);
    for moved in [json!({"host": "imap.attacker.test"}), json!({"port": 1143}), json!({"login": "other@example.com"})] {
        let reply = app.patch(&path, &member, moved.clone()).await;
        assert_error(&reply, StatusCode::UNPROCESSABLE_ENTITY, "required");
        assert_eq!(reply.body["field"], json!("password"), "{moved}: {}", reply.text);
    }
    let kept = app.patch(&path, &member, json!({"name": "Desk"})).await;
    assert_eq!(kept.status, StatusCode::OK, "other changes keep the password: {}", kept.text);
    let with_password = app.patch(&path, &member, json!({"host": "imap.attacker.test", "password": "their-own"})).await;
    assert_eq!(with_password.status, StatusCode::OK, "{}", with_password.text);
}

// ---- the route explainer ----

#[tokio::test]
async fn the_route_explainer_shows_members_only_their_own_accounts() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let member = app.api_key(&tenant, "member").await;
    let sender = create(
        &app,
        &admin,
        json!({"protocol": "smtp", "auth": "password", "login": "noreply@corp.example", "password": "p", "host": "smtp.corp.example",
               "is_default": true}),
    )
    .await;
    let sender_id = sender["id"].as_str().expect("id");
    app.sql_exec(&format!("UPDATE email_accounts SET state = 'confirmed' WHERE id = '{sender_id}'")).await;
    // An unusable account of the admin with a matching filter: a skipped sender only admins hear about.
    create(
        &app,
        &admin,
        json!({"protocol": "smtp", "auth": "password", "login": "sales@corp.example", "password": "p", "host": "smtp.corp.example",
               "from_filter": "sales@corp.example"}),
    )
    .await;

    let path = "/v1/routing?from=sales@corp.example";
    let as_admin = app.get(path, &admin).await;
    assert_eq!(as_admin.status, StatusCode::OK, "{}", as_admin.text);
    assert_eq!(as_admin.body["account_id"], json!(sender_id));
    assert_eq!(as_admin.body["skipped"].as_array().map(Vec::len), Some(1), "{}", as_admin.text);

    let as_member = app.get(path, &member).await;
    assert_eq!(as_member.status, StatusCode::OK, "{}", as_member.text);
    assert_eq!((as_member.body["account_id"].clone(), as_member.body["account_login"].clone()), (Value::Null, Value::Null));
    assert_eq!(as_member.body["skipped"], json!([]), "{}", as_member.text);
    assert_eq!(as_member.body["effective_from"], as_admin.body["effective_from"], "the route itself is the same");
    assert!(!as_member.text.contains(sender_id), "{}", as_member.text);
}

// ---- webhook URLs ----

#[tokio::test]
async fn webhook_urls_are_shown_whole_to_admins_only() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let url = "https://hooks.example.com/services/T0/B1/s3cr3t?token=abc";
    let created = app.post("/v1/webhooks", &admin, json!({"url": url})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let id = created.body["endpoint"]["id"].as_str().expect("id").to_owned();
    assert_eq!(app.get(&format!("/v1/webhooks/{id}"), &admin).await.body["url"], json!(url));
    for role in ["viewer", "member"] {
        let key = app.api_key(&tenant, role).await;
        let one = app.get(&format!("/v1/webhooks/{id}"), &key).await;
        assert_eq!(one.body["url"], json!("https://hooks.example.com/…"), "{role}: {}", one.text);
        let list = app.get("/v1/webhooks", &key).await;
        assert!(!list.text.contains("s3cr3t"), "{role}: {}", list.text);
        let graphql = app.graphql(Some(&key), "{ webhookEndpoints { items { url } } }", json!({})).await;
        assert!(!graphql.to_string().contains("s3cr3t") && graphql["errors"].is_null(), "{role}: {graphql}");
    }
}

// ---- JWT keys ----

fn claims(role: &str, tenant: Option<&str>) -> Value {
    let now = Utc::now().timestamp();
    let mut claims = json!({"iss": "postbridge", "aud": "postbridge-api", "sub": "someone@idp.example", "iat": now, "nbf": now,
                            "exp": now + 600, "role": role});
    if let Some(tenant) = tenant {
        claims["tid"] = json!(tenant);
    }
    claims
}

fn sign(kid: &str, secret: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    let secret = STANDARD.decode(secret).expect("base64 secret");
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(&secret)).expect("signs")
}

#[tokio::test]
async fn only_postbridges_own_signing_key_makes_operators_and_a_key_may_be_held_to_one_tenant() {
    let (own, idp, limited) = (random_key_b64(), random_key_b64(), random_key_b64());
    let elsewhere = Uuid::now_v7();
    let mut env = TestEnv::new();
    env.set("JWT_KEYS", format!("j1:HS256:{own},idp:HS256:{idp},partner:HS256:{limited};tenant={elsewhere}"));
    env.set("JWT_SIGNING_KEY_ID", "j1");
    let app = spawn_app_with(env).await;
    let tenant = app.create_tenant("acme").await;

    let operator_by_idp = sign("idp", &idp, &claims("operator", None));
    let refused = app.get("/v1/tenants", &operator_by_idp).await;
    assert_error(&refused, StatusCode::UNAUTHORIZED, "unauthenticated");
    assert!(refused.text.contains("operator"), "{}", refused.text);
    assert_eq!(app.get("/v1/tenants", &sign("j1", &own, &claims("operator", None))).await.status, StatusCode::OK);
    assert_eq!(app.get("/v1/accounts", &sign("idp", &idp, &claims("admin", Some(&tenant)))).await.status, StatusCode::OK);

    // The partner's key acts in its own tenant only (which does not exist here, so that fails later, differently).
    let outside = app.get("/v1/accounts", &sign("partner", &limited, &claims("admin", Some(&tenant)))).await;
    assert_error(&outside, StatusCode::UNAUTHORIZED, "unauthenticated");
    assert!(outside.text.contains("limited to another tenant"), "{}", outside.text);
    let inside = app.get("/v1/accounts", &sign("partner", &limited, &claims("admin", Some(&elsewhere.to_string())))).await;
    assert_error(&inside, StatusCode::UNAUTHORIZED, "unauthenticated");
    assert!(!inside.text.contains("limited to another tenant"), "{}", inside.text);
}

#[tokio::test]
async fn a_member_owns_a_bounded_number_of_accounts_even_when_created_all_at_once() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let member = app.api_key(&tenant, "member").await;
    let body = |n: usize| {
        json!({"protocol": "imap", "auth": "password", "login": format!("box{n}@example.com"), "password": "p",
               "host": "imap.example.com"})
    };
    let replies = futures::future::join_all((0..55).map(|n| app.post("/v1/accounts", &member, body(n)))).await;
    let created = replies.iter().filter(|r| r.status == StatusCode::CREATED).count();
    assert_eq!(created, 50, "{:?}", replies.iter().find(|r| r.status != StatusCode::CREATED).map(|r| &r.text));
    for refused in replies.iter().filter(|r| r.status != StatusCode::CREATED) {
        assert_error(refused, StatusCode::UNPROCESSABLE_ENTITY, "too_many_accounts");
    }
    // Another member of the tenant, and its admin, are not held back by this member's accounts.
    let other = app.api_key(&tenant, "member").await;
    assert_eq!(app.post("/v1/accounts", &other, body(100)).await.status, StatusCode::CREATED);
    assert_eq!(app.post("/v1/accounts", &admin, body(101)).await.status, StatusCode::CREATED);
}
