//! What a send job writes on each message it holds: the mark that its content is about to go to the server, and
//! its outcome with the event reporting it, each only while the job's lease holds. In a batch, one message's
//! outcome and the next one's mark go in one statement.

use std::time::{Duration, Instant};

use chrono::Utc;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use uuid::Uuid;

use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::jobs::leases::Leased;
use crate::model::OutboundStatus;
use crate::observe::events;
use crate::store::ids::OutboundMessageId;

/// One job's hold on a message: only the holder of `token` may hand it to the server or record its outcome.
#[derive(Clone, Copy, Debug)]
pub(super) struct Lease {
    pub message_id: OutboundMessageId,
    pub token: Uuid,
}

/// The mark written just before the content goes to the server, on the lease holder's row only; its three values
/// (id, token, status) bound from `$first`.
fn hand(first: usize) -> String {
    format!(
        "UPDATE outbound_messages SET handed_at = now() WHERE id = ${first} AND lease_token = ${} AND status = ${}",
        first + 1,
        first + 2
    )
}

fn hand_values(lease: Lease) -> [sea_orm::Value; 3] {
    [lease.message_id.into(), lease.token.into(), OutboundStatus::Sending.into()]
}

/// Marks the message handed; false (send nothing) when the lease is lost.
pub(super) async fn mark_handed(ctx: &AppContext, lease: Lease) -> AppResult<bool> {
    let marked = ctx.db.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, hand(1), hand_values(lease))).await?;
    Ok(marked.rows_affected() == 1)
}

/// The server's answers of a send, as written with its outcome.
#[derive(Clone)]
pub(super) struct Replies {
    /// The final reply (after the content).
    pub last: Option<String>,
    /// Each recipient's answer to `RCPT TO`.
    pub recipients: Option<serde_json::Value>,
}

impl Replies {
    pub const NONE: Replies = Replies { last: None, recipients: None };
}

/// What became of a leased message, as its holder writes it.
#[derive(Clone)]
pub(super) struct Outcome {
    pub lease: Lease,
    pub status: OutboundStatus,
    pub error: Option<String>,
    pub replies: Replies,
    /// Seconds until the next attempt (a retry).
    pub retry_in: Option<i64>,
    /// The event reporting it, written by the same statement: a crash in between cannot lose the event.
    pub event: Option<events::Pending<'static>>,
}

/// An outcome taken apart for its statement: the update, its values, the event to record with it, and what to say
/// when the lease was lost.
struct OutcomeStatement {
    update: String,
    values: Vec<sea_orm::Value>,
    event: Option<events::Pending<'static>>,
    written: Written,
}

/// Which message an outcome was for, to report a lost lease.
struct Written {
    message_id: OutboundMessageId,
    status: OutboundStatus,
}

impl Written {
    /// Says so when the lease was lost before the outcome could be written.
    fn warn_unless(&self, written: bool) -> bool {
        if !written {
            tracing::warn!(message_id = %self.message_id, status = self.status.as_str(), "the send lease was lost; outcome not recorded");
        }
        written
    }
}

impl Outcome {
    /// The update writing it (`RETURNING id`, so `changed` can name it) and its values; it touches the row only
    /// while the lease is the holder's.
    fn into_statement(self) -> OutcomeStatement {
        let next = self.retry_in.and_then(|s| Utc::now().checked_add_signed(chrono::Duration::seconds(s)));
        let handed_over = matches!(self.status, OutboundStatus::Sent | OutboundStatus::PartiallySent);
        let update = format!(
            "UPDATE outbound_messages SET status = $3, last_error = $4, smtp_reply = COALESCE($5, smtp_reply), \
             next_attempt_at = COALESCE($6, next_attempt_at), {}, \
             handed_at = CASE WHEN $7 THEN NULL ELSE handed_at END, dispatched_until = NULL, updated_at = now(), \
             sent_at = CASE WHEN $8 THEN now() ELSE sent_at END, \
             recipient_results = COALESCE($9, recipient_results) WHERE id = $1 AND lease_token = $2 RETURNING id",
            Leased::Messages.released()
        );
        let values = vec![
            self.lease.message_id.into(),
            self.lease.token.into(),
            self.status.into(),
            self.error.into(),
            self.replies.last.into(),
            next.into(),
            (self.status == OutboundStatus::Queued).into(),
            handed_over.into(),
            self.replies.recipients.into(),
        ];
        let written = Written { message_id: self.lease.message_id, status: self.status };
        OutcomeStatement { update, values, event: self.event, written }
    }
}

