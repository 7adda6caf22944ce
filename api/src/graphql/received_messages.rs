//! One received message.

use async_graphql::{Context, Object};
use postbridge_core::receive::inbox;
use postbridge_core::receive::inbox::{HtmlMode, InboundMessage};
use uuid::Uuid;

use super::{tenant_scope, GqlResultExt};

#[derive(Default)]
pub struct ReceivedMessagesQuery;

#[Object]
impl ReceivedMessagesQuery {
    /// One received message with its bodies; `html: SANITIZED` removes what could run in a page.
    async fn received_message(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        #[graphql(default)] html: HtmlMode,
    ) -> async_graphql::Result<InboundMessage> {
        let (app, scope) = tenant_scope(ctx).await?;
        inbox::get(&app, &scope, id.into(), html).await.gql()
    }
}
