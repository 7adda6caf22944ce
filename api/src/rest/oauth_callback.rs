//! `GET /oauth/callback`: the one redirect URI of the deployment.

use actix_web::{web, HttpResponse};
use postbridge_core::connect::grants::{self, CallbackParams};
use postbridge_core::AppContext;

use crate::error::ApiResult;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/oauth/callback", web::get().to(callback));
}

/// Where the provider sends the browser back. Redirects to the tenant's return URL with `status`,
/// `reason` and `account_id`, or shows a short page when there is none.
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
    let (mut response, title) = if outcome.success {
        (HttpResponse::Ok(), "Mailbox connected")
    } else {
        (HttpResponse::BadRequest(), "Mailbox not connected")
    };
    let body = format!(
        "<!doctype html><meta charset=utf-8><title>{title}</title><h1>{title}</h1><p>{}</p><p><code>{}</code></p>",
        html_escape(&outcome.message),
        html_escape(&outcome.reason)
    );
    Ok(response.content_type("text/html; charset=utf-8").body(body))
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
