//! Refreshing in the background, many grants at a time. The scheduler hands the due grants of one token
//! configuration over in batches. A batch leases its grants in one statement (`refreshing_until`, renewed while it
//! works: `lease.rs`; an on-demand caller of `access_token` then uses the current token while it works, or waits
//! for the batch's answer, so a grant is still refreshed once at a time), asks the provider for all of them at once (at most
//! `POSTBRIDGE_REFRESH_CONCURRENCY` requests in flight per process), and stores the answers as they arrive, a
//! handful per statement and commit. No transaction stays open while the provider answers, so a storm costs a few
//! round trips per handful of grants, and a rotated refresh token is in Postgres milliseconds after it arrived.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, FromQueryResult, QueryFilter, QuerySelect, Statement, TransactionTrait,
};

use super::lease::{release_held, still_held, RefreshLease, LEASE_SECONDS};
use super::tokens::{ask_provider, persist_refreshed, persist_refreshed_again, record_failure, record_refusal, Refreshed};
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::failure::FailureKind;
use crate::protocols::oauth::{TokenError, TokenSet};
use crate::store::entities::{grant, token_config};
use crate::store::ids::{uuid_array, GrantId, TokenConfigId};

use super::TokenAccessError;

/// Grants refreshed in one batch (one lease statement, one job).
pub const REFRESH_BATCH: usize = 50;

/// What a batch (or a pass of batches) of background refreshes did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RefreshPass {
    pub refreshed: u64,
    pub reauth_required: u64,
    pub failed: u64,
}

impl RefreshPass {
    fn add(&mut self, other: RefreshPass) {
        self.refreshed += other.refreshed;
        self.reauth_required += other.reauth_required;
        self.failed += other.failed;
    }
}

/// Splits due grants, given with their configuration, into batches of one configuration each: one provider per
/// batch, so a slow provider holds up only its own grants.
pub fn batches_of(due: Vec<(GrantId, TokenConfigId)>) -> Vec<Vec<GrantId>> {
    let mut by_config: HashMap<TokenConfigId, Vec<GrantId>> = HashMap::new();
    for (grant_id, config_id) in due {
        by_config.entry(config_id).or_default().push(grant_id);
    }
    by_config.into_values().flat_map(|ids| ids.chunks(REFRESH_BATCH).map(<[GrantId]>::to_vec).collect::<Vec<_>>()).collect()
}

/// Refreshes user-flow grants whose access token is due (`refresh_at`) and whose backoff has passed, up to
/// `limit`, a few batches at once (the worker's scheduler claims and queues the same batches instead).
pub async fn refresh_due(ctx: &AppContext, limit: u64) -> AppResult<RefreshPass> {
    let rows = ctx
        .db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!("SELECT id, token_config_id FROM grants WHERE {} ORDER BY refresh_at LIMIT $1", crate::jobs::due::refresh()),
            [(limit as i64).into()],
        ))
        .await?;
    let due = rows
        .iter()
        .map(|row| Ok((row.try_get::<GrantId>("", "id")?, row.try_get::<TokenConfigId>("", "token_config_id")?)))
        .collect::<Result<Vec<_>, sea_orm::DbErr>>()?;
    let passes: Vec<AppResult<RefreshPass>> = futures::stream::iter(batches_of(due))
        .map(|batch| async move { refresh_grants(ctx, &batch).await })
        .buffer_unordered(4)
        .collect()
        .await;
    let mut total = RefreshPass::default();
    for pass in passes {
        total.add(pass?);
    }
    Ok(total)
}

/// What a grant's `last_error` says when refreshing it failed inside Postbridge (the details go to the logs only).
pub const INTERNAL_REFRESH_ERROR: &str =
    "Postbridge could not use this grant's stored tokens (they do not decrypt with the configured master keys, or the \
     database failed); it is retried with backoff, and the worker's logs say more";

