//! `Application::build(settings)`: used by `main` and by the tests alike.

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{guard, web, App, HttpRequest, HttpResponse, HttpServer};
use anyhow::Context as _;
use async_graphql::http::GraphiQLSource;
use async_graphql_actix_web::{GraphQLRequest, GraphQLResponse, GraphQLSubscription};
use postbridge_core::service::rate_limit::RateLimiter;
use postbridge_core::{AppContext, AppError, Settings};
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::error::{json_config, path_config, query_config, ApiError};
use crate::extract::{bearer_token, requested_tenant, resolve_caller};
use crate::graphql::{build_schema, subscription, ApiSchema, RequestAuth};
use crate::live::EventHub;
use crate::openapi::ApiDoc;
use crate::rest;

pub struct Application {
    port: u16,
    server: Server,
    context: AppContext,
}

impl Application {
    /// Connects to Postgres and binds the listener. Migrations are not run here: they are explicit.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let listen = settings.listen_addr;
        let context = AppContext::build(settings).await?;
        let listener = TcpListener::bind(listen).with_context(|| format!("failed to bind {listen}"))?;
        Self::with_listener(context, listener)
    }

    pub fn with_listener(context: AppContext, listener: TcpListener) -> anyhow::Result<Self> {
        let port = listener.local_addr()?.port();
        let schema = build_schema(context.clone());
        let data = web::Data::new(context.clone());
        let schema = web::Data::new(schema);
        let hub = web::Data::new(EventHub::start(context.clone())?);
        let openapi = ApiDoc::openapi();
        let limiter = web::Data::new(RateLimiter::new());
        let server = HttpServer::new(move || {
            App::new()
                // Innermost first: the rate limit, then request metrics (so 429s are counted), then the access log.
                .wrap(from_fn(crate::rate_limit::limit))
                .wrap(from_fn(crate::metrics::track))
                .wrap(access_log())
                // Outermost: every request runs in its own database scope, narrowed to the tenant once authenticated.
                .wrap(from_fn(tenant_wall))
                .app_data(data.clone())
                .app_data(limiter.clone())
                .app_data(schema.clone())
                .app_data(hub.clone())
                .app_data(json_config())
                .app_data(path_config())
                .app_data(query_config())
                .configure(rest::configure)
                .configure(crate::metrics::routes)
                .service(web::resource("/graphql").guard(guard::Post()).to(graphql))
                .service(
                    web::resource("/graphql").guard(guard::Get()).guard(guard::fn_guard(is_websocket_upgrade)).to(graphql_ws),
                )
                .service(web::resource("/graphql").guard(guard::Get()).to(graphiql))
                .route("/docs", web::get().to(|| async { HttpResponse::Found().insert_header(("Location", "/docs/")).finish() }))
                .service(SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", openapi.clone()))
                .default_service(web::to(unknown_route))
        })
        .listen(listener)?
        .run();
        Ok(Application { port, server, context })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn context(&self) -> &AppContext {
        &self.context
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

async fn tenant_wall(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    postbridge_core::tenant_wall::request(next.call(req)).await
}

/// Unknown paths and methods answer in the same `{code, message}` shape as every other error.
async fn unknown_route() -> Result<HttpResponse, ApiError> {
    Err(ApiError(AppError::NotFound { resource: "route" }))
}

async fn graphql(schema: web::Data<ApiSchema>, http: HttpRequest, request: GraphQLRequest) -> GraphQLResponse {
    let auth = RequestAuth { caller: resolve_caller(&http).await, requested_tenant: requested_tenant(&http) };
    schema.execute(request.into_inner().data(auth)).await.into()
}

fn is_websocket_upgrade(ctx: &guard::GuardContext<'_>) -> bool {
    let upgrade = ctx.head().headers().get(actix_web::http::header::UPGRADE).and_then(|v| v.to_str().ok());
    upgrade.is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// GraphQL subscriptions (and queries) over WebSocket: `graphql-transport-ws` (or the legacy `graphql-ws`).
/// The credential comes from `connection_init`'s payload or from this upgrade request's headers.
async fn graphql_ws(
    schema: web::Data<ApiSchema>,
    ctx: web::Data<AppContext>,
    hub: web::Data<EventHub>,
    http: HttpRequest,
    payload: web::Payload,
) -> actix_web::Result<HttpResponse> {
    let (app, hub) = (AppContext::clone(&ctx), EventHub::clone(&hub));
    let (header_token, header_tenant) = (bearer_token(&http), requested_tenant(&http));
    GraphQLSubscription::new(ApiSchema::clone(&schema))
        .on_connection_init(move |init| subscription::connection_init(app, hub, header_token, header_tenant, init))
        .start(&http, payload)
}

async fn graphiql() -> HttpResponse {
    let page = GraphiQLSource::build().endpoint("/graphql").subscription_endpoint("/graphql").finish();
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(page)
}

/// The access log: method, target, status, duration. The OAuth callback's query (authorization code and state) is
/// never written: only its path is.
fn access_log() -> actix_web::middleware::Logger {
    actix_web::middleware::Logger::new("%{method}xi %{target}xi %s %Dms")
        .custom_request_replace("method", |req| req.method().to_string())
        .custom_request_replace("target", |req| logged_target(req.path(), req.uri().to_string()))
}

fn logged_target(path: &str, uri: String) -> String {
    if path.starts_with("/oauth/") {
        path.to_owned()
    } else {
        uri
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_oauth_callback_is_logged_without_its_query() {
        assert_eq!(super::logged_target("/oauth/callback", "/oauth/callback?code=secret&state=s".into()), "/oauth/callback");
        assert_eq!(super::logged_target("/v1/events", "/v1/events?types=a".into()), "/v1/events?types=a");
    }
}
