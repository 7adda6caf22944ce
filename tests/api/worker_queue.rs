//! The queue's guarantees, with the real worker loop: Postgres is the source of truth, so jobs lost in
//! Redis are dispatched again, and a job that runs twice does its work once.

use std::time::Duration;

use postbridge_core::jobs::job::{Job, JobOutcome};
use postbridge_core::jobs::scheduler;
use postbridge_core::send::delivery::{self, Delivery};
use postbridge_core::send::settle;
use postbridge_tests::mailflow::{new_login, password_account, spawn_mail_app, MAIL_PASSWORD};
use postbridge_worker::scheduler::{dispatch_due_sends, Queues, RedisEpoch, Trigger};
use sea_orm::{ConnectionTrait, TransactionTrait};
use serde_json::json;
use uuid::Uuid;

/// Deletes every Redis key of this test's prefix: a flush that cannot touch the other tests' queues.
async fn flush_test_queues(app: &postbridge_tests::TestApp) -> usize {
    let prefix = app.ctx.settings.redis_prefix.clone();
    let mut conn = app.ctx.redis.get_multiplexed_async_connection().await.expect("redis");
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await.expect("keys");
    for key in &keys {
        let _: i64 = redis::cmd("DEL").arg(key).query_async(&mut conn).await.expect("del");
    }
    keys.len()
}

#[tokio::test]
async fn messages_queued_when_redis_loses_its_jobs_are_still_all_sent_exactly_once() {
    let (app, servers) = spawn_mail_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    app.confirmed_mail_account(&key, password_account(servers, "smtp", "starttls", &login, json!({"from_filter": login}))).await;
    let rcpt = format!("flush-{}@example.org", Uuid::new_v4().simple());
    for i in 0..10 {
        let reply = app
            .post("/v1/messages", &key, json!({"from": login, "to": [rcpt], "subject": format!("m{i}"), "text": "hello"}))
            .await;
        assert_eq!(reply.status.as_u16(), 202, "{}", reply.text);
    }

    // The scheduler dispatches everything into Redis, then Redis loses it all.
    let conn = postbridge_worker::queue::connect(app.ctx.settings.redis_url.as_str()).expect("redis");
    let mut queues = postbridge_worker::scheduler::Queues::new(conn, &app.ctx.settings.redis_prefix);
    postbridge_worker::scheduler::dispatch_due(&app.ctx, &mut queues).await.expect("dispatch");
    assert!(flush_test_queues(&app).await > 0, "jobs were in Redis");
    let dispatched = app.sql_i64("SELECT count(*) FROM outbound_messages WHERE dispatched_until > now()").await;
    assert_eq!(dispatched, 10, "all ten were dispatched before the flush");

    // Once the dispatch grace has passed the rows are due again; the worker sends them all, once each.
    app.sql_exec("UPDATE outbound_messages SET dispatched_until = now() - interval '1 second'").await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(postbridge_worker::run(app.ctx.clone(), stop_rx));
    let arrived = servers.wait_for_messages_to(&rcpt, 10, Duration::from_secs(60)).await;
    let _ = stop_tx.send(true);
    worker.await.expect("worker task").expect("worker stops cleanly");
    assert_eq!(arrived.len(), 10);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(servers.accepted_messages_to(&rcpt).len(), 10, "no message was sent twice");
    assert_eq!(app.sql_i64("SELECT count(*) FROM outbound_messages WHERE status = 'sent'").await, 10);
}

