//! Storage: the entities (one module per table), the tenant wall (row-level security scopes) and the helpers
//! every flow's queries share (pages, constraint violations).

pub mod entities;
pub mod ids;
pub mod json;
pub mod listen;
pub mod noticed;
pub mod positional;
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

/// The years a list's times may name: RFC 3339 parsers accept any signed year, Postgres refuses many of them (a
/// database error, which would answer 500).
const LISTED_YEARS: std::ops::RangeInclusive<i32> = 1..=9999;

/// A list's `since` (inclusive) and `until` (exclusive) times: each within [`LISTED_YEARS`], since not after until.
pub(crate) fn check_time_range(
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<(), AppError> {
    use chrono::Datelike;
    for (field, time) in [("since", since), ("until", until)] {
        if time.is_some_and(|time| !LISTED_YEARS.contains(&time.year())) {
            return Err(AppError::validation(field, "invalid_time", "must be a time between the years 1 and 9999"));
        }
    }
    match (since, until) {
        (Some(since), Some(until)) if since > until => {
            Err(AppError::validation("since", "invalid_time_range", "since must not be after until"))
        }
        _ => Ok(()),
    }
}

/// The longest text a list filters by.
const MAX_FILTER_TEXT_CHARS: usize = 200;

/// An `ILIKE` pattern matching `text` anywhere (its `%`, `_` and `\` taken literally); at most 200 characters.
pub(crate) fn contains_pattern(field: &'static str, text: &str) -> Result<String, AppError> {
    if text.is_empty() || text.chars().count() > MAX_FILTER_TEXT_CHARS {
        return Err(AppError::validation(field, "invalid_filter", format!("{field} must be 1 to 200 characters")));
    }
    let escaped: String = text
        .chars()
        .flat_map(|c| match c {
            '%' | '_' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    Ok(format!("%{escaped}%"))
}

/// Makes the writers of one `kind` of row for one `key` (a tenant, a member) take turns until `txn` ends, so a
/// count-then-insert bound holds when two arrive at once.
pub(crate) async fn take_turns(txn: &sea_orm::DatabaseTransaction, kind: &str, key: String) -> Result<(), DbErr> {
    use sea_orm::ConnectionTrait;
    let lock = "SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))";
    let values: Vec<sea_orm::Value> = vec![kind.into(), key.into()];
    txn.execute_raw(sea_orm::Statement::from_sql_and_values(sea_orm::DbBackend::Postgres, lock, values)).await?;
    Ok(())
}

pub(crate) fn is_unique_violation(err: &DbErr) -> bool {
    matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

pub(crate) fn is_foreign_key_violation(err: &DbErr) -> bool {
    matches!(err.sql_err(), Some(SqlErr::ForeignKeyConstraintViolation(_)))
}

/// Deletes the rows of `table` matching `condition` (values bound as `$1`, ...), 5,000 at a time, so a large
/// backlog never holds one long transaction. `table` and `condition` are the caller's constants, never input.
/// Returns how many went.
pub async fn delete_in_batches(
    db: &impl sea_orm::ConnectionTrait,
    table: &str,
    condition: &str,
    values: Vec<sea_orm::Value>,
) -> Result<u64, DbErr> {
    const BATCH: u64 = 5_000;
    let sql = format!("DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE {condition} LIMIT {BATCH})");
    let mut deleted = 0;
    loop {
        let statement = sea_orm::Statement::from_sql_and_values(sea_orm::DbBackend::Postgres, sql.clone(), values.clone());
        let done = db.execute_raw(statement).await?.rows_affected();
        deleted += done;
        if done < BATCH {
            return Ok(deleted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_text_is_matched_literally_and_bounded() {
        assert_eq!(contains_pattern("subject", "50%_off\\").expect("valid"), "%50\\%\\_off\\\\%");
        assert!(contains_pattern("subject", "").is_err());
        assert!(contains_pattern("subject", &"é".repeat(201)).is_err());
        assert!(contains_pattern("subject", &"é".repeat(200)).is_ok());
    }
}
