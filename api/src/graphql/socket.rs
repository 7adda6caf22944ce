//! GraphQL over WebSocket at `GET /graphql` (`graphql-transport-ws`, or the legacy `graphql-ws`). The frames are
//! read with actix-ws, whose messages are bounded like a request body: a client streaming one message without end
//! would otherwise grow the process until it is killed, before it has even authenticated. Each operation runs
//! through [`LiveExecutor`] as a request of its own: the connection's credential is authenticated again (a revoked
//! key, a suspended tenant or an expired token stops at the next operation, not at the socket's end), it costs one
//! unit of the tenant's rate limit, it runs behind the tenant wall, and one connection runs at most
//! [`MAX_OPERATIONS`] at once.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, Session};
use async_graphql::http::{WebSocket, WebSocketProtocols, WsMessage};
use async_graphql::{Data, Executor, Request, Response};
use futures::stream::{BoxStream, Stream, StreamExt};
use postbridge_core::access::auth::authenticate;
use postbridge_core::access::rate_limit::{Decision, RateLimiter};
use postbridge_core::store::tenant_wall::{self, DbScope};
use postbridge_core::{AppContext, AppError};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{clone_auth_error, gql_error, subscription, ApiSchema, RequestAuth};
use crate::extract::{bearer_token, requested_tenant};
use crate::live::EventHub;

/// Operations (queries, mutations, subscriptions) one connection runs at once.
pub const MAX_OPERATIONS: usize = 20;
/// How often the server pings the client.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// A client not heard from (any frame, a pong included) for this long is gone.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Client messages read ahead of the operations they start: while these wait, nothing more is read, and the
/// socket's own flow control holds the client back.
const WAITING_MESSAGES: usize = 16;

/// The credential a connection authenticated with at `connection_init`, kept to authenticate it again.
pub struct LiveCredential {
    pub token: String,
    pub requested_tenant: Option<Uuid>,
}

/// Set once, at `connection_init`.
pub type CredentialSlot = Arc<OnceLock<LiveCredential>>;

pub async fn graphql_ws(
    schema: web::Data<ApiSchema>,
    ctx: web::Data<AppContext>,
    hub: web::Data<EventHub>,
    limiter: web::Data<RateLimiter>,
    http: HttpRequest,
    payload: web::Payload,
) -> actix_web::Result<HttpResponse> {
    let protocol = offered_protocol(&http).ok_or_else(|| {
        actix_web::error::ErrorBadRequest("Sec-WebSocket-Protocol must offer graphql-transport-ws (or graphql-ws)")
    })?;
    let (mut response, session, messages) = actix_ws::handle(&http, payload)?;
    response
        .headers_mut()
        .insert(header::SEC_WEBSOCKET_PROTOCOL, header::HeaderValue::from_static(protocol.sec_websocket_protocol()));
    let max_message = ctx.settings.max_request_bytes;
    let messages = messages.max_frame_size(max_message).aggregate_continuations().max_continuation_size(max_message);

    let credential = CredentialSlot::default();
    let executor = LiveExecutor {
        schema: ApiSchema::clone(&schema),
        app: AppContext::clone(&ctx),
        limiter: limiter.into_inner(),
        credential: credential.clone(),
        running: Arc::default(),
        refused: Arc::default(),
    };
    let (app, hub) = (AppContext::clone(&ctx), EventHub::clone(&hub));
    let (header_token, header_tenant) = (bearer_token(&http), requested_tenant(&http));
    let on_init = move |init| subscription::connection_init(app, hub, credential, header_token, header_tenant, init);
    let (frames, waiting) = mpsc::channel::<Bytes>(WAITING_MESSAGES);
    let waiting = futures::stream::unfold(waiting, |mut waiting| async move { waiting.recv().await.map(|f| (f, waiting)) });
    let graphql = WebSocket::new(executor, Box::pin(waiting), protocol).on_connection_init(on_init);
    actix_web::rt::spawn(serve(graphql, session, messages, frames));
    Ok(response)
}

fn offered_protocol(http: &HttpRequest) -> Option<WebSocketProtocols> {
    let offered = http.headers().get(header::SEC_WEBSOCKET_PROTOCOL)?.to_str().ok()?;
    offered.split(',').find_map(|protocol| WebSocketProtocols::from_str(protocol.trim()).ok())
}