#[tokio::test]
async fn workers_starting_together_keep_each_others_claims_and_forget_only_those_made_before_redis_was_new() {
    let (app, servers) = spawn_mail_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    app.confirmed_mail_account(&key, password_account(servers, "smtp", "starttls", &login, json!({"from_filter": login}))).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let reply = app
            .post("/v1/messages", &key, json!({"from": login, "to": ["x@example.org"], "subject": format!("m{i}"), "text": "hi"}))
            .await;
        assert_eq!(reply.status.as_u16(), 202, "{}", reply.text);
        ids.push(reply.body["id"].as_str().expect("id").to_owned());
    }
    // The last one was claimed a minute ago (its job went with whatever Redis held then).
    app.sql_exec(&format!(
        "UPDATE outbound_messages SET dispatched_until = now() + interval '60 seconds' WHERE id = '{}'",
        ids[3]
    ))
    .await;

    // Two workers start on an empty Redis: the first to look creates the epoch, the other finds it and dispatches.
    let prefix = &app.ctx.settings.redis_prefix;
    let mut conn = postbridge_worker::queue::connect(app.ctx.settings.redis_url.as_str()).expect("redis");
    let (mut first, mut second) = (RedisEpoch::new(prefix), RedisEpoch::new(prefix));
    let found_at = first.lost_data(&mut conn, &app.ctx).await.expect("epoch").expect("an empty Redis is news to the first");
    assert!(second.lost_data(&mut conn, &app.ctx).await.expect("epoch").is_none(), "the second finds the epoch already there");
    let mut queues = Queues::new(conn.clone(), prefix);
    dispatch_due_sends(&app.ctx, &mut queues, Trigger::Pass).await.expect("dispatch");
    assert_eq!(app.sql_i64("SELECT count(*) FROM outbound_messages WHERE dispatched_until > now()").await, 4);

    // The first now forgets what was claimed before it learnt of the new Redis, and only that.
    let forgotten = scheduler::forget_dispatches(&app.ctx, Some(found_at)).await.expect("forget");
    assert_eq!(forgotten, 1, "only the claim older than the epoch");
    let undispatched = app.sql_i64("SELECT count(*) FROM outbound_messages WHERE dispatched_until IS NULL").await;
    assert_eq!(undispatched, 1);
    let old_one = app
        .sql_i64(&format!("SELECT count(*) FROM outbound_messages WHERE id = '{}' AND dispatched_until IS NULL", ids[3]))
        .await;
    assert_eq!(old_one, 1, "the old claim is the one forgotten");
    // After a recovery everything claimed so far is forgotten.
    assert_eq!(scheduler::forget_dispatches(&app.ctx, None).await.expect("forget"), 3);
}

