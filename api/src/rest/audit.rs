use actix_web::{web, HttpRequest, HttpResponse};
use postbridge_core::error::ErrorBody;
use postbridge_core::model::Page;
use postbridge_core::observe::audit::{self, AuditEntry, AuditQuery};
use postbridge_core::AppContext;

use crate::error::ApiResult;
use crate::extract::{requested_tenant, Caller};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/audit-log", web::get().to(list));
}

/// Configuration changes, newest first: who changed which tenant, key, token configuration, account, grant or
/// webhook, when, and which fields (secrets only as changed). Tenant admins see their tenant's; operators see
/// the tenant they name, or every entry when they name none.
#[utoipa::path(get, path = "/v1/audit-log", tag = "audit", security(("bearer" = [])), params(AuditQuery),
    responses((status = 200, body = Page<AuditEntry>), (status = 403, body = ErrorBody)))]
pub async fn list(
    ctx: web::Data<AppContext>,
    Caller(principal): Caller,
    http: HttpRequest,
    query: web::Query<AuditQuery>,
) -> ApiResult<HttpResponse> {
    let tenant = requested_tenant(&http)?;
    Ok(HttpResponse::Ok().json(audit::list(&ctx, &principal, tenant, query.into_inner()).await?))
}
