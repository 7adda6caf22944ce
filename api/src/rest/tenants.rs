use actix_web::{web, HttpResponse};
use postbridge_core::access::tenants;
use postbridge_core::access::tenants::CreateTenant;
use postbridge_core::access::tenants::Tenant;
use postbridge_core::access::tenants::UpdateTenant;
use postbridge_core::error::ErrorBody;
use postbridge_core::model::{Page, PageRequest, TenantStatus};
use postbridge_core::AppContext;
use uuid::Uuid;

use crate::error::ApiResult;
use crate::extract::Caller;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/tenants", web::get().to(list))
        .route("/tenants", web::post().to(create))
        .route("/tenants/{id}", web::get().to(get))
        .route("/tenants/{id}", web::patch().to(update))
        .route("/tenants/{id}", web::delete().to(delete))
        .route("/tenants/{id}/suspend", web::post().to(suspend))
        .route("/tenants/{id}/resume", web::post().to(resume));
}

/// List tenants (operator).
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", security(("bearer" = [])), params(PageRequest),
    responses((status = 200, body = Page<Tenant>), (status = 403, body = ErrorBody)))]
pub async fn list(ctx: web::Data<AppContext>, Caller(p): Caller, page: web::Query<PageRequest>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(tenants::list(&ctx, &p, page.into_inner()).await?))
}

/// Create a tenant (operator).
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", security(("bearer" = [])), request_body = CreateTenant,
    responses((status = 201, body = Tenant), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(ctx: web::Data<AppContext>, Caller(p): Caller, input: web::Json<CreateTenant>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Created().json(tenants::create(&ctx, &p, input.into_inner()).await?))
}

/// Get a tenant (operator, or the tenant's own credentials).
#[utoipa::path(get, path = "/v1/tenants/{id}", tag = "tenants", security(("bearer" = [])),
    responses((status = 200, body = Tenant), (status = 404, body = ErrorBody)))]
pub async fn get(ctx: web::Data<AppContext>, Caller(p): Caller, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(tenants::get(&ctx, &p, id.into_inner().into()).await?))
}

/// Rename a tenant or change its status (operator).
#[utoipa::path(patch, path = "/v1/tenants/{id}", tag = "tenants", security(("bearer" = [])), request_body = UpdateTenant,
    responses((status = 200, body = Tenant), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update(
    ctx: web::Data<AppContext>,
    Caller(p): Caller,
    id: web::Path<Uuid>,
    input: web::Json<UpdateTenant>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(tenants::update(&ctx, &p, id.into_inner().into(), input.into_inner()).await?))
}

/// Suspend a tenant: all its credentials stop working (operator).
#[utoipa::path(post, path = "/v1/tenants/{id}/suspend", tag = "tenants", security(("bearer" = [])),
    responses((status = 200, body = Tenant), (status = 404, body = ErrorBody)))]
pub async fn suspend(ctx: web::Data<AppContext>, Caller(p): Caller, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(tenants::set_status(&ctx, &p, id.into_inner().into(), TenantStatus::Suspended).await?))
}

/// Reactivate a suspended tenant (operator).
#[utoipa::path(post, path = "/v1/tenants/{id}/resume", tag = "tenants", security(("bearer" = [])),
    responses((status = 200, body = Tenant), (status = 404, body = ErrorBody)))]
pub async fn resume(ctx: web::Data<AppContext>, Caller(p): Caller, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(tenants::set_status(&ctx, &p, id.into_inner().into(), TenantStatus::Active).await?))
}

/// Delete a tenant and everything it owns (operator).
#[utoipa::path(delete, path = "/v1/tenants/{id}", tag = "tenants", security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(ctx: web::Data<AppContext>, Caller(p): Caller, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    tenants::delete(&ctx, &p, id.into_inner().into()).await?;
    Ok(HttpResponse::NoContent().finish())
}
