//! HTTP metrics: a middleware counting every request by method, route pattern and status with its latency,
//! and `GET /metrics` in the Prometheus text format (with the Postgres-backed gauges read at scrape).

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpRequest, HttpResponse};
use postbridge_core::observe::ops_metrics;
use postbridge_core::{AppContext, AppError};

use crate::error::ApiError;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics));
}

/// Only the methods the API serves get their own label; anything a client invents is `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts the request under its route pattern (`/v1/accounts/{id}`), never the raw path: ids would make
/// the label set unbounded. Paths no route matches are `unmatched`.
pub async fn track(req: ServiceRequest, next: Next<impl MessageBody>) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let method = method_label(req.method());
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".to_owned());
    let metrics = req.app_data::<web::Data<AppContext>>().map(|ctx| ctx.metrics.clone());
    let result = next.call(req).await;
    if let Some(metrics) = metrics {
        let status = match &result {
            Ok(response) => response.status(),
            Err(e) => e.as_response_error().status_code(),
        };
        metrics.http_requests.with_label_values(&[method, &route, status.as_str()]).inc();
        metrics.http_duration.with_label_values(&[method, &route]).observe(started.elapsed().as_secs_f64());
    }
    result
}

/// Prometheus metrics in the text exposition format; with `POSTBRIDGE_METRICS_TOKEN` set, only for
/// `Authorization: Bearer <it>`.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses(
        (status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String),
        (status = 401, description = "POSTBRIDGE_METRICS_TOKEN is set and was not presented", body = postbridge_core::error::ErrorBody),
    ))]
pub async fn metrics(ctx: web::Data<AppContext>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let authorization = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if !ops_metrics::scrape_allowed(&ctx, authorization) {
        return Err(ApiError(AppError::Unauthenticated("a valid metrics bearer token is required".to_owned())));
    }
    let body = ops_metrics::scrape(&ctx).await;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, HeaderValue::from_static(postbridge_core::metrics::CONTENT_TYPE)))
        .body(body))
}
