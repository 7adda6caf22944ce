//! Webhook endpoints, their deliveries and the delivery log.

use async_graphql::{Context, Object};
use postbridge_core::model::{Page, PageRequest};
use postbridge_core::observe::webhooks::{
    self, AttemptQuery, CreateWebhookEndpoint, DeliveryQuery, UpdateWebhookEndpoint, WebhookAttempt, WebhookDelivery,
    WebhookDeliveryStatus, WebhookEndpoint, WebhookEndpointSecret,
};
use uuid::Uuid;

use super::{tenant_scope, GqlResultExt};

#[derive(Default)]
pub struct WebhooksQuery;

#[Object]
impl WebhooksQuery {
    #[graphql(complexity = "crate::graphql::limits::page_complexity(limit, child_complexity)")]
    async fn webhook_endpoints(
        &self,
        ctx: &Context<'_>,
        limit: Option<u64>,
        cursor: Option<Uuid>,
    ) -> async_graphql::Result<Page<WebhookEndpoint>> {
        let (app, scope) = tenant_scope(ctx).await?;
        webhooks::list(&app, &scope, PageRequest { limit, cursor }).await.gql()
    }

    async fn webhook_endpoint(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<WebhookEndpoint> {
        let (app, scope) = tenant_scope(ctx).await?;
        webhooks::get(&app, &scope, id.into()).await.gql()
    }

    /// An endpoint's deliveries, newest event first.
    #[graphql(complexity = "crate::graphql::limits::page_complexity(limit, child_complexity)")]
    async fn webhook_deliveries(
        &self,
        ctx: &Context<'_>,
        endpoint_id: Uuid,
        status: Option<WebhookDeliveryStatus>,
        limit: Option<u64>,
        cursor: Option<Uuid>,
    ) -> async_graphql::Result<Page<WebhookDelivery>> {
        let (app, scope) = tenant_scope(ctx).await?;
        webhooks::list_deliveries(&app, &scope, endpoint_id.into(), DeliveryQuery { status, limit, cursor }).await.gql()
    }

    /// An endpoint's delivery log: every attempt, newest first.
    #[graphql(complexity = "crate::graphql::limits::page_complexity(limit, child_complexity)")]
    async fn webhook_attempts(
        &self,
        ctx: &Context<'_>,
        endpoint_id: Uuid,
        event_id: Option<Uuid>,
        limit: Option<u64>,
        cursor: Option<Uuid>,
    ) -> async_graphql::Result<Page<WebhookAttempt>> {
        let (app, scope) = tenant_scope(ctx).await?;
        webhooks::list_attempts(&app, &scope, endpoint_id.into(), AttemptQuery { event_id, limit, cursor }).await.gql()
    }
}

#[derive(Default)]
pub struct WebhooksMutation;

#[Object]
impl WebhooksMutation {
    /// The answer carries the signing secret, shown only this once.
    async fn create_webhook_endpoint(
        &self,
        ctx: &Context<'_>,
        input: CreateWebhookEndpoint,
    ) -> async_graphql::Result<WebhookEndpointSecret> {
        let (app, scope) = tenant_scope(ctx).await?;
        webhooks::create(&app, &scope, input).await.gql()
    }

    async fn update_webhook_endpoint(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        input: UpdateWebhookEndpoint,
    ) -> async_graphql::Result<WebhookEndpoint> {
        let (app, scope) = tenant_scope(ctx).await?;
        webhooks::update(&app, &scope, id.into(), input).await.gql()
    }

    /// Returns the deleted endpoint's id.
    async fn delete_webhook_endpoint(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Uuid> {
        let (app, scope) = tenant_scope(ctx).await?;
        webhooks::delete(&app, &scope, id.into()).await.gql()?;
        Ok(id)
    }

    /// New signing secret, shown only in this answer; the previous one keeps signing for 24 hours.
    async fn rotate_webhook_secret(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<WebhookEndpointSecret> {
        let (app, scope) = tenant_scope(ctx).await?;
        webhooks::rotate_secret(&app, &scope, id.into()).await.gql()
    }

    /// Deliver an event again now: one more attempt, the retry schedule is not restarted.
    async fn redeliver_webhook(
        &self,
        ctx: &Context<'_>,
        endpoint_id: Uuid,
        event_id: Uuid,
    ) -> async_graphql::Result<WebhookDelivery> {
        let (app, scope) = tenant_scope(ctx).await?;
        webhooks::redeliver(&app, &scope, endpoint_id.into(), event_id).await.gql()
    }
}
