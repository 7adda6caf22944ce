//! Bounds on one GraphQL operation, checked before it runs (over HTTP and WebSocket alike):
//!
//! - the document, fragments expanded, has at most [`MAX_SELECTIONS`] selections and [`MAX_ALIASES`] aliases,
//!   counted while walking it (so a fragment used many times, or a cycle of fragments, stops the walk early);
//! - its depth is at most [`MAX_DEPTH`] and its complexity at most [`MAX_COMPLEXITY`], where a page of `limit`
//!   items costs `limit` times its selection (see [`page_complexity`]);
//! - a syntax error names its line and column only: the query text is never echoed back;
//! - it costs the tenant one rate-limit unit per top-level field (each is about one REST request), of which
//!   the HTTP request already paid one.

use std::sync::Arc;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextValidation};
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::parser::Positioned;
use async_graphql::{ErrorExtensionValues, ServerError, ServerResult, ValidationResult, Variables};
use postbridge_core::access::rate_limit::{Decision, RateLimiter};
use postbridge_core::model::PageRequest;
use postbridge_core::AppContext;

use super::RequestAuth;

/// Field selections (fragment spreads and inline fragments included) in one operation, fragments expanded.
pub const MAX_SELECTIONS: usize = 1_000;
/// Aliased fields in one operation, fragments expanded.
pub const MAX_ALIASES: usize = 50;
/// Nesting depth (the introspection query GraphiQL sends is 13 deep).
pub const MAX_DEPTH: usize = 20;
/// One page of 200 items with 20 fields each costs about 4,400.
pub const MAX_COMPLEXITY: usize = 20_000;
/// Error messages (validation echoes names from the query) are cut to this many bytes.
const MAX_ERROR_MESSAGE: usize = 300;

/// The complexity of a paged field: its selection once per item it may return (the default page is 50).
pub fn page_complexity(limit: Option<u64>, child_complexity: usize) -> usize {
    let items = limit.unwrap_or(50).clamp(1, PageRequest::MAX_LIMIT);
    usize::try_from(items).unwrap_or(usize::MAX).saturating_mul(child_complexity).saturating_add(1)
}

/// Installed on the schema; one [`QueryLimitsExtension`] per operation.
pub struct QueryLimits;

impl ExtensionFactory for QueryLimits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(QueryLimitsExtension)
    }
}

pub struct QueryLimitsExtension;

#[async_trait::async_trait]
impl Extension for QueryLimitsExtension {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await.map_err(without_query_text)?;
        let counts = count(&document)?;
        charge(ctx, counts.root_fields).await?;
        Ok(document)
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        next.run(ctx).await.map_err(|errors| errors.into_iter().map(shortened).collect())
    }
}

fn limit_error(code: &str, message: impl Into<String>) -> ServerError {
    let mut err = ServerError::new(message, None);
    let mut extensions = ErrorExtensionValues::default();
    extensions.set("code", code);
    err.extensions = Some(extensions);
    err
}

/// A syntax error as its position only: the parser's message quotes the offending line, which can be the
/// whole (large) query.
fn without_query_text(err: ServerError) -> ServerError {
    let message = match err.locations.first() {
        Some(at) => format!("the query is not valid GraphQL: syntax error at line {}, column {}", at.line, at.column),
        None => "the query is not valid GraphQL".to_owned(),
    };
    let mut clean = limit_error("invalid_query", message);
    clean.locations = err.locations;
    clean
}

fn shortened(mut err: ServerError) -> ServerError {
    if err.message.len() > MAX_ERROR_MESSAGE {
        let mut end = MAX_ERROR_MESSAGE;
        while !err.message.is_char_boundary(end) {
            end -= 1;
        }
        err.message.truncate(end);
        err.message.push('…');
    }
    err
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub selections: usize,
    pub aliases: usize,
    /// Top-level fields of the operations (fragments spread at the top level expanded).
    pub root_fields: usize,
}

/// Counts every operation of the document, refusing it as soon as a bound is passed.
pub fn count(document: &ExecutableDocument) -> ServerResult<Counts> {
    let mut counts = Counts::default();
    for (_, operation) in document.operations.iter() {
        walk(document, &operation.node.selection_set, true, &mut counts)?;
    }
    Ok(counts)
}

