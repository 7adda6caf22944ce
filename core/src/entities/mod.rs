//! sea-orm entities, one per table. Every tenant-owned table carries `tenant_id`; services always filter on it.

pub mod api_key;
pub mod email_account;
pub mod grant;
pub mod oauth_state;
pub mod tenant;
pub mod token_config;