#[tokio::test]
async fn a_message_delivered_by_two_jobs_at_once_is_sent_once() {
    let (app, servers) = spawn_mail_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    app.confirmed_mail_account(&key, password_account(servers, "smtp", "starttls", &login, json!({"from_filter": login}))).await;
    let rcpt = format!("twice-{}@example.org", Uuid::new_v4().simple());
    let reply = app.post("/v1/messages", &key, json!({"from": login, "to": [rcpt], "subject": "once", "text": "hello"})).await;
    let id = Uuid::parse_str(&reply.id()).expect("id");

    let (first, second) = tokio::join!(delivery::deliver(&app.ctx, id.into()), delivery::deliver(&app.ctx, id.into()));
    let mut outcomes = [first.expect("first"), second.expect("second")];
    outcomes.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(outcomes, [Delivery::Sent, Delivery::Skipped]);
    assert_eq!(
        delivery::deliver(&app.ctx, id.into()).await.expect("third"),
        Delivery::Skipped,
        "a sent message is never sent again"
    );
    servers.wait_for_messages_to(&rcpt, 1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(servers.accepted_messages_to(&rcpt).len(), 1);
    let status = app.get(&format!("/v1/messages/{id}"), &key).await;
    assert_eq!(status.body["status"], json!("sent"));
    assert_eq!(status.body["attempts"], json!(1));
    assert!(status.body["smtp_reply"].as_str().is_some_and(|r| r.starts_with("250")), "{}", status.text);
}

#[tokio::test]
async fn a_retry_is_not_sent_before_its_backoff_ends_even_if_dispatched_again() {
    let (app, servers) = spawn_mail_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    app.confirmed_mail_account(&key, password_account(servers, "smtp", "starttls", &login, json!({"from_filter": login}))).await;
    let reply = app
        .post("/v1/messages", &key, json!({"from": login, "to": [format!("tempfail+{}@example.org", Uuid::new_v4().simple())], "subject": "later", "text": "hi"}))
        .await;
    let id = Uuid::parse_str(&reply.id()).expect("id");
    assert_eq!(delivery::deliver(&app.ctx, id.into()).await.expect("first attempt"), Delivery::Retry);
    assert_eq!(delivery::deliver(&app.ctx, id.into()).await.expect("early job"), Delivery::Skipped, "the backoff holds");
    let attempts = app.sql_i64(&format!("SELECT attempts::bigint FROM outbound_messages WHERE id = '{id}'")).await;
    assert_eq!(attempts, 1);
    let claimed =
        postbridge_core::jobs::scheduler::claim_due_sends(&app.ctx, 10, postbridge_core::jobs::scheduler::SendClaim::NewAndLost)
            .await
            .expect("claim");
    assert!(!claimed.iter().any(|(_, batch)| batch.contains(&id.into())), "a message in backoff is not dispatched");
}

#[tokio::test]
async fn an_account_sends_no_faster_than_its_pace_and_the_rest_waits_without_an_attempt() {
    let mut env = postbridge_tests::TestEnv::new();
    env.set("SEND_RATE_PER_MINUTE", "2");
    let (app, servers) = postbridge_tests::mailflow::spawn_mail_app_with(env).await;
    let (_, key) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    app.confirmed_mail_account(&key, password_account(servers, "smtp", "starttls", &login, json!({"from_filter": login}))).await;
    let rcpt = format!("paced-{}@example.org", Uuid::new_v4().simple());
    let mut ids = Vec::new();
    for i in 0..3 {
        let reply =
            app.post("/v1/messages", &key, json!({"from": login, "to": [rcpt], "subject": format!("p{i}"), "text": "hi"})).await;
        ids.push(Uuid::parse_str(&reply.id()).expect("id"));
    }
    assert_eq!(delivery::deliver(&app.ctx, ids[0].into()).await.expect("first"), Delivery::Sent);
    assert_eq!(delivery::deliver(&app.ctx, ids[1].into()).await.expect("second"), Delivery::Sent);
    assert_eq!(delivery::deliver(&app.ctx, ids[2].into()).await.expect("third"), Delivery::Paced);
    let third = app.get(&format!("/v1/messages/{}", ids[2]), &key).await;
    assert_eq!((third.body["status"].clone(), third.body["attempts"].clone()), (json!("queued"), json!(0)));
    let wait = app
        .sql_i64(&format!(
            "SELECT EXTRACT(EPOCH FROM next_attempt_at - now())::bigint FROM outbound_messages WHERE id = '{}'",
            ids[2]
        ))
        .await;
    assert!((30..=62).contains(&wait), "waits for the minute to pass: {wait}s");
    assert_eq!(servers.wait_for_messages_to(&rcpt, 2, Duration::from_secs(10)).await.len(), 2);
}

/// A mailbox with an outbound and an inbound account (same login), both confirmed; a message whose delivery
/// was cut after the content was sent, aged past the settling delay. Returns (app, key, login, message id).
pub(crate) async fn unknown_delivery(
) -> (postbridge_tests::TestApp, String, String, Uuid, &'static postbridge_tests::mail::MailServers) {
    let (app, servers) = spawn_mail_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    app.confirmed_mail_account(&key, password_account(servers, "smtp", "starttls", &login, json!({"from_filter": login}))).await;
    app.confirmed_mail_account(&key, password_account(servers, "imap", "tls", &login, json!({}))).await;
    let rcpt = format!("dropafterdata+{}@example.org", Uuid::new_v4().simple());
    let reply = app.post("/v1/messages", &key, json!({"from": login, "to": [rcpt], "subject": "cut", "text": "hello"})).await;
    let id = Uuid::parse_str(&reply.id()).expect("id");
    assert_eq!(delivery::deliver(&app.ctx, id.into()).await.expect("deliver"), Delivery::Unknown);
    app.sql_exec(&format!("UPDATE outbound_messages SET updated_at = now() - interval '2 minutes' WHERE id = '{id}'")).await;
    (app, key, login, id, servers)
}

/// An unknown delivery whose submission the server filed in `folder` (before the connection dropped), settled as
/// sent; the app, for more checks.
async fn settled_when_filed_in(folder: &str) -> postbridge_tests::TestApp {
    let (app, key, login, id, servers) = unknown_delivery().await;
    let raw =
        app.sql_text(&format!("SELECT convert_from(raw, 'UTF8') FROM outbound_messages WHERE id = '{id}'")).await.expect("raw");
    servers.seed_messages(&login, folder, &[raw.into_bytes()]);
    let settled = settle::settle_unknown(&app.ctx).await.expect("settle");
    assert_eq!(settled, vec![(id.into(), settle::Settlement::FoundSent)]);
    let message = app.get(&format!("/v1/messages/{id}"), &key).await;
    assert_eq!(
        (message.body["status"].clone(), message.body["smtp_reply"].clone()),
        (json!("sent"), json!("found in the Sent folder"))
    );
    app
}

#[tokio::test]
async fn the_sent_folder_is_the_one_the_server_marks_sent_whatever_its_name() {
    // A localized server files submissions under its own name for Sent, marked `\Sent` (RFC 6154).
    settled_when_filed_in("Gesendete Elemente").await;
}

#[tokio::test]
async fn an_unknown_delivery_found_in_the_sent_folder_is_settled_as_sent() {
    let app = settled_when_filed_in("Sent").await;
    assert!(settle::settle_unknown(&app.ctx).await.expect("again").is_empty(), "settled once");
}

#[tokio::test]
async fn a_settlement_whose_message_was_delivered_again_during_its_search_writes_nothing() {
    // The server filed the submission in Sent: the search will find it.
    let (app, key, login, id, servers) = unknown_delivery().await;
    let raw =
        app.sql_text(&format!("SELECT convert_from(raw, 'UTF8') FROM outbound_messages WHERE id = '{id}'")).await.expect("raw");
    servers.seed_messages(&login, "Sent", &[raw.into_bytes()]);

    // The row is held, so the settlement's write waits behind it once the search is done; meanwhile the message was
    // resolved as `resend`, sent again and cut again: `unknown` once more, but another delivery, which this search
    // says nothing about.
    let holder = app.ctx.db.begin().await.expect("begin");
    let holder_pid = {
        let row = holder
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                format!("SELECT pg_backend_pid() AS pid FROM outbound_messages WHERE id = '{id}' FOR UPDATE"),
            ))
            .await
            .expect("hold the row")
            .expect("the row");
        row.try_get::<i32>("", "pid").expect("pid")
    };
    let settling = tokio::spawn({
        let ctx = app.ctx.clone();
        async move { settle::settle_unknown_message(&ctx, id.into()).await }
    });
    let waiting = format!("SELECT count(*) FROM pg_stat_activity WHERE {holder_pid} = ANY(pg_blocking_pids(pid))");
    postbridge_tests::wait_until("the settlement comes to write", Duration::from_secs(30), async || {
        settling.is_finished() || app.sql_i64(&waiting).await > 0
    })
    .await;
    assert!(!settling.is_finished(), "the settlement ended without writing: {:?}", settling.await);
    holder
        .execute_unprepared(&format!(
            "UPDATE outbound_messages SET status = 'unknown', attempts = attempts + 1, lease_token = NULL, \
             handed_at = now(), updated_at = now() WHERE id = '{id}'"
        ))
        .await
        .expect("resolved, resent and cut again meanwhile");
    holder.commit().await.expect("commit");

    // The search found it, but the delivery it searched for is not the one there now: nothing is written.
    let found = settling.await.expect("settlement task").expect("settlement");
    assert_eq!(found, Some(settle::Settlement::FoundSent), "the search itself found the message");
    let message = app.get(&format!("/v1/messages/{id}"), &key).await;
    assert_eq!(message.body["status"], json!("unknown"), "the new delivery's outcome stays to be settled: {}", message.body);
    assert_eq!(
        app.sql_i64(&format!("SELECT count(*) FROM outbound_messages WHERE id = '{id}' AND sent_folder_checked_at IS NOT NULL"))
            .await,
        0,
        "the settlement's check is not recorded"
    );
    assert_eq!(
        app.sql_i64(&format!(
            "SELECT count(*) FROM events WHERE event_type = 'message.sent' AND resource_id = '{id}' AND data ? 'settled'"
        ))
        .await,
        0,
        "no message.sent announced for a settlement that wrote nothing"
    );
}

