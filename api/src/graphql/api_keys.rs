//! The tenant's API keys.

use async_graphql::{Context, Object};
use postbridge_core::access::api_keys;
use postbridge_core::access::api_keys::{ApiKey, CreateApiKey, CreatedApiKey};
use postbridge_core::model::Page;
use uuid::Uuid;

use super::{page, tenant_scope, GqlResultExt};

#[derive(Default)]
pub struct ApiKeysQuery;

#[Object]
impl ApiKeysQuery {
    #[graphql(complexity = "crate::graphql::limits::page_complexity(limit, child_complexity)")]
    async fn api_keys(&self, ctx: &Context<'_>, limit: Option<u64>, cursor: Option<Uuid>) -> async_graphql::Result<Page<ApiKey>> {
        let (app, scope) = tenant_scope(ctx).await?;
        api_keys::list(&app, &scope, page(limit, cursor)).await.gql()
    }

    async fn api_key(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<ApiKey> {
        let (app, scope) = tenant_scope(ctx).await?;
        api_keys::get(&app, &scope, id.into()).await.gql()
    }
}

#[derive(Default)]
pub struct ApiKeysMutation;

#[Object]
impl ApiKeysMutation {
    async fn create_api_key(&self, ctx: &Context<'_>, input: CreateApiKey) -> async_graphql::Result<CreatedApiKey> {
        let (app, scope) = tenant_scope(ctx).await?;
        api_keys::create(&app, &scope, input).await.gql()
    }

    async fn revoke_api_key(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<ApiKey> {
        let (app, scope) = tenant_scope(ctx).await?;
        api_keys::revoke(&app, &scope, id.into()).await.gql()
    }
}
