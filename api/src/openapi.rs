//! The OpenAPI document served at `/openapi.json` (and rendered at `/docs`).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::rest::{
    accounts, api_keys, audit, events, grants, health, messages, oauth_callback, ops, tenants, token_configs, webhooks,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Postbridge API", description = "Connect, receive and send tenants' mailboxes. Authenticate with `Authorization: Bearer <API key or JWT>`; operators add `X-Postbridge-Tenant: <tenant id>` on tenant-scoped routes. Errors are `{code, message, field?}`."),
    paths(
        health::healthz, health::readyz, crate::metrics::metrics,
        tenants::issue_token, tenants::list, tenants::create, tenants::get, tenants::update, tenants::suspend, tenants::resume, tenants::delete,
        api_keys::list, api_keys::create, api_keys::get, api_keys::revoke,
        audit::list,
        events::list, events::get,
        token_configs::list, token_configs::create, token_configs::get, token_configs::update, token_configs::delete,
        webhooks::list, webhooks::create, webhooks::get, webhooks::update, webhooks::delete, webhooks::rotate_secret,
        webhooks::deliveries, webhooks::attempts, webhooks::redeliver,
        accounts::list, accounts::create, accounts::get, accounts::update, accounts::delete, accounts::test,
        grants::authorize, grants::list, grants::get, grants::revoke, grants::expiring,
        oauth_callback::callback,
        messages::list_received, messages::get_received, messages::raw_received,
        messages::send, messages::list_sent, messages::get_sent, messages::explain_route,
        ops::ops_overview, ops::ops_credential_health, ops::tenant_credential_health, ops::ops_workers,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    }
}
