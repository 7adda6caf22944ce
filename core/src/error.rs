//! One error type for the service layer; REST and GraphQL both render it as `{code, message, field?}`.

/// A machine-readable error: `code` is stable, `message` is for people and never holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Bad input; `field` names the offending input field.
    #[error("{message}")]
    Validation { field: String, code: &'static str, message: String },
    /// A request that could not be read at all (malformed JSON, bad path or query parameter).
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{resource} not found")]
    NotFound { resource: &'static str },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// A request body or a message larger than this deployment accepts.
    #[error("{message}")]
    TooLarge { code: &'static str, message: String },
    /// A body in a media type the route does not read.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Over a rate limit: the same request may be tried again after this many seconds.
    #[error("too many requests: try again in {retry_after_seconds} s")]
    RateLimited { retry_after_seconds: u64 },
    /// No credential, or one that is not valid.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid credential whose role does not allow the operation.
    #[error("{0}")]
    Forbidden(String),
    #[error("the tenant is suspended")]
    TenantSuspended,
    /// An operator called a tenant-scoped operation without naming the tenant.
    #[error("this operation needs a tenant: operators pass its id in the X-Postbridge-Tenant header")]
    TenantRequired,
    /// The database cannot take the request right now (its connections all busy, or it is unreachable): the same
    /// request may be tried again after this many seconds. The cause is logged, never answered.
    #[error("Postbridge is busy or its database is unreachable: try again in {retry_after_seconds} s")]
    Unavailable { retry_after_seconds: u64, cause: anyhow::Error },
    /// Anything unexpected; logged in full, answered opaquely.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl AppError {
    pub fn validation(field: impl Into<String>, code: &'static str, message: impl Into<String>) -> Self {
        AppError::Validation { field: field.into(), code, message: message.into() }
    }

    pub fn not_found(resource: &'static str) -> Self {
        AppError::NotFound { resource }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        AppError::Forbidden(message.into())
    }

    /// For logs: the message, and for an internal error its whole chain of causes, which callers never see
    /// (`Display` answers them "internal error").
    pub fn detail(&self) -> String {
        match self {
            AppError::Internal(cause) => format!("internal error: {cause:#}"),
            AppError::Unavailable { cause, .. } => format!("unavailable: {cause:#}"),
            other => other.to_string(),
        }
    }

    /// Whether the database failed it (no connection, or a statement that failed): a moment's trouble as a rule,
    /// unlike a secret that cannot be opened or a bug.
    pub fn is_database_failure(&self) -> bool {
        match self {
            AppError::Unavailable { .. } => true,
            AppError::Internal(cause) => cause.downcast_ref::<sea_orm::DbErr>().is_some(),
            _ => false,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            AppError::Validation { code, .. } => code,
            AppError::BadRequest { code, .. } => code,
            AppError::NotFound { .. } => "not_found",
            AppError::Conflict { code, .. } => code,
            AppError::TooLarge { code, .. } => code,
            AppError::RateLimited { .. } => "rate_limited",
            AppError::UnsupportedMediaType(_) => "unsupported_media_type",
            AppError::Unauthenticated(_) => "unauthenticated",
            AppError::Forbidden(_) => "forbidden",
            AppError::TenantSuspended => "tenant_suspended",
            AppError::TenantRequired => "tenant_required",
            AppError::Unavailable { .. } => "unavailable",
            AppError::Internal(_) => "internal",
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            AppError::Validation { .. } => 422,
            AppError::NotFound { .. } => 404,
            AppError::Conflict { .. } => 409,
            AppError::TooLarge { .. } => 413,
            AppError::RateLimited { .. } => 429,
            AppError::UnsupportedMediaType(_) => 415,
            AppError::Unauthenticated(_) => 401,
            AppError::Forbidden(_) | AppError::TenantSuspended => 403,
            AppError::TenantRequired | AppError::BadRequest { .. } => 400,
            AppError::Unavailable { .. } => 503,
            AppError::Internal(_) => 500,
        }
    }

    pub fn field(&self) -> Option<&str> {
        match self {
            AppError::Validation { field, .. } => Some(field),
            _ => None,
        }
    }
}

impl From<sea_orm::DbErr> for AppError {
    fn from(err: sea_orm::DbErr) -> Self {
        // Postgres text cannot hold NUL: whichever input carried one (a body field, a query parameter), the
        // statement was refused whole, so this is the caller's bad input, not an internal failure.
        if sqlstate(&err).as_deref() == Some(POSTGRES_UNTRANSLATABLE_CHARACTER) {
            return AppError::validation(
                "input",
                "invalid_characters",
                "a text input contains a character that cannot be stored (NUL)",
            );
        }
        // No connection to be had: a moment's overload or an outage, not a fault of this request.
        if matches!(err, sea_orm::DbErr::ConnectionAcquire(_) | sea_orm::DbErr::Conn(_)) {
            let cause = anyhow::Error::new(err).context("no database connection");
            return AppError::Unavailable { retry_after_seconds: DATABASE_RETRY_AFTER_SECONDS, cause };
        }
        AppError::Internal(anyhow::Error::new(err).context("database operation failed"))
    }
}

/// The `Retry-After` of a request refused for want of a database connection.
const DATABASE_RETRY_AFTER_SECONDS: u64 = 1;

/// SQLSTATE 22021 `character_not_in_repertoire`: what Postgres answers to a NUL byte in text.
const POSTGRES_UNTRANSLATABLE_CHARACTER: &str = "22021";

fn sqlstate(err: &sea_orm::DbErr) -> Option<String> {
    use sea_orm::{DbErr, RuntimeErr};
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => match e.as_ref() {
            sea_orm::sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
            _ => None,
        },
        _ => None,
    }
}

pub type AppResult<T> = Result<T, AppError>;

/// The JSON body of every error response.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `invalid_email`, `not_found`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// The input field at fault, for validation errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl From<&AppError> for ErrorBody {
    fn from(err: &AppError) -> Self {
        ErrorBody { code: err.code().to_owned(), message: err.to_string(), field: err.field().map(str::to_owned) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::{ConnAcquireErr, DbErr};

    #[test]
    fn no_connection_is_unavailable_and_only_the_databases_failures_count_as_its_own() {
        let busy = AppError::from(DbErr::ConnectionAcquire(ConnAcquireErr::Timeout));
        assert_eq!((busy.code(), busy.http_status()), ("unavailable", 503));
        assert_eq!(ErrorBody::from(&busy).message, "Postbridge is busy or its database is unreachable: try again in 1 s");
        assert!(busy.detail().contains("Connection pool timed out"), "{}", busy.detail());
        let failed_statement = AppError::from(DbErr::Custom("deadlock detected".into()));
        assert_eq!((failed_statement.code(), failed_statement.http_status()), ("internal", 500));
        assert_eq!(failed_statement.to_string(), "internal error", "callers never see the cause");
        assert!(failed_statement.detail().contains("deadlock detected"), "{}", failed_statement.detail());
        assert!(busy.is_database_failure() && failed_statement.is_database_failure());
        assert!(!AppError::Internal(anyhow::anyhow!("cannot open a secret")).is_database_failure());
        assert!(!AppError::not_found("grant").is_database_failure());
    }
}