/// Refreshes the grants of one batch (the worker's refresh job) that are still due, and clears their dispatch
/// marks. Grants gone, refreshed meanwhile or held by a refresh in flight elsewhere are skipped. If the batch
/// fails inside Postbridge once it holds its grants, each backs off as after a provider outage; if it could not
/// take them, they are dispatched again once their dispatch grace ends.
pub async fn refresh_grants(ctx: &AppContext, grant_ids: &[GrantId]) -> AppResult<RefreshPass> {
    // Read before the grants are leased: a token URL moved in between erases the tokens the lease then reads, so a
    // refresh token only ever goes to the endpoint of the configuration that issued it.
    let configs = configs_of(ctx, grant_ids).await?;
    let leased = lease(ctx, grant_ids).await?;
    // One statement leased them all, with one value.
    let Some(until) = leased.iter().find_map(|model| model.refreshing_until) else {
        return Ok(RefreshPass::default());
    };
    let lease = RefreshLease::keep(ctx.db.clone(), leased.iter().map(|model| model.id).collect(), until);
    let outcome = refresh_leased(ctx, &leased, &configs, &lease).await;
    match &outcome {
        // Every grant's answer was stored, or its lease let go, as it arrived.
        Ok(_) => lease.ended(),
        Err(e) => {
            for model in &leased {
                record_internal_failure(ctx, model.id, e).await;
            }
            if let Err(e) = lease.release().await {
                tracing::warn!(error = %e.detail(), "could not let go of a failed batch's leases; they run out");
            }
        }
    }
    outcome
}

/// A batch asks no more after this long (requests wait for the process's refresh slots): the grants left are
/// released and dispatched again by the next pass.
const ASK_WINDOW: Duration = Duration::from_secs(50);

/// Answers stored per statement and commit, at most: whatever has arrived when the last write finished.
const STORE_CHUNK: usize = 25;

/// One leased grant's answer: new tokens, the provider's refusal, Postbridge's own failure, or not asked.
type Answer = Option<AppResult<Result<TokenSet, TokenError>>>;

/// Asks the provider for the leased grants and stores the answers (`refresh_grants`).
async fn refresh_leased(
    ctx: &AppContext,
    leased: &[grant::Model],
    configs: &HashMap<TokenConfigId, token_config::Model>,
    lease: &RefreshLease,
) -> AppResult<RefreshPass> {
    let window_ends = Instant::now() + ASK_WINDOW;
    let asks: Vec<futures::future::BoxFuture<'_, (&grant::Model, Answer)>> = leased
        .iter()
        .map(|model| {
            Box::pin(async move {
                // Closed only at shutdown; the request then goes without a slot.
                let _slot = ctx.refresh_slots.acquire().await.ok();
                let answer: Answer = if Instant::now() >= window_ends {
                    None
                } else {
                    Some(match configs.get(&model.token_config_id).filter(|config| config.tenant_id == model.tenant_id) {
                        Some(config) => ask_provider(ctx, config, model).await,
                        None => Err(AppError::Internal(anyhow::anyhow!("the grant's token configuration is missing"))),
                    })
                };
                (model, answer)
            }) as futures::future::BoxFuture<'_, _>
        })
        .collect();
    // Asking goes on while a chunk is stored: the answers wait in the channel (at most the batch's), and the next
    // chunk is whatever arrived during the last write.
    let (arrived, answers) = futures::channel::mpsc::unbounded();
    let asking = async move {
        let mut asks = asks.into_iter().collect::<futures::stream::FuturesUnordered<_>>();
        while let Some(answer) = asks.next().await {
            // The storing side ends only after this sender is dropped, so the send cannot fail.
            let _ = arrived.unbounded_send(answer);
        }
    };
    let storing = async {
        let mut pass = RefreshPass::default();
        // The configurations waiting for their admin as the batch goes: set when the provider refuses the client
        // (its event is recorded once), cleared when its credentials work again.
        let mut awaiting_admin: HashSet<TokenConfigId> =
            configs.values().filter(|config| config.needs_admin).map(|config| config.id).collect();
        let mut chunks = answers.ready_chunks(STORE_CHUNK);
        while let Some(chunk) = chunks.next().await {
            pass.add(store_answers(ctx, configs, chunk, &mut awaiting_admin, lease).await);
        }
        pass
    };
    let ((), pass) = futures::join!(asking, storing);
    Ok(pass)
}

