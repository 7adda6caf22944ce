//! Fixtures for the end-to-end mail-flow tests (`tests/api/mail_flows.rs`): an app that trusts the mail servers' test
//! CA, accounts pointing at the shared Dovecot / SMTP server of [`MailServers`], "test & confirm", OAuth consent
//! against the shared provider the servers check XOAUTH2 tokens with, sample messages, and direct SQL reads.

use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::mail::MailServers;
use crate::oauth::{ConsentOutcome, RETURN_ORIGIN};
use crate::{spawn_app_with, Reply, TestApp, TestEnv};

/// The password every password mailbox of these tests starts with.
pub const MAIL_PASSWORD: &str = "correct-horse-battery";

/// A fresh mailbox login (each test uses its own; the servers are shared by the whole process).
pub fn new_login() -> String {
    format!("user-{}@example.com", Uuid::new_v4().simple())
}

/// An app (own database) whose mail clients trust the test CA, and the shared servers.
pub async fn spawn_mail_app() -> (TestApp, &'static MailServers) {
    spawn_mail_app_with(TestEnv::new()).await
}

pub async fn spawn_mail_app_with(mut env: TestEnv) -> (TestApp, &'static MailServers) {
    let servers = MailServers::shared().await;
    env.set("EXTRA_CA_FILE", servers.ca_file().to_string_lossy());
    (spawn_app_with(env).await, servers)
}

/// The servers' port for a protocol (`imap`, `pop3`, `smtp`) and security (`tls`, `starttls`).
pub fn port_for(servers: &MailServers, protocol: &str, security: &str) -> u16 {
    match (protocol, security) {
        ("imap", "tls") => servers.imaps_port(),
        ("imap", _) => servers.imap_port(),
        ("pop3", "tls") => servers.pop3s_port(),
        ("pop3", _) => servers.pop3_port(),
        ("smtp", "tls") => servers.smtps_port(),
        _ => servers.smtp_port(),
    }
}

/// A password account body on the shared servers; `extra`'s keys are merged in (and win).
pub fn password_account(servers: &MailServers, protocol: &str, security: &str, login: &str, extra: Value) -> Value {
    let mut body = json!({"protocol": protocol, "auth": "password", "login": login, "password": MAIL_PASSWORD,
                          "host": servers.host(), "port": port_for(servers, protocol, security), "security": security});
    merge(&mut body, extra);
    body
}

/// An oauth2 account body on the shared servers for `config_id`; `extra`'s keys are merged in.
pub fn oauth_account(servers: &MailServers, protocol: &str, security: &str, login: &str, config_id: &str, extra: Value) -> Value {
    let mut body = json!({"protocol": protocol, "auth": "oauth2", "login": login, "token_config_id": config_id,
                          "host": servers.host(), "port": port_for(servers, protocol, security), "security": security});
    merge(&mut body, extra);
    body
}

fn merge(body: &mut Value, extra: Value) {
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
}

/// `From`, `To`, `Subject`, `Message-ID` and `Date` headers, CRLF line endings, a body with lines that need
/// dot-stuffing; returns the Message-ID (with angle brackets) and the bytes.
pub fn sample_message(to: &str, subject: &str) -> (String, Vec<u8>) {
    let message_id = format!("<{}@sender.example.net>", Uuid::new_v4().simple());
    let raw = format!(
        "From: Sender Example <sender@example.net>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: {message_id}\r\n\
         Date: Mon, 2 Jun 2025 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Hello, this is {subject}.\r\n.leading dot line\r\n..two dots\r\nlast line\r\n"
    )
    .into_bytes();
    (message_id, raw)
}

/// The tenant side of OAuth against the servers' provider: a client of its own registered at the shared provider with
/// this app's redirect URI (so no other test's registration is overwritten), and a `generic` user-flow configuration.
pub struct SharedOAuth {
    pub config_id: String,
    pub client_id: String,
}

impl TestApp {
    /// One poll of an inbound account by id, as the worker's job runs it; panics on failure.
    pub async fn poll(&self, account: &str) -> postbridge_core::receive::poll::PollReport {
        let id: Uuid = account.parse().expect("an account id");
        match postbridge_core::receive::poll::poll_account(&self.ctx, id.into()).await {
            Ok(report) => report,
            Err(err) => panic!("poll failed: {err}"),
        }
    }

    /// `POST /v1/accounts`, asserting 201; returns the id.
    pub async fn create_mail_account(&self, key: &str, body: Value) -> String {
        let reply = self.post("/v1/accounts", key, body).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        reply.id()
    }

    /// `POST /v1/accounts/{id}/test` (200 whatever the outcome).
    pub async fn test_mail_account(&self, key: &str, id: &str) -> Reply {
        let reply = self.post(&format!("/v1/accounts/{id}/test"), key, json!({})).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        reply
    }

    /// Test & confirm, asserting success.
    pub async fn confirm_mail_account(&self, key: &str, id: &str) {
        let reply = self.test_mail_account(key, id).await;
        assert_eq!(reply.body["ok"], json!(true), "test & confirm failed: {}", reply.text);
        assert_eq!(reply.body["account"]["state"], "confirmed", "{}", reply.text);
    }

    /// Creates and confirms an account; returns its id.
    pub async fn confirmed_mail_account(&self, key: &str, body: Value) -> String {
        let id = self.create_mail_account(key, body).await;
        self.confirm_mail_account(key, &id).await;
        id
    }

