//! Send jobs carry a batch of one account's messages, sent one after another: each message keeps its own outcome,
//! its own event and its own at-most-once guarantee, and a batch that stops on Postbridge's side gives back every
//! message it had not handed to the server.

use postbridge_core::jobs::job::{Job, JobOutcome};
use postbridge_core::jobs::marks;
use postbridge_core::jobs::scheduler::{self, SendClaim};
use postbridge_core::send::delivery::{self, Delivery};
use postbridge_core::send::give_back::{self, Abandoned};
use postbridge_core::store::ids::OutboundMessageId;
use postbridge_tests::mail::MailServers;
use postbridge_tests::mailflow::{new_login, password_account, spawn_mail_app, MAIL_PASSWORD};
use postbridge_tests::TestApp;
use serde_json::json;
use uuid::Uuid;

/// A tenant with an admin key and one confirmed SMTP account (password login) sending as `login`.
struct Sender {
    app: TestApp,
    servers: &'static MailServers,
    key: String,
    login: String,
    account: String,
}

async fn sender() -> Sender {
    let (app, servers) = spawn_mail_app().await;
    let (_, key) = app.tenant_with_admin().await;
    let login = new_login();
    servers.add_password_user(&login, MAIL_PASSWORD);
    let account = app
        .confirmed_mail_account(&key, password_account(servers, "smtp", "starttls", &login, json!({"from_filter": login})))
        .await;
    Sender { app, servers, key, login, account }
}

async fn submit(app: &TestApp, key: &str, from: &str, to: &str, subject: &str) -> OutboundMessageId {
    let reply = app.post("/v1/messages", key, json!({"from": from, "to": [to], "subject": subject, "text": "hello"})).await;
    assert_eq!(reply.status.as_u16(), 202, "{}", reply.text);
    Uuid::parse_str(&reply.id()).expect("id").into()
}

fn subject_of(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    text.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap_or_default().trim().to_owned()
}

#[tokio::test]
async fn a_batch_sends_its_messages_in_order_each_with_its_own_outcome_and_leaves_alone_what_it_cannot_hold() {
    let Sender { app, servers, key, login, .. } = sender().await;
    let rcpt = format!("batch-{}@example.org", Uuid::new_v4().simple());
    let refused = format!("reject+{}@example.org", Uuid::new_v4().simple());

    let already_sent = submit(&app, &key, &login, &rcpt, "b0").await;
    assert_eq!(delivery::deliver(&app.ctx, already_sent).await.expect("deliver"), Delivery::Sent);
    let first = submit(&app, &key, &login, &rcpt, "b1").await;
    let cancelled = submit(&app, &key, &login, &rcpt, "b2").await;
    let reply = app.post(&format!("/v1/messages/{cancelled}/cancel"), &key, json!({})).await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.text);
    let to_refused = submit(&app, &key, &login, &refused, "b3").await;
    let last = submit(&app, &key, &login, &rcpt, "b4").await;

    let batch = [already_sent, first, cancelled, to_refused, last];
    let answers = delivery::deliver_all(&app.ctx, &batch).await.expect("the batch runs");
    assert_eq!(
        answers,
        [Delivery::Skipped, Delivery::Sent, Delivery::Skipped, Delivery::Failed, Delivery::Sent],
        "one answer per message, in the batch's order"
    );
    let subjects: Vec<String> = servers.accepted_messages_to(&rcpt).iter().map(|m| subject_of(&m.raw)).collect();
    assert_eq!(subjects, ["b0", "b1", "b4"], "sent in order; the sent one not again, the cancelled one never");
    for (id, status) in
        [(already_sent, "sent"), (first, "sent"), (cancelled, "cancelled"), (to_refused, "failed"), (last, "sent")]
    {
        let message = app.get(&format!("/v1/messages/{id}"), &key).await;
        assert_eq!(message.body["status"], json!(status), "{}", message.text);
    }
    let attempts = app.sql_i64("SELECT sum(attempts)::bigint FROM outbound_messages WHERE status IN ('sent', 'failed')").await;
    assert_eq!(attempts, 4, "one attempt for each message the batch (or the single job before it) took");
    let events = app.sql_i64("SELECT count(*) FROM events WHERE event_type IN ('message.sent', 'message.failed')").await;
    assert_eq!(events, 4, "each outcome has its own event");
    let leased = app.sql_i64("SELECT count(*) FROM outbound_messages WHERE lease_token IS NOT NULL").await;
    assert_eq!(leased, 0, "no lease is left behind");
}

