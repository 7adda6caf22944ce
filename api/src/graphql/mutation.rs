use async_graphql::{Context, Object};
use postbridge_core::model::{
    Account, ApiKey, CreateAccount, CreateApiKey, CreateTenant, CreateTokenConfig, CreatedApiKey, IssuedToken, Tenant,
    TenantStatus, TokenConfig, UpdateAccount, UpdateTenant, UpdateTokenConfig,
};
use postbridge_core::service::{accounts, api_keys, tenants, token_configs};
use uuid::Uuid;

use super::{caller, tenant_scope, GqlResultExt};

#[derive(Default)]
pub struct Mutation;

#[Object]
impl Mutation {
    /// Exchange the presented credential for a short-lived JWT.
    async fn issue_token(&self, ctx: &Context<'_>) -> async_graphql::Result<IssuedToken> {
        let (app, p) = caller(ctx)?;
        api_keys::issue_token(&app, &p).gql()
    }

    async fn create_tenant(&self, ctx: &Context<'_>, input: CreateTenant) -> async_graphql::Result<Tenant> {
        let (app, p) = caller(ctx)?;
        tenants::create(&app, &p, input).await.gql()
    }

    async fn update_tenant(&self, ctx: &Context<'_>, id: Uuid, input: UpdateTenant) -> async_graphql::Result<Tenant> {
        let (app, p) = caller(ctx)?;
        tenants::update(&app, &p, id, input).await.gql()
    }

    async fn suspend_tenant(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Tenant> {
        let (app, p) = caller(ctx)?;
        tenants::set_status(&app, &p, id, TenantStatus::Suspended).await.gql()
    }

    async fn resume_tenant(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Tenant> {
        let (app, p) = caller(ctx)?;
        tenants::set_status(&app, &p, id, TenantStatus::Active).await.gql()
    }

    /// Returns the deleted tenant's id.
    async fn delete_tenant(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Uuid> {
        let (app, p) = caller(ctx)?;
        tenants::delete(&app, &p, id).await.gql()?;
        Ok(id)
    }

    async fn create_api_key(&self, ctx: &Context<'_>, input: CreateApiKey) -> async_graphql::Result<CreatedApiKey> {
        let (app, scope) = tenant_scope(ctx).await?;
        api_keys::create(&app, &scope, input).await.gql()
    }

    async fn revoke_api_key(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<ApiKey> {
        let (app, scope) = tenant_scope(ctx).await?;
        api_keys::revoke(&app, &scope, id).await.gql()
    }

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
        token_configs::update(&app, &scope, id, input).await.gql()
    }

    async fn delete_token_config(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Uuid> {
        let (app, scope) = tenant_scope(ctx).await?;
        token_configs::delete(&app, &scope, id).await.gql()?;
        Ok(id)
    }

    async fn create_account(&self, ctx: &Context<'_>, input: CreateAccount) -> async_graphql::Result<Account> {
        let (app, scope) = tenant_scope(ctx).await?;
        accounts::create(&app, &scope, input).await.gql()
    }

    async fn update_account(&self, ctx: &Context<'_>, id: Uuid, input: UpdateAccount) -> async_graphql::Result<Account> {
        let (app, scope) = tenant_scope(ctx).await?;
        accounts::update(&app, &scope, id, input).await.gql()
    }

    async fn delete_account(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Uuid> {
        let (app, scope) = tenant_scope(ctx).await?;
        accounts::delete(&app, &scope, id).await.gql()?;
        Ok(id)
    }
}
