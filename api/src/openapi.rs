//! The OpenAPI document served at `/openapi.json` (and rendered at `/docs`).

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::rest::{
    accounts, api_keys, audit, auth, events, grants, health, messages, oauth_callback, ops, received_messages, routing, tenants,
    token_configs, webhooks,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Postbridge API", description = "Connect, receive and send tenants' mailboxes. Authenticate with `Authorization: Bearer <API key or JWT>`; operators add `X-Postbridge-Tenant: <tenant id>` on tenant-scoped routes. Errors are `{code, message, field?}`. Request bodies are JSON (`Content-Type: application/json`, else 415) of at most `POSTBRIDGE_MAX_REQUEST_BYTES` (1 MiB; `POST /v1/messages`: sized for `POSTBRIDGE_MAX_MESSAGE_BYTES`), else 413; unknown fields in a body are ignored. URLs over 8 KiB answer 414, more than 64 headers or 32 KiB of them 431, a method a path does not serve 405 with `Allow`. Requests are rate limited per tenant, and without a valid credential per client address (429 with `Retry-After`)."),
    paths(
        health::healthz, health::readyz, crate::metrics::metrics,
        auth::issue_token, tenants::list, tenants::create, tenants::get, tenants::update, tenants::suspend, tenants::resume, tenants::delete,
        api_keys::list, api_keys::create, api_keys::get, api_keys::revoke,
        audit::list,
        events::list, events::get,
        token_configs::list, token_configs::create, token_configs::get, token_configs::update, token_configs::delete,
        webhooks::list, webhooks::create, webhooks::get, webhooks::update, webhooks::delete, webhooks::rotate_secret,
        webhooks::deliveries, webhooks::attempts, webhooks::redeliver,
        accounts::list, accounts::create, accounts::get, accounts::update, accounts::delete, accounts::test,
        accounts::authorize, accounts::import_grant, grants::list, grants::get, grants::revoke, token_configs::expiring,
        oauth_callback::callback,
        accounts::list_received, received_messages::get_received, received_messages::raw_received, received_messages::attachment_received,
        messages::send, messages::list_sent, messages::get_sent, messages::cancel, messages::retry, messages::resolve, routing::explain_route,
        ops::ops_overview, ops::ops_credential_health, ops::tenant_credential_health, ops::ops_workers,
    ),
    modifiers(&BearerAuth, &CommonResponses)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    }
}

/// The answers every route may give besides its own, so the document lists every status the server sends:
/// 400 (a malformed path, query, body or tenant header), 401/403/429 where a credential is needed, 429 for
/// requests without one too, 404 where the path names a resource, 413/415/422 where a body is read, 422 where
/// a query is validated.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let limited = path.starts_with("/v1/");
            for op in [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete].into_iter().flatten() {
                add_common(op, path, limited);
            }
        }
    }
}

fn add_common(op: &mut Operation, path: &str, limited: bool) {
    let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let has_query = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let mut statuses: Vec<(&str, &str)> = vec![("400", "The path, query, body or a header could not be read")];
    if secured {
        statuses.push(("401", "No credential, or one that is not valid"));
        statuses.push(("403", "The credential's role does not allow this, or its tenant is suspended"));
    }
    if limited {
        statuses.push(("429", "Over the tenant's (or, without a valid credential, the client address's) rate limit"));
    }
    if path.contains('{') {
        statuses.push(("404", "No such resource in this tenant"));
    }
    if op.request_body.is_some() {
        statuses.push(("413", "The body is larger than the route accepts"));
        statuses.push(("415", "The body is not application/json"));
        statuses.push(("422", "A field is not valid (`field` names it)"));
    } else if has_query || path.contains('{') {
        statuses.push(("422", "A parameter is not valid"));
    }
    for (status, description) in statuses {
        op.responses.responses.entry(status.to_owned()).or_insert_with(|| {
            ResponseBuilder::new()
                .description(description)
                .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
                .build()
                .into()
        });
    }
}
