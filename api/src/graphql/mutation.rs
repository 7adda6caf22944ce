use async_graphql::{Context, Object};
use postbridge_core::access::api_keys::ApiKey;
use postbridge_core::access::api_keys::CreateApiKey;
use postbridge_core::access::api_keys::CreatedApiKey;
use postbridge_core::access::tenants::CreateTenant;
use postbridge_core::access::tenants::Tenant;
use postbridge_core::access::tenants::UpdateTenant;
use postbridge_core::access::{api_keys, tenants};
use postbridge_core::connect::accounts::Account;
use postbridge_core::connect::accounts::CreateAccount;
use postbridge_core::connect::accounts::UpdateAccount;
use postbridge_core::connect::grants::AuthorizeAccount;
use postbridge_core::connect::grants::AuthorizeResult;
use postbridge_core::connect::token_configs::CreateTokenConfig;
use postbridge_core::connect::token_configs::TokenConfig;
use postbridge_core::connect::token_configs::UpdateTokenConfig;
use postbridge_core::connect::{accounts, grants, token_configs};
use postbridge_core::model::{IssuedToken, TenantStatus};
use postbridge_core::send::outbox;
use postbridge_core::send::outbox::OutboundMessage;
use postbridge_core::send::outbox::SendMessage;
use uuid::Uuid;

use super::{caller, tenant_scope, GqlResultExt};

#[derive(Default)]
pub struct CoreMutation;

#[Object]
impl CoreMutation {
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

    /// "Authenticate account": the provider URL to send the browser to (user flow), or an
    /// immediate client-credentials authorization (app flow).
    async fn authorize_account(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        input: Option<AuthorizeAccount>,
    ) -> async_graphql::Result<AuthorizeResult> {
        let (app, scope) = tenant_scope(ctx).await?;
        grants::authorize(&app, &scope, id, input.unwrap_or_default()).await.gql()
    }

    /// Deletes a grant; its accounts go back to draft. Returns the grant's id.
    async fn revoke_grant(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Uuid> {
        let (app, scope) = tenant_scope(ctx).await?;
        grants::revoke(&app, &scope, id).await.gql()?;
        Ok(id)
    }

    /// Queue a message; the same idempotency key returns the same message.
    async fn send_message(&self, ctx: &Context<'_>, input: SendMessage) -> async_graphql::Result<OutboundMessage> {
        let (app, scope) = tenant_scope(ctx).await?;
        outbox::submit(&app, &scope, input).await.gql()
    }

    /// "Test & confirm": connect with the current credentials; confirmed on success, else the failing step.
    async fn test_account(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> async_graphql::Result<postbridge_core::connect::mailbox::TestResult> {
        let (app, scope) = tenant_scope(ctx).await?;
        postbridge_core::connect::mailbox::test_and_confirm(&app, &scope, id).await.gql()
    }
}
