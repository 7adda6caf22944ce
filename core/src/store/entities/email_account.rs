use crate::store::ids::{AccountId, GrantId, TenantId, TokenConfigId};
use sea_orm::entity::prelude::*;

use crate::model::{AccountState, AfterFetch, AuthMethod, Direction, Protocol, Security};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "email_accounts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: AccountId,
    pub tenant_id: TenantId,
    pub name: String,
    pub direction: Direction,
    pub protocol: Protocol,
    pub host: String,
    pub port: i32,
    pub security: Security,
    pub auth_method: AuthMethod,
    pub login: String,
    /// Encrypted envelope (see `crypto`).
    pub password: Option<String>,
    pub token_config_id: Option<TokenConfigId>,
    /// The grant (shared by the mailbox's inbound and outbound accounts) once someone consented.
    pub grant_id: Option<GrantId>,
    pub state: AccountState,
    pub last_error: Option<String>,
    /// What kind of failure `last_error` describes (`failure::FailureKind`), for the fix-it hints.
    pub last_error_kind: Option<crate::failure::FailureKind>,
    pub enabled: bool,
    pub from_filter: Option<String>,
    pub is_default: bool,
    pub shared_mailbox: bool,
    pub folder: Option<String>,
    pub poll_interval_seconds: Option<i32>,
    pub after_fetch: Option<AfterFetch>,
    pub move_to_folder: Option<String>,
    pub owner_subject: String,
    /// An admin created or authorized this account, so it may use the configuration's app-flow grant.
    pub app_grant_approved: bool,
    /// Inbound sync position: the folder it belongs to, its UIDVALIDITY and the last stored UID.
    pub sync_folder: Option<String>,
    pub uid_validity: Option<i64>,
    pub last_uid: Option<i64>,
    pub next_poll_at: Option<DateTimeUtc>,
    pub last_polled_at: Option<DateTimeUtc>,
    pub poll_failures: i32,
    /// A worker holds the account (poll or test) until then; expired leases are free again.
    pub lease_until: Option<DateTimeUtc>,
    /// A job for this row was pushed to Redis; until then the scheduler does not push another.
    pub dispatched_until: Option<DateTimeUtc>,
    pub confirmed_at: Option<DateTimeUtc>,
    /// Set by the database when the account enters `error`, cleared when it leaves it.
    pub failing_since: Option<DateTimeUtc>,
    /// Overrides the deployment's per-account send pace (messages per minute; 0: no limit).
    pub send_rate_per_minute: Option<i32>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

// The lists read accounts by position (`store::positional`): every field, in declaration order.
crate::store::positional::by_position!(Model {
    id,
    tenant_id,
    name,
    direction,
    protocol,
    host,
    port,
    security,
    auth_method,
    login,
    password [nullable],
    token_config_id [nullable],
    grant_id [nullable],
    state,
    last_error [nullable],
    last_error_kind [nullable],
    enabled,
    from_filter [nullable],
    is_default,
    shared_mailbox,
    folder [nullable],
    poll_interval_seconds [nullable],
    after_fetch [nullable],
    move_to_folder [nullable],
    owner_subject,
    app_grant_approved,
    sync_folder [nullable],
    uid_validity [nullable],
    last_uid [nullable],
    next_poll_at [nullable],
    last_polled_at [nullable],
    poll_failures,
    lease_until [nullable],
    dispatched_until [nullable],
    confirmed_at [nullable],
    failing_since [nullable],
    send_rate_per_minute [nullable],
    created_at,
    updated_at,
});
