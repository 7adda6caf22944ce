//! The worker's own Prometheus endpoint (`POSTBRIDGE_WORKER_METRICS_ADDR`): a minimal HTTP/1 server that
//! answers only `GET /metrics`, with the same optional bearer token as the API's.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use postbridge_core::service::ops_metrics;
use postbridge_core::AppContext;
use tokio::net::TcpListener;

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("failed to bind the worker metrics address {addr}"))
}

/// Serves `/metrics` on `listener` until `stop` turns true.
pub async fn serve(ctx: AppContext, listener: TcpListener, mut stop: tokio::sync::watch::Receiver<bool>) {
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
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let ctx = ctx.clone();
                        async move { Ok::<_, Infallible>(respond(&ctx, req).await) }
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

async fn respond(ctx: &AppContext, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
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

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