/// How long a send job goes on trying to write an outcome (see [`set_outcome`]).
const OUTCOME_WRITE_PATIENCE: Duration = Duration::from_secs(90);
const FIRST_WRITE_PAUSE: Duration = Duration::from_millis(100);
const LONGEST_WRITE_PAUSE: Duration = Duration::from_secs(5);

/// Records the outcome of the lease holder, and the event that reports it (when given) in the same statement; false
/// (nothing written) when the lease is no longer ours. Only this job knows the server's answer, so a write that
/// fails (Postgres restarting, its pool exhausted for a moment) is tried again, with growing pauses, for up to
/// [`OUTCOME_WRITE_PATIENCE`]. Meanwhile the lease may run out and the message turn `unknown`: the write still
/// lands, since the sweep keeps the lease token for exactly this.
pub(super) async fn set_outcome(ctx: &AppContext, outcome: Outcome) -> AppResult<bool> {
    let started = Instant::now();
    let mut pause = FIRST_WRITE_PAUSE;
    loop {
        let error = match write_outcome(ctx, outcome.clone()).await {
            Ok(written) => return Ok(written),
            // Bad input stays bad: only failures of the database itself are worth another try.
            Err(e @ AppError::Validation { .. }) => return Err(e),
            Err(e) => e,
        };
        if started.elapsed().saturating_add(pause) > OUTCOME_WRITE_PATIENCE {
            return Err(error);
        }
        tracing::warn!(message_id = %outcome.lease.message_id, error = %error.detail(), retry_in = ?pause, "could not record a send's outcome; trying again");
        tokio::time::sleep(pause).await;
        pause = pause.saturating_mul(2).min(LONGEST_WRITE_PAUSE);
    }
}

async fn write_outcome(ctx: &AppContext, outcome: Outcome) -> AppResult<bool> {
    let OutcomeStatement { update, values, event, written } = outcome.into_statement();
    let rows = match event {
        None => ctx.db.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, update, values)).await?.rows_affected(),
        Some(event) => events::record_with(&ctx.db, &update, values, event).await?,
    };
    Ok(written.warn_unless(rows == 1))
}

/// Writes the previous message's outcome and marks the next one handed, in one statement: in a batch each message
/// then costs one write, not two. Both keep their own conditions (each row its own lease), and a failed statement
/// writes neither: the caller keeps the previous outcome and writes it alone ([`set_outcome`]), and sends nothing
/// more. True when the next message may go to the server.
pub(super) async fn record_and_hand(ctx: &AppContext, previous: Outcome, next: Lease) -> AppResult<bool> {
    let OutcomeStatement { update, mut values, event, written } = previous.into_statement();
    let hand = format!("{} RETURNING id", hand(values.len() + 1));
    values.extend(hand_values(next));
    let recorded = match event {
        Some(event) => format!(", recorded AS ({})", events::insert_per_changed(&mut values, event)),
        None => String::new(),
    };
    let sql = format!(
        "WITH changed AS ({update}), handed AS ({hand}){recorded} \
         SELECT (SELECT count(*) FROM changed) AS written, (SELECT count(*) FROM handed) AS handed"
    );
    let row = ctx.db.query_one_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
    let count =
        |column: &str| -> AppResult<i64> { Ok(row.as_ref().map(|r| r.try_get::<i64>("", column)).transpose()?.unwrap_or(0)) };
    written.warn_unless(count("written")? == 1);
    Ok(count("handed")? == 1)
}
