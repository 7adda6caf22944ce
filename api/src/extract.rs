//! Typed request context: `Caller` (who) and `Tenant` (who, acting in which tenant).

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpMessage as _, HttpRequest};
use futures::future::LocalBoxFuture;
use postbridge_core::access::auth::{authenticate, Principal, TenantScope};
use postbridge_core::{AppContext, AppError};
use uuid::Uuid;

use crate::error::ApiError;

/// Operators name the tenant they act in with this header.
pub const TENANT_HEADER: &str = "X-Postbridge-Tenant";

pub fn bearer_token(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(actix_web::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

pub fn requested_tenant(req: &HttpRequest) -> Result<Option<Uuid>, AppError> {
    match req.headers().get(TENANT_HEADER) {
        None => Ok(None),
        Some(value) => value.to_str().ok().and_then(|v| Uuid::parse_str(v.trim()).ok()).map(Some).ok_or(AppError::BadRequest {
            code: "invalid_tenant_header",
            message: format!("{TENANT_HEADER} must be a tenant id"),
        }),
    }
}

fn context(req: &HttpRequest) -> Result<web::Data<AppContext>, AppError> {
    req.app_data::<web::Data<AppContext>>()
        .cloned()
        .ok_or_else(|| AppError::Internal(anyhow::anyhow!("AppContext missing from app data")))
}

/// A request's authentication, done early by the rate-limit middleware and taken by `resolve_caller`.
pub struct Authenticated(pub Result<Principal, AppError>);

pub async fn resolve_caller(req: &HttpRequest) -> Result<Principal, AppError> {
    // Requests the rate limiter saw were authenticated there already; others (and a second call) authenticate here.
    let early = req.extensions_mut().remove::<Authenticated>();
    if let Some(Authenticated(caller)) = early {
        return caller;
    }
    let ctx = context(req)?;
    let token = bearer_token(req).ok_or_else(|| {
        AppError::Unauthenticated("missing bearer token: send Authorization: Bearer <API key or JWT>".to_owned())
    })?;
    authenticate(&ctx, &token).await
}

/// The authenticated caller.
pub struct Caller(pub Principal);

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { Ok(Caller(resolve_caller(&req).await?)) })
    }
}

/// The authenticated caller acting inside one tenant.
pub struct Tenant(pub TenantScope);

impl FromRequest for Tenant {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let principal = resolve_caller(&req).await?;
            let ctx = context(&req)?;
            let scope = principal.scope(&ctx, requested_tenant(&req)?).await?;
            Ok(Tenant(scope))
        })
    }
}
