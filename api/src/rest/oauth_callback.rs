//! `GET /oauth/callback`: the one redirect URI of the deployment.

use actix_web::{web, HttpResponse};
use postbridge_core::access::tenants;
use postbridge_core::connect::grants::{self, CallbackParams};
use postbridge_core::AppContext;

use crate::error::ApiResult;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/oauth/callback", web::get().to(callback));
}

/// Where the provider sends the browser back. Redirects to the tenant's return URL with `status`,
/// `reason` and `account_id`, or shows the result page (the tenant's name and logo, what happened, what next).
#[utoipa::path(get, path = "/oauth/callback", tag = "oauth",
    responses((status = 302, description = "to the return URL"), (status = 200, description = "connected"), (status = 400, description = "failed")))]
pub async fn callback(ctx: web::Data<AppContext>, params: web::Query<CallbackParams>) -> ApiResult<HttpResponse> {
    let outcome = grants::complete_callback(&ctx, params.into_inner()).await?;
    if outcome.success {
        tracing::info!(account_id = ?outcome.account_id, "mailbox connected");
    } else {
        tracing::warn!(account_id = ?outcome.account_id, reason = %outcome.reason, "authorization callback failed");
    }
    if let Some(target) = outcome.redirect_url() {
        return Ok(HttpResponse::Found().insert_header(("Location", target)).finish());
    }
    let branding = match outcome.tenant_id {
        Some(tenant_id) => tenants::branding(&ctx, tenant_id).await?,
        None => None,
    };
    let mut response = if outcome.success { HttpResponse::Ok() } else { HttpResponse::BadRequest() };
    Ok(response
        .content_type("text/html; charset=utf-8")
        // The page runs nothing and loads only the tenant's https logo; it is never framed, cached or indexed.
        .insert_header((
            "Content-Security-Policy",
            "default-src 'none'; img-src https:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header(("Cache-Control", "no-store"))
        .body(crate::consent_page::render(&outcome, branding.as_ref())))
}
