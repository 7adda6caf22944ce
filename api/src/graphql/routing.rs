//! Which account sends From an address.

use async_graphql::{Context, Object};
use postbridge_core::send::routing;
use postbridge_core::send::routing::RouteExplanation;

use super::{tenant_scope, GqlResultExt};

#[derive(Default)]
pub struct RoutingQuery;

#[Object]
impl RoutingQuery {
    /// Which account would send From `from`, and why.
    async fn explain_route(&self, ctx: &Context<'_>, from: String) -> async_graphql::Result<RouteExplanation> {
        let (app, scope) = tenant_scope(ctx).await?;
        routing::explain(&app, &scope, &from).await.gql()
    }
}