#[tokio::test]
async fn a_batch_stopped_on_postbridges_side_gives_every_message_back_without_counting_an_attempt() {
    let Sender { app, servers, key, login, account } = sender().await;
    let rcpt = format!("stopped-{}@example.org", Uuid::new_v4().simple());
    let mut batch = Vec::new();
    for i in 0..4 {
        batch.push(submit(&app, &key, &login, &rcpt, &format!("s{i}")).await);
    }
    // The stored password can no longer be opened (a wrong key, say): Postbridge's failure, not the account's.
    let sealed =
        app.sql_exec(&format!("UPDATE email_accounts SET password = 'not-a-sealed-password' WHERE id = '{account}'")).await;
    assert_eq!(sealed, 1);

    assert!(delivery::deliver_all(&app.ctx, &batch).await.is_err(), "the batch reports the failure");
    let requeued = app
        .sql_i64(
            "SELECT count(*) FROM outbound_messages WHERE status = 'queued' AND attempts = 0 AND lease_token IS NULL \
             AND handed_at IS NULL AND last_error LIKE 'interrupted before reaching the mail server%'",
        )
        .await;
    assert_eq!(requeued, 4, "all four are queued again, none counted as an attempt");
    assert!(servers.accepted_messages_to(&rcpt).is_empty(), "nothing reached the server");
    let account_state =
        app.sql_i64(&format!("SELECT count(*) FROM email_accounts WHERE id = '{account}' AND state = 'error'")).await;
    assert_eq!(account_state, 0, "the account is not blamed for Postbridge's own failure");
}

#[tokio::test]
async fn a_submissions_notice_claims_only_new_messages_and_the_pass_also_takes_back_those_whose_job_was_lost() {
    let Sender { app, key, login, .. } = sender().await;
    let rcpt = format!("claims-{}@example.org", Uuid::new_v4().simple());
    let new = submit(&app, &key, &login, &rcpt, "new").await;
    let in_flight = submit(&app, &key, &login, &rcpt, "in flight").await;
    let lost = submit(&app, &key, &login, &rcpt, "lost").await;
    app.sql_exec(&format!(
        "UPDATE outbound_messages SET dispatched_until = now() + interval '1 minute' WHERE id = '{in_flight}'"
    ))
    .await;
    app.sql_exec(&format!("UPDATE outbound_messages SET dispatched_until = now() - interval '1 second' WHERE id = '{lost}'"))
        .await;

    let claimed = |batches: Vec<(_, Vec<OutboundMessageId>)>| batches.into_iter().flat_map(|(_, ids)| ids).collect::<Vec<_>>();
    let on_notice = scheduler::claim_due_sends(&app.ctx, 100, SendClaim::New).await.expect("claim");
    assert_eq!(claimed(on_notice), [new], "a notice takes only the never-dispatched message");
    let on_pass = scheduler::claim_due_sends(&app.ctx, 100, SendClaim::NewAndLost).await.expect("claim");
    assert_eq!(claimed(on_pass), [lost], "the pass takes back the one whose job was lost; the one in flight stays");
}

