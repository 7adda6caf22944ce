//! The page people see at the end of "Connect your mailbox", walked in a real headless browser (Debian's Chromium,
//! driven by tests/browser/visit.mjs): the authorization URL, the provider stand-in's consent, the callback, and
//! where the browser lands. It says what happened and what to do next in plain sentences, with the tenant's name and
//! logo; a replayed sign-in that came from the app goes back to the app.

use postbridge_tests::oauth::{OAuthSetup, CONSENTING_USER};
use postbridge_tests::{assert_error, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

const LOGO: &str = "https://cdn.acme.example/logo.png";

/// Opens `url` in headless Chromium and follows it to the end.
async fn visit(url: &str) -> Value {
    let output = tokio::process::Command::new("node")
        .arg("visit.mjs")
        .arg(url)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/browser"))
        .output()
        .await
        .expect("node runs (scripts/ensure-mail-tools.sh installs it)");
    assert!(
        output.status.success(),
        "the browser walk failed (scripts/ensure-browser.sh installs Chromium and playwright-core): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)))
}

/// The tenant's web app, as a stub on loopback: every request gets a page titled "The app". Its origin.
async fn stub_app() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let origin = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut request = [0u8; 8192];
                let _ = socket.read(&mut request).await;
                let body = "<!doctype html><title>App</title><h1>The app</h1>";
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
            });
        }
    });
    origin
}

/// A branded tenant's setup: its admin sets the name and logo people see.
async fn branded_setup(app: &TestApp) -> OAuthSetup {
    let setup = app.oauth_setup().await;
    let branded = app
        .patch(&format!("/v1/tenants/{}", setup.tenant), &setup.admin, json!({"display_name": "Acme CRM", "logo_url": LOGO}))
        .await;
    assert_eq!(branded.status, StatusCode::OK, "{}", branded.text);
    setup
}

async fn authorization_url(app: &TestApp, setup: &OAuthSetup, account: &str, return_url: Option<&str>) -> String {
    let started = app.authorize(setup, account, return_url).await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.text);
    started.body["authorization_url"].as_str().expect("authorization_url").to_owned()
}

#[tokio::test]
async fn a_connected_mailbox_gets_a_plain_branded_page_that_fits_a_phone() {
    let app = postbridge_tests::spawn_app().await;
    let setup = branded_setup(&app).await;
    let account = app.oauth_account(&setup, "imap", CONSENTING_USER).await;

    let page = visit(&authorization_url(&app, &setup, &account, None).await).await;
    assert_eq!(page["status"], 200, "{page}");
    assert!(page["url"].as_str().is_some_and(|u| u.starts_with(&format!("{}/oauth/callback", app.address))), "{page}");
    assert_eq!(page["h1"], "Your mailbox is connected");
    let text = page["text"].as_str().unwrap_or_default();
    assert!(text.contains(&format!("{CONSENTING_USER} is now connected to Acme CRM.")), "{text}");
    assert!(text.contains("You can close this window"), "{text}");
    assert_eq!(page["logo"], json!({"src": LOGO, "alt": "Acme CRM"}));
    assert_eq!(
        (page["lang"].clone(), page["reference"].clone(), page["overflows"].clone()),
        (json!("en"), json!("connected"), json!(false))
    );
    assert!(page["viewport"].as_str().is_some_and(|v| v.contains("width=device-width")), "{page}");
    assert_eq!(app.account_json(&setup, &account).await["state"], "authorized");
}

#[tokio::test]
async fn the_wrong_account_is_told_whom_to_sign_in_as_and_the_admins_hint_stays_in_the_api() {
    let app = postbridge_tests::spawn_app().await;
    let setup = branded_setup(&app).await;
    let account = app.oauth_account(&setup, "imap", CONSENTING_USER).await;
    setup.provider.set_consenting_user("eve@example.com");

    let page = visit(&authorization_url(&app, &setup, &account, None).await).await;
    assert_eq!(
        (page["status"].clone(), page["h1"].clone()),
        (json!(400), json!("You signed in with a different account")),
        "{page}"
    );
    let text = page["text"].as_str().unwrap_or_default();
    assert!(text.contains(&format!("You signed in as eve@example.com, but this connection is for {CONSENTING_USER}.")), "{text}");
    assert!(text.contains("ask your administrator"), "{text}");
    assert!(!text.contains("mark the account") && !page["h1"].as_str().unwrap_or("").contains("wrong_mailbox"), "{text}");
    assert_eq!(page["reference"], "wrong_mailbox");
    let last_error = app.account_json(&setup, &account).await["last_error"].as_str().unwrap_or_default().to_owned();
    assert!(last_error.contains("mark the account as a shared mailbox"), "the admin's hint is in the API: {last_error}");
}

