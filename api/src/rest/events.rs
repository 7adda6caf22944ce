use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use postbridge_core::error::ErrorBody;
use postbridge_core::model::Page;
use postbridge_core::observe::events::{self, Event, EventQuery};
use postbridge_core::{AppContext, AppError};
use uuid::Uuid;

use crate::error::ApiResult;
use crate::extract::Tenant;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/events", web::get().to(list)).route("/events/{id}", web::get().to(get));
}

/// What happened in the tenant, newest first: messages received, sent and failed, account state changes,
/// grants needing consent again or revoked, client secrets about to expire (viewer or above).
#[utoipa::path(get, path = "/v1/events", tag = "events", security(("bearer" = [])), params(EventQuery),
    responses((status = 200, body = Page<Event>), (status = 422, body = ErrorBody)))]
pub async fn list(
    ctx: web::Data<AppContext>,
    Tenant(scope): Tenant,
    pairs: web::Query<Vec<(String, String)>>,
) -> ApiResult<HttpResponse> {
    let query = event_query(pairs.into_inner())?;
    Ok(HttpResponse::Ok().json(events::list(&ctx, &scope, query).await?))
}

#[utoipa::path(get, path = "/v1/events/{id}", tag = "events", security(("bearer" = [])),
    responses((status = 200, body = Event), (status = 404, body = ErrorBody)))]
pub async fn get(ctx: web::Data<AppContext>, Tenant(scope): Tenant, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(events::get(&ctx, &scope, id.into_inner()).await?))
}

/// Reads the query string by hand: `types` may be repeated, which the derived query extractor cannot take.
fn event_query(pairs: Vec<(String, String)>) -> Result<EventQuery, AppError> {
    let mut query = EventQuery::default();
    let mut types = Vec::new();
    for (name, value) in pairs {
        match name.as_str() {
            "types" | "type" => types.push(value),
            "resource_type" => query.resource_type = Some(value),
            "resource_id" => query.resource_id = Some(parse_id("resource_id", &value)?),
            "cursor" => query.cursor = Some(parse_id("cursor", &value)?),
            "since" => query.since = Some(parse_time("since", &value)?),
            "until" => query.until = Some(parse_time("until", &value)?),
            "limit" => {
                let limit = value
                    .parse()
                    .map_err(|_| AppError::validation("limit", "invalid_limit", "limit must be between 1 and 200"))?;
                query.limit = Some(limit);
            }
            _ => {}
        }
    }
    if !types.is_empty() {
        query.types = Some(types);
    }
    Ok(query)
}

fn parse_id(field: &'static str, value: &str) -> Result<Uuid, AppError> {
    Uuid::parse_str(value.trim()).map_err(|_| AppError::validation(field, "invalid_id", format!("{field} must be an id")))
}

fn parse_time(field: &'static str, value: &str) -> Result<DateTime<Utc>, AppError> {
    DateTime::parse_from_rfc3339(value.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| AppError::validation(field, "invalid_timestamp", format!("{field} must be an RFC 3339 timestamp")))
}
