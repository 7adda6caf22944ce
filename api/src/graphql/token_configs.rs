//! Token configurations: OAuth app registrations.

use async_graphql::{Context, Object};
use postbridge_core::connect::token_configs;
use postbridge_core::connect::token_configs::{CreateTokenConfig, TokenConfig, UpdateTokenConfig};
use postbridge_core::model::{ExpiringQuery, Page};
use uuid::Uuid;

use super::{page, tenant_scope, GqlResultExt};

#[derive(Default)]
pub struct TokenConfigsQuery;

#[Object]
impl TokenConfigsQuery {
    #[graphql(complexity = "crate::graphql::limits::page_complexity(limit, child_complexity)")]
    async fn token_configs(
        &self,
        ctx: &Context<'_>,
        limit: Option<u64>,
        cursor: Option<Uuid>,
    ) -> async_graphql::Result<Page<TokenConfig>> {
        let (app, scope) = tenant_scope(ctx).await?;
        token_configs::list(&app, &scope, page(limit, cursor)).await.gql()
    }

    async fn token_config(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<TokenConfig> {
        let (app, scope) = tenant_scope(ctx).await?;
        token_configs::get(&app, &scope, id.into()).await.gql()
    }

    /// Token configurations whose client secret expires within `withinDays` (default 30), soonest first.
    async fn expiring_token_configs(
        &self,
        ctx: &Context<'_>,
        within_days: Option<i64>,
    ) -> async_graphql::Result<Vec<TokenConfig>> {
        let (app, scope) = tenant_scope(ctx).await?;
        token_configs::expiring(&app, &scope, ExpiringQuery { within_days }).await.gql()
    }
}

#[derive(Default)]
pub struct TokenConfigsMutation;

#[Object]
impl TokenConfigsMutation {
    async fn create_token_config(&self, ctx: &Context<'_>, input: CreateTokenConfig) -> async_graphql::Result<TokenConfig> {
        let (app, scope) = tenant_scope(ctx).await?;
        token_configs::create(&app, &scope, input).await.gql()
    }

    async fn update_token_config(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        input: UpdateTokenConfig,
    ) -> async_graphql::Result<TokenConfig> {
        let (app, scope) = tenant_scope(ctx).await?;
        token_configs::update(&app, &scope, id.into(), input).await.gql()
    }

    async fn delete_token_config(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Uuid> {
        let (app, scope) = tenant_scope(ctx).await?;
        token_configs::delete(&app, &scope, id.into()).await.gql()?;
        Ok(id)
    }
}