#[tokio::test]
async fn a_forged_link_is_explained_and_a_replayed_one_goes_back_to_the_app() {
    let app = postbridge_tests::spawn_app().await;
    let setup = branded_setup(&app).await;
    let account = app.oauth_account(&setup, "imap", CONSENTING_USER).await;

    let forged = visit(&format!("{}/oauth/callback?state=forged&code=whatever", app.address)).await;
    assert_eq!(
        (forged["status"].clone(), forged["h1"].clone()),
        (json!(400), json!("This sign-in link is not valid")),
        "{forged}"
    );
    assert_eq!(
        (forged["reference"].clone(), forged["logo"].clone()),
        (json!("invalid_state"), Value::Null),
        "no tenant is known"
    );

    // The sign-in started from the app (a stub on loopback); its callback is used once, then replayed in the browser.
    let app_origin = stub_app().await;
    let allowed = app
        .patch(&format!("/v1/tenants/{}", setup.tenant), &app.operator_token(), json!({"allowed_return_origins": [app_origin]}))
        .await;
    assert_eq!(allowed.status, StatusCode::OK, "{}", allowed.text);
    let return_url = format!("{app_origin}/done");
    let url = authorization_url(&app, &setup, &account, Some(&return_url)).await;
    let at_provider = app.http.get(&url).send().await.expect("provider");
    let callback = at_provider.headers().get("location").and_then(|v| v.to_str().ok()).expect("to the callback").to_owned();
    assert_eq!(app.open_callback(&callback).await.status, StatusCode::FOUND);
    let replayed = visit(&callback).await;
    let landed = replayed["url"].as_str().unwrap_or_default();
    assert!(landed.starts_with(&format!("{return_url}?status=error&reason=state_used")), "back in the app: {replayed}");
    assert!(landed.contains(&format!("account_id={account}")), "{landed}");
    assert_eq!(replayed["h1"], "The app");
}

#[tokio::test]
async fn a_tenants_admin_sets_only_the_name_and_logo_and_bad_ones_are_refused() {
    let app = postbridge_tests::spawn_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let path = format!("/v1/tenants/{tenant}");
    let member = app.api_key_with_id(&admin, None, "member").await.1;
    assert_error(&app.patch(&path, &member, json!({"display_name": "Mine"})).await, StatusCode::FORBIDDEN, "forbidden");
    assert_error(
        &app.patch(&path, &admin, json!({"display_name": "X", "name": "Renamed"})).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    for bad in ["http://cdn.example/logo.png", "javascript:alert(1)", "https://user:pw@cdn.example/l.png", "not a url"] {
        assert_eq!(app.patch(&path, &admin, json!({"logo_url": bad})).await.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    assert_eq!(app.patch(&path, &admin, json!({"display_name": ""})).await.status, StatusCode::UNPROCESSABLE_ENTITY);
    let set = app.patch(&path, &admin, json!({"display_name": "Acme", "logo_url": LOGO})).await;
    assert_eq!(
        (set.status, set.body["display_name"].clone(), set.body["logo_url"].clone()),
        (StatusCode::OK, json!("Acme"), json!(LOGO))
    );
    let cleared = app.patch(&path, &admin, json!({"logo_url": null})).await;
    assert_eq!(cleared.body["logo_url"], Value::Null, "{}", cleared.text);
    let (_, stranger) = app.tenant_with_admin().await;
    assert_error(&app.patch(&path, &stranger, json!({"display_name": "Mine"})).await, StatusCode::NOT_FOUND, "not_found");
}
