//! `Application::build(settings)`: used by `main` and by the tests alike.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{guard, web, App, HttpRequest, HttpResponse, HttpServer};
use anyhow::Context as _;
use async_graphql::http::GraphiQLSource;
use postbridge_core::access::rate_limit::RateLimiter;
use postbridge_core::{AppContext, AppError, Settings};
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::bounds::{media_type, read_body, RouteTable};
use crate::error::{json_config, path_config, query_config, shortened, ApiError};
use crate::extract::{requested_tenant, resolve_caller};
use crate::graphql::{build_schema, ApiSchema, RequestAuth};
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
        let limiter = Arc::new(RateLimiter::new());
        let schema = build_schema(context.clone(), limiter.clone());
        let data = web::Data::new(context.clone());
        let schema = web::Data::new(schema);
        let hub = web::Data::new(EventHub::start(context.clone())?);
        context.auth_cache.start_listening(context.settings.database_url.clone());
        context.route_cache.start_listening(context.settings.database_url.clone());
        context.sends_due.start(context.settings.database_url.clone(), context.metrics.sends_announced.clone());
        let openapi = ApiDoc::openapi();
        let routes = web::Data::new(RouteTable::from_openapi(&openapi));
        let limiter = web::Data::from(limiter);
        let max_request_bytes = context.settings.max_request_bytes;
        let server = HttpServer::new(move || {
            App::new()
                // Innermost first: unknown query parameters, the rate limit, the URL and header bounds (all checked
                // before authenticating), then request metrics (so 429s and 414s are counted), then the access log.
                .wrap(from_fn(crate::bounds::known_query_parameters))
                .wrap(from_fn(crate::rate_limit::limit))
                .wrap(from_fn(crate::bounds::head_limits))
                .wrap(from_fn(crate::metrics::track))
                .wrap(access_log())
                // Outermost: every request runs in its own database scope, narrowed to the tenant once authenticated.
                .wrap(from_fn(tenant_wall))
                .app_data(data.clone())
                .app_data(limiter.clone())
                .app_data(schema.clone())
                .app_data(hub.clone())
                .app_data(routes.clone())
                .app_data(json_config(max_request_bytes))
                .app_data(path_config())
                .app_data(query_config())
                .configure(rest::configure)
                .configure(crate::metrics::routes)
                .service(web::resource("/graphql").guard(guard::Post()).to(graphql))
                .service(
                    web::resource("/graphql")
                        .guard(guard::Get())
                        .guard(guard::fn_guard(is_websocket_upgrade))
                        .to(crate::graphql::socket::graphql_ws),
                )
                .service(web::resource("/graphql").guard(guard::Get()).to(graphiql))
                .route("/docs", web::get().to(|| async { HttpResponse::Found().insert_header(("Location", "/docs/")).finish() }))
                .service(SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", openapi.clone()))
                .default_service(web::to(crate::bounds::unknown_route))
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
    postbridge_core::store::tenant_wall::request(next.call(req)).await
}

/// GraphQL over HTTP: one operation as a JSON body of at most `POSTBRIDGE_MAX_REQUEST_BYTES` (refused before it
/// is read when larger), bounded by `graphql::limits`. Other content types (forms, multipart) run nothing.
/// Introspection needs no credential, as `/openapi.json` does not: the schema is public (`schema.graphql`),
/// and an unauthenticated client is bounded by the same limits and its address's rate limit.
async fn graphql(
    schema: web::Data<ApiSchema>,
    ctx: web::Data<AppContext>,
    http: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    if !matches!(media_type(&http).as_deref(), Some("application/json" | "application/graphql-response+json")) {
        return Err(AppError::UnsupportedMediaType(
            "GraphQL requests are sent as application/json (or application/graphql-response+json)".to_owned(),
        )
        .into());
    }
    let body = read_body(&http, payload, ctx.settings.max_request_bytes).await?;
    let request: async_graphql::Request = serde_json::from_slice(&body).map_err(|e| AppError::BadRequest {
        code: "invalid_body",
        message: shortened(format!("the body is not one GraphQL request ({{\"query\": …}}): {e}")),
    })?;
    let auth = RequestAuth { caller: resolve_caller(&http).await, requested_tenant: requested_tenant(&http) };
    let response = schema.execute(request.data(auth)).await;
    // An operation refused for its cost answers 429 with Retry-After, like a request over the limit.
    let retry_after = response.errors.iter().find_map(|e| {
        let ext = e.extensions.as_ref()?;
        (ext.get("code")? == &async_graphql::Value::from("rate_limited")).then_some(())?;
        match ext.get("retryAfterSeconds")? {
            async_graphql::Value::Number(n) => n.as_u64(),
            _ => None,
        }
    });
    let mut reply = match retry_after {
        Some(seconds) => {
            let mut reply = HttpResponse::TooManyRequests();
            reply.insert_header(("Retry-After", seconds.to_string()));
            reply
        }
        None => HttpResponse::Ok(),
    };
    Ok(reply.json(&response))
}

fn is_websocket_upgrade(ctx: &guard::GuardContext<'_>) -> bool {
    let upgrade = ctx.head().headers().get(actix_web::http::header::UPGRADE).and_then(|v| v.to_str().ok());
    upgrade.is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
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
