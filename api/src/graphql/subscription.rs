//! Live updates over WebSocket (`graphql-transport-ws` on `GET /graphql`, see `socket`): a tenant's events and
//! its accounts' state changes. Authenticated at `connection_init` like a query (bearer token from the upgrade
//! request or the init payload) and again for every operation, tenant-scoped like a query, and the credential is
//! checked again while a subscription runs, so a revoked key or a suspended tenant stops receiving.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_graphql::{Context, Data, Subscription};
use futures::{Stream, StreamExt};
use postbridge_core::access::auth::{authenticate, TenantScope};
use postbridge_core::connect::accounts;
use postbridge_core::connect::accounts::Account;
use postbridge_core::model::Role;
use postbridge_core::observe::events;
use postbridge_core::observe::events::Event;
use postbridge_core::{AppContext, AppError};
use serde_json::Value;
use uuid::Uuid;

use super::socket::{CredentialSlot, LiveCredential};
use super::{caller, gql_error, request_auth, tenant_scope, GqlResultExt, RequestAuth};
use crate::live::{EventHub, TenantEvents};

/// How long a subscription trusts its credential before authenticating it again (on its next event).
const RECHECK_AFTER: Duration = Duration::from_secs(60);

/// `connection_init`: the token and tenant from the init payload (`authorization` / `Authorization`:
/// `Bearer <token>`, `tenant` / `X-Postbridge-Tenant`), else from the upgrade request's headers. Failing
/// here closes the connection.
pub async fn connection_init(
    app: AppContext,
    hub: EventHub,
    credential: CredentialSlot,
    header_token: Option<String>,
    header_tenant: Result<Option<Uuid>, AppError>,
    payload: Value,
) -> async_graphql::Result<Data> {
    let token = payload_field(&payload, &["authorization"])
        .map(|value| strip_bearer(&value))
        .or(header_token)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            gql_error(AppError::Unauthenticated(
                "missing bearer token: send {\"authorization\": \"Bearer <API key or JWT>\"} in connection_init".to_owned(),
            ))
        })?;
    let requested_tenant = match payload_field(&payload, &["tenant", "x-postbridge-tenant"]) {
        Some(tenant) => Some(Uuid::parse_str(tenant.trim()).map_err(|_| {
            gql_error(AppError::BadRequest { code: "invalid_tenant_header", message: "tenant must be a tenant id".to_owned() })
        })?),
        None => header_tenant.gql()?,
    };
    let principal = authenticate(&app, &token).await.gql()?;
    let mut data = Data::default();
    data.insert(RequestAuth { caller: Ok(principal), requested_tenant: Ok(requested_tenant) });
    data.insert(LiveCredential { token: token.clone(), requested_tenant });
    data.insert(hub);
    // Kept for the connection's operations, each authenticated again (`socket::LiveExecutor`).
    let _ = credential.set(LiveCredential { token, requested_tenant });
    Ok(data)
}

/// A string field of the init payload, keys compared case-insensitively.
fn payload_field(payload: &Value, names: &[&str]) -> Option<String> {
    let fields = payload.as_object()?;
    fields
        .iter()
        .find(|(key, _)| names.iter().any(|name| key.eq_ignore_ascii_case(name)))
        .and_then(|(_, value)| value.as_str())
        .map(str::to_owned)
}

fn strip_bearer(value: &str) -> String {
    let value = value.trim();
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim().to_owned(),
        _ => value.to_owned(),
    }
}

#[derive(Default)]
pub struct SubscriptionRoot;

