//! The routing explainer: which account would send From X, why, and a warning when the fallback is used.

use postbridge_tests::{spawn_app, TestApp};
use reqwest::StatusCode;
use sea_orm::ConnectionTrait;
use serde_json::{json, Value};

async fn account(app: &TestApp, admin: &str, login: &str, extra: Value) -> String {
    let mut body = TestApp::smtp_account(login);
    for (key, value) in extra.as_object().expect("object") {
        body[key] = value.clone();
    }
    let reply = app.post("/v1/accounts", admin, body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    reply.id()
}

/// Puts an account in a state only a real connection would reach (tests of those connections live in mail_flows).
async fn set_state(app: &TestApp, id: &str, state: &str, error: Option<&str>) {
    let error = error.map_or("NULL".to_owned(), |e| format!("'{e}'"));
    let sql = format!("UPDATE email_accounts SET state = '{state}', last_error = {error} WHERE id = '{id}'");
    app.ctx.db.execute_unprepared(&sql).await.expect("state set");
}

async fn explain(app: &TestApp, key: &str, from: &str) -> Value {
    let from: String = url::form_urlencoded::byte_serialize(from.as_bytes()).collect();
    let reply = app.get(&format!("/v1/routing?from={from}"), key).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body
}

#[tokio::test]
async fn the_explainer_says_why_warns_on_the_fallback_and_names_matching_accounts_that_cannot_send() {
    let app = spawn_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let desk = account(&app, &admin, "desk@acme.test", json!({"is_default": true})).await;
    let sales = account(&app, &admin, "sales@acme.test", json!({"from_filter": "sales@acme.test"})).await;
    let beta = account(&app, &admin, "out@beta.test", json!({"from_filter": "beta.test"})).await;
    set_state(&app, &desk, "confirmed", None).await;
    set_state(&app, &beta, "confirmed", None).await;
    set_state(&app, &sales, "error", Some("535 5.7.139 Authentication unsuccessful")).await;

    let fallback = explain(&app, &admin, "Sales Team <sales@acme.test>").await;
    assert_eq!(fallback["routed_by"], json!("default"), "{fallback}");
    assert_eq!(fallback["account_id"], json!(desk));
    assert_eq!(fallback["account_login"], json!("desk@acme.test"));
    assert_eq!(fallback["effective_from"], json!("Sales Team <desk@acme.test>"));
    assert_eq!(fallback["reply_to"], json!("Sales Team <sales@acme.test>"));
    let warning = fallback["warning"].as_str().expect("a warning for the fallback");
    assert!(warning.contains("fallback") && warning.contains("sales@acme.test"), "{warning}");
    assert!(fallback["reason"].as_str().is_some_and(|r| r.contains("default sender")), "{fallback}");
    let skipped = fallback["skipped"].as_array().expect("skipped");
    assert_eq!(skipped.len(), 1, "{fallback}");
    assert_eq!(skipped[0]["account_id"], json!(sales));
    assert_eq!(skipped[0]["state"], json!("error"));
    assert_eq!(skipped[0]["reason"], json!("in error: 535 5.7.139 Authentication unsuccessful"));

    let by_domain = explain(&app, &admin, "news@beta.test").await;
    assert_eq!(by_domain["routed_by"], json!("domain"), "{by_domain}");
    assert_eq!(by_domain["account_id"], json!(beta));
    assert_eq!(by_domain["warning"], Value::Null);
    assert_eq!(by_domain["reply_to"], Value::Null);
    assert_eq!(by_domain["skipped"], json!([]));
    assert!(by_domain["reason"].as_str().is_some_and(|r| r.contains("domain beta.test")), "{by_domain}");

    // Fixed: the address routes to its own account, with no warning.
    set_state(&app, &sales, "confirmed", None).await;
    let direct = explain(&app, &admin, "sales@acme.test").await;
    assert_eq!((direct["routed_by"].clone(), direct["account_id"].clone()), (json!("address"), json!(sales)), "{direct}");
    assert_eq!(direct["warning"], Value::Null);

    // A viewer may ask, over GraphQL too.
    let viewer = app.api_key(&tenant, "viewer").await;
    set_state(&app, &sales, "disabled", None).await;
    let gql = app
        .graphql(
            Some(&viewer),
            "query($from: String!) { explainRoute(from: $from) { routedBy warning skipped { login enabled reason } } }",
            json!({"from": "sales@acme.test"}),
        )
        .await;
    let route = &gql["data"]["explainRoute"];
    assert_eq!(route["routedBy"], json!("DEFAULT"), "{gql}");
    assert!(route["warning"].is_string(), "{gql}");
    assert_eq!(route["skipped"][0]["login"], json!("sales@acme.test"), "{gql}");
}

#[tokio::test]
async fn among_hundreds_of_other_senders_routing_still_finds_the_address_then_the_domain_then_the_default() {
    let app = spawn_app().await;
    let (_, admin) = app.tenant_with_admin().await;
    let desk = account(&app, &admin, "desk@many.test", json!({"is_default": true})).await;
    let sales = account(&app, &admin, "sales@many.test", json!({"from_filter": "sales@many.test"})).await;
    let other = account(&app, &admin, "out@other.test", json!({"from_filter": "other.test"})).await;
    for id in [&desk, &sales, &other] {
        set_state(&app, id, "confirmed", None).await;
    }
    // Three hundred more outbound accounts: confirmed ones for other addresses, and broken ones for other domains.
    let copies = format!(
        "INSERT INTO email_accounts (id, tenant_id, name, direction, protocol, host, port, security, auth_method, login, \
         owner_subject, from_filter, state, created_at, updated_at) \
         SELECT gen_random_uuid(), tenant_id, 'copy ' || n, direction, protocol, host, port, security, auth_method, \
         'user' || n || '@many.test', owner_subject, \
         CASE WHEN n % 2 = 0 THEN 'user' || n || '@many.test' ELSE 'domain' || n || '.test' END, \
         CASE WHEN n % 2 = 0 THEN 'confirmed' ELSE 'error' END, now(), now() \
         FROM email_accounts, generate_series(1, 300) AS n WHERE id = '{sales}'"
    );
    assert_eq!(app.ctx.db.execute_unprepared(&copies).await.expect("copies").rows_affected(), 300);

    let direct = explain(&app, &admin, "sales@many.test").await;
    assert_eq!((direct["routed_by"].clone(), direct["account_id"].clone()), (json!("address"), json!(sales)), "{direct}");
    assert_eq!(direct["skipped"], json!([]), "accounts for other addresses and domains are not candidates");
    let by_domain = explain(&app, &admin, "news@other.test").await;
    assert_eq!((by_domain["routed_by"].clone(), by_domain["account_id"].clone()), (json!("domain"), json!(other)));
    let fallback = explain(&app, &admin, "Someone <someone@elsewhere.test>").await;
    assert_eq!((fallback["routed_by"].clone(), fallback["account_id"].clone()), (json!("default"), json!(desk)));
    assert_eq!(fallback["effective_from"], json!("Someone <desk@many.test>"));
    // One of the copies, broken, filters on its own domain: it is named as skipped for that domain, and the
    // message falls back to the default sender.
    let broken = explain(&app, &admin, "a@domain7.test").await;
    assert_eq!(broken["routed_by"], json!("default"), "{broken}");
    let skipped = broken["skipped"].as_array().expect("skipped");
    assert_eq!(skipped.len(), 1, "{broken}");
    assert_eq!(skipped[0]["from_filter"], json!("domain7.test"));

    let sent = app
        .post("/v1/messages", &admin, json!({"from": "user8@many.test", "to": ["x@example.org"], "subject": "s", "text": "t"}))
        .await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.text);
    let routed = app.get(&format!("/v1/messages/{}", sent.id()), &admin).await;
    assert_eq!(routed.body["routed_by"], json!("address"), "{}", routed.text);
}
