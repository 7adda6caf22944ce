//! OAuth grants.

use async_graphql::{Context, Object};
use postbridge_core::connect::grants;
use postbridge_core::connect::grants::Grant;
use postbridge_core::model::Page;
use uuid::Uuid;

use super::{page, tenant_scope, GqlResultExt};

#[derive(Default)]
pub struct GrantsQuery;

#[Object]
impl GrantsQuery {
    #[graphql(complexity = "crate::graphql::limits::page_complexity(limit, child_complexity)")]
    async fn grants(&self, ctx: &Context<'_>, limit: Option<u64>, cursor: Option<Uuid>) -> async_graphql::Result<Page<Grant>> {
        let (app, scope) = tenant_scope(ctx).await?;
        grants::list(&app, &scope, page(limit, cursor)).await.gql()
    }

    async fn grant(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Grant> {
        let (app, scope) = tenant_scope(ctx).await?;
        grants::get(&app, &scope, id.into()).await.gql()
    }
}

#[derive(Default)]
pub struct GrantsMutation;

#[Object]
impl GrantsMutation {
    /// Deletes a grant; its accounts go back to draft. Returns the grant's id.
    async fn revoke_grant(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Uuid> {
        let (app, scope) = tenant_scope(ctx).await?;
        grants::revoke(&app, &scope, id.into()).await.gql()?;
        Ok(id)
    }
}
