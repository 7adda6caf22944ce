//! Storing fetched messages: once each (the unique keys are UIDVALIDITY+UID and POP3's UIDL), in
//! multi-row batches, parsed headers beside the raw bytes; and reading them back.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use mail_parser::{Address, MessageParser};
use sea_orm::{ColumnTrait, ConnectionTrait, DbBackend, QueryFilter, QueryOrder, QuerySelect, Statement, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::access::auth::TenantScope;
use crate::connect::accounts;
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::model::{Page, PageRequest, Role};
use crate::store::entities::{email_account, inbound_message};
use crate::store::ids::{AccountId, InboundMessageId};
use crate::store::limit_of;
use crate::store::page_of;
use crate::store::tenant_owned::{find_in_tenant, TenantOwned};
use async_graphql::SimpleObject;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A fetched message, parsed (the raw bytes are at `.../raw`).
#[derive(Clone, Debug, Serialize, Deserialize, SimpleObject, ToSchema)]
pub struct InboundMessage {
    pub id: Uuid,
    pub account_id: Uuid,
    pub folder: String,
    pub uid_validity: i64,
    pub uid: i64,
    pub message_id: Option<String>,
    pub from: Option<String>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub subject: Option<String>,
    pub sent_at: Option<DateTime<Utc>>,
    /// The message's size in bytes (for an oversized message, the size the mail server announced).
    pub size: i32,
    pub received_at: DateTime<Utc>,
    /// The message was larger than the inbound maximum (`POSTBRIDGE_MAX_INBOUND_MESSAGE_BYTES`): only its headers
    /// were stored, and `.../raw` returns just them. The full message stays on the mail server.
    pub oversized: bool,
}

/// One fetched message: an IMAP UID (0 for POP3), or a POP3 UIDL, and the bytes as received.
pub struct Fetched<'a> {
    pub uid: i64,
    pub pop3_uid: Option<&'a str>,
    pub raw: &'a [u8],
    /// `raw` holds only the headers of a message above the inbound maximum, whose size is `size`.
    pub oversized: Option<u64>,
}

impl Fetched<'_> {
    /// The message's size: its bytes, or what the server announced for a placeholder.
    fn size(&self) -> i32 {
        let size = self.oversized.unwrap_or(self.raw.len() as u64);
        i32::try_from(size).unwrap_or(i32::MAX)
    }
}

struct Summary {
    message_id: Option<String>,
    from: Option<String>,
    to: Vec<String>,
    cc: Vec<String>,
    subject: Option<String>,
    sent_at: Option<DateTime<Utc>>,
}

fn addresses(address: Option<&Address<'_>>) -> Vec<String> {
    address.map(|a| a.iter().filter_map(|addr| addr.address().map(str::to_owned)).collect()).unwrap_or_default()
}

/// Headers for listing; a message that does not parse is still stored, with empty fields.
fn summarize(raw: &[u8]) -> Summary {
    let Some(message) = MessageParser::default().parse_headers(raw) else {
        return Summary { message_id: None, from: None, to: Vec::new(), cc: Vec::new(), subject: None, sent_at: None };
    };
    Summary {
        message_id: message.message_id().map(|id| format!("<{id}>")),
        from: addresses(message.from()).into_iter().next(),
        to: addresses(message.to()),
        cc: addresses(message.cc()),
        subject: message.subject().map(str::to_owned),
        sent_at: message.date().and_then(|d| DateTime::from_timestamp(d.to_timestamp(), 0)),
    }
}

pub fn content_hash(raw: &[u8]) -> String {
    Sha256::digest(raw).iter().map(|b| format!("{b:02x}")).collect()
}

/// Fingerprints (Message-ID, content hash) of what an account already holds, to re-match after a
/// UIDVALIDITY change without storing a message twice.
pub async fn fingerprints<C: ConnectionTrait>(db: &C, account_id: AccountId) -> AppResult<HashSet<(Option<String>, String)>> {
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT message_id, content_hash FROM inbound_messages WHERE account_id = $1",
            [account_id.into()],
        ))
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get::<Option<String>>("", "message_id")?, r.try_get::<String>("", "content_hash")?)))
        .collect::<Result<_, sea_orm::DbErr>>()
        .map_err(AppError::from)
}

/// Rows per INSERT: 17 columns each, well under Postgres' 65,535 parameters.
const BATCH_ROWS: usize = 500;
/// Message bytes per INSERT: one statement stays far below Postgres' 1 GiB message limit (a single larger message,
/// which the inbound maximum bounds, goes alone).
const STATEMENT_BYTES: usize = 16 * 1024 * 1024;

