//! The worker's own HTTP endpoint (`POSTBRIDGE_WORKER_METRICS_ADDR`): a minimal HTTP/1 server that answers
//! `GET /metrics` (with the same optional bearer token as the API's), `GET /healthz` (the process is up) and
//! `GET /readyz` (Postgres and Redis answer, every consumer runs, the loops go round; 503 with the reasons if not).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use postbridge_core::observe::ops_metrics;
use postbridge_core::AppContext;
use tokio::net::TcpListener;

use crate::liveness::Liveness;

/// What `/readyz` needs besides the context.
#[derive(Clone)]
pub struct Probes {
    pub liveness: Arc<Liveness>,
    pub redis: apalis_redis::ConnectionManager,
}

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("failed to bind the worker metrics address {addr}"))
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `stop` turns true.
pub async fn serve(ctx: AppContext, probes: Probes, listener: TcpListener, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics listener could not accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let ctx = ctx.clone();
                let probes = probes.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let ctx = ctx.clone();
                        let probes = probes.clone();
                        async move { Ok::<_, Infallible>(respond(&ctx, &probes, req).await) }
                    });
                    // A scraper that never finishes its headers does not hold the connection.
                    let served = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "metrics connection ended with an error");
                    }
                });
            }
        }
    }
}

async fn respond(ctx: &AppContext, probes: &Probes, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match path {
        "/healthz" => return json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        "/readyz" => {
            let consumers = probes.liveness.consumers();
            let problems = probes.liveness.problems(ctx, &probes.redis, &consumers).await;
            return if problems.is_empty() {
                json(StatusCode::OK, serde_json::json!({"status": "ready"}))
            } else {
                json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"status": "not_ready", "problems": problems}))
            };
        }
        _ => {}
    }
    let authorization = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    if !ops_metrics::scrape_allowed(ctx, authorization) {
        let mut response = plain(StatusCode::UNAUTHORIZED, "a valid bearer token is required\n");
        response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::from(ops_metrics::scrape(ctx).await)));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(postbridge_core::metrics::CONTENT_TYPE));
    response
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