#[tokio::test]
async fn an_unknown_delivery_missing_from_a_generic_servers_sent_folder_stays_unknown_and_is_checked_once() {
    let (app, key, login, id, servers) = unknown_delivery().await;
    servers.seed_messages(&login, "Sent", &[b"Subject: another\r\nMessage-ID: <other@example.com>\r\n\r\nx\r\n".to_vec()]);
    let settled = settle::settle_unknown(&app.ctx).await.expect("settle");
    assert_eq!(
        settled,
        vec![(id.into(), settle::Settlement::Undecided)],
        "a generic server does not file submissions: no basis to resend"
    );
    assert_eq!(app.get(&format!("/v1/messages/{id}"), &key).await.body["status"], json!("unknown"));
    assert!(settle::settle_unknown(&app.ctx).await.expect("again").is_empty(), "checked once");
}

#[tokio::test]
async fn testing_a_mailbox_a_poll_is_using_answers_busy() {
    let (app, servers) = spawn_mail_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    let id = app.confirmed_mail_account(&key, password_account(servers, "imap", "tls", &login, json!({}))).await;
    app.sql_exec(&format!("UPDATE email_accounts SET lease_until = now() + interval '1 minute' WHERE id = '{id}'")).await;
    let busy = app.post(&format!("/v1/accounts/{id}/test"), &key, json!({})).await;
    assert_eq!((busy.status.as_u16(), busy.code()), (409, "mailbox_busy"), "{}", busy.text);
    app.sql_exec(&format!("UPDATE email_accounts SET lease_until = NULL WHERE id = '{id}'")).await;
    let ok = app.post(&format!("/v1/accounts/{id}/test"), &key, json!({})).await;
    assert_eq!(ok.body["ok"], json!(true), "{}", ok.text);
    assert_eq!(
        app.sql_text(&format!("SELECT lease_until::text FROM email_accounts WHERE id = '{id}'")).await,
        None,
        "the test releases its lease"
    );
}