/// Splits `sizes` into consecutive runs of at most `max_rows` items and at most `max_bytes` bytes each (an item larger
/// than `max_bytes` forms a run of its own); returns each run's end index.
pub(crate) fn runs_by_bytes(sizes: impl IntoIterator<Item = usize>, max_rows: usize, max_bytes: usize) -> Vec<usize> {
    let mut ends = Vec::new();
    let (mut rows, mut bytes) = (0usize, 0usize);
    for (index, size) in sizes.into_iter().enumerate() {
        if rows > 0 && (rows >= max_rows || bytes.saturating_add(size) > max_bytes) {
            ends.push(index);
            rows = 0;
            bytes = 0;
        }
        rows += 1;
        bytes = bytes.saturating_add(size);
    }
    if rows > 0 {
        ends.push(ends.last().copied().unwrap_or(0) + rows);
    }
    ends
}

/// Inserts the messages not stored yet; returns how many were new. `skip` holds fingerprints to treat
/// as already stored (a resynchronisation after UIDVALIDITY changed).
pub async fn store_batch<C: ConnectionTrait>(
    db: &C,
    account: &email_account::Model,
    folder: &str,
    uid_validity: i64,
    messages: &[Fetched<'_>],
    skip: Option<&HashSet<(Option<String>, String)>>,
) -> AppResult<u64> {
    let mut inserted = 0;
    let now = Utc::now();
    let mut start = 0;
    for end in runs_by_bytes(messages.iter().map(|m| m.raw.len()), BATCH_ROWS, STATEMENT_BYTES) {
        let chunk = &messages[start..end];
        start = end;
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 17);
        let mut rows = 0;
        for message in chunk {
            let summary = summarize(message.raw);
            let hash = content_hash(message.raw);
            if skip.is_some_and(|s| s.contains(&(summary.message_id.clone(), hash.clone()))) {
                continue;
            }
            rows += 1;
            values.extend([
                Uuid::now_v7().into(),
                account.tenant_id.into(),
                account.id.into(),
                folder.into(),
                uid_validity.into(),
                message.uid.into(),
                message.pop3_uid.map(str::to_owned).into(),
                summary.message_id.into(),
                summary.from.into(),
                serde_json::json!(summary.to).into(),
                serde_json::json!(summary.cc).into(),
                summary.subject.into(),
                summary.sent_at.into(),
                message.size().into(),
                hash.into(),
                message.raw.to_vec().into(),
                message.oversized.is_some().into(),
            ]);
        }
        if rows == 0 {
            continue;
        }
        let tuples: Vec<String> = (0..rows)
            .map(|r| format!("({})", (1..=17).map(|c| format!("${}", r * 17 + c)).collect::<Vec<_>>().join(", ")))
            .collect();
        let sql = format!(
            "INSERT INTO inbound_messages (id, tenant_id, account_id, folder, uid_validity, uid, pop3_uid, message_id, \
             from_address, to_addresses, cc_addresses, subject, sent_at, size, content_hash, raw, oversized) VALUES {} \
             ON CONFLICT DO NOTHING RETURNING id, message_id",
            tuples.join(", ")
        );
        let stored = db.query_all_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
        inserted += stored.len() as u64;
        record_received(db, account, &stored, now).await?;
    }
    Ok(inserted)
}

/// `message.received` for each newly stored message, in the transaction that stores it (so a crash neither
/// loses an event nor, since a refetch stores nothing, duplicates one).
async fn record_received<C: ConnectionTrait>(
    db: &C,
    account: &email_account::Model,
    stored: &[sea_orm::QueryResult],
    now: DateTime<Utc>,
) -> AppResult<()> {
    if stored.is_empty() {
        return Ok(());
    }
    let mut values: Vec<Value> = Vec::with_capacity(stored.len() * 5);
    for row in stored {
        let id: InboundMessageId = row.try_get("", "id")?;
        let message_id: Option<String> = row.try_get("", "message_id")?;
        values.extend([
            Uuid::now_v7().into(),
            account.tenant_id.into(),
            id.into(),
            serde_json::json!({"account_id": account.id, "message_id": message_id}).into(),
            now.into(),
        ]);
    }
    let tuples: Vec<String> = (0..stored.len())
        .map(|r| {
            format!(
                "(${}, ${}, 'message.received', 'received_message', ${}, ${}, ${})",
                r * 5 + 1,
                r * 5 + 2,
                r * 5 + 3,
                r * 5 + 4,
                r * 5 + 5
            )
        })
        .collect();
    let sql = format!(
        "INSERT INTO events (id, tenant_id, event_type, resource_type, resource_id, data, created_at) VALUES {}",
        tuples.join(", ")
    );
    db.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
    Ok(())
}