    /// Allows `RETURN_ORIGIN` for the tenant and sets up [`SharedOAuth`].
    pub async fn shared_oauth(&self, servers: &MailServers, tenant: &str, admin: &str) -> SharedOAuth {
        let origins = self
            .patch(&format!("/v1/tenants/{tenant}"), &self.operator_token(), json!({"allowed_return_origins": [RETURN_ORIGIN]}))
            .await;
        assert_eq!(origins.status, StatusCode::OK, "{}", origins.text);
        let provider = servers.provider();
        let client_id = format!("mailflow-{}", &Uuid::new_v4().simple().to_string()[..12]);
        let client_secret = format!("secret-{}", Uuid::new_v4().simple());
        provider.register_client(&client_id, Some(&client_secret), &[&format!("{}/oauth/callback", self.address)]);
        let config = self
            .post(
                "/v1/token-configs",
                admin,
                json!({"name": "Mail servers' provider", "provider": "generic", "flow": "user", "client_id": client_id,
                       "client_secret": client_secret, "auth_url": provider.authorize_url(), "token_url": provider.token_url(),
                       "scopes": ["openid", "email", "offline_access", "mail"], "allowed_mail_hosts": ["127.0.0.1", "localhost"]}),
            )
            .await;
        assert_eq!(config.status, StatusCode::CREATED, "{}", config.text);
        SharedOAuth { config_id: config.id(), client_id }
    }

    /// The consent flow for `account_id` with `login` consenting at the shared provider (its consenting user is global:
    /// held under [`MailServers::lock_provider`]); asserts success.
    pub async fn consent_on_shared_provider(
        &self,
        servers: &MailServers,
        admin: &str,
        account_id: &str,
        login: &str,
    ) -> ConsentOutcome {
        let started = self
            .post(&format!("/v1/accounts/{account_id}/authorize"), admin, json!({"return_url": format!("{RETURN_ORIGIN}/done")}))
            .await;
        assert_eq!(started.status, StatusCode::OK, "{}", started.text);
        let url = started.body["authorization_url"].as_str().expect("authorization_url").to_owned();
        let outcome = {
            let _guard = servers.lock_provider().await;
            servers.provider().set_consenting_user(login);
            self.follow_authorization(&url).await
        };
        assert_eq!(outcome.param("status").as_deref(), Some("success"), "{outcome:?}");
        outcome
    }

    /// Stores `token` as the grant's access token, valid for another hour (as if the provider had issued it), so the
    /// app uses it without refreshing first; returns the ciphertext stored.
    pub async fn plant_access_token(&self, tenant_id: &str, grant_id: &str, token: &str) -> String {
        let location = postbridge_core::secrets::GRANT_ACCESS_TOKEN
            .location(tenant_id.parse().expect("tenant uuid"), grant_id.parse::<uuid::Uuid>().expect("grant uuid"));
        let stored = self.ctx.cipher.encrypt(location, token).expect("encrypt");
        let updated = self
            .sql_exec(&format!(
                "UPDATE grants SET access_token = '{stored}', expires_at = now() + interval '1 hour', next_refresh_at = NULL WHERE id = '{grant_id}'"
            ))
            .await;
        assert_eq!(updated, 1);
        stored
    }

    /// One row, one column, as text (`NULL` → `None`).
    pub async fn sql_text(&self, sql: &str) -> Option<String> {
        let row = self
            .ctx
            .db
            .query_one_raw(Statement::from_string(DbBackend::Postgres, sql.to_owned()))
            .await
            .expect("query")
            .expect("a row");
        row.try_get_by_index::<Option<String>>(0).expect("a text column")
    }

    /// One row, one bigint column.
    pub async fn sql_i64(&self, sql: &str) -> i64 {
        let row = self
            .ctx
            .db
            .query_one_raw(Statement::from_string(DbBackend::Postgres, sql.to_owned()))
            .await
            .expect("query")
            .expect("a row");
        row.try_get_by_index::<i64>(0).expect("a bigint column")
    }

    /// Runs a statement; returns the rows affected.
    pub async fn sql_exec(&self, sql: &str) -> u64 {
        self.ctx
            .db
            .execute_raw(Statement::from_string(DbBackend::Postgres, sql.to_owned()))
            .await
            .expect("statement")
            .rows_affected()
    }

    /// How many events of this type the tenant log holds about `resource_id`.
    pub async fn event_count(&self, event_type: &str, resource_id: &str) -> i64 {
        self.sql_i64(&format!("SELECT count(*) FROM events WHERE event_type = '{event_type}' AND resource_id = '{resource_id}'"))
            .await
    }

    /// Every received message of an account through the REST list (all pages), newest first.
    pub async fn all_received(&self, key: &str, account_id: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/accounts/{account_id}/messages?limit=200&cursor={c}"),
                None => format!("/v1/accounts/{account_id}/messages?limit=200"),
            };
            let page = self.get(&path, key).await;
            assert_eq!(page.status, StatusCode::OK, "{}", page.text);
            items.extend(page.body["items"].as_array().expect("items").iter().cloned());
            match page.body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return items,
            }
        }
    }

    /// `GET /v1/received-messages/{id}/raw`: status and bytes.
    pub async fn received_raw(&self, key: &str, id: &str) -> (StatusCode, Vec<u8>) {
        let response = self
            .http
            .get(format!("{}/v1/received-messages/{id}/raw", self.address))
            .bearer_auth(key)
            .send()
            .await
            .expect("request sent");
        let status = response.status();
        (status, response.bytes().await.expect("body").to_vec())
    }
}
