use actix_web::{web, HttpResponse};
use postbridge_core::connect::grants::AuthorizeAccount;
use postbridge_core::connect::grants::AuthorizeResult;
use postbridge_core::connect::grants::Grant;
use postbridge_core::connect::token_configs::TokenConfig;
use postbridge_core::connect::{grants, token_configs};
use postbridge_core::error::ErrorBody;
use postbridge_core::model::{ExpiringQuery, Page, PageRequest};
use postbridge_core::AppContext;
use uuid::Uuid;

use crate::error::ApiResult;
use crate::extract::Tenant;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/accounts/{id}/authorize", web::post().to(authorize))
        .route("/grants", web::get().to(list))
        .route("/grants/{id}", web::get().to(get))
        .route("/grants/{id}", web::delete().to(revoke))
        // Registered before `/token-configs/{id}`, which would otherwise take "expiring" for an id.
        .route("/token-configs/expiring", web::get().to(expiring));
}

/// "Authenticate account": the provider URL to send the browser to (user flow), or an immediate
/// client-credentials authorization (app flow).
#[utoipa::path(post, path = "/v1/accounts/{id}/authorize", tag = "oauth", security(("bearer" = [])), request_body = AuthorizeAccount,
    responses((status = 200, body = AuthorizeResult), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn authorize(
    ctx: web::Data<AppContext>,
    Tenant(scope): Tenant,
    id: web::Path<Uuid>,
    input: Option<web::Json<AuthorizeAccount>>,
) -> ApiResult<HttpResponse> {
    let input = input.map(|i| i.into_inner()).unwrap_or_default();
    Ok(HttpResponse::Ok().json(grants::authorize(&ctx, &scope, id.into_inner(), input).await?))
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
    Ok(HttpResponse::Ok().json(grants::get(&ctx, &scope, id.into_inner()).await?))
}

/// Revoke (delete) a grant (admin); its accounts go back to draft.
#[utoipa::path(delete, path = "/v1/grants/{id}", tag = "oauth", security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn revoke(ctx: web::Data<AppContext>, Tenant(scope): Tenant, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    grants::revoke(&ctx, &scope, id.into_inner()).await?;
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
