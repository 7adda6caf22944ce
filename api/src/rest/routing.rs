use actix_web::{web, HttpResponse};
use postbridge_core::error::ErrorBody;
use postbridge_core::send::routing;
use postbridge_core::send::routing::RouteExplanation;
use postbridge_core::AppContext;

use crate::error::ApiResult;
use crate::extract::Tenant;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/routing", web::get().to(explain_route));
}

/// Which account would send From X for this tenant, and why (`routed_by: default` means the fallback sender).
#[utoipa::path(get, path = "/v1/routing", tag = "messages", security(("bearer" = [])), params(RoutingQuery),
    responses((status = 200, body = RouteExplanation), (status = 422, body = ErrorBody)))]
pub async fn explain_route(
    ctx: web::Data<AppContext>,
    Tenant(scope): Tenant,
    query: web::Query<RoutingQuery>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(routing::explain(&ctx, &scope, &query.from).await?))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RoutingQuery {
    /// The From address to route.
    pub from: String,
}
