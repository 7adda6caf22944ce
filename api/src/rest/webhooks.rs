use actix_web::{web, HttpResponse};
use postbridge_core::error::ErrorBody;
use postbridge_core::model::{Page, PageRequest};
use postbridge_core::observe::webhooks::{
    self, AttemptQuery, CreateWebhookEndpoint, DeliveryQuery, UpdateWebhookEndpoint, WebhookAttempt, WebhookDelivery,
    WebhookEndpoint, WebhookEndpointSecret,
};
use postbridge_core::AppContext;
use uuid::Uuid;

use crate::error::ApiResult;
use crate::extract::Tenant;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/webhooks", web::get().to(list))
        .route("/webhooks", web::post().to(create))
        .route("/webhooks/{id}", web::get().to(get))
        .route("/webhooks/{id}", web::patch().to(update))
        .route("/webhooks/{id}", web::delete().to(delete))
        .route("/webhooks/{id}/rotate-secret", web::post().to(rotate_secret))
        .route("/webhooks/{id}/deliveries", web::get().to(deliveries))
        .route("/webhooks/{id}/attempts", web::get().to(attempts))
        .route("/webhooks/{id}/deliveries/{event_id}/redeliver", web::post().to(redeliver));
}

#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", security(("bearer" = [])), params(PageRequest),
    responses((status = 200, body = Page<WebhookEndpoint>)))]
pub async fn list(ctx: web::Data<AppContext>, Tenant(scope): Tenant, page: web::Query<PageRequest>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(webhooks::list(&ctx, &scope, page.into_inner()).await?))
}

/// Add a webhook endpoint (admin). The answer carries the signing secret, shown only this once.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", security(("bearer" = [])), request_body = CreateWebhookEndpoint,
    responses((status = 201, body = WebhookEndpointSecret), (status = 422, body = ErrorBody)))]
pub async fn create(
    ctx: web::Data<AppContext>,
    Tenant(scope): Tenant,
    input: web::Json<CreateWebhookEndpoint>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Created().json(webhooks::create(&ctx, &scope, input.into_inner()).await?))
}

#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    responses((status = 200, body = WebhookEndpoint), (status = 404, body = ErrorBody)))]
pub async fn get(ctx: web::Data<AppContext>, Tenant(scope): Tenant, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(webhooks::get(&ctx, &scope, id.into_inner().into()).await?))
}

/// Change an endpoint (admin); `enabled: true` re-enables one Postbridge disabled.
#[utoipa::path(patch, path = "/v1/webhooks/{id}", tag = "webhooks", security(("bearer" = [])), request_body = UpdateWebhookEndpoint,
    responses((status = 200, body = WebhookEndpoint), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update(
    ctx: web::Data<AppContext>,
    Tenant(scope): Tenant,
    id: web::Path<Uuid>,
    input: web::Json<UpdateWebhookEndpoint>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(webhooks::update(&ctx, &scope, id.into_inner().into(), input.into_inner()).await?))
}

/// Delete an endpoint with its deliveries and their log (admin).
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(ctx: web::Data<AppContext>, Tenant(scope): Tenant, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    webhooks::delete(&ctx, &scope, id.into_inner().into()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// New signing secret (admin), shown only in this answer; the previous one keeps signing for 24 hours.
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks", security(("bearer" = [])),
    responses((status = 200, body = WebhookEndpointSecret), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn rotate_secret(ctx: web::Data<AppContext>, Tenant(scope): Tenant, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(webhooks::rotate_secret(&ctx, &scope, id.into_inner().into()).await?))
}

/// The endpoint's deliveries, newest event first.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks", security(("bearer" = [])), params(DeliveryQuery),
    responses((status = 200, body = Page<WebhookDelivery>), (status = 404, body = ErrorBody)))]
pub async fn deliveries(
    ctx: web::Data<AppContext>,
    Tenant(scope): Tenant,
    id: web::Path<Uuid>,
    query: web::Query<DeliveryQuery>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(webhooks::list_deliveries(&ctx, &scope, id.into_inner().into(), query.into_inner()).await?))
}

/// The delivery log: every attempt (status code, latency, attempt number), newest first.
#[utoipa::path(get, path = "/v1/webhooks/{id}/attempts", tag = "webhooks", security(("bearer" = [])), params(AttemptQuery),
    responses((status = 200, body = Page<WebhookAttempt>), (status = 404, body = ErrorBody)))]
pub async fn attempts(
    ctx: web::Data<AppContext>,
    Tenant(scope): Tenant,
    id: web::Path<Uuid>,
    query: web::Query<AttemptQuery>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(webhooks::list_attempts(&ctx, &scope, id.into_inner().into(), query.into_inner()).await?))
}

/// Deliver an event again now (admin): one more attempt, the retry schedule is not restarted.
#[utoipa::path(post, path = "/v1/webhooks/{id}/deliveries/{event_id}/redeliver", tag = "webhooks", security(("bearer" = [])),
    responses((status = 202, body = WebhookDelivery), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn redeliver(
    ctx: web::Data<AppContext>,
    Tenant(scope): Tenant,
    path: web::Path<(Uuid, Uuid)>,
) -> ApiResult<HttpResponse> {
    let (id, event_id) = path.into_inner();
    Ok(HttpResponse::Accepted().json(webhooks::redeliver(&ctx, &scope, id.into(), event_id).await?))
}
