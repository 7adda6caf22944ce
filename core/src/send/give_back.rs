//! Giving leased messages back: to the queue when they never reached the server (a batch cut short, a worker that
//! stopped or died before handing them over), as `unknown` when they were handed over and no outcome was heard.

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use uuid::Uuid;

use crate::context::AppContext;
use crate::error::AppResult;
use crate::jobs::leases::{self, Leased};
use crate::model::OutboundStatus;
use crate::store::ids::{uuid_array, OutboundMessageId};

/// Puts leased messages that never reached the server back in the queue, the cut attempt not counted. `which`
/// narrows the `sending` rows with `values` as `$1`, `$2`, ...; the reason recorded (if any) comes after them.
async fn requeue_unsent(
    ctx: &AppContext,
    which: &str,
    mut values: Vec<sea_orm::Value>,
    why: Option<&str>,
    retry_in_seconds: f64,
) -> AppResult<u64> {
    let sql = format!(
        "UPDATE outbound_messages SET status = ${queued}, attempts = greatest(attempts - 1, 0), {released}, \
         dispatched_until = NULL, last_error = COALESCE(${why}, last_error), updated_at = now(), \
         next_attempt_at = now() + make_interval(secs => ${retry}) WHERE {sending} AND handed_at IS NULL AND {which}",
        released = Leased::Messages.released(),
        why = values.len() + 1,
        retry = values.len() + 2,
        queued = values.len() + 3,
        // Spelled, not bound: the sweep over expired leases needs the partial index on `sending` rows.
        sending = crate::jobs::due::sending(),
    );
    values.push(why.map(str::to_owned).into());
    values.push(retry_in_seconds.into());
    values.push(OutboundStatus::Queued.into());
    let done = ctx.db.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
    Ok(done.rows_affected())
}

const STOPPED_BEFORE_HANDING: &str = "the worker stopped before handing it to the mail server; queued again";

/// Gives a batch's leased messages that never reached the server back to the queue, due in `retry_in_seconds`;
/// those handed over settle as `unknown`, and those already settled or no longer ours are left alone. Returns how
/// many went back.
pub(super) async fn release_unsent(
    ctx: &AppContext,
    message_ids: &[OutboundMessageId],
    token: Uuid,
    why: Option<&str>,
    retry_in_seconds: f64,
) -> AppResult<u64> {
    let which = "id = ANY($1::text::uuid[]) AND lease_token = $2";
    requeue_unsent(ctx, which, vec![uuid_array(message_ids), token.into()], why, retry_in_seconds).await
}

/// What `reclaim_abandoned` did with messages whose worker stopped mid-delivery.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Abandoned {
    /// Never handed to the server: queued again, the attempt not counted.
    pub requeued: u64,
    /// Handed to the server, outcome unheard: `unknown`, never resent blindly.
    pub unknown: u64,
}

/// Messages whose lease expired while `sending` (their worker died or hung): those never handed to the server go
/// back to the queue; the others become `unknown`, since the server may have accepted them. An `unknown` one keeps
/// its `lease_token`: a worker that was only cut off from Postgres and then hears the server's answer may still
/// write it (a true 250 is better knowledge than `unknown`), until the user or a settlement decides first.
pub async fn reclaim_abandoned(ctx: &AppContext) -> AppResult<Abandoned> {
    let requeued = requeue_unsent(ctx, leases::EXPIRED, vec![], Some(STOPPED_BEFORE_HANDING), 0.0).await?;
    let unknown = ctx
        .db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!(
                "UPDATE outbound_messages SET status = $1, lease_until = NULL, leased_by = NULL, updated_at = now(), \
                 last_error = 'the worker stopped while delivering; the server may have accepted it' WHERE {} AND {}",
                crate::jobs::due::sending(),
                leases::EXPIRED
            ),
            [OutboundStatus::Unknown.into()],
        ))
        .await?;
    Ok(Abandoned { requeued, unknown: unknown.rows_affected() })
}

/// A stopping worker gives back the messages it leased but never handed to the server (jobs cut by the shutdown
/// grace). Returns how many.
pub async fn release_unsent_of_instance(ctx: &AppContext, instance_id: Uuid) -> AppResult<u64> {
    requeue_unsent(ctx, "leased_by = $1", vec![instance_id.into()], Some(STOPPED_BEFORE_HANDING), 0.0).await
}
