//! Bounds on a request's size, answered in the usual `{code, message}` JSON: the URL (414), the headers (431),
//! the body (413, checked against `Content-Length` before reading and while reading), and a method a route
//! does not serve (405 with `Allow`).
//!
//! actix-web itself refuses a request head over 128 KiB or with more than 96 headers before any of this runs
//! (431, empty body); the limits here are lower, so a client meets them first.

use std::collections::BTreeMap;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpRequest, HttpResponse, ResponseError as _};
use postbridge_core::AppError;

use crate::error::ApiError;

/// Longest request target (path and query) served.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most headers, and most header bytes (names and values), in one request.
pub const MAX_HEADERS: usize = 64;
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Refuses an over-long URL or too many or too large headers before routing.
pub async fn head_limits<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, Error> {
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    let refusal = if uri_len > MAX_URI_BYTES {
        Some(ApiError(AppError::TooLarge {
            code: "uri_too_long",
            message: format!("the request URL is longer than {MAX_URI_BYTES} bytes"),
        }))
    } else {
        let headers = req.headers();
        let bytes: usize = headers.iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
        (headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES).then(|| {
            ApiError(AppError::TooLarge {
                code: "headers_too_large",
                message: format!("the request has more than {MAX_HEADERS} headers or {MAX_HEADER_BYTES} bytes of headers"),
            })
        })
    };
    match refusal {
        None => next.call(req).await.map(ServiceResponse::map_into_left_body),
        Some(err) => {
            let status = if err.0.code() == "uri_too_long" {
                actix_web::http::StatusCode::URI_TOO_LONG
            } else {
                actix_web::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            };
            let mut response = err.error_response();
            *response.status_mut() = status;
            Ok(req.into_response(response).map_into_right_body())
        }
    }
}

/// The error of a body over `limit` bytes.
pub fn body_too_large(limit: usize) -> AppError {
    AppError::TooLarge {
        code: "payload_too_large",
        message: format!("the request body is larger than this route accepts ({limit} bytes)"),
    }
}

/// Reads a whole body of at most `limit` bytes: a larger announced `Content-Length` is refused before reading,
/// a longer stream as soon as it passes the limit.
pub async fn read_body(req: &HttpRequest, payload: web::Payload, limit: usize) -> Result<web::Bytes, AppError> {
    let announced =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|len| len > limit as u64) {
        return Err(body_too_large(limit));
    }
    match payload.to_bytes_limited(limit).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(AppError::BadRequest { code: "invalid_body", message: "the request body could not be read".into() }),
        Err(_) => Err(body_too_large(limit)),
    }
}

/// A JSON body of at most `limit` bytes, as `T`: another media type is 415, a larger body 413, bad JSON 400.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<T, AppError> {
    if !media_type(req).as_deref().is_some_and(is_json) {
        return Err(crate::error::unsupported_media_type());
    }
    let body = read_body(req, payload, limit).await?;
    serde_json::from_slice(&body).map_err(|e| AppError::BadRequest {
        code: "invalid_body",
        message: crate::error::shortened(format!("request body is not valid: {e}")),
    })
}

