use actix_web::{web, HttpResponse};
use postbridge_core::error::ErrorBody;
use postbridge_core::receive::inbox;
use postbridge_core::receive::inbox::{HtmlMode, InboundMessage};
use postbridge_core::AppContext;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::error::ApiResult;
use crate::extract::Tenant;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/received-messages/{id}", web::get().to(get_received))
        .route("/received-messages/{id}/raw", web::get().to(raw_received))
        .route("/received-messages/{id}/attachments/{index}", web::get().to(attachment_received));
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct BodyQuery {
    /// `original` (the default) or `sanitized`: scripts, event handlers, forms and unknown URL schemes removed.
    html: Option<HtmlMode>,
}

/// One received message, parsed: addresses, bodies, threading headers, attachments.
#[utoipa::path(get, path = "/v1/received-messages/{id}", tag = "messages", security(("bearer" = [])), params(BodyQuery),
    responses((status = 200, body = InboundMessage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_received(
    ctx: web::Data<AppContext>,
    Tenant(scope): Tenant,
    id: web::Path<Uuid>,
    query: web::Query<BodyQuery>,
) -> ApiResult<HttpResponse> {
    let html = query.html.unwrap_or_default();
    Ok(HttpResponse::Ok().json(inbox::get(&ctx, &scope, id.into_inner().into(), html).await?))
}

/// One attachment of a received message, decoded, always as a download (never shown inline by a browser).
#[utoipa::path(get, path = "/v1/received-messages/{id}/attachments/{index}", tag = "messages", security(("bearer" = [])),
    responses((status = 200, content_type = "application/octet-stream", description = "the attachment's bytes, with its content type"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn attachment_received(
    ctx: web::Data<AppContext>,
    Tenant(scope): Tenant,
    path: web::Path<(Uuid, i32)>,
) -> ApiResult<HttpResponse> {
    let (id, index) = path.into_inner();
    let (attachment, bytes) = inbox::attachment(&ctx, &scope, id.into(), index).await?;
    Ok(sender_content(safe_content_type(&attachment.content_type), download_disposition(attachment.filename.as_deref(), index))
        .body(bytes))
}

/// A response carrying what a sender wrote: never sniffed, never shown in place, and sandboxed should a browser
/// render it anyway (it is served from the API's origin).
fn sender_content(content_type: String, disposition: String) -> actix_web::HttpResponseBuilder {
    let mut response = HttpResponse::Ok();
    response
        .content_type(content_type)
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Content-Security-Policy", "sandbox"))
        .insert_header(("Content-Disposition", disposition));
    response
}

/// The sender's content type when it is a plain `type/subtype` token, else `application/octet-stream`.
fn safe_content_type(declared: &str) -> String {
    let token = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b));
    match declared.split_once('/') {
        Some((kind, sub)) if token(kind) && token(sub) => declared.to_owned(),
        _ => "application/octet-stream".to_owned(),
    }
}

/// `attachment; filename="…"; filename*=UTF-8''…` (RFC 6266): an ASCII fallback and the exact name, percent-encoded.
fn download_disposition(filename: Option<&str>, index: i32) -> String {
    let name = filename.filter(|n| !n.trim().is_empty()).map(str::to_owned).unwrap_or_else(|| format!("attachment-{index}"));
    let fallback: String =
        name.chars().map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' { c } else { '_' }).collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

/// The message exactly as received (RFC 5322).
#[utoipa::path(get, path = "/v1/received-messages/{id}/raw", tag = "messages", security(("bearer" = [])),
    responses((status = 200, content_type = "message/rfc822", description = "the raw message"), (status = 404, body = ErrorBody)))]
pub async fn raw_received(ctx: web::Data<AppContext>, Tenant(scope): Tenant, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    let id = id.into_inner();
    let raw = inbox::raw(&ctx, &scope, id.into()).await?;
    Ok(sender_content("message/rfc822".to_owned(), format!("attachment; filename=\"message-{id}.eml\"")).body(raw))
}
