use crate::store::ids::{GrantId, TenantId, TokenConfigId};
use sea_orm::entity::prelude::*;

use crate::store::json::StringList;

use crate::model::GrantStatus;

/// The subject of a client-credentials grant: the app itself.
pub const APP_SUBJECT: &str = "app";

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "grants")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: GrantId,
    pub tenant_id: TenantId,
    pub token_config_id: TokenConfigId,
    /// The mailbox login the grant serves (lower-cased), or `app` for client-credentials grants.
    pub subject: String,
    /// Who consented, as the provider said (may differ for shared mailboxes).
    pub consented_by: Option<String>,
    /// The Postbridge caller (API key or JWT subject) that started the consent.
    pub connected_by: Option<String>,
    /// Encrypted envelope (see `crypto`).
    pub access_token: Option<String>,
    /// Encrypted envelope (see `crypto`).
    pub refresh_token: Option<String>,
    pub expires_at: Option<DateTimeUtc>,
    /// When the access token is refreshed ahead of expiry: `expires_at` less min(5 minutes, a third of the
    /// token's lifetime), set whenever tokens are stored. Every "due" predicate reads it.
    pub refresh_at: Option<DateTimeUtc>,
    #[sea_orm(column_type = "JsonBinary")]
    pub scopes: StringList,
    pub status: GrantStatus,
    pub last_error: Option<String>,
    /// What kind of failure `last_error` describes (`failure::FailureKind`), for the fix-it hints.
    pub last_error_kind: Option<crate::failure::FailureKind>,
    pub refresh_failures: i32,
    pub next_refresh_at: Option<DateTimeUtc>,
    /// Set while a background batch refreshes the grant (`grants::refresh_grants`): until then an on-demand caller
    /// uses the current token, or waits for the batch's answer.
    pub refreshing_until: Option<DateTimeUtc>,
    pub last_refreshed_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

// The list reads grants by position (`store::positional`): every field, in declaration order.
crate::store::positional::by_position!(Model {
    id,
    tenant_id,
    token_config_id,
    subject,
    consented_by [nullable],
    connected_by [nullable],
    access_token [nullable],
    refresh_token [nullable],
    expires_at [nullable],
    refresh_at [nullable],
    scopes,
    status,
    last_error [nullable],
    last_error_kind [nullable],
    refresh_failures,
    next_refresh_at [nullable],
    refreshing_until [nullable],
    last_refreshed_at [nullable],
    created_at,
    updated_at,
});
