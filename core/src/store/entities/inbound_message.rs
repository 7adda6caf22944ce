use crate::store::ids::{AccountId, InboundMessageId, TenantId};
use sea_orm::entity::prelude::*;

use crate::store::json::{AttachmentList, StringList};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "inbound_messages")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: InboundMessageId,
    pub tenant_id: TenantId,
    pub account_id: AccountId,
    pub folder: String,
    pub uid_validity: i64,
    pub uid: i64,
    pub pop3_uid: Option<String>,
    pub message_id: Option<String>,
    pub from_address: Option<String>,
    #[sea_orm(column_type = "JsonBinary")]
    pub to_addresses: StringList,
    #[sea_orm(column_type = "JsonBinary")]
    pub cc_addresses: StringList,
    pub subject: Option<String>,
    pub sent_at: Option<DateTimeUtc>,
    pub size: i32,
    pub content_hash: String,
    pub raw: Vec<u8>,
    pub received_at: DateTimeUtc,
    /// `raw` holds only the headers; the message was larger than the inbound maximum.
    pub oversized: bool,
    pub text_body: Option<String>,
    pub html_body: Option<String>,
    pub in_reply_to: Option<String>,
    #[sea_orm(column_type = "JsonBinary")]
    pub references_ids: StringList,
    #[sea_orm(column_type = "JsonBinary")]
    pub attachments: AttachmentList,
    pub snippet: Option<String>,
    /// The message did not parse: only its raw bytes and headers-as-found are stored.
    pub unparsed: bool,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

// The list reads received messages by position (`store::positional`): every field, in declaration order.
crate::store::positional::by_position!(Model {
    id,
    tenant_id,
    account_id,
    folder,
    uid_validity,
    uid,
    pop3_uid [nullable],
    message_id [nullable],
    from_address [nullable],
    to_addresses,
    cc_addresses,
    subject [nullable],
    sent_at [nullable],
    size,
    content_hash,
    raw,
    received_at,
    oversized,
    text_body [nullable],
    html_body [nullable],
    in_reply_to [nullable],
    references_ids,
    attachments,
    snippet [nullable],
    unparsed,
});
