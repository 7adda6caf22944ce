//! The outbox: send, and sent messages.

use async_graphql::{Context, Object};
use postbridge_core::model::Page;
use postbridge_core::send::outbox;
use postbridge_core::send::outbox::{OutboundMessage, SendMessage, SentFilter};
use postbridge_core::send::steer::{self, ResolveMessage};
use uuid::Uuid;

use super::{page, tenant_scope, GqlResultExt};

#[derive(Default)]
pub struct MessagesQuery;

#[Object]
impl MessagesQuery {
    #[graphql(complexity = "crate::graphql::limits::page_complexity(limit, child_complexity)")]
    async fn sent_messages(
        &self,
        ctx: &Context<'_>,
        limit: Option<u64>,
        cursor: Option<Uuid>,
        filter: Option<SentFilter>,
    ) -> async_graphql::Result<Page<OutboundMessage>> {
        let (app, scope) = tenant_scope(ctx).await?;
        outbox::list(&app, &scope, page(limit, cursor), filter.unwrap_or_default()).await.gql()
    }

    async fn sent_message(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<OutboundMessage> {
        let (app, scope) = tenant_scope(ctx).await?;
        outbox::get(&app, &scope, id.into()).await.gql()
    }
}

#[derive(Default)]
pub struct MessagesMutation;

#[Object]
impl MessagesMutation {
    /// Queue a message; the same idempotency key returns the same message.
    async fn send_message(&self, ctx: &Context<'_>, input: SendMessage) -> async_graphql::Result<OutboundMessage> {
        let (app, scope) = tenant_scope(ctx).await?;
        outbox::submit(&app, &scope, input).await.gql()
    }

    /// Take a queued message out of the queue.
    async fn cancel_message(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<OutboundMessage> {
        let (app, scope) = tenant_scope(ctx).await?;
        steer::cancel(&app, &scope, id.into()).await.gql()
    }

    /// Queue a failed or cancelled message again, its attempts counted from zero.
    async fn retry_message(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<OutboundMessage> {
        let (app, scope) = tenant_scope(ctx).await?;
        steer::retry(&app, &scope, id.into()).await.gql()
    }

    /// Settle a message whose outcome is unknown: sent, or queued again.
    async fn resolve_message(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        input: ResolveMessage,
    ) -> async_graphql::Result<OutboundMessage> {
        let (app, scope) = tenant_scope(ctx).await?;
        steer::resolve(&app, &scope, id.into(), input).await.gql()
    }
}
