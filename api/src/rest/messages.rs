use actix_web::{web, HttpResponse};
use postbridge_core::error::ErrorBody;
use postbridge_core::model::{Page, PageRequest};
use postbridge_core::send::outbox;
use postbridge_core::send::outbox::OutboundMessage;
use postbridge_core::send::outbox::{SendMessage, SentFilter};
use postbridge_core::send::steer::{self, ResolveMessage};
use postbridge_core::AppContext;
use uuid::Uuid;

use crate::error::ApiResult;
use crate::extract::Tenant;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/messages", web::post().to(send))
        .route("/messages", web::get().to(list_sent))
        .route("/messages/{id}", web::get().to(get_sent))
        .route("/messages/{id}/cancel", web::post().to(cancel))
        .route("/messages/{id}/retry", web::post().to(retry))
        .route("/messages/{id}/resolve", web::post().to(resolve));
}

/// The largest body `POST /v1/messages` reads: a message of `POSTBRIDGE_MAX_MESSAGE_BYTES` composed, as JSON.
/// Attachments travel as base64 in both, so the JSON is about the composed size; the half again on top leaves
/// room for JSON escapes, and the composed size is what is checked after.
pub fn message_body_limit(max_message_bytes: usize) -> usize {
    max_message_bytes.saturating_add(max_message_bytes / 2).saturating_add(64 * 1024)
}

/// Queue a message. Answers 202 with the outbox row; the same `idempotency_key` (or `Idempotency-Key`
/// header) with the same request returns the same message and never sends twice; with another request, 422
/// `idempotency_key_mismatch`. The message may be up to `POSTBRIDGE_MAX_MESSAGE_BYTES` (25 MiB) composed.
#[utoipa::path(post, path = "/v1/messages", tag = "messages", security(("bearer" = [])), request_body = SendMessage,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same as `idempotency_key`: 1 to 255 bytes of printable text")),
    responses((status = 202, body = OutboundMessage), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn send(
    ctx: web::Data<AppContext>,
    Tenant(scope): Tenant,
    http: actix_web::HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let limit = message_body_limit(ctx.settings.max_message_bytes);
    let mut input: SendMessage = crate::bounds::read_json(&http, payload, limit).await?;
    if let Some(header) = http.headers().get("Idempotency-Key") {
        let header =
            header.to_str().map_err(|_| outbox::invalid_idempotency_key("the Idempotency-Key header is not readable text"))?;
        let header = outbox::idempotency_key(header)?;
        match input.idempotency_key.as_deref().map(outbox::idempotency_key).transpose()? {
            Some(body_key) if body_key != header => {
                return Err(outbox::invalid_idempotency_key("the Idempotency-Key header and idempotency_key differ").into())
            }
            _ => input.idempotency_key = Some(header),
        }
    }
    Ok(HttpResponse::Accepted().json(outbox::submit(&ctx, &scope, input).await?))
}

/// The tenant's outgoing messages, newest first; filtered by status, account and submission time.
#[utoipa::path(get, path = "/v1/messages", tag = "messages", security(("bearer" = [])), params(PageRequest, SentFilter),
    responses((status = 200, body = Page<OutboundMessage>), (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn list_sent(
    ctx: web::Data<AppContext>,
    Tenant(scope): Tenant,
    page: web::Query<PageRequest>,
    filter: web::Query<SentFilter>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(outbox::list(&ctx, &scope, page.into_inner(), filter.into_inner()).await?))
}

/// Status, attempts, the account used, the SMTP reply and the Message-ID.
#[utoipa::path(get, path = "/v1/messages/{id}", tag = "messages", security(("bearer" = [])),
    responses((status = 200, body = OutboundMessage), (status = 404, body = ErrorBody)))]
pub async fn get_sent(ctx: web::Data<AppContext>, Tenant(scope): Tenant, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(outbox::get(&ctx, &scope, id.into_inner().into()).await?))
}

/// Take a queued message out of the queue (`cancelled`, event `message.cancelled`). 409 `message_not_cancellable`
/// once a worker has taken it or it is settled.
#[utoipa::path(post, path = "/v1/messages/{id}/cancel", tag = "messages", security(("bearer" = [])),
    responses((status = 200, body = OutboundMessage), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel(ctx: web::Data<AppContext>, Tenant(scope): Tenant, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(steer::cancel(&ctx, &scope, id.into_inner().into()).await?))
}

/// Queue a `failed` or `cancelled` message again, its attempts counted from zero (event `message.retried`). 409
/// `message_not_retryable` in any other state.
#[utoipa::path(post, path = "/v1/messages/{id}/retry", tag = "messages", security(("bearer" = [])),
    responses((status = 200, body = OutboundMessage), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn retry(ctx: web::Data<AppContext>, Tenant(scope): Tenant, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(steer::retry(&ctx, &scope, id.into_inner().into()).await?))
}

/// Settle an `unknown` message: `{"outcome": "sent"}` marks it sent, `{"outcome": "resend"}` queues it again
/// (event `message.resolved`). 409 `message_not_unknown` in any other state.
#[utoipa::path(post, path = "/v1/messages/{id}/resolve", tag = "messages", security(("bearer" = [])),
    request_body = ResolveMessage,
    responses((status = 200, body = OutboundMessage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn resolve(
    ctx: web::Data<AppContext>,
    Tenant(scope): Tenant,
    id: web::Path<Uuid>,
    input: web::Json<ResolveMessage>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(steer::resolve(&ctx, &scope, id.into_inner().into(), input.into_inner()).await?))
}
