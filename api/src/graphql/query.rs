use async_graphql::{Context, Object, SimpleObject};
use postbridge_core::access::api_keys::ApiKey;
use postbridge_core::access::tenants::Tenant;
use postbridge_core::access::{api_keys, tenants};
use postbridge_core::connect::accounts::Account;
use postbridge_core::connect::grants::Grant;
use postbridge_core::connect::token_configs::TokenConfig;
use postbridge_core::connect::{accounts, grants, token_configs};
use postbridge_core::model::{ExpiringQuery, Page, PageRequest, Role};
use postbridge_core::receive::inbox;
use postbridge_core::receive::inbox::InboundMessage;
use postbridge_core::send::outbox::OutboundMessage;
use postbridge_core::send::routing::RouteExplanation;
use postbridge_core::send::{outbox, routing};
use uuid::Uuid;

use super::{caller, tenant_scope, GqlResultExt};

#[derive(Default)]
pub struct CoreQuery;

/// The authenticated caller.
#[derive(SimpleObject)]
pub struct Me {
    pub subject: String,
    pub role: Role,
    pub tenant_id: Option<Uuid>,
}

fn page(limit: Option<u64>, cursor: Option<Uuid>) -> PageRequest {
    PageRequest { limit, cursor }
}

#[Object]
impl CoreQuery {
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<Me> {
        let (_, p) = caller(ctx)?;
        Ok(Me { subject: p.subject, role: p.role, tenant_id: p.tenant_id })
    }

    /// All tenants (operator).
    #[graphql(complexity = "crate::graphql::limits::page_complexity(limit, child_complexity)")]
    async fn tenants(&self, ctx: &Context<'_>, limit: Option<u64>, cursor: Option<Uuid>) -> async_graphql::Result<Page<Tenant>> {
        let (app, p) = caller(ctx)?;
        tenants::list(&app, &p, page(limit, cursor)).await.gql()
    }

    async fn tenant(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Tenant> {
        let (app, p) = caller(ctx)?;
        tenants::get(&app, &p, id).await.gql()
    }

    #[graphql(complexity = "crate::graphql::limits::page_complexity(limit, child_complexity)")]
    async fn api_keys(&self, ctx: &Context<'_>, limit: Option<u64>, cursor: Option<Uuid>) -> async_graphql::Result<Page<ApiKey>> {
        let (app, scope) = tenant_scope(ctx).await?;
        api_keys::list(&app, &scope, page(limit, cursor)).await.gql()
    }

    async fn api_key(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<ApiKey> {
        let (app, scope) = tenant_scope(ctx).await?;
        api_keys::get(&app, &scope, id).await.gql()
    }

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
        token_configs::get(&app, &scope, id).await.gql()
    }

    #[graphql(complexity = "crate::graphql::limits::page_complexity(limit, child_complexity)")]
    async fn accounts(
        &self,
        ctx: &Context<'_>,
        limit: Option<u64>,
        cursor: Option<Uuid>,
    ) -> async_graphql::Result<Page<Account>> {
        let (app, scope) = tenant_scope(ctx).await?;
        accounts::list(&app, &scope, page(limit, cursor)).await.gql()
    }

    async fn account(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Account> {
        let (app, scope) = tenant_scope(ctx).await?;
        accounts::get(&app, &scope, id).await.gql()
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

    #[graphql(complexity = "crate::graphql::limits::page_complexity(limit, child_complexity)")]
    async fn grants(&self, ctx: &Context<'_>, limit: Option<u64>, cursor: Option<Uuid>) -> async_graphql::Result<Page<Grant>> {
        let (app, scope) = tenant_scope(ctx).await?;
        grants::list(&app, &scope, page(limit, cursor)).await.gql()
    }

    async fn grant(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Grant> {
        let (app, scope) = tenant_scope(ctx).await?;
        grants::get(&app, &scope, id).await.gql()
    }

    /// An inbound account's received messages, newest first.
    #[graphql(complexity = "crate::graphql::limits::page_complexity(limit, child_complexity)")]
    async fn received_messages(
        &self,
        ctx: &Context<'_>,
        account_id: Uuid,
        limit: Option<u64>,
        cursor: Option<Uuid>,
    ) -> async_graphql::Result<Page<InboundMessage>> {
        let (app, scope) = tenant_scope(ctx).await?;
        inbox::list(&app, &scope, account_id, page(limit, cursor)).await.gql()
    }

    async fn received_message(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<InboundMessage> {
        let (app, scope) = tenant_scope(ctx).await?;
        inbox::get(&app, &scope, id).await.gql()
    }

    #[graphql(complexity = "crate::graphql::limits::page_complexity(limit, child_complexity)")]
    async fn sent_messages(
        &self,
        ctx: &Context<'_>,
        limit: Option<u64>,
        cursor: Option<Uuid>,
    ) -> async_graphql::Result<Page<OutboundMessage>> {
        let (app, scope) = tenant_scope(ctx).await?;
        outbox::list(&app, &scope, page(limit, cursor)).await.gql()
    }

    async fn sent_message(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<OutboundMessage> {
        let (app, scope) = tenant_scope(ctx).await?;
        outbox::get(&app, &scope, id).await.gql()
    }

    /// Which account would send From `from`, and why.
    async fn explain_route(&self, ctx: &Context<'_>, from: String) -> async_graphql::Result<RouteExplanation> {
        let (app, scope) = tenant_scope(ctx).await?;
        routing::explain(&app, &scope, &from).await.gql()
    }
}
