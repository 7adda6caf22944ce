//! Per-tenant API rate limits (see `postbridge_core::access::rate_limit`), applied once per request to
//! `/v1/*` and `/graphql` for tenant credentials (API keys and tenant JWTs). Requests there without a
//! credential, or with one that is not valid, are limited per client address (the connection's peer address:
//! behind a reverse proxy, that proxy). Operators and the health, metrics and OAuth callback routes are not
//! limited. A GraphQL operation's extra cost is counted in `graphql::limits`.
//!
//! The middleware authenticates the request to learn its tenant and leaves the answer in the request's
//! extensions, where `extract::resolve_caller` picks it up, so a request is authenticated once.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpMessage as _, HttpResponse};
use postbridge_core::access::auth::authenticate;
use postbridge_core::access::rate_limit::{Decision, RateLimiter};
use postbridge_core::error::ErrorBody;
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
    // The path as the router will match it (percent-decoded): `/%76%31/accounts` is `/v1/accounts`.
    if !is_limited_path(req.match_info().as_str()) {
        return next.call(req).await.map(ServiceResponse::map_into_left_body);
    }
    let caller = match bearer_token(req.request()) {
        Some(token) => Some(authenticate(&ctx, &token).await),
        None => None,
    };
    let decision = match &caller {
        Some(Ok(principal)) => match principal.tenant_id {
            Some(tenant_id) => {
                limiter.check(&ctx, tenant_id, principal.api_rate_limit_per_minute).await.limited_by("this tenant")
            }
            None => None,
        },
        // No credential, or a wrong one: the client's address is what is counted.
        Some(Err(_)) | None => match req.peer_addr() {
            Some(peer) => limiter.check_address(&ctx, peer.ip()).await.limited_by("this client address"),
            None => None,
        },
    };
    if let Some(caller) = caller {
        req.extensions_mut().insert(Authenticated(caller));
    }
    match decision {
        None => next.call(req).await.map(ServiceResponse::map_into_left_body),
        Some((retry_after_seconds, whose)) => {
            ctx.metrics.rate_limited.inc();
            let body = ErrorBody {
                code: "rate_limited".to_owned(),
                message: format!("too many requests for {whose}: try again in {retry_after_seconds} s"),
                field: None,
            };
            let response =
                HttpResponse::TooManyRequests().insert_header(("Retry-After", retry_after_seconds.to_string())).json(body);
            Ok(req.into_response(response).map_into_right_body())
        }
    }
}

trait LimitedBy {
    /// `Some((retry after, whose limit))` when the request is over the limit.
    fn limited_by(self, whose: &'static str) -> Option<(u64, &'static str)>;
}

impl LimitedBy for Decision {
    fn limited_by(self, whose: &'static str) -> Option<(u64, &'static str)> {
        match self {
            Decision::Allowed => None,
            Decision::Limited { retry_after_seconds } => Some((retry_after_seconds, whose)),
        }
    }
}
