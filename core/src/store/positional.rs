//! Reading whole rows by column position, for the lists.
//!
//! sea-orm's derived decoder finds each column by name: it formats `prefix + name` for every column of every row,
//! looks the name up, and formats an error string (the name, escaped) for every NULL before turning it into
//! `None`. On `GET /v1/accounts?limit=50` (39 columns, about half of them NULL for a new account) that was 42% of
//! the API process's time. [`ByPosition`] reads the same row by index instead: a select of every column of the
//! entity comes back in the entity's column order, which is its model's field order.
//!
//! [`by_position!`] writes the decoder from the model's field list. A missing or unknown field does not compile
//! (a struct literal), nor does a field marked `[nullable]` that is not an `Option`; each model's test compares
//! the list's order with the entity's columns.

use sea_orm::{EntityTrait, FromQueryResult, Iterable, QuerySelect, Select};

/// A model read by column position; see the module's docs.
pub struct ByPosition<M>(pub M);

/// Implements `FromQueryResult` for `ByPosition<$model>` (`$model`: the model's name in scope, beside its `Entity`),
/// reading the fields in the order given, which must be the model's declaration order: the test it adds to the
/// entity's module holds the list to the entity's columns. With a prefix (a joined select) it falls back to
/// the derived decoder, which finds columns by name.
macro_rules! by_position {
    ($model:ident { $($field:ident $([$nullable:ident])?),+ $(,)? }) => {
        impl sea_orm::FromQueryResult for $crate::store::positional::ByPosition<$model> {
            fn from_query_result(res: &sea_orm::QueryResult, pre: &str) -> Result<Self, sea_orm::DbErr> {
                if !pre.is_empty() {
                    return <$model as sea_orm::FromQueryResult>::from_query_result(res, pre)
                        .map($crate::store::positional::ByPosition);
                }
                let mut index = 0usize;
                let mut next = || {
                    index += 1;
                    index - 1
                };
                // Struct fields are evaluated in the order written, so the indexes follow the list.
                Ok($crate::store::positional::ByPosition($model {
                    $($field: $crate::store::positional::read_at!(res, next() $(, $nullable)?)),+
                }))
            }
        }

        #[cfg(test)]
        mod by_position_order {
            #[test]
            fn the_positional_decoder_reads_every_column_in_the_entitys_order() {
                let fields: &[&str] = &[$(stringify!($field)),+];
                assert_eq!(fields, $crate::store::positional::fields_in_column_order::<super::Entity>());
            }
        }
    };
}
pub(crate) use by_position;

/// One field of [`by_position!`]. A field marked `[nullable]` (an `Option`) is `None` when its column is NULL,
/// without going through sea-orm's NULL error (which formats a string each time).
macro_rules! read_at {
    ($res:ident, $index:expr) => {
        $res.try_get_by_index($index)?
    };
    ($res:ident, $index:expr, nullable) => {{
        let index = $index;
        if $crate::store::positional::is_null($res, index) {
            None
        } else {
            Some($res.try_get_by_index(index)?)
        }
    }};
}
pub(crate) use read_at;

/// Whether the column at `index` is NULL; false when it cannot tell (the field is then read the usual way).
pub(crate) fn is_null(res: &sea_orm::QueryResult, index: usize) -> bool {
    use sqlx::{Row as _, ValueRef as _};
    res.try_as_pg_row().and_then(|row| row.try_get_raw(index).ok()).is_some_and(|value| value.is_null())
}

/// Every row of `query`, read by position. The select must be the entity's own (all its columns, in order), as
/// `Entity::find()` and the tenant finders build it, or [`with_columns`].
pub async fn all<E, C>(query: Select<E>, db: &C) -> Result<Vec<E::Model>, sea_orm::DbErr>
where
    E: EntityTrait,
    ByPosition<E::Model>: FromQueryResult,
    C: sea_orm::ConnectionTrait,
{
    let rows = query.into_model::<ByPosition<E::Model>>().all(db).await?;
    Ok(rows.into_iter().map(|ByPosition(model)| model).collect())
}

/// The entity's columns in order, with `blank(column)` standing in for the columns a list leaves out (large
/// values it never shows), under their own names so the positions stay.
pub fn with_columns<E: EntityTrait>(
    query: Select<E>,
    blank: impl Fn(&E::Column) -> Option<sea_orm::sea_query::SimpleExpr>,
) -> Select<E> {
    let mut query = query.select_only();
    for column in E::Column::iter() {
        query = match blank(&column) {
            Some(value) => query.column_as(value, sea_orm::IdenStatic::as_str(&column)),
            None => query.column(column),
        };
    }
    query
}

/// The entity's column names in order, for the test that holds each field list to it.
#[cfg(test)]
pub fn fields_in_column_order<E: EntityTrait>() -> Vec<&'static str> {
    E::Column::iter().map(|column| sea_orm::IdenStatic::as_str(&column)).collect()
}
