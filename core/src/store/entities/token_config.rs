use crate::store::ids::{TenantId, TokenConfigId};
use sea_orm::entity::prelude::*;

use crate::store::json::{StringList, StringMap};

use crate::model::{OAuthFlow, Provider};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "token_configs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: TokenConfigId,
    pub tenant_id: TenantId,
    pub name: String,
    pub provider: Provider,
    pub flow: OAuthFlow,
    pub client_id: String,
    /// Encrypted envelope (see `crypto`).
    pub client_secret: Option<String>,
    pub client_secret_expires_at: Option<Date>,
    /// The next secret (encrypted), tried when the provider refuses `client_secret`; promoted on its first success.
    pub client_secret_next: Option<String>,
    pub client_secret_next_expires_at: Option<Date>,
    pub directory_tenant_id: Option<String>,
    pub auth_url: Option<String>,
    pub token_url: String,
    /// RFC 7009 endpoint a deleted grant's token is revoked at (Google's preset; optional for generic).
    pub revocation_url: Option<String>,
    #[sea_orm(column_type = "JsonBinary")]
    pub scopes: StringList,
    /// A generic configuration's issuer identifier (RFC 9207); presets know theirs.
    pub issuer: Option<String>,
    #[sea_orm(column_type = "JsonBinary")]
    pub extra_auth_params: StringMap,
    /// Mail hosts oauth2 accounts of a generic configuration may use (lower-case; `*.domain` matches subdomains).
    #[sea_orm(column_type = "JsonBinary")]
    pub allowed_mail_hosts: StringList,
    /// The provider refused the client credentials (wrong or expired secret): an admin must act.
    pub needs_admin: bool,
    /// A Google app whose consent screen is in "Testing": its refresh tokens expire after 7 days.
    pub testing_app: bool,
    pub last_error: Option<String>,
    /// The smallest expiry warning window (30, 14, 1 days) already announced for the current secret.
    pub secret_expiry_notified_days: Option<i32>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