fn view(model: inbound_message::Model) -> InboundMessage {
    InboundMessage {
        id: model.id.into(),
        account_id: model.account_id.into(),
        folder: model.folder,
        uid_validity: model.uid_validity,
        uid: model.uid,
        message_id: model.message_id,
        from: model.from_address,
        to: model.to_addresses.0,
        cc: model.cc_addresses.0,
        subject: model.subject,
        sent_at: model.sent_at,
        size: model.size,
        received_at: model.received_at,
        oversized: model.oversized,
    }
}

/// An account's received messages, newest first.
pub async fn list(
    ctx: &AppContext,
    scope: &TenantScope,
    account_id: AccountId,
    page: PageRequest,
) -> AppResult<Page<InboundMessage>> {
    scope.require(Role::Viewer)?;
    accounts::find_visible(ctx, scope, account_id).await?;
    let limit = limit_of(&page)?;
    let mut query = inbound_message::Entity::in_tenant(scope.tenant_id)
        .select_only()
        .columns([
            inbound_message::Column::Id,
            inbound_message::Column::TenantId,
            inbound_message::Column::AccountId,
            inbound_message::Column::Folder,
            inbound_message::Column::UidValidity,
            inbound_message::Column::Uid,
            inbound_message::Column::Pop3Uid,
            inbound_message::Column::MessageId,
            inbound_message::Column::FromAddress,
            inbound_message::Column::ToAddresses,
            inbound_message::Column::CcAddresses,
            inbound_message::Column::Subject,
            inbound_message::Column::SentAt,
            inbound_message::Column::Size,
            inbound_message::Column::ContentHash,
            inbound_message::Column::ReceivedAt,
            inbound_message::Column::Oversized,
        ])
        // The list never needs the raw bytes; select an empty value in their place.
        .column_as(sea_orm::sea_query::Expr::cust("''::bytea"), "raw")
        .filter(inbound_message::Column::AccountId.eq(account_id))
        .order_by_desc(inbound_message::Column::Id)
        .limit(limit + 1);
    if let Some(cursor) = page.cursor {
        query = query.filter(inbound_message::Column::Id.lt(cursor));
    }
    page_of(query.all(&ctx.db).await?, limit, |m| m.id.into(), |m| Ok(view(m)))
}

async fn find(ctx: &AppContext, scope: &TenantScope, id: InboundMessageId) -> AppResult<inbound_message::Model> {
    scope.require(Role::Viewer)?;
    let model = find_in_tenant::<inbound_message::Entity, _>(&ctx.db, scope.tenant_id, id).await?;
    // Members see only their own accounts' mail.
    accounts::find_visible(ctx, scope, model.account_id).await.map_err(|_| AppError::not_found("message"))?;
    Ok(model)
}

pub async fn get(ctx: &AppContext, scope: &TenantScope, id: InboundMessageId) -> AppResult<InboundMessage> {
    Ok(view(find(ctx, scope, id).await?))
}

/// The message exactly as received (RFC 5322 bytes).
pub async fn raw(ctx: &AppContext, scope: &TenantScope, id: InboundMessageId) -> AppResult<Vec<u8>> {
    Ok(find(ctx, scope, id).await?.raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_bounded_by_rows_and_by_bytes_and_a_large_item_goes_alone() {
        assert_eq!(runs_by_bytes([], 3, 10), Vec::<usize>::new());
        assert_eq!(runs_by_bytes([1, 1, 1, 1, 1, 1, 1], 3, 100), vec![3, 6, 7]);
        assert_eq!(runs_by_bytes([4, 4, 4, 4], 10, 10), vec![2, 4]);
        assert_eq!(runs_by_bytes([2, 50, 2, 2], 10, 10), vec![1, 2, 4]);
        assert_eq!(runs_by_bytes([50], 10, 10), vec![1]);
        // Every run but a lone oversized item stays within the byte bound.
        let sizes: Vec<usize> = (0..1000).map(|i| (i * 7919) % 5000).collect();
        let mut start = 0;
        for end in runs_by_bytes(sizes.iter().copied(), 500, 16_000) {
            let run = &sizes[start..end];
            assert!(!run.is_empty() && run.len() <= 500);
            assert!(run.len() == 1 || run.iter().sum::<usize>() <= 16_000);
            start = end;
        }
        assert_eq!(start, sizes.len());
    }
}
