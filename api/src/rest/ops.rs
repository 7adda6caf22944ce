//! Operator overview, credential health and worker processes.

use actix_web::{web, HttpResponse};
use postbridge_core::error::ErrorBody;
use postbridge_core::jobs::workers::{self, WorkerProcess};
use postbridge_core::model::ExpiringQuery;
use postbridge_core::observe::credential_health::{self, CredentialHealth};
use postbridge_core::observe::overview::{self, OpsOverview, OverviewQuery};
use postbridge_core::AppContext;

use crate::error::ApiResult;
use crate::extract::{Caller, Tenant};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/ops/overview", web::get().to(ops_overview))
        .route("/ops/credential-health", web::get().to(ops_credential_health))
        .route("/credential-health", web::get().to(tenant_credential_health))
        .route("/ops/workers", web::get().to(ops_workers));
}

/// Worker processes: live ones (heartbeat within 30 s) and those that stopped or died in the last 24 hours, with
/// host, pid, version, live consumers per queue and, when not ready, why (operator).
#[utoipa::path(get, path = "/v1/ops/workers", tag = "ops", security(("bearer" = [])),
    responses((status = 200, body = Vec<WorkerProcess>), (status = 403, body = ErrorBody)))]
pub async fn ops_workers(ctx: web::Data<AppContext>, Caller(p): Caller) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(workers::list(&ctx, &p).await?))
}

/// Per tenant: accounts by state, grants needing re-consent, client secrets expiring, the outbox, poll lag; and the
/// accounts failing longest. Operators see every tenant (or `tenant_id`); tenant admins and viewers their own.
#[utoipa::path(get, path = "/v1/ops/overview", tag = "ops", security(("bearer" = [])), params(OverviewQuery),
    responses((status = 200, body = OpsOverview), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn ops_overview(
    ctx: web::Data<AppContext>,
    Caller(p): Caller,
    query: web::Query<OverviewQuery>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(overview::overview(&ctx, &p, query.into_inner()).await?))
}

/// Every tenant's grants and token configurations that are broken or expected to break within `within_days`
/// (default 30), broken first, then soonest (operator).
#[utoipa::path(get, path = "/v1/ops/credential-health", tag = "ops", security(("bearer" = [])), params(ExpiringQuery),
    responses((status = 200, body = Vec<CredentialHealth>), (status = 403, body = ErrorBody)))]
pub async fn ops_credential_health(
    ctx: web::Data<AppContext>,
    Caller(p): Caller,
    query: web::Query<ExpiringQuery>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(credential_health::for_operator(&ctx, &p, query.into_inner()).await?))
}

/// The tenant's grants and token configurations that are broken or expected to break within `within_days`
/// (default 30): the date, the cause (client-secret expiry, Microsoft's 90-day inactivity, Google's 7-day
/// testing-app limit) and the next step (admins and viewers).
#[utoipa::path(get, path = "/v1/credential-health", tag = "ops", security(("bearer" = [])), params(ExpiringQuery),
    responses((status = 200, body = Vec<CredentialHealth>), (status = 403, body = ErrorBody)))]
pub async fn tenant_credential_health(
    ctx: web::Data<AppContext>,
    Tenant(scope): Tenant,
    query: web::Query<ExpiringQuery>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(credential_health::for_tenant(&ctx, &scope, query.into_inner()).await?))
}