/// Leases the grants of `grant_ids` still due that nobody is refreshing, and takes the dispatch marks off the
/// batch's grants: it has them now (those refreshed meanwhile too, so they are dispatched at once when next due;
/// rows locked by an on-demand refresh right now are skipped, and their marks wait out the grace).
async fn lease(ctx: &AppContext, grant_ids: &[GrantId]) -> AppResult<Vec<grant::Model>> {
    let sql = format!(
        "WITH batch AS ( \
           SELECT id, ({due}) AS due FROM grants \
           WHERE id = ANY($1::text::uuid[]) FOR UPDATE SKIP LOCKED) \
         UPDATE grants AS g SET dispatched_until = NULL, \
                refreshing_until = CASE WHEN batch.due THEN now() + make_interval(secs => $2) ELSE g.refreshing_until END \
         FROM batch WHERE g.id = batch.id \
         RETURNING g.*, batch.due AS leased",
        due = crate::jobs::due::refresh()
    );
    let values = [uuid_array(grant_ids), LEASE_SECONDS.into()];
    let rows = ctx.db.query_all_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
    let mut leased = Vec::with_capacity(rows.len());
    for row in rows {
        if row.try_get::<bool>("", "leased")? {
            leased.push(grant::Model::from_query_result(&row, "")?);
        }
    }
    Ok(leased)
}

/// Stores a handful of answers in one transaction: new tokens (under their lease), refusals (re-consent, the
/// admin, a backoff), Postbridge's own failures (a backoff), and the leases of grants not asked released. If
/// that fails, new tokens are stored again one by one and the rest back off: an answer is never dropped.
async fn store_answers(
    ctx: &AppContext,
    configs: &HashMap<TokenConfigId, token_config::Model>,
    chunk: Vec<(&grant::Model, Answer)>,
    awaiting_admin: &mut HashSet<TokenConfigId>,
    lease: &RefreshLease,
) -> RefreshPass {
    // Not renewed while this chunk is written: new tokens are stored only under the value the rows carry.
    let until = lease.held().await;
    let refreshed: Vec<Refreshed<'_>> = chunk
        .iter()
        .filter_map(|(model, answer)| {
            let tokens = answer.as_ref()?.as_ref().ok()?.as_ref().ok()?;
            Some(Refreshed { model, tokens, lease: *until })
        })
        .collect();
    // A configuration as this batch last saw it: `needs_admin` while the batch knows it waits for its admin.
    let as_seen = |config: &token_config::Model, awaiting: &HashSet<TokenConfigId>| token_config::Model {
        needs_admin: awaiting.contains(&config.id),
        ..config.clone()
    };
    let stored = async {
        let txn = ctx.db.begin().await?;
        let mut pass = RefreshPass::default();
        let mut awaiting = awaiting_admin.clone();
        for (model, answer) in &chunk {
            match answer {
                None | Some(Ok(Ok(_))) => {}
                // A new consent meanwhile took the grant from the lease: the refusal or failure was for tokens that
                // are gone, and must not bury or back off the new ones.
                Some(Ok(Err(_)) | Err(_)) if !still_held(&txn, model.id, *until).await? => {}
                Some(Ok(Err(refused))) => {
                    let Some(config) = configs.get(&model.token_config_id) else { continue };
                    match record_refusal(ctx, &txn, model, &as_seen(config, &awaiting), refused).await? {
                        TokenAccessError::ReauthRequired { .. } => pass.reauth_required += 1,
                        TokenAccessError::NeedsAdmin { .. } => {
                            awaiting.insert(config.id);
                            pass.failed += 1;
                        }
                        _ => pass.failed += 1,
                    }
                }
                Some(Err(internal)) => {
                    tracing::error!(grant_id = %model.id, error = %internal, "grant refresh failed inside Postbridge; it backs off");
                    record_failure(&txn, model, INTERNAL_REFRESH_ERROR, &FailureKind::Internal, None).await?;
                    ctx.metrics.token_refresh("failed");
                    pass.failed += 1;
                }
            }
        }
        // New tokens end their lease as they are stored (only while it holds); the others' end here.
        let leases: Vec<GrantId> = chunk
            .iter()
            .map(|(model, _)| model.id)
            .filter(|id| !refreshed.iter().any(|one| one.model.id == *id))
            .collect();
        release_held(&txn, &leases, *until).await?;
        // A configuration whose credentials just worked is not waiting for its admin any more.
        let worked: Vec<token_config::Model> = configs
            .values()
            .filter(|config| awaiting.contains(&config.id) && refreshed.iter().any(|r| r.model.token_config_id == config.id))
            .map(|config| as_seen(config, &awaiting))
            .collect();
        pass.refreshed = persist_refreshed(ctx, txn, &refreshed, &worked.iter().collect::<Vec<_>>()).await?;
        for config in &worked {
            awaiting.remove(&config.id);
        }
        Ok::<_, AppError>((pass, awaiting))
    }
    .await;
    let pass = match stored {
        Ok((pass, awaiting)) => {
            // Kept only once committed: a rolled-back write recorded nothing.
            *awaiting_admin = awaiting;
            pass
        }
        Err(first) => {
            tracing::warn!(error = %first, answers = chunk.len(), "storing refresh answers failed; storing each again");
            let mut pass = RefreshPass::default();
            for one in &refreshed {
                let Some(config) = configs.get(&one.model.token_config_id) else { continue };
                let again = AppError::Internal(anyhow::anyhow!("the batch's write failed: {first}"));
                match persist_refreshed_again(ctx, *one, &as_seen(config, awaiting_admin), again).await {
                    Ok(()) => pass.refreshed += 1,
                    Err(e) => {
                        record_internal_failure(ctx, one.model.id, &e).await;
                        pass.failed += 1;
                    }
                }
            }
            // What the write recorded was rolled back with it: each of the others backs off on its own.
            for (model, answer) in &chunk {
                if answer.is_some() && !refreshed.iter().any(|one| one.model.id == model.id) {
                    record_internal_failure(ctx, model.id, &first).await;
                    pass.failed += 1;
                }
            }
            pass
        }
    };
    for _ in 0..pass.refreshed {
        ctx.metrics.token_refresh("refreshed");
    }
    pass
}

