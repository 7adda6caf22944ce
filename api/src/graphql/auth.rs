//! Credentials exchanged for short-lived tokens.

use async_graphql::{Context, Object};
use postbridge_core::access::api_keys;
use postbridge_core::model::IssuedToken;

use super::{caller, GqlResultExt};

#[derive(Default)]
pub struct AuthMutation;

#[Object]
impl AuthMutation {
    /// Exchange the presented credential for a short-lived JWT.
    async fn issue_token(&self, ctx: &Context<'_>) -> async_graphql::Result<IssuedToken> {
        let (app, p) = caller(ctx)?;
        api_keys::issue_token(&app, &p).gql()
    }
}