/// `application/json` and its `+json` kin.
pub fn is_json(essence: &str) -> bool {
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The `essence` of a request's media type (`application/json` of `application/json; charset=utf-8`).
pub fn media_type(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
}

/// Which methods each path serves, for 405 answers, and which query parameters each route takes: the OpenAPI
/// document's paths plus the few routes it does not describe.
#[derive(Clone, Default)]
pub struct RouteTable {
    routes: Vec<(Vec<String>, Vec<Method>)>,
    /// Per path and method of the OpenAPI document, the query parameters it declares.
    queries: Vec<(Vec<String>, Method, Vec<String>)>,
}

/// Routes whose query parameters are not ours to restrict: the OAuth callback takes whatever the provider adds
/// (`session_state`, `scope`, `iss`, ...).
const OPEN_QUERY_PATHS: [&str; 1] = ["/oauth/callback"];

impl RouteTable {
    pub fn from_openapi(doc: &utoipa::openapi::OpenApi) -> Self {
        let mut by_path: BTreeMap<String, Vec<Method>> = BTreeMap::new();
        let mut queries = Vec::new();
        for (path, item) in &doc.paths.paths {
            let methods = by_path.entry(path.clone()).or_default();
            for (method, op) in [
                (Method::GET, &item.get),
                (Method::POST, &item.post),
                (Method::PUT, &item.put),
                (Method::PATCH, &item.patch),
                (Method::DELETE, &item.delete),
            ] {
                let Some(op) = op else { continue };
                methods.push(method.clone());
                if !OPEN_QUERY_PATHS.contains(&path.as_str()) {
                    let names = op
                        .parameters
                        .iter()
                        .flatten()
                        .filter_map(|p| match p {
                            utoipa::openapi::RefOr::T(p) => Some(p),
                            utoipa::openapi::RefOr::Ref(_) => None,
                        })
                        .filter(|p| matches!(p.parameter_in, utoipa::openapi::path::ParameterIn::Query))
                        .map(|p| p.name.clone())
                        .collect();
                    queries.push((segments(path), method, names));
                }
            }
        }
        for (path, methods) in
            [("/graphql", vec![Method::GET, Method::POST]), ("/openapi.json", vec![Method::GET]), ("/docs", vec![Method::GET])]
        {
            by_path.entry(path.to_owned()).or_default().extend(methods);
        }
        let routes = by_path.into_iter().map(|(path, methods)| (segments(&path), methods)).collect();
        RouteTable { routes, queries }
    }

    /// The methods `path` is served with (none: no such route).
    pub fn allowed(&self, path: &str) -> Vec<Method> {
        let wanted = segments(path);
        let mut out: Vec<Method> = Vec::new();
        for (pattern, methods) in &self.routes {
            if matches(pattern, &wanted) {
                for m in methods {
                    if !out.contains(m) {
                        out.push(m.clone());
                    }
                }
            }
        }
        out
    }

    /// The query parameters the route serving `method` `path` declares, or `None` when it is not an OpenAPI route
    /// whose parameters are checked. A literal segment wins over a template (`/v1/x/expiring` over `/v1/x/{id}`).
    pub fn query_parameters(&self, method: &Method, path: &str) -> Option<&[String]> {
        let wanted: Vec<&str> = path.split('/').collect();
        self.queries
            .iter()
            .filter(|(pattern, m, _)| m == method && matches(pattern, &wanted))
            .min_by_key(|(pattern, _, _)| pattern.iter().filter(|p| p.starts_with('{')).count())
            .map(|(_, _, names)| names.as_slice())
    }
}

fn matches<W: AsRef<str>>(pattern: &[String], wanted: &[W]) -> bool {
    pattern.len() == wanted.len()
        && pattern.iter().zip(wanted).all(|(p, w)| p == w.as_ref() || (p.starts_with('{') && !w.as_ref().is_empty()))
}

/// Refuses a query parameter the route does not take (400 `unknown_query_parameter`), naming the ones it does: a
/// misspelt filter would otherwise be ignored and the request answered as if it had none.
pub async fn known_query_parameters<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, Error> {
    let unknown = req.app_data::<web::Data<RouteTable>>().filter(|_| !req.query_string().is_empty()).and_then(|table| {
        let declared = table.query_parameters(req.method(), req.path())?;
        // A query that does not parse is the handler's to refuse (400 `invalid_query`).
        let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string()).ok()?.into_inner();
        let unknown = pairs.into_iter().map(|(name, _)| name).find(|name| !declared.iter().any(|d| d == name))?;
        Some((unknown, declared.join(", ")))
    });
    match unknown {
        None => next.call(req).await.map(ServiceResponse::map_into_left_body),
        Some((name, declared)) => {
            let takes = if declared.is_empty() { "none".to_owned() } else { declared };
            let err = ApiError(AppError::BadRequest {
                code: "unknown_query_parameter",
                message: crate::error::shortened(format!(
                    "`{name}` is not a query parameter of {} {}; it takes: {takes}",
                    req.method(),
                    req.match_pattern().unwrap_or_else(|| req.path().to_owned())
                )),
            });
            let response = err.error_response();
            Ok(req.into_response(response).map_into_right_body())
        }
    }
}

fn segments(path: &str) -> Vec<String> {
    path.split('/').map(str::to_owned).collect()
}

/// The default service: a known path with another method answers 405 with `Allow`; anything else 404.
pub async fn unknown_route(req: HttpRequest) -> HttpResponse {
    let allowed = req.app_data::<web::Data<RouteTable>>().map(|t| t.allowed(req.path())).unwrap_or_default();
    if allowed.is_empty() || allowed.contains(req.method()) {
        return ApiError(AppError::NotFound { resource: "route" }).error_response();
    }
    let list = allowed.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
    let mut response = HttpResponse::MethodNotAllowed().json(postbridge_core::error::ErrorBody {
        code: "method_not_allowed".to_owned(),
        message: format!("{} is not served here; allowed: {list}", req.method()),
        field: None,
    });
    if let Ok(value) = HeaderValue::from_str(&list) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_template_matches_one_non_empty_segment() {
        let table = RouteTable {
            routes: vec![
                (segments("/v1/accounts/{id}"), vec![Method::GET, Method::DELETE]),
                (segments("/v1/accounts"), vec![Method::GET, Method::POST]),
            ],
            queries: Vec::new(),
        };
        assert_eq!(table.allowed("/v1/accounts/abc"), vec![Method::GET, Method::DELETE]);
        assert!(table.allowed("/v1/accounts/").is_empty(), "actix does not serve a trailing slash either");
        assert!(table.allowed("/v1/accounts/abc/more").is_empty());
        assert!(table.allowed("/v2/accounts").is_empty());
    }

    #[test]
    fn query_parameters_come_from_the_most_specific_route_and_the_callback_takes_any() {
        let doc = <crate::openapi::ApiDoc as utoipa::OpenApi>::openapi();
        let table = RouteTable::from_openapi(&doc);
        let events = table.query_parameters(&Method::GET, "/v1/events").expect("the event list is checked");
        assert!(events.iter().any(|p| p == "types") && events.iter().any(|p| p == "cursor"), "{events:?}");
        assert_eq!(table.query_parameters(&Method::GET, "/v1/accounts/abc"), Some(&[][..]), "an account takes none");
        assert_eq!(table.query_parameters(&Method::GET, "/oauth/callback"), None, "the provider adds what it likes");
        assert_eq!(table.query_parameters(&Method::GET, "/graphql"), None);
    }
}