#[tokio::test]
async fn a_batch_against_a_slow_server_gives_back_what_it_did_not_reach_within_its_time_budget_due_at_once() {
    let Sender { app, servers, key, login, .. } = sender().await;
    // `slow+` recipients: the test server answers 250 only after 200 ms.
    let rcpt = format!("slow+budget-{}@example.org", Uuid::new_v4().simple());
    let mut batch = Vec::new();
    for i in 0..10 {
        batch.push(submit(&app, &key, &login, &rcpt, &format!("s{i}")).await);
    }
    let answers = delivery::deliver_all(&app.ctx, &batch).await.expect("the batch runs");
    let sent = answers.iter().take_while(|&&d| d == Delivery::Sent).count();
    assert!((1..10).contains(&sent), "some were sent within the budget, not all: {answers:?}");
    assert!(answers[sent..].iter().all(|&d| d == Delivery::Skipped), "the rest were given back: {answers:?}");
    assert_eq!(servers.accepted_messages_to(&rcpt).len(), sent, "nothing given back reached the server");

    let given_back = app
        .sql_i64(
            "SELECT count(*) FROM outbound_messages WHERE status = 'queued' AND attempts = 0 AND last_error IS NULL \
             AND lease_token IS NULL AND handed_at IS NULL AND dispatched_until IS NULL AND next_attempt_at <= now()",
        )
        .await;
    assert_eq!(given_back as usize, 10 - sent, "queued again, due now, no attempt counted and no error recorded");
    let claimed = scheduler::claim_due_sends(&app.ctx, 100, SendClaim::New).await.expect("claim");
    assert_eq!(claimed.iter().map(|(_, ids)| ids.len()).sum::<usize>(), 10 - sent, "a notice's claim takes them again");
}

