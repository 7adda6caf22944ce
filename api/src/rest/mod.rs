//! REST under `/v1`: thin handlers over the service layer.

pub mod accounts;
pub mod api_keys;
pub mod audit;
pub mod auth;
pub mod events;
pub mod grants;
pub mod health;
pub mod messages;
pub mod oauth_callback;
pub mod ops;
pub mod received_messages;
pub mod routing;
pub mod tenants;
pub mod token_configs;
pub mod webhooks;

use actix_web::web;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v1")
            .configure(auth::routes)
            .configure(tenants::routes)
            .configure(api_keys::routes)
            .configure(audit::routes)
            .configure(events::routes)
            .configure(grants::routes)
            .configure(token_configs::routes)
            .configure(webhooks::routes)
            .configure(accounts::routes)
            .configure(messages::routes)
            .configure(received_messages::routes)
            .configure(routing::routes)
            .configure(ops::routes),
    )
    .configure(health::routes)
    .configure(oauth_callback::routes);
}
