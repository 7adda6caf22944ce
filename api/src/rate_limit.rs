//! Per-tenant API rate limits (see `postbridge_core::service::rate_limit`), applied once per request to
//! `/v1/*` and `/graphql` for tenant credentials (API keys and tenant JWTs). Operators, requests without a
//! credential and health, metrics and OAuth callback routes are not limited.
//!
//! The middleware authenticates the request to learn its tenant and leaves the answer in the request's
//! extensions, where `extract::resolve_caller` picks it up, so a request is authenticated once.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpMessage as _, HttpResponse};
use postbridge_core::auth::authenticate;
use postbridge_core::error::ErrorBody;
use postbridge_core::service::rate_limit::{Decision, RateLimiter};
use postbridge_core::AppContext;

use crate::extract::{bearer_token, Authenticated};

fn is_limited_path(path: &str) -> bool {
    path == "/graphql" || path == "/v1" || path.starts_with("/v1/")
}

pub async fn limit<B: MessageBody + 'static>(
    ctx: web::Data<AppContext>,
    limiter: web::Data<RateLimiter>,
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, Error> {
    let token = if is_limited_path(req.path()) { bearer_token(req.request()) } else { None };
    let Some(token) = token else {
        return next.call(req).await.map(ServiceResponse::map_into_left_body);
    };
    let caller = authenticate(&ctx, &token).await;
    let tenant = caller.as_ref().ok().and_then(|p| p.tenant_id.map(|id| (id, p.api_rate_limit_per_minute)));
    req.extensions_mut().insert(Authenticated(caller));
    let Some((tenant_id, own_limit)) = tenant else {
        return next.call(req).await.map(ServiceResponse::map_into_left_body);
    };
    match limiter.check(&ctx, tenant_id, own_limit).await {
        Decision::Allowed => next.call(req).await.map(ServiceResponse::map_into_left_body),
        Decision::Limited { retry_after_seconds } => {
            ctx.metrics.rate_limited.inc();
            let body = ErrorBody {
                code: "rate_limited".to_owned(),
                message: format!("too many requests for this tenant: try again in {retry_after_seconds} s"),
                field: None,
            };
            let response =
                HttpResponse::TooManyRequests().insert_header(("Retry-After", retry_after_seconds.to_string())).json(body);
            Ok(req.into_response(response).map_into_right_body())
        }
    }
}
