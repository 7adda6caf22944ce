//! Storage: the entities (one module per table), the tenant wall (row-level security scopes) and the helpers
//! every flow's queries share (pages, constraint violations).

pub mod entities;
pub mod ids;
pub mod json;
pub mod listen;
pub mod tenant_owned;
pub mod tenant_wall;

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
