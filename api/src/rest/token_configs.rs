use actix_web::{web, HttpResponse};
use postbridge_core::connect::token_configs;
use postbridge_core::connect::token_configs::CreateTokenConfig;
use postbridge_core::connect::token_configs::TokenConfig;
use postbridge_core::connect::token_configs::UpdateTokenConfig;
use postbridge_core::error::ErrorBody;
use postbridge_core::model::ExpiringQuery;
use postbridge_core::model::{Page, PageRequest};
use postbridge_core::AppContext;
use uuid::Uuid;

use crate::error::ApiResult;
use crate::extract::Tenant;

pub fn routes(cfg: &mut web::ServiceConfig) {
    // Registered before `/token-configs/{id}`, which would otherwise take "expiring" for an id.
    cfg.route("/token-configs/expiring", web::get().to(expiring))
        .route("/token-configs", web::get().to(list))
        .route("/token-configs", web::post().to(create))
        .route("/token-configs/{id}", web::get().to(get))
        .route("/token-configs/{id}", web::patch().to(update))
        .route("/token-configs/{id}", web::delete().to(delete));
}

#[utoipa::path(get, path = "/v1/token-configs", tag = "token-configs", security(("bearer" = [])), params(PageRequest),
    responses((status = 200, body = Page<TokenConfig>)))]
pub async fn list(ctx: web::Data<AppContext>, Tenant(scope): Tenant, page: web::Query<PageRequest>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(token_configs::list(&ctx, &scope, page.into_inner()).await?))
}

/// Register an OAuth app (admin). Microsoft needs only client id, secret and directory id.
#[utoipa::path(post, path = "/v1/token-configs", tag = "token-configs", security(("bearer" = [])), request_body = CreateTokenConfig,
    responses((status = 201, body = TokenConfig), (status = 422, body = ErrorBody)))]
pub async fn create(
    ctx: web::Data<AppContext>,
    Tenant(scope): Tenant,
    input: web::Json<CreateTokenConfig>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Created().json(token_configs::create(&ctx, &scope, input.into_inner()).await?))
}

#[utoipa::path(get, path = "/v1/token-configs/{id}", tag = "token-configs", security(("bearer" = [])),
    responses((status = 200, body = TokenConfig), (status = 404, body = ErrorBody)))]
pub async fn get(ctx: web::Data<AppContext>, Tenant(scope): Tenant, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(token_configs::get(&ctx, &scope, id.into_inner().into()).await?))
}

#[utoipa::path(patch, path = "/v1/token-configs/{id}", tag = "token-configs", security(("bearer" = [])), request_body = UpdateTokenConfig,
    responses((status = 200, body = TokenConfig), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update(
    ctx: web::Data<AppContext>,
    Tenant(scope): Tenant,
    id: web::Path<Uuid>,
    input: web::Json<UpdateTokenConfig>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(token_configs::update(&ctx, &scope, id.into_inner().into(), input.into_inner()).await?))
}

/// Delete a configuration (admin); 409 while accounts use it.
#[utoipa::path(delete, path = "/v1/token-configs/{id}", tag = "token-configs", security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(ctx: web::Data<AppContext>, Tenant(scope): Tenant, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    token_configs::delete(&ctx, &scope, id.into_inner().into()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Token configurations whose client secret expires within `within_days` (default 30), soonest first.
#[utoipa::path(get, path = "/v1/token-configs/expiring", tag = "token-configs", security(("bearer" = [])), params(ExpiringQuery),
    responses((status = 200, body = Vec<TokenConfig>)))]
pub async fn expiring(
    ctx: web::Data<AppContext>,
    Tenant(scope): Tenant,
    query: web::Query<ExpiringQuery>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(token_configs::expiring(&ctx, &scope, query.into_inner()).await?))
}