/// The configurations of the grants, each checked to belong to its grant's tenant.
/// The token configurations of the grants `grant_ids`, by id (each grant is matched with its own tenant's when used).
async fn configs_of(ctx: &AppContext, grant_ids: &[GrantId]) -> AppResult<HashMap<TokenConfigId, token_config::Model>> {
    let ids: Vec<TokenConfigId> = grant::Entity::find()
        .select_only()
        .column(grant::Column::TokenConfigId)
        .distinct()
        .filter(grant::Column::Id.is_in(grant_ids.iter().copied()))
        .into_tuple()
        .all(&ctx.db)
        .await?;
    let found = token_config::Entity::find().filter(token_config::Column::Id.is_in(ids)).all(&ctx.db).await?;
    Ok(found.into_iter().map(|config| (config.id, config)).collect())
}

/// A refresh that failed on Postbridge's side (stored tokens that do not decrypt, a database error): the grant
/// keeps its tokens and status, backs off like after a provider outage, and the others go on.
async fn record_internal_failure(ctx: &AppContext, grant_id: GrantId, err: &AppError) {
    tracing::error!(%grant_id, error = %err, "grant refresh failed inside Postbridge; skipped and retried with backoff");
    ctx.metrics.token_refresh("failed");
    let recorded = async {
        let txn = ctx.db.begin().await?;
        let Some(model) = grant::Entity::find_by_id(grant_id).lock_exclusive().one(&txn).await? else { return Ok(()) };
        record_failure(&txn, &model, INTERNAL_REFRESH_ERROR, &FailureKind::Internal, None).await?;
        txn.commit().await?;
        Ok::<_, AppError>(())
    }
    .await;
    if let Err(e) = recorded {
        tracing::error!(%grant_id, error = %e.detail(), "could not record the failed refresh");
    }
}
