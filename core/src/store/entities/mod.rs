//! sea-orm entities, one per table. Every tenant-owned table carries `tenant_id`; services always filter on it.

pub mod api_key;
pub mod email_account;
pub mod grant;
pub mod inbound_message;
pub mod oauth_state;
pub mod outbound_message;
pub mod tenant;
pub mod token_config;
