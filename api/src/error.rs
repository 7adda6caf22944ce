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
        match &self.0 {
            AppError::Internal(cause) => tracing::error!(error = ?cause, "request failed"),
            AppError::Unavailable { .. } => tracing::warn!(error = %self.0.detail(), "request refused: no database connection"),
            _ => {}
        }
        let mut response = HttpResponse::build(self.status_code());
        if let AppError::RateLimited { retry_after_seconds } | AppError::Unavailable { retry_after_seconds, .. } = &self.0 {
            response.insert_header(("Retry-After", retry_after_seconds.to_string()));
        }
        response.json(ErrorBody::from(&self.0))
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Malformed JSON, path or query answers 400 in the same shape as every other error; a body over `limit`
/// bytes 413 (refused on its `Content-Length` before it is read), another content type than JSON 415.
pub fn json_config(limit: usize) -> actix_web::web::JsonConfig {
    use actix_web::error::JsonPayloadError;
    actix_web::web::JsonConfig::default().limit(limit).error_handler(|err, _req| {
        let err = match err {
            JsonPayloadError::OverflowKnownLength { limit, .. } | JsonPayloadError::Overflow { limit } => {
                crate::bounds::body_too_large(limit)
            }
            JsonPayloadError::ContentType => unsupported_media_type(),
            other => {
                AppError::BadRequest { code: "invalid_body", message: shortened(format!("request body is not valid: {other}")) }
            }
        };
        ApiError(err).into()
    })
}

pub fn unsupported_media_type() -> AppError {
    AppError::UnsupportedMediaType("send the body as application/json".to_owned())
}

/// Parse errors can quote the input (an unknown enum value, a field name): at most 300 bytes of it.
pub fn shortened(mut message: String) -> String {
    const MAX: usize = 300;
    if message.len() > MAX {
        let mut end = MAX;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

pub fn path_config() -> actix_web::web::PathConfig {
    actix_web::web::PathConfig::default().error_handler(|_err, _req| {
        ApiError(AppError::BadRequest { code: "invalid_id", message: "the id in the path is not a valid id".to_owned() }).into()
    })
}

pub fn query_config() -> actix_web::web::QueryConfig {
    actix_web::web::QueryConfig::default().error_handler(|err, _req| {
        ApiError(AppError::BadRequest {
            code: "invalid_query",
            message: shortened(format!("query parameters are not valid: {err}")),
        })
        .into()
    })
}
