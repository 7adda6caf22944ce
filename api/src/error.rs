//! Renders service errors as HTTP responses: the status from the error, body `{code, message, field?}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use postbridge_core::error::ErrorBody;
use postbridge_core::AppError;

#[derive(Debug)]
pub struct ApiError(pub AppError);

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<AppError> for ApiError {
    fn from(err: AppError) -> Self {
        ApiError(err)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        if let AppError::Internal(cause) = &self.0 {
            tracing::error!(error = ?cause, "request failed");
        }
        HttpResponse::build(self.status_code()).json(ErrorBody::from(&self.0))
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Malformed JSON, path or query answers 400 in the same shape as every other error.
pub fn json_config() -> actix_web::web::JsonConfig {
    actix_web::web::JsonConfig::default().limit(1 << 20).error_handler(|err, _req| {
        ApiError(AppError::BadRequest { code: "invalid_body", message: format!("request body is not valid: {err}") }).into()
    })
}

pub fn path_config() -> actix_web::web::PathConfig {
    actix_web::web::PathConfig::default().error_handler(|_err, _req| {
        ApiError(AppError::BadRequest { code: "invalid_id", message: "the id in the path is not a valid id".to_owned() }).into()
    })
}

pub fn query_config() -> actix_web::web::QueryConfig {
    actix_web::web::QueryConfig::default().error_handler(|err, _req| {
        ApiError(AppError::BadRequest { code: "invalid_query", message: format!("query parameters are not valid: {err}") }).into()
    })
}