#[Subscription(name = "Subscription")]
impl SubscriptionRoot {
    /// The tenant's events as they are recorded (viewer or above); `types` keeps only these event types.
    async fn events(
        &self,
        ctx: &Context<'_>,
        types: Option<Vec<String>>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<Event>>> {
        let types = events::parse_types(types.as_deref().unwrap_or_default()).gql()?;
        let feed = Feed::open(ctx).await?;
        Ok(feed.stream(move |feed, event| {
            let wanted = types.is_empty() || types.iter().any(|t| *t == event.event_type);
            let event = Event::clone(&event);
            // Members see only the events about their own accounts, as in queries; that takes a lookup.
            let member = (wanted && feed.scope.principal.role == Role::Member).then(|| (feed.app.clone(), feed.scope.clone()));
            async move {
                if !wanted {
                    return Ok(None);
                }
                let Some((app, scope)) = member else { return Ok(Some(event)) };
                match events::get(&app, &scope, event.id).await {
                    Ok(_) => Ok(Some(event)),
                    Err(AppError::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            }
        }))
    }

    /// An account as it is after each change of its state (all accounts the caller can see, or only
    /// `accountId`). Members see only their own accounts, as in queries.
    async fn account_status_changed(
        &self,
        ctx: &Context<'_>,
        account_id: Option<Uuid>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<Account>>> {
        let feed = Feed::open(ctx).await?;
        if let Some(id) = account_id {
            // An account the caller cannot see is not found now, not silently never delivered.
            accounts::get(&feed.app, &feed.scope, id.into()).await.gql()?;
        }
        Ok(feed.stream(move |feed, event| {
            let id = event
                .resource_id
                .filter(|id| event.event_type.starts_with("account.") && account_id.is_none_or(|wanted| wanted == *id));
            let (app, scope) = (feed.app.clone(), feed.scope.clone());
            async move {
                let Some(id) = id else { return Ok(None) };
                match accounts::get(&app, &scope, id.into()).await {
                    Ok(account) => Ok(Some(account)),
                    // Gone since, or another member's account.
                    Err(AppError::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            }
        }))
    }
}

/// One subscription's source: its tenant's events, the scope it was opened with, and when its credential
/// was last checked.
struct Feed {
    app: AppContext,
    scope: TenantScope,
    credential: Option<(String, Option<Uuid>)>,
    checked_at: Instant,
    events: TenantEvents,
}

impl Feed {
    async fn open(ctx: &Context<'_>) -> async_graphql::Result<Feed> {
        let hub = ctx.data::<EventHub>().map_err(|_| {
            gql_error(AppError::BadRequest {
                code: "websocket_required",
                message: "subscriptions are served over WebSocket (graphql-transport-ws) at /graphql".to_owned(),
            })
        })?;
        // Listen before the tenant is checked (an operator's named tenant is looked up), so nothing committed
        // after the subscription started is missed; nothing is delivered unless the check passes.
        let (_, principal) = caller(ctx)?;
        let named = request_auth(ctx)?.requested_tenant.as_ref().ok().copied().flatten();
        let early = match principal.tenant_id.or(named.map(Into::into)) {
            Some(tenant_id) => Some(hub.subscribe(tenant_id).await.gql()?),
            None => None,
        };
        let (app, scope) = tenant_scope(ctx).await?;
        scope.require(Role::Viewer).gql()?;
        let credential = ctx.data_opt::<LiveCredential>().map(|c| (c.token.clone(), c.requested_tenant));
        let events = match early {
            Some(events) if events.tenant_id() == scope.tenant_id => events,
            _ => hub.subscribe(scope.tenant_id).await.gql()?,
        };
        Ok(Feed { app, scope, credential, checked_at: Instant::now(), events })
    }

    /// Authenticates the connection's credential again once `RECHECK_AFTER` has passed.
    async fn recheck(&mut self) -> Result<(), AppError> {
        let Some((token, requested)) = &self.credential else { return Ok(()) };
        if self.checked_at.elapsed() < RECHECK_AFTER {
            return Ok(());
        }
        let principal = authenticate(&self.app, token).await?;
        let scope = principal.scope(&self.app, *requested).await?;
        if scope.tenant_id != self.scope.tenant_id {
            return Err(AppError::Unauthenticated("the credential no longer belongs to this tenant".to_owned()));
        }
        self.scope = scope;
        self.checked_at = Instant::now();
        Ok(())
    }

    /// The items `select` makes of the events (`None`: skip the event). The first error ends the stream.
    fn stream<T, F, Fut>(self, select: F) -> impl Stream<Item = async_graphql::Result<T>>
    where
        T: Send + 'static,
        F: Fn(&Feed, Arc<Event>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Option<T>, AppError>> + Send,
    {
        futures::stream::unfold(Some((self, select)), |state| async move {
            let (mut feed, select) = state?;
            loop {
                let event = feed.events.next().await?;
                match feed.recheck().await {
                    Ok(()) => {}
                    // Postgres unavailable is not a verdict on the credential: checked again on the next event.
                    Err(e @ (AppError::Internal(_) | AppError::Unavailable { .. })) => {
                        tracing::warn!(error = %e.detail(), "could not check a subscriber's credential")
                    }
                    Err(e) => return Some((Err(gql_error(e)), None)),
                }
                match select(&feed, event).await {
                    Ok(Some(item)) => return Some((Ok(item), Some((feed, select)))),
                    Ok(None) => continue,
                    Err(e) => {
                        // A passing failure (the database) costs this update, not the subscription.
                        tracing::warn!(error = %e, "could not prepare a live update");
                        continue;
                    }
                }
            }
        })
        .boxed()
    }
}