#[tokio::test]
async fn each_send_job_runs_narrowed_to_the_tenant_owning_its_message() {
    let (app, servers) = spawn_mail_app().await;
    // A trigger records the database scope of whichever session marks a message sent: the worker's job.
    let owner = app.owner_db().await;
    owner
        .execute_unprepared(
            "CREATE TABLE test_job_scopes (message_tenant uuid, scope text, scope_tenant text);
             CREATE FUNCTION test_record_job_scope() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
             BEGIN
               INSERT INTO test_job_scopes VALUES (NEW.tenant_id, current_setting('postbridge.scope', true),
                                                   current_setting('postbridge.tenant', true));
               RETURN NEW;
             END $$;
             CREATE TRIGGER test_record_job_scope AFTER UPDATE OF status ON outbound_messages
               FOR EACH ROW WHEN (NEW.status = 'sent') EXECUTE FUNCTION test_record_job_scope();",
        )
        .await
        .expect("install the recording trigger");

    let rcpt = format!("scoped-{}@example.org", Uuid::new_v4().simple());
    let mut tenants = Vec::new();
    for _ in 0..2 {
        let (tenant, key) = app.tenant_with_admin().await;
        let login = new_login();
        servers.add_password_user(&login, MAIL_PASSWORD);
        app.confirmed_mail_account(&key, password_account(servers, "smtp", "starttls", &login, json!({"from_filter": login})))
            .await;
        for i in 0..2 {
            let reply = app
                .post("/v1/messages", &key, json!({"from": login, "to": [rcpt], "subject": format!("m{i}"), "text": "hi"}))
                .await;
            assert_eq!(reply.status.as_u16(), 202, "{}", reply.text);
        }
        tenants.push(tenant);
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(postbridge_worker::run(app.ctx.clone(), stop_rx));
    let arrived = servers.wait_for_messages_to(&rcpt, 4, Duration::from_secs(60)).await;
    let _ = stop_tx.send(true);
    worker.await.expect("worker task").expect("worker stops cleanly");
    assert_eq!(arrived.len(), 4);

    let rows = owner
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT message_tenant::text AS message_tenant, scope, scope_tenant FROM test_job_scopes".to_owned(),
        ))
        .await
        .expect("read the recorded scopes");
    assert_eq!(rows.len(), 4, "every message was marked sent once");
    for row in rows {
        let message_tenant: String = row.try_get("", "message_tenant").expect("message_tenant");
        let scope: String = row.try_get("", "scope").expect("scope");
        let scope_tenant: String = row.try_get("", "scope_tenant").expect("scope_tenant");
        assert_eq!(scope, "tenant", "the job ran narrowed, not operator-wide");
        assert_eq!(scope_tenant, message_tenant, "the job ran as the tenant owning its message");
        assert!(tenants.contains(&message_tenant));
    }
}

