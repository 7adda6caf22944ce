//! The service layer: every operation REST and GraphQL expose, with authorization and validation.
//! Handlers and resolvers only translate to and from these calls.

pub mod accounts;
pub mod api_keys;
pub mod audit;
pub mod credential_health;
pub mod delivery;
pub mod due;
pub mod events;
pub mod grants;
pub mod inbound;
pub mod leases;
pub mod mailbox;
pub mod ops_metrics;
pub mod outbound;
pub mod overview;
pub mod rate_limit;
pub mod rekey;
pub mod routing;
pub mod scheduler;
pub mod sync;
pub mod tenants;
pub mod token_configs;
pub mod webhooks;
pub mod workers;

use sea_orm::{DbErr, SqlErr};

use crate::error::AppError;
use crate::model::{Page, PageRequest};

/// Builds a page from `limit + 1` fetched rows: the extra row only says there is a next page.
pub(crate) fn page_of<M, T: async_graphql::OutputType>(
    mut rows: Vec<M>,
    limit: u64,
    id_of: impl Fn(&M) -> uuid::Uuid,
    view: impl Fn(M) -> Result<T, AppError>,
) -> Result<Page<T>, AppError> {
    let has_more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = if has_more { rows.last().map(|r| id_of(r).to_string()) } else { None };
    let items = rows.into_iter().map(view).collect::<Result<Vec<_>, _>>()?;
    Ok(Page { items, next_cursor })
}

pub(crate) fn limit_of(page: &PageRequest) -> Result<u64, AppError> {
    page.limit()
}

pub(crate) fn is_unique_violation(err: &DbErr) -> bool {
    matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

pub(crate) fn is_foreign_key_violation(err: &DbErr) -> bool {
    matches!(err.sql_err(), Some(SqlErr::ForeignKeyConstraintViolation(_)))
}
