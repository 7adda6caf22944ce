//! Email accounts: settings, test & confirm, authorize, and their received messages.

use async_graphql::{Context, Object};
use postbridge_core::connect::accounts::{Account, CreateAccount, UpdateAccount};
use postbridge_core::connect::grants::{AuthorizeAccount, AuthorizeResult, ImportGrant};
use postbridge_core::connect::{accounts, grants};
use postbridge_core::model::Page;
use postbridge_core::receive::inbox;
use postbridge_core::receive::inbox::{InboundMessage, ReceivedFilter};
use uuid::Uuid;

use super::{page, tenant_scope, GqlResultExt};

#[derive(Default)]
pub struct AccountsQuery;

#[Object]
impl AccountsQuery {
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
        accounts::get(&app, &scope, id.into()).await.gql()
    }

    /// An inbound account's received messages, newest first.
    #[graphql(complexity = "crate::graphql::limits::page_complexity(limit, child_complexity)")]
    async fn received_messages(
        &self,
        ctx: &Context<'_>,
        account_id: Uuid,
        limit: Option<u64>,
        cursor: Option<Uuid>,
        filter: Option<ReceivedFilter>,
    ) -> async_graphql::Result<Page<InboundMessage>> {
        let (app, scope) = tenant_scope(ctx).await?;
        inbox::list(&app, &scope, account_id.into(), page(limit, cursor), filter.unwrap_or_default()).await.gql()
    }
}

#[derive(Default)]
pub struct AccountsMutation;

#[Object]
impl AccountsMutation {
    async fn create_account(&self, ctx: &Context<'_>, input: CreateAccount) -> async_graphql::Result<Account> {
        let (app, scope) = tenant_scope(ctx).await?;
        accounts::create(&app, &scope, input).await.gql()
    }

    async fn update_account(&self, ctx: &Context<'_>, id: Uuid, input: UpdateAccount) -> async_graphql::Result<Account> {
        let (app, scope) = tenant_scope(ctx).await?;
        accounts::update(&app, &scope, id.into(), input).await.gql()
    }

    async fn delete_account(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Uuid> {
        let (app, scope) = tenant_scope(ctx).await?;
        accounts::delete(&app, &scope, id.into()).await.gql()?;
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
        grants::authorize(&app, &scope, id.into(), input.unwrap_or_default()).await.gql()
    }

    /// Bring your own tokens (admin): import a refresh token obtained elsewhere; checked with one refresh.
    async fn import_grant(&self, ctx: &Context<'_>, id: Uuid, input: ImportGrant) -> async_graphql::Result<Account> {
        let (app, scope) = tenant_scope(ctx).await?;
        grants::import(&app, &scope, id.into(), input).await.gql()
    }

    /// "Test & confirm": connect with the current credentials; confirmed on success, else the failing step.
    async fn test_account(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> async_graphql::Result<postbridge_core::connect::confirm::TestResult> {
        let (app, scope) = tenant_scope(ctx).await?;
        postbridge_core::connect::confirm::test_and_confirm(&app, &scope, id.into()).await.gql()
    }
}