#[tokio::test]
async fn a_lease_has_one_holder_until_it_is_let_go_or_runs_out() {
    use postbridge_core::jobs::leases::{Holder, Leased};
    let (app, servers) = spawn_mail_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let login = new_login();
    let id = app.create_mail_account(&key, password_account(servers, "imap", "tls", &login, json!({}))).await;
    let row = || sea_orm::Value::from(Uuid::parse_str(&id).expect("id"));
    let mailboxes = Leased::Mailboxes;

    assert!(mailboxes.take(&app.ctx.db, row(), 30.0).await.expect("take").is_some(), "a free row is taken");
    assert!(mailboxes.take(&app.ctx.db, row(), 30.0).await.expect("take").is_none(), "a held row is not taken twice");
    assert!(mailboxes.renew(&app.ctx.db, row(), Holder::Current, 30.0).await.expect("renew"), "the holder renews");
    assert!(mailboxes.release(&app.ctx.db, row(), Holder::Current).await.expect("release"));
    assert!(!mailboxes.renew(&app.ctx.db, row(), Holder::Current, 30.0).await.expect("renew"), "a let-go lease is not renewed");

    // A holder whose time ran out (a killed worker) no longer keeps the row.
    assert!(mailboxes.take(&app.ctx.db, row(), 30.0).await.expect("take").is_some());
    app.sql_exec(&format!("UPDATE email_accounts SET lease_until = now() - interval '1 second' WHERE id = '{id}'")).await;
    assert!(mailboxes.take(&app.ctx.db, row(), 30.0).await.expect("take").is_some(), "an expired lease is free");

    // A message's lease is its token's: another token neither renews nor lets it go.
    servers.add_password_user(&login, MAIL_PASSWORD);
    app.confirmed_mail_account(&key, password_account(servers, "smtp", "starttls", &login, json!({"from_filter": login}))).await;
    let reply =
        app.post("/v1/messages", &key, json!({"from": login, "to": ["lease@example.org"], "subject": "s", "text": "t"})).await;
    let message = sea_orm::Value::from(Uuid::parse_str(&reply.id()).expect("id"));
    let token = Uuid::new_v4();
    let held = format!(
        "UPDATE outbound_messages SET status = 'sending', lease_token = '{token}', lease_until = now() + interval '30 seconds' \
         WHERE id = '{}'",
        reply.id()
    );
    assert_eq!(app.sql_exec(&held).await, 1);
    let messages = Leased::Messages;
    let stranger = Holder::Token(Uuid::new_v4());
    assert!(!messages.renew(&app.ctx.db, message.clone(), stranger, 30.0).await.expect("renew"), "not the stranger's");
    assert!(!messages.release(&app.ctx.db, message.clone(), stranger).await.expect("release"), "not the stranger's");
    assert!(messages.renew(&app.ctx.db, message.clone(), Holder::Token(token), 30.0).await.expect("renew"), "the holder's");
    assert!(messages.release(&app.ctx.db, message, Holder::Token(token)).await.expect("release"), "the holder's");
    let cleared = format!(
        "SELECT count(*) FROM outbound_messages WHERE id = '{}' AND lease_token IS NULL AND leased_by IS NULL",
        reply.id()
    );
    assert_eq!(app.sql_i64(&cleared).await, 1, "letting go forgets the holder");
}

#[tokio::test]
async fn a_poll_that_fails_on_a_secret_it_cannot_open_backs_off_instead_of_coming_back_in_seconds() {
    let (app, servers) = spawn_mail_app().await;
    let (tenant, key) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    let account = app.confirmed_mail_account(&key, password_account(servers, "imap", "tls", &login, json!({}))).await;
    // A password sealed for another row: it does not open here (as after a lost master key). A lasting fault, not
    // the database's: trying again every few seconds would only fill the log.
    let elsewhere = postbridge_core::secrets::ACCOUNT_PASSWORD.location(tenant.parse().expect("tenant uuid"), Uuid::new_v4());
    let foreign = app.ctx.cipher.encrypt(elsewhere, "password-of-another-row").expect("encrypt");
    app.sql_exec(&format!("UPDATE email_accounts SET password = '{foreign}', next_poll_at = NULL WHERE id = '{account}'")).await;
    let account_id: postbridge_core::store::ids::AccountId = Uuid::parse_str(&account).expect("id").into();
    assert_eq!(scheduler::claim_due_polls(&app.ctx, 10).await.expect("claim"), vec![account_id]);

    let outcome = Job::Poll { account_id }.run(&app.ctx).await;
    assert_eq!(outcome, JobOutcome::Error, "Postbridge's own failure");
    // The mailbox backs off like any failed poll, and is not due again in seconds.
    let backoff = app
        .sql_i64(&format!(
            "SELECT ceil(extract(epoch FROM next_poll_at - now()))::bigint FROM email_accounts \
             WHERE id = '{account}' AND poll_failures = 1"
        ))
        .await;
    assert!(backoff > 60, "the next poll waits {backoff} s");
    assert!(scheduler::claim_due_polls(&app.ctx, 10).await.expect("claim").is_empty(), "nothing due meanwhile");
}
