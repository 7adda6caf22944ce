//! The lists read whole rows by column position (`store::positional`) instead of sea-orm's decoder, which finds
//! each column by name. Both readings must agree on every column, set or NULL.

use postbridge_core::store::entities::{email_account, outbound_message};
use postbridge_core::store::positional;
use postbridge_tests::mailflow::{new_login, password_account, spawn_mail_app, MAIL_PASSWORD};
use reqwest::StatusCode;
use sea_orm::{EntityTrait, QueryOrder};
use serde_json::json;

#[tokio::test]
async fn accounts_and_messages_read_by_position_equal_sea_orms_reading_of_every_column() {
    let (app, servers) = spawn_mail_app().await;
    let (tenant, admin) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    let full =
        app.confirmed_mail_account(&admin, password_account(servers, "smtp", "tls", &login, json!({"from_filter": login}))).await;
    // A draft with its optional columns left empty (the API insists on a password for a password account).
    app.sql_exec(&format!(
        "INSERT INTO email_accounts (id, tenant_id, name, direction, protocol, host, port, security, auth_method, login, \
         owner_subject, created_at, updated_at) VALUES (gen_random_uuid(), '{tenant}', 'draft', 'inbound', 'imap', \
         'imap.example.com', 993, 'tls', 'password', 'draft@example.com', 'admin', now(), now())"
    ))
    .await;
    // Every optional column of the confirmed account set (its grant and configuration need an OAuth flow; the
    // draft's NULLs and `token_config_id`'s twin `grant_id` cover their kind).
    app.sql_exec(&format!(
        "UPDATE email_accounts SET last_error = 'refused', last_error_kind = '{{\"kind\":\"refresh_token_missing\"}}', \
         folder = 'INBOX', poll_interval_seconds = 120, after_fetch = 'move', move_to_folder = 'Done', \
         sync_folder = 'INBOX', uid_validity = 7, last_uid = 42, next_poll_at = now() + interval '1 minute', \
         last_polled_at = now(), lease_until = now(), dispatched_until = now(), failing_since = now(), \
         send_rate_per_minute = 30, poll_failures = 3 WHERE id = '{full}'"
    ))
    .await;

    let by_name = email_account::Entity::find().order_by_asc(email_account::Column::Id).all(&app.ctx.db).await.expect("read");
    let query = email_account::Entity::find().order_by_asc(email_account::Column::Id);
    let by_position = positional::all(query, &app.ctx.db).await.expect("read by position");
    assert_eq!(by_name.len(), 2);
    assert_eq!(by_position, by_name);
    let set = by_name.iter().find(|a| a.id.to_string() == full).expect("the confirmed account");
    assert!(set.password.is_some() && set.last_error_kind.is_some() && set.confirmed_at.is_some() && set.last_uid == Some(42));

    // Messages: one submitted with every optional column set afterwards, one as submitted.
    let submit = |subject: &str, key: Option<&str>| {
        let mut body = json!({"from": login, "to": ["rcpt@example.org"], "subject": subject, "text": "hi"});
        if let Some(key) = key {
            body["idempotency_key"] = json!(key);
        }
        body
    };
    let sent = app.post("/v1/messages", &admin, submit("set", Some("once"))).await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.text);
    let plain = app.post("/v1/messages", &admin, submit("plain", None)).await;
    assert_eq!(plain.status, StatusCode::ACCEPTED, "{}", plain.text);
    app.sql_exec(&format!(
        "UPDATE outbound_messages SET lease_until = now(), lease_token = gen_random_uuid(), \
         leased_by = gen_random_uuid(), handed_at = now(), dispatched_until = now(), sent_folder_checked_at = now(), \
         last_error = 'slow', smtp_reply = '250 ok', sent_at = now(), \
         recipient_results = '[{{\"recipient\":\"rcpt@example.org\",\"accepted\":true,\"reply\":\"250 ok\"}}]' \
         WHERE id = '{}'",
        sent.id()
    ))
    .await;
    let by_name =
        outbound_message::Entity::find().order_by_asc(outbound_message::Column::Id).all(&app.ctx.db).await.expect("read");
    let query = outbound_message::Entity::find().order_by_asc(outbound_message::Column::Id);
    let by_position = positional::all(query, &app.ctx.db).await.expect("read by position");
    assert_eq!(by_name.len(), 2);
    assert_eq!(by_position, by_name);
    assert!(by_name.iter().any(|m| m.recipient_results.is_some() && m.idempotency_key.as_deref() == Some("once")));
    assert!(by_name.iter().any(|m| m.lease_token.is_none() && m.idempotency_key.is_none() && !m.raw.is_empty()));

    // The list leaves the raw message out but shows everything else as before.
    let listed = app.get("/v1/messages", &admin).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    let items = listed.body["items"].as_array().expect("items");
    let one = app.get(&format!("/v1/messages/{}", sent.id()), &admin).await;
    let in_list = items.iter().find(|m| m["id"] == one.body["id"]).expect("listed");
    assert_eq!(in_list, &one.body, "a listed message is the message as GET shows it");
}
