use actix_web::{web, HttpResponse};
use postbridge_core::connect::grants;
use postbridge_core::connect::grants::Grant;
use postbridge_core::error::ErrorBody;
use postbridge_core::model::{Page, PageRequest};
use postbridge_core::AppContext;
use uuid::Uuid;

use crate::error::ApiResult;
use crate::extract::Tenant;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/grants", web::get().to(list))
        .route("/grants/{id}", web::get().to(get))
        .route("/grants/{id}", web::delete().to(revoke));
}

/// The tenant's grants (tokens are never shown).
#[utoipa::path(get, path = "/v1/grants", tag = "oauth", security(("bearer" = [])), params(PageRequest),
    responses((status = 200, body = Page<Grant>)))]
pub async fn list(ctx: web::Data<AppContext>, Tenant(scope): Tenant, page: web::Query<PageRequest>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(grants::list(&ctx, &scope, page.into_inner()).await?))
}

#[utoipa::path(get, path = "/v1/grants/{id}", tag = "oauth", security(("bearer" = [])),
    responses((status = 200, body = Grant), (status = 404, body = ErrorBody)))]
pub async fn get(ctx: web::Data<AppContext>, Tenant(scope): Tenant, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(grants::get(&ctx, &scope, id.into_inner().into()).await?))
}

/// Revoke (delete) a grant (admin); its accounts go back to draft.
#[utoipa::path(delete, path = "/v1/grants/{id}", tag = "oauth", security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn revoke(ctx: web::Data<AppContext>, Tenant(scope): Tenant, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    grants::revoke(&ctx, &scope, id.into_inner().into()).await?;
    Ok(HttpResponse::NoContent().finish())
}
