use crate::store::ids::{AccountId, OutboundMessageId, TenantId};
use sea_orm::entity::prelude::*;

use crate::store::json::{RecipientResults, StringList};

use crate::model::{OutboundStatus, RoutedBy};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "outbound_messages")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: OutboundMessageId,
    pub tenant_id: TenantId,
    pub idempotency_key: Option<String>,
    pub requested_from: String,
    pub account_id: Option<AccountId>,
    pub routed_by: RoutedBy,
    pub envelope_from: String,
    #[sea_orm(column_type = "JsonBinary")]
    pub recipients: StringList,
    pub subject: String,
    pub message_id: String,
    /// The composed RFC 5322 message, fixed before the first attempt (stable Message-ID).
    pub raw: Vec<u8>,
    pub size: i32,
    pub status: OutboundStatus,
    pub attempts: i32,
    pub next_attempt_at: DateTimeUtc,
    pub lease_until: Option<DateTimeUtc>,
    /// The job holding the send lease; only it may record the outcome.
    pub lease_token: Option<Uuid>,
    /// The worker process (`AppContext::instance_id`) holding the send lease.
    pub leased_by: Option<Uuid>,
    /// Set just before the content goes to the SMTP server: an interrupted delivery without it was never sent.
    pub handed_at: Option<DateTimeUtc>,
    /// A job for this row was pushed to Redis; until then the scheduler does not push another.
    pub dispatched_until: Option<DateTimeUtc>,
    pub sent_folder_checked_at: Option<DateTimeUtc>,
    pub last_error: Option<String>,
    pub smtp_reply: Option<String>,
    pub created_at: DateTimeUtc,
    pub sent_at: Option<DateTimeUtc>,
    pub updated_at: DateTimeUtc,
    /// SHA-256 (hex) of the send request without its idempotency key (null: stored before it was kept).
    pub request_hash: Option<String>,
    /// Each recipient's answer to `RCPT TO` once the message was handed over (null before).
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub recipient_results: Option<RecipientResults>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

// The list reads messages by position (`store::positional`): every field, in declaration order.
crate::store::positional::by_position!(Model {
    id,
    tenant_id,
    idempotency_key [nullable],
    requested_from,
    account_id [nullable],
    routed_by,
    envelope_from,
    recipients,
    subject,
    message_id,
    raw,
    size,
    status,
    attempts,
    next_attempt_at,
    lease_until [nullable],
    lease_token [nullable],
    leased_by [nullable],
    handed_at [nullable],
    dispatched_until [nullable],
    sent_folder_checked_at [nullable],
    last_error [nullable],
    smtp_reply [nullable],
    created_at,
    sent_at [nullable],
    updated_at,
    request_hash [nullable],
    recipient_results [nullable],
});
