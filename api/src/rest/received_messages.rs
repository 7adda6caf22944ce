use actix_web::{web, HttpResponse};
use postbridge_core::error::ErrorBody;
use postbridge_core::receive::inbox;
use postbridge_core::receive::inbox::InboundMessage;
use postbridge_core::AppContext;
use uuid::Uuid;

use crate::error::ApiResult;
use crate::extract::Tenant;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/received-messages/{id}", web::get().to(get_received))
        .route("/received-messages/{id}/raw", web::get().to(raw_received));
}

/// One received message, parsed.
#[utoipa::path(get, path = "/v1/received-messages/{id}", tag = "messages", security(("bearer" = [])),
    responses((status = 200, body = InboundMessage), (status = 404, body = ErrorBody)))]
pub async fn get_received(ctx: web::Data<AppContext>, Tenant(scope): Tenant, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(inbox::get(&ctx, &scope, id.into_inner().into()).await?))
}

/// The message exactly as received (RFC 5322).
#[utoipa::path(get, path = "/v1/received-messages/{id}/raw", tag = "messages", security(("bearer" = [])),
    responses((status = 200, content_type = "message/rfc822", description = "the raw message"), (status = 404, body = ErrorBody)))]
pub async fn raw_received(ctx: web::Data<AppContext>, Tenant(scope): Tenant, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    let raw = inbox::raw(&ctx, &scope, id.into_inner().into()).await?;
    Ok(HttpResponse::Ok().content_type("message/rfc822").body(raw))
}