/// One connection: the client's messages are read and handed to async-graphql (answering pings), its answers are
/// written back (pinging the client), until either side ends.
async fn serve(
    graphql: impl Stream<Item = WsMessage>,
    mut session: Session,
    mut messages: AggregatedMessageStream,
    frames: mpsc::Sender<Bytes>,
) {
    let heard = Cell::new(Instant::now());
    let mut pongs = session.clone();
    let read = async {
        while let Some(message) = messages.recv().await {
            heard.set(Instant::now());
            let delivered = match message {
                Ok(AggregatedMessage::Text(text)) => frames.send(text.into_bytes()).await.is_ok(),
                Ok(AggregatedMessage::Binary(bytes)) => frames.send(bytes).await.is_ok(),
                Ok(AggregatedMessage::Ping(bytes)) => pongs.pong(&bytes).await.is_ok(),
                Ok(AggregatedMessage::Pong(_)) => true,
                // A close, or a frame or message over the bounds: the connection ends.
                Ok(AggregatedMessage::Close(_)) | Err(_) => false,
            };
            if !delivered {
                break;
            }
        }
    };
    let write = async {
        let mut graphql = std::pin::pin!(graphql);
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                answer = graphql.next() => match answer {
                    Some(WsMessage::Text(text)) => {
                        if session.text(text).await.is_err() {
                            return None;
                        }
                    }
                    Some(WsMessage::Close(code, description)) => {
                        return Some(CloseReason { code: CloseCode::from(code), description: Some(description) })
                    }
                    None => return None,
                },
                _ = heartbeat.tick() => {
                    if heard.get().elapsed() > CLIENT_TIMEOUT {
                        return Some(CloseReason { code: CloseCode::Away, description: Some("no answer to pings".to_owned()) });
                    }
                    if session.ping(b"").await.is_err() {
                        return None;
                    }
                }
            }
        }
    };
    // The client leaving ends the reading, which ends async-graphql's input and so the writing.
    let reason = tokio::select! {
        reason = write => reason,
        () = read => None,
    };
    let _ = session.close(reason).await;
}

/// Runs a connection's operations on the schema, each admitted like a request of its own.
#[derive(Clone)]
struct LiveExecutor {
    schema: ApiSchema,
    app: AppContext,
    limiter: Arc<RateLimiter>,
    credential: CredentialSlot,
    running: Arc<AtomicUsize>,
    /// Set once the credential was refused: a revoked key stays revoked, so later operations are refused without
    /// a look-up each (the client reconnects with a valid credential).
    refused: Arc<OnceLock<AppError>>,
}

/// An operation let through: its request with the caller as authenticated now, the database scope it runs in, and
/// its place among the connection's running operations.
struct Admitted {
    request: Request,
    scope: DbScope,
    slot: Slot,
}

impl LiveExecutor {
    async fn admit(&self, request: Request) -> Result<Admitted, AppError> {
        let credential = self.credential.get().ok_or_else(|| {
            AppError::Unauthenticated("the connection is not initialised: send connection_init first".to_owned())
        })?;
        if let Some(refused) = self.refused.get() {
            return Err(clone_auth_error(refused));
        }
        let principal = match authenticate(&self.app, &credential.token).await {
            Ok(principal) => principal,
            Err(e @ (AppError::Unauthenticated(_) | AppError::TenantSuspended)) => {
                let _ = self.refused.set(clone_auth_error(&e));
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if let Some(tenant_id) = principal.tenant_id {
            if let Decision::Limited { retry_after_seconds } =
                self.limiter.check(&self.app, tenant_id, principal.api_rate_limit_per_minute).await
            {
                self.app.metrics.rate_limited.inc();
                return Err(AppError::RateLimited { retry_after_seconds });
            }
        }
        let slot = Slot::take(&self.running).ok_or_else(|| AppError::Conflict {
            code: "too_many_operations",
            message: format!("a connection runs at most {MAX_OPERATIONS} operations at once; stop one first"),
        })?;
        // An operator's named tenant narrows the scope once the operation resolves it, as over HTTP.
        let scope = principal.tenant_id.map_or(DbScope::System, |tenant_id| DbScope::Tenant(tenant_id.into()));
        let auth = RequestAuth { caller: Ok(principal), requested_tenant: Ok(credential.requested_tenant) };
        Ok(Admitted { request: request.data(auth), scope, slot })
    }
}

impl Executor for LiveExecutor {
    fn execute(&self, request: Request) -> impl Future<Output = Response> + Send {
        let responses = self.execute_stream(request, None);
        async move { responses.into_future().await.0.unwrap_or_default() }
    }

    fn execute_stream(&self, request: Request, session_data: Option<Arc<Data>>) -> BoxStream<'static, Response> {
        let executor = self.clone();
        futures::stream::once(async move {
            match executor.admit(request).await {
                Ok(Admitted { request, scope, slot }) => {
                    let responses = Executor::execute_stream(&executor.schema, request, session_data);
                    InScope { responses, scope, _slot: slot }.boxed()
                }
                Err(refused) => {
                    let error = gql_error(refused).into_server_error(async_graphql::Pos::default());
                    futures::stream::iter([Response::from_errors(vec![error])]).boxed()
                }
            }
        })
        .flatten()
        .boxed()
    }
}

/// One of a connection's running operations; gives its place back when the operation ends or is stopped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(running: &Arc<AtomicUsize>) -> Option<Slot> {
        let taken = running.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_OPERATIONS).then_some(n + 1));
        taken.ok().map(|_| Slot(Arc::clone(running)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An operation's responses, polled in its database scope: the connection's task is not a request's, so the
/// tenant wall would otherwise see every operation as operator-wide.
struct InScope {
    responses: BoxStream<'static, Response>,
    scope: DbScope,
    _slot: Slot,
}

impl Stream for InScope {
    type Item = Response;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Response>> {
        let this = self.get_mut();
        let responses = &mut this.responses;
        tenant_wall::poll_within(&mut this.scope, || responses.poll_next_unpin(cx))
    }
}
