//! OAuth fixtures: the provider stand-in wired to a tenant through a `generic` token configuration,
//! and the browser's part of the consent dance.

use postbridge_oauth_provider::MockProvider;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::TestApp;

/// The origin test tenants allow as a return URL.
pub const RETURN_ORIGIN: &str = "https://app.example.com";
pub const CONSENTING_USER: &str = "user@example.com";
/// The mail host the stand-in configuration allows (its tokens are sent nowhere else).
pub const OAUTH_MAIL_HOST: &str = "mail.example.com";

pub struct OAuthSetup {
    pub provider: MockProvider,
    pub tenant: String,
    pub admin: String,
    pub config_id: String,
    pub client_id: String,
    pub client_secret: String,
}

/// Where the consent dance ended: the app's answer to the callback.
#[derive(Debug)]
pub struct ConsentOutcome {
    pub status: StatusCode,
    /// `Location` of the app's redirect to the return URL, if any.
    pub location: Option<String>,
    pub body: String,
}

impl ConsentOutcome {
    /// A query parameter of the redirect to the return URL.
    pub fn param(&self, name: &str) -> Option<String> {
        let url = url::Url::parse(self.location.as_deref()?).ok()?;
        url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
    }
}

impl TestApp {
    /// A provider, a tenant (allowing `RETURN_ORIGIN`) with an admin key, and a generic user-flow
    /// configuration registered at the provider with this app's redirect URI.
    pub async fn oauth_setup(&self) -> OAuthSetup {
        self.oauth_setup_with_flow("user").await
    }

    pub async fn oauth_setup_with_flow(&self, flow: &str) -> OAuthSetup {
        let provider = MockProvider::start().await;
        let client_id = format!("client-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let client_secret = format!("secret-{}", Uuid::new_v4().simple());
        let redirect_uri = format!("{}/oauth/callback", self.address);
        provider.register_client(&client_id, Some(&client_secret), &[&redirect_uri]);
        provider.set_consenting_user(CONSENTING_USER);
        let (tenant, admin) = self.tenant_with_admin().await;
        let origins = self
            .patch(&format!("/v1/tenants/{tenant}"), &self.operator_token(), json!({"allowed_return_origins": [RETURN_ORIGIN]}))
            .await;
        assert_eq!(origins.status, StatusCode::OK, "{}", origins.text);
        let scopes = if flow == "app" { json!(["mail.app"]) } else { json!(["openid", "email", "offline_access", "mail"]) };
        let config = self
            .post(
                "/v1/token-configs",
                &admin,
                json!({"name": "Stand-in", "provider": "generic", "flow": flow, "client_id": client_id, "client_secret": client_secret,
                       "auth_url": provider.authorize_url(), "token_url": provider.token_url(), "scopes": scopes,
                       "allowed_mail_hosts": [OAUTH_MAIL_HOST]}),
            )
            .await;
        assert_eq!(config.status, StatusCode::CREATED, "{}", config.text);
        OAuthSetup { config_id: config.id(), provider, tenant, admin, client_id, client_secret }
    }

    /// An oauth2 account on the setup's configuration; returns its id.
    pub async fn oauth_account(&self, setup: &OAuthSetup, protocol: &str, login: &str) -> String {
        let reply = self
            .post(
                "/v1/accounts",
                &setup.admin,
                json!({"protocol": protocol, "auth": "oauth2", "login": login, "token_config_id": setup.config_id, "host": OAUTH_MAIL_HOST}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        reply.id()
    }

    /// `POST /v1/accounts/{id}/authorize` as the setup's admin.
    pub async fn authorize(&self, setup: &OAuthSetup, account_id: &str, return_url: Option<&str>) -> crate::Reply {
        let body = match return_url {
            Some(url) => json!({"return_url": url}),
            None => json!({}),
        };
        self.post(&format!("/v1/accounts/{account_id}/authorize"), &setup.admin, body).await
    }

    /// What the browser does after `authorize`: open the provider URL (which auto-consents and redirects
    /// back), then follow that redirect to this app's callback. Returns the app's answer.
    pub async fn follow_authorization(&self, authorization_url: &str) -> ConsentOutcome {
        let at_provider = self.http.get(authorization_url).send().await.expect("provider reachable");
        assert_eq!(at_provider.status(), StatusCode::FOUND, "the provider redirects back");
        let callback = at_provider.headers().get("location").and_then(|v| v.to_str().ok()).expect("a Location header").to_owned();
        self.open_callback(&callback).await
    }

    /// Opens a callback URL (e.g. a replayed or forged one) on this app.
    pub async fn open_callback(&self, callback_url: &str) -> ConsentOutcome {
        let response = self.http.request(Method::GET, callback_url).send().await.expect("callback reachable");
        let status = response.status();
        let location = response.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = response.text().await.unwrap_or_default();
        ConsentOutcome { status, location, body }
    }

    /// Authorize + follow, with `RETURN_ORIGIN/done` as the return URL.
    pub async fn consent(&self, setup: &OAuthSetup, account_id: &str) -> ConsentOutcome {
        let started = self.authorize(setup, account_id, Some(&format!("{RETURN_ORIGIN}/done"))).await;
        assert_eq!(started.status, StatusCode::OK, "{}", started.text);
        let url = started.body["authorization_url"].as_str().expect("authorization_url").to_owned();
        self.follow_authorization(&url).await
    }

    pub async fn account_json(&self, setup: &OAuthSetup, account_id: &str) -> Value {
        self.get(&format!("/v1/accounts/{account_id}"), &setup.admin).await.body
    }
}