fn walk(document: &ExecutableDocument, set: &Positioned<SelectionSet>, root: bool, counts: &mut Counts) -> ServerResult<()> {
    for selection in &set.node.items {
        counts.selections += 1;
        if counts.selections > MAX_SELECTIONS {
            return Err(limit_error(
                "query_too_large",
                format!("the query selects more than {MAX_SELECTIONS} fields (fragments counted each time they are used)"),
            ));
        }
        match &selection.node {
            Selection::Field(field) => {
                if root {
                    counts.root_fields += 1;
                }
                if field.node.alias.is_some() {
                    counts.aliases += 1;
                    if counts.aliases > MAX_ALIASES {
                        return Err(limit_error("too_many_aliases", format!("the query uses more than {MAX_ALIASES} aliases")));
                    }
                }
                walk(document, &field.node.selection_set, false, counts)?;
            }
            // An unknown fragment is reported by validation; here it adds nothing.
            Selection::FragmentSpread(spread) => {
                if let Some(fragment) = document.fragments.get(&spread.node.fragment_name.node) {
                    walk(document, &fragment.node.selection_set, root, counts)?;
                }
            }
            Selection::InlineFragment(inline) => walk(document, &inline.node.selection_set, root, counts)?,
        }
    }
    Ok(())
}

/// Charges a tenant caller for the operation's top-level fields beyond the first (the HTTP request paid one).
async fn charge(ctx: &ExtensionContext<'_>, root_fields: usize) -> ServerResult<()> {
    let extra = u32::try_from(root_fields.saturating_sub(1)).unwrap_or(u32::MAX);
    if extra == 0 {
        return Ok(());
    }
    let (Some(auth), Some(app), Some(limiter)) =
        (ctx.data_opt::<RequestAuth>(), ctx.data_opt::<AppContext>(), ctx.data_opt::<Arc<RateLimiter>>())
    else {
        return Ok(());
    };
    let Ok(principal) = &auth.caller else { return Ok(()) };
    let Some(tenant_id) = principal.tenant_id else { return Ok(()) };
    match limiter.check_cost(app, tenant_id, principal.api_rate_limit_per_minute, extra).await {
        Decision::Allowed => Ok(()),
        Decision::Limited { retry_after_seconds } => {
            app.metrics.rate_limited.inc();
            let mut err = limit_error(
                "rate_limited",
                format!(
                    "this operation costs {root_fields} requests ({root_fields} top-level fields), more than this tenant \
                     has left: try again in {retry_after_seconds} s"
                ),
            );
            if let Some(extensions) = err.extensions.as_mut() {
                extensions.set("retryAfterSeconds", retry_after_seconds);
            }
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use async_graphql::parser::parse_query;

    use super::*;

    #[test]
    fn fragments_are_counted_each_time_they_are_used_and_a_cycle_ends_the_walk() {
        let doc = parse_query("query { ...F ...F } fragment F on Query { a: me { subject } b: me { role } }").unwrap();
        assert_eq!(count(&doc).unwrap(), Counts { selections: 10, aliases: 4, root_fields: 4 });

        let cyclic = parse_query("query { ...A } fragment A on Query { ...B } fragment B on Query { ...A }").unwrap();
        assert_eq!(count(&cyclic).unwrap_err().extensions.unwrap().get("code").unwrap().to_string(), "\"query_too_large\"");

        let many = format!("query {{ {} }}", (0..=MAX_ALIASES).map(|i| format!("a{i}: me {{ role }}")).collect::<String>());
        let err = count(&parse_query(&many).unwrap()).unwrap_err();
        assert!(err.message.contains("aliases"), "{}", err.message);
    }

    #[test]
    fn a_page_costs_its_selection_once_per_item() {
        assert_eq!(page_complexity(Some(200), 10), 2001);
        assert_eq!(page_complexity(None, 10), 501);
        assert_eq!(page_complexity(Some(1_000_000), 10), 2001, "limits beyond 200 are refused anyway");
    }
}