#[tokio::test]
async fn each_outcome_is_written_with_the_next_messages_handing_and_a_lease_lost_in_between_loses_neither_guarantee() {
    let Sender { app, servers, key, login, .. } = sender().await;
    let slow = format!("slow+pair-{}@example.org", Uuid::new_v4().simple());
    let rcpt = format!("pair-{}@example.org", Uuid::new_v4().simple());
    let first = submit(&app, &key, &login, &slow, "p1").await;
    let taken_over = submit(&app, &key, &login, &rcpt, "p2").await;
    let last = submit(&app, &key, &login, &rcpt, "p3").await;

    // While the first message is at the (slow) server, another holder takes the second one over: the statement that
    // writes the first one's outcome must still write it, and must not hand the second one over.
    let thief = async {
        for _ in 0..500 {
            let handed = app
                .sql_i64(&format!("SELECT count(*) FROM outbound_messages WHERE id = '{first}' AND handed_at IS NOT NULL"))
                .await;
            if handed == 1 {
                return app
                    .sql_exec(&format!(
                        "UPDATE outbound_messages SET lease_token = gen_random_uuid() WHERE id = '{taken_over}' AND status = 'sending'"
                    ))
                    .await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        0
    };
    let batch = [first, taken_over, last];
    let (answers, taken) = tokio::join!(delivery::deliver_all(&app.ctx, &batch), thief);
    assert_eq!(taken, 1, "the second message was taken over while the first was at the server");
    let answers = answers.expect("the batch runs");
    assert_eq!(answers, [Delivery::Sent, Delivery::Skipped, Delivery::Sent]);
    assert_eq!(servers.accepted_messages_to(&slow).len(), 1);
    let subjects: Vec<String> = servers.accepted_messages_to(&rcpt).iter().map(|m| subject_of(&m.raw)).collect();
    assert_eq!(subjects, ["p3"], "the message taken over was not handed to the server");

    for id in [first, last] {
        let message = app.get(&format!("/v1/messages/{id}"), &key).await;
        assert_eq!(message.body["status"], json!("sent"), "{}", message.text);
        let events =
            app.sql_i64(&format!("SELECT count(*) FROM events WHERE event_type = 'message.sent' AND resource_id = '{id}'")).await;
        assert_eq!(events, 1, "each outcome is written once, with its event");
    }
    let untouched = app
        .sql_i64(&format!(
            "SELECT count(*) FROM outbound_messages WHERE id = '{taken_over}' AND status = 'sending' AND handed_at IS NULL"
        ))
        .await;
    assert_eq!(untouched, 1, "the batch wrote nothing on the message it no longer held");
    let leased = app.sql_i64("SELECT count(*) FROM outbound_messages WHERE lease_token IS NOT NULL").await;
    assert_eq!(leased, 1, "only the other holder's lease is left");
}

/// Delivers `id` (to a recipient whose 250 comes a second late) while, once it is at the server, its lease runs out
/// and another worker's sweep makes it `unknown` (as when this worker is cut off from Postgres for longer than a
/// lease); `meanwhile` then runs before the answer arrives. Returns the delivery's answer.
async fn lease_lost_at_the_server(
    app: &TestApp,
    id: OutboundMessageId,
    meanwhile: impl std::future::Future<Output = ()>,
) -> Delivery {
    let sweep = async {
        for _ in 0..400 {
            let at_server =
                app.sql_i64(&format!("SELECT count(*) FROM outbound_messages WHERE id = '{id}' AND handed_at IS NOT NULL")).await;
            if at_server == 1 {
                app.sql_exec(&format!(
                    "UPDATE outbound_messages SET lease_until = now() - interval '1 second' WHERE id = '{id}'"
                ))
                .await;
                let swept = give_back::reclaim_abandoned(&app.ctx).await.expect("sweep");
                assert_eq!(swept, Abandoned { requeued: 0, unknown: 1 });
                meanwhile.await;
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("the message never reached the server");
    };
    let (answer, ()) = tokio::join!(delivery::deliver(&app.ctx, id), sweep);
    answer.expect("the delivery runs")
}

#[tokio::test]
async fn a_true_answer_heard_after_the_lease_ran_out_replaces_unknown_but_never_the_users_word() {
    let Sender { app, servers, key, login, .. } = sender().await;
    let late = format!("slower+{}@example.org", Uuid::new_v4().simple());
    let status = |id: OutboundMessageId| {
        let app = &app;
        async move { app.sql_text(&format!("SELECT status || ':' || attempts FROM outbound_messages WHERE id = '{id}'")).await }
    };

    // Nobody decided meanwhile: the server's 250 is better knowledge than `unknown`, and it is written, once.
    let heard = submit(&app, &key, &login, &late, "late 250").await;
    let answer = lease_lost_at_the_server(&app, heard, async {
        assert_eq!(status(heard).await.as_deref(), Some("unknown:1"), "the sweep made it unknown");
    })
    .await;
    assert_eq!(answer, Delivery::Sent);
    let message = app.get(&format!("/v1/messages/{heard}"), &key).await;
    assert_eq!(
        (message.body["status"].clone(), message.body["last_error"].clone()),
        (json!("sent"), json!(null)),
        "{}",
        message.text
    );
    assert_eq!(app.event_count("message.sent", &heard.to_string()).await, 1);

    // The user said "resend" first: their word stands, the queued message is not overwritten by the late answer and
    // counts its attempts from zero.
    let resent = submit(&app, &key, &login, &late, "resend wins").await;
    app.sql_exec(&format!("UPDATE outbound_messages SET attempts = 6 WHERE id = '{resent}'")).await;
    let answer = lease_lost_at_the_server(&app, resent, async {
        let reply = app.post(&format!("/v1/messages/{resent}/resolve"), &key, json!({"outcome": "resend"})).await;
        assert_eq!((reply.status.as_u16(), reply.body["attempts"].clone()), (200, json!(0)), "{}", reply.text);
    })
    .await;
    assert_eq!(answer, Delivery::Sent, "the server did answer 250");
    assert_eq!(status(resent).await.as_deref(), Some("queued:0"));
    assert_eq!(app.event_count("message.sent", &resent.to_string()).await, 0);
    assert_eq!(servers.accepted_messages_to(&late).len(), 2, "both reached the server once each so far");
}

#[tokio::test]
async fn a_worker_that_dies_while_connecting_leaves_its_message_to_the_queue_not_unknown() {
    let Sender { app, key, login, account, .. } = sender().await;
    // A server that takes the connection and never greets: the delivery waits in the SMTP handshake.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = silent.local_addr().expect("address").port();
    let (accepted_tx, accepted) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        if let Ok((stream, _)) = silent.accept().await {
            let _ = accepted_tx.send(());
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            drop(stream);
        }
    });
    app.sql_exec(&format!("UPDATE email_accounts SET port = {port} WHERE id = '{account}'")).await;
    let id = submit(&app, &key, &login, "never-greeted@example.org", "hang").await;

    let ctx = app.ctx.clone();
    let worker = tokio::spawn(async move { delivery::deliver(&ctx, id).await });
    tokio::time::timeout(std::time::Duration::from_secs(10), accepted).await.expect("the worker connects").expect("accepted");
    let row =
        format!("SELECT status || ':' || (handed_at IS NULL)::text || ':' || attempts FROM outbound_messages WHERE id = '{id}'");
    assert_eq!(app.sql_text(&row).await.as_deref(), Some("sending:true:1"), "leased, not handed over while connecting");

    // The worker dies (its task is gone), its lease runs out, and the sweep finds a message the server never had.
    worker.abort();
    let _ = worker.await;
    app.sql_exec(&format!("UPDATE outbound_messages SET lease_until = now() - interval '1 second' WHERE id = '{id}'")).await;
    assert_eq!(give_back::reclaim_abandoned(&app.ctx).await.expect("sweep"), Abandoned { requeued: 1, unknown: 0 });
    assert_eq!(app.sql_text(&row).await.as_deref(), Some("queued:true:0"), "queued again, the cut attempt not counted");
}

/// Makes Postgres refuse every update of `outbound_messages` whose new row matches `when` (the database failing
/// for the worker, nothing else changed); dropped by `accept_writes_again`.
async fn refuse_writes_where(app: &TestApp, when: &str) {
    use sea_orm::ConnectionTrait;
    let owner = app.owner_db().await;
    owner
        .execute_unprepared(
            "CREATE FUNCTION test_refuse_write() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'the test refuses this write'; END $$",
        )
        .await
        .expect("function");
    owner
        .execute_unprepared(&format!(
            "CREATE TRIGGER test_refuse_write BEFORE UPDATE ON outbound_messages FOR EACH ROW WHEN ({when}) \
             EXECUTE FUNCTION test_refuse_write()"
        ))
        .await
        .expect("trigger");
}

async fn accept_writes_again(app: &TestApp) {
    use sea_orm::ConnectionTrait;
    let owner = app.owner_db().await;
    owner.execute_unprepared("DROP TRIGGER test_refuse_write ON outbound_messages").await.expect("drop trigger");
    owner.execute_unprepared("DROP FUNCTION test_refuse_write()").await.expect("drop function");
}

#[tokio::test]
async fn a_250_whose_outcome_cannot_be_written_at_first_is_written_once_the_database_takes_it_and_the_rest_waits_unsent() {
    let Sender { app, servers, key, login, .. } = sender().await;
    let slow = format!("slow+outcome-{}@example.org", Uuid::new_v4().simple());
    let rcpt = format!("outcome-{}@example.org", Uuid::new_v4().simple());
    let first = submit(&app, &key, &login, &slow, "o1").await;
    let second = submit(&app, &key, &login, &rcpt, "o2").await;

    // Postgres refuses to record any message sent (leasing and handing over still work): the statement that would
    // write the first one's outcome and hand the second one over fails, again and again.
    refuse_writes_where(&app, "NEW.status = 'sent'").await;
    let ctx = app.ctx.clone();
    let batch = tokio::spawn(async move { delivery::deliver_all(&ctx, &[first, second]).await });
    postbridge_tests::wait_until("the server accepts the first message", std::time::Duration::from_secs(30), async || {
        servers.accepted_messages_to(&slow).len() == 1
    })
    .await;
    // Long enough for the worker to hear the 250 and fail to record it more than once.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let status = |id: OutboundMessageId| format!("SELECT status FROM outbound_messages WHERE id = '{id}'");
    assert_eq!(app.sql_text(&status(first)).await.as_deref(), Some("sending"), "not written while refused");
    assert!(!batch.is_finished(), "the worker keeps the outcome and tries again");
    accept_writes_again(&app).await;

    let outcome = tokio::time::timeout(std::time::Duration::from_secs(30), batch).await.expect("the batch ends").expect("task");
    assert!(outcome.is_err(), "the batch stopped on Postbridge's side: {outcome:?}");
    assert_eq!(app.sql_text(&status(first)).await.as_deref(), Some("sent"), "the server's 250 is recorded, not lost to unknown");
    let sent_events = format!("SELECT count(*) FROM events WHERE event_type = 'message.sent' AND resource_id = '{first}'");
    assert_eq!(app.sql_i64(&sent_events).await, 1, "reported once");
    let second_row = format!(
        "SELECT status || ':' || (handed_at IS NULL)::text || ':' || attempts || ':' || (dispatched_until IS NULL)::text \
         FROM outbound_messages WHERE id = '{second}'"
    );
    assert_eq!(app.sql_text(&second_row).await.as_deref(), Some("queued:true:0:true"), "given back, never handed over");
    assert_eq!(servers.accepted_messages_to(&slow).len(), 1);
    assert!(servers.accepted_messages_to(&rcpt).is_empty(), "the second message never reached the server");
}

#[tokio::test]
async fn a_send_job_that_fails_on_postbridges_side_is_dispatched_again_in_seconds_not_at_the_end_of_the_grace() {
    let Sender { app, servers, key, login, .. } = sender().await;
    let rcpt = format!("again-{}@example.org", Uuid::new_v4().simple());
    let id = submit(&app, &key, &login, &rcpt, "again").await;
    let claimed = scheduler::claim_due_sends(&app.ctx, 100, SendClaim::New).await.expect("claim");
    assert_eq!(claimed.iter().map(|(_, ids)| ids.clone()).collect::<Vec<_>>(), [vec![id]]);

    // The job cannot even lease its message (the database refuses): it ends in an error, its row still claimed.
    refuse_writes_where(&app, "NEW.status = 'sending'").await;
    let outcome = Job::Send { message_ids: vec![id] }.run(&app.ctx).await;
    accept_writes_again(&app).await;
    assert_eq!(outcome, JobOutcome::Error);
    let mark = format!(
        "SELECT count(*) FROM outbound_messages WHERE id = '{id}' AND status = 'queued' AND dispatched_until > now() \
         AND dispatched_until <= now() + make_interval(secs => {})",
        marks::AFTER_JOB_ERROR_SECONDS
    );
    assert_eq!(app.sql_i64(&mark).await, 1, "the claim now runs out within seconds, not with the grace");
    let claim_lost = async || scheduler::claim_due_sends(&app.ctx, 100, SendClaim::NewAndLost).await.expect("claim");
    assert!(claim_lost().await.is_empty(), "not dispatched twice while the shortened claim runs");

    tokio::time::sleep(std::time::Duration::from_secs_f64(marks::AFTER_JOB_ERROR_SECONDS + 0.5)).await;
    let again = claim_lost().await;
    assert_eq!(again.iter().map(|(_, ids)| ids.clone()).collect::<Vec<_>>(), [vec![id]], "the pass takes it back");
    assert_eq!(delivery::deliver(&app.ctx, id).await.expect("deliver"), Delivery::Sent);
    assert_eq!(servers.accepted_messages_to(&rcpt).len(), 1);
}
