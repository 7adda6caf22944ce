//! GraphQL at `/graphql`: the same operations as REST, over the same service layer.

mod accounts;
mod api_keys;
mod audit;
mod auth;
mod events;
mod grants;
pub mod limits;
mod messages;
mod ops;
mod received_messages;
mod routing;
pub mod socket;
pub mod subscription;
mod tenants;
mod token_configs;
mod webhooks;

use std::sync::Arc;

use async_graphql::{ErrorExtensions, MergedObject, Schema};
use postbridge_core::access::auth::{Principal, TenantScope};
use postbridge_core::access::rate_limit::RateLimiter;
use postbridge_core::model::PageRequest;
use postbridge_core::{AppContext, AppError};
use uuid::Uuid;

// Every query and mutation, one area per object; each area's resolvers live in the module named like its REST file.
#[derive(MergedObject, Default)]
pub struct Query(
    tenants::TenantsQuery,
    api_keys::ApiKeysQuery,
    token_configs::TokenConfigsQuery,
    accounts::AccountsQuery,
    grants::GrantsQuery,
    received_messages::ReceivedMessagesQuery,
    messages::MessagesQuery,
    routing::RoutingQuery,
    audit::AuditQueryRoot,
    events::EventsQuery,
    webhooks::WebhooksQuery,
    ops::OpsQuery,
);

#[derive(MergedObject, Default)]
pub struct Mutation(
    auth::AuthMutation,
    tenants::TenantsMutation,
    api_keys::ApiKeysMutation,
    token_configs::TokenConfigsMutation,
    accounts::AccountsMutation,
    grants::GrantsMutation,
    messages::MessagesMutation,
    webhooks::WebhooksMutation,
);

/// A page request from a list field's `limit` and `cursor` arguments.
fn page(limit: Option<u64>, cursor: Option<Uuid>) -> PageRequest {
    PageRequest { limit, cursor }
}

pub type ApiSchema = Schema<Query, Mutation, subscription::SubscriptionRoot>;

/// The schema the API serves, with the bounds of `limits` on every operation.
pub fn build_schema(ctx: AppContext, limiter: Arc<RateLimiter>) -> ApiSchema {
    Schema::build(Query::default(), Mutation::default(), subscription::SubscriptionRoot)
        .data(ctx)
        .data(limiter)
        .limit_depth(limits::MAX_DEPTH)
        .limit_complexity(limits::MAX_COMPLEXITY)
        .extension(limits::QueryLimits)
        .finish()
}

pub fn sdl() -> String {
    Schema::build(Query::default(), Mutation::default(), subscription::SubscriptionRoot).finish().sdl()
}

/// Per-request data: who called (or why they could not be authenticated) and the tenant they named.
pub struct RequestAuth {
    pub caller: Result<Principal, AppError>,
    pub requested_tenant: Result<Option<Uuid>, AppError>,
}

/// Converts a service error to a GraphQL error carrying the same `code` (and `field`) as REST.
pub fn gql_error(err: AppError) -> async_graphql::Error {
    match &err {
        AppError::Internal(cause) => tracing::error!(error = ?cause, "graphql operation failed"),
        AppError::Unavailable { .. } => {
            tracing::warn!(error = %err.detail(), "graphql operation refused: no database connection")
        }
        _ => {}
    }
    let code = err.code();
    let field = err.field().map(str::to_owned);
    async_graphql::Error::new(err.to_string()).extend_with(|_, ext| {
        ext.set("code", code);
        if let Some(field) = &field {
            ext.set("field", field.as_str());
        }
    })
}

pub trait GqlResultExt<T> {
    fn gql(self) -> async_graphql::Result<T>;
}

impl<T> GqlResultExt<T> for Result<T, AppError> {
    fn gql(self) -> async_graphql::Result<T> {
        self.map_err(gql_error)
    }
}

fn app_context<'a>(ctx: &async_graphql::Context<'a>) -> async_graphql::Result<&'a AppContext> {
    ctx.data::<AppContext>().map_err(|_| gql_error(AppError::Internal(anyhow::anyhow!("AppContext missing from schema"))))
}

fn request_auth<'a>(ctx: &async_graphql::Context<'a>) -> async_graphql::Result<&'a RequestAuth> {
    ctx.data::<RequestAuth>().map_err(|_| gql_error(AppError::Unauthenticated("missing bearer token".to_owned())))
}

pub(crate) fn caller(ctx: &async_graphql::Context<'_>) -> async_graphql::Result<(AppContext, Principal)> {
    let app = app_context(ctx)?.clone();
    let auth = request_auth(ctx)?;
    match &auth.caller {
        Ok(principal) => Ok((app, principal.clone())),
        Err(err) => Err(gql_error(clone_auth_error(err))),
    }
}

pub(crate) async fn tenant_scope(ctx: &async_graphql::Context<'_>) -> async_graphql::Result<(AppContext, TenantScope)> {
    let (app, principal) = caller(ctx)?;
    let requested = match &request_auth(ctx)?.requested_tenant {
        Ok(requested) => *requested,
        Err(err) => return Err(gql_error(clone_auth_error(err))),
    };
    let scope = principal.scope(&app, requested).await.gql()?;
    Ok((app, scope))
}

/// Authentication errors are kept per request and reported by every field that needs them.
fn clone_auth_error(err: &AppError) -> AppError {
    match err {
        AppError::Unauthenticated(m) => AppError::Unauthenticated(m.clone()),
        AppError::TenantSuspended => AppError::TenantSuspended,
        AppError::BadRequest { code, message } => AppError::BadRequest { code, message: message.clone() },
        AppError::Forbidden(m) => AppError::Forbidden(m.clone()),
        _ => AppError::Internal(anyhow::anyhow!("authentication failed: {err}")),
    }
}
