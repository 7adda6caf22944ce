use async_graphql::{Context, Object};
use chrono::{DateTime, Utc};
use postbridge_core::model::Page;
use postbridge_core::observe::events::{self, Event, EventQuery};
use uuid::Uuid;

use super::{tenant_scope, GqlResultExt};

#[derive(Default)]
pub struct EventsQuery;

#[Object]
impl EventsQuery {
    /// The tenant's events, newest first (viewer or above). `since` is inclusive, `until` exclusive.
    #[allow(clippy::too_many_arguments)]
    #[graphql(complexity = "crate::graphql::limits::page_complexity(limit, child_complexity)")]
    async fn events(
        &self,
        ctx: &Context<'_>,
        types: Option<Vec<String>>,
        resource_type: Option<String>,
        resource_id: Option<Uuid>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        limit: Option<u64>,
        cursor: Option<Uuid>,
    ) -> async_graphql::Result<Page<Event>> {
        let (app, scope) = tenant_scope(ctx).await?;
        let query = EventQuery { types, resource_type, resource_id, since, until, limit, cursor };
        events::list(&app, &scope, query).await.gql()
    }

    async fn event(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Event> {
        let (app, scope) = tenant_scope(ctx).await?;
        events::get(&app, &scope, id).await.gql()
    }
}
