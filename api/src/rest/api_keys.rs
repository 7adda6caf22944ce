use actix_web::{web, HttpResponse};
use postbridge_core::access::api_keys;
use postbridge_core::access::api_keys::ApiKey;
use postbridge_core::access::api_keys::CreateApiKey;
use postbridge_core::access::api_keys::CreatedApiKey;
use postbridge_core::error::ErrorBody;
use postbridge_core::model::{Page, PageRequest};
use postbridge_core::AppContext;
use uuid::Uuid;

use crate::error::ApiResult;
use crate::extract::Tenant;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api-keys", web::get().to(list))
        .route("/api-keys", web::post().to(create))
        .route("/api-keys/{id}", web::get().to(get))
        .route("/api-keys/{id}", web::delete().to(revoke));
}

/// List the tenant's API keys (admin); secrets are never shown again.
#[utoipa::path(get, path = "/v1/api-keys", tag = "api-keys", security(("bearer" = [])), params(PageRequest),
    responses((status = 200, body = Page<ApiKey>), (status = 403, body = ErrorBody)))]
pub async fn list(ctx: web::Data<AppContext>, Tenant(scope): Tenant, page: web::Query<PageRequest>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(api_keys::list(&ctx, &scope, page.into_inner()).await?))
}

/// Create an API key (admin). The response holds the secret, once.
#[utoipa::path(post, path = "/v1/api-keys", tag = "api-keys", security(("bearer" = [])), request_body = CreateApiKey,
    responses((status = 201, body = CreatedApiKey), (status = 422, body = ErrorBody)))]
pub async fn create(
    ctx: web::Data<AppContext>,
    Tenant(scope): Tenant,
    input: web::Json<CreateApiKey>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Created().json(api_keys::create(&ctx, &scope, input.into_inner()).await?))
}

#[utoipa::path(get, path = "/v1/api-keys/{id}", tag = "api-keys", security(("bearer" = [])),
    responses((status = 200, body = ApiKey), (status = 404, body = ErrorBody)))]
pub async fn get(ctx: web::Data<AppContext>, Tenant(scope): Tenant, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(api_keys::get(&ctx, &scope, id.into_inner().into()).await?))
}

/// Revoke an API key (admin); it stops working at once.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "api-keys", security(("bearer" = [])),
    responses((status = 200, body = ApiKey), (status = 404, body = ErrorBody)))]
pub async fn revoke(ctx: web::Data<AppContext>, Tenant(scope): Tenant, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(api_keys::revoke(&ctx, &scope, id.into_inner().into()).await?))
}
