use actix_web::{web, HttpResponse};
use postbridge_core::access::api_keys;
use postbridge_core::error::ErrorBody;
use postbridge_core::model::IssuedToken;
use postbridge_core::AppContext;

use crate::error::ApiResult;
use crate::extract::Caller;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/auth/token", web::post().to(issue_token));
}

/// Exchange the presented credential (API key, operator token or JWT) for a short-lived JWT.
#[utoipa::path(post, path = "/v1/auth/token", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = IssuedToken), (status = 401, body = ErrorBody)))]
pub async fn issue_token(ctx: web::Data<AppContext>, Caller(principal): Caller) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(api_keys::issue_token(&ctx, &principal)?))
}
