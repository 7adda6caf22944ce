//! Storing fetched messages: once each (the unique keys are UIDVALIDITY+UID and POP3's UIDL), in
//! multi-row batches, parsed headers beside the raw bytes; and reading them back.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use mail_parser::{Address, MessageParser};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, DbBackend, QueryFilter, QueryOrder, QuerySelect, Statement, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::access::auth::TenantScope;
use crate::connect::accounts;
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::model::{Page, PageRequest, Role};
use crate::receive::content::{self, Attachment};
use crate::store::entities::{email_account, inbound_message};
use crate::store::ids::{AccountId, InboundMessageId};
use crate::store::limit_of;
use crate::store::page_of;
use crate::store::positional;
use crate::store::tenant_owned::TenantOwned;
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
    /// The first `text/plain` body (at most 2 MiB); only when one message is read, never in lists.
    pub text: Option<String>,
    /// The first `text/html` body (at most 2 MiB), as sent or sanitised on request; only when one message is read.
    pub html: Option<String>,
    /// The start of the text, whitespace folded (200 characters).
    pub snippet: Option<String>,
    /// `In-Reply-To`, with angle brackets.
    pub in_reply_to: Option<String>,
    /// `References`, oldest first, with angle brackets.
    pub references: Vec<String>,
    /// Attachments and inline parts, each downloadable at `.../attachments/{index}`.
    pub attachments: Vec<Attachment>,
    /// The message did not parse as MIME: only `.../raw` (and the headers found) can be trusted.
    pub unparsed: bool,
}

/// How the HTML body is returned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, async_graphql::Enum, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HtmlMode {
    /// As the sender wrote it.
    #[default]
    Original,
    /// Scripts, event handlers, forms, styles and unknown URL schemes removed (`cid:` links to inline parts kept).
    Sanitized,
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

/// Addresses kept of a `To` or `Cc` header, the first ones within [`content::MAX_LIST_BYTES`] (the message itself,
/// at `.../raw`, keeps them all).
const MAX_ADDRESSES: usize = 1000;

fn addresses(address: Option<&Address<'_>>) -> Vec<String> {
    address
        .map(|a| {
            content::within_list_bytes(
                a.iter()
                    .filter_map(|addr| addr.address().map(|one| content::stored_text(one, content::MAX_HEADER_BYTES)))
                    .take(MAX_ADDRESSES),
            )
        })
        .unwrap_or_default()
}

/// Headers for listing; a message that does not parse is still stored, with empty fields.
fn summarize(raw: &[u8]) -> Summary {
    let empty = || Summary { message_id: None, from: None, to: Vec::new(), cc: Vec::new(), subject: None, sent_at: None };
    // A parser bug met by a hostile message leaves that message's fields empty; it never fails the poll.
    std::panic::catch_unwind(|| summarize_unguarded(raw)).ok().flatten().unwrap_or_else(empty)
}

fn summarize_unguarded(raw: &[u8]) -> Option<Summary> {
    let message = MessageParser::default().parse_headers(raw)?;
    Some(Summary {
        message_id: message.message_id().map(content::message_id),
        from: addresses(message.from()).into_iter().next(),
        to: addresses(message.to()),
        cc: addresses(message.cc()),
        subject: message.subject().map(|subject| content::stored_text(subject, content::MAX_HEADER_BYTES)),
        sent_at: message.date().and_then(|d| DateTime::from_timestamp(d.to_timestamp(), 0)),
    })
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

/// Columns of one stored message.
const COLUMNS: usize = 24;
/// Rows per INSERT: 24 columns each, well under Postgres' 65,535 parameters.
const BATCH_ROWS: usize = 500;
/// Message bytes per INSERT (the decoded bodies beside them are at most as large again): one statement stays far
/// below Postgres' 1 GiB message limit (a single larger message, which the inbound maximum bounds, goes alone).
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
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * COLUMNS);
        let mut rows = 0;
        for message in chunk {
            let summary = summarize(message.raw);
            let hash = content_hash(message.raw);
            if skip.is_some_and(|s| s.contains(&(summary.message_id.clone(), hash.clone()))) {
                continue;
            }
            let content = content::parse(message.raw, message.oversized.is_some());
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
                content.text.into(),
                content.html.into(),
                content.in_reply_to.into(),
                serde_json::json!(content.references).into(),
                serde_json::json!(content.attachments).into(),
                content.snippet.into(),
                content.unparsed.into(),
            ]);
        }
        if rows == 0 {
            continue;
        }
        let tuples: Vec<String> = (0..rows)
            .map(|r| format!("({})", (1..=COLUMNS).map(|c| format!("${}", r * COLUMNS + c)).collect::<Vec<_>>().join(", ")))
            .collect();
        let sql = format!(
            "INSERT INTO inbound_messages (id, tenant_id, account_id, folder, uid_validity, uid, pop3_uid, message_id, \
             from_address, to_addresses, cc_addresses, subject, sent_at, size, content_hash, raw, oversized, \
             text_body, html_body, in_reply_to, references_ids, attachments, snippet, unparsed) VALUES {} \
             ON CONFLICT DO NOTHING RETURNING id, message_id, from_address, to_addresses, subject, snippet, attachments",
            tuples.join(", ")
        );
        let stored = db.query_all_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
        inserted += stored.len() as u64;
        record_received(db, account, &stored, now).await?;
    }
    if inserted > 0 {
        super::feed_health::record_arrival(db, account.id).await?;
    }
    Ok(inserted)
}

/// Recipients named in a `message.received` event (the message itself lists them all).
const EVENT_RECIPIENTS: usize = 50;

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
        let attachments: serde_json::Value = row.try_get("", "attachments")?;
        // Enough to act on without a second call: who, to whom, what about, and what is attached.
        let names: Vec<serde_json::Value> = attachments
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|a| serde_json::json!({"index": a["index"], "filename": a["filename"], "content_type": a["content_type"], "size": a["size"]}))
                    .collect()
            })
            .unwrap_or_default();
        let to: serde_json::Value = row.try_get("", "to_addresses")?;
        let to: Vec<serde_json::Value> =
            to.as_array().map(|a| a.iter().take(EVENT_RECIPIENTS).cloned().collect()).unwrap_or_default();
        let data = serde_json::json!({
            "account_id": account.id,
            "message_id": message_id,
            "from": row.try_get::<Option<String>>("", "from_address")?,
            "to": to,
            "subject": row.try_get::<Option<String>>("", "subject")?,
            "snippet": row.try_get::<Option<String>>("", "snippet")?,
            "attachments": names,
        });
        values.extend([Uuid::now_v7().into(), account.tenant_id.into(), id.into(), data.into(), now.into()]);
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
        text: model.text_body,
        html: model.html_body,
        snippet: model.snippet,
        in_reply_to: model.in_reply_to,
        references: model.references_ids.0,
        attachments: model.attachments.0,
        unparsed: model.unparsed,
    }
}

/// An account's received messages, newest first.
/// Which received messages a list shows; every condition given must hold.
#[derive(Clone, Debug, Default, Deserialize, async_graphql::InputObject, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReceivedFilter {
    /// Only messages stored from this folder (as named on the server, e.g. `INBOX`).
    pub folder: Option<String>,
    /// Only messages whose From address contains this text (case-insensitive, 1 to 200 characters).
    pub from: Option<String>,
    /// Only messages whose subject contains this text (case-insensitive, 1 to 200 characters).
    pub subject: Option<String>,
    /// Only messages stored at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Only messages stored before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
}

/// An account's received messages, newest first, filtered; the cursor pages through the filtered list.
pub async fn list(
    ctx: &AppContext,
    scope: &TenantScope,
    account_id: AccountId,
    page: PageRequest,
    filter: ReceivedFilter,
) -> AppResult<Page<InboundMessage>> {
    scope.require(Role::Viewer)?;
    accounts::find_visible(ctx, scope, account_id).await?;
    let limit = limit_of(&page)?;
    crate::store::check_time_range(filter.since, filter.until)?;
    let from = filter.from.as_deref().map(|text| crate::store::contains_pattern("from", text)).transpose()?;
    let subject = filter.subject.as_deref().map(|text| crate::store::contains_pattern("subject", text)).transpose()?;
    // The list never needs the raw bytes nor the bodies (a page stays small): empty values in their place.
    let shown = positional::with_columns(inbound_message::Entity::in_tenant(scope.tenant_id), |column| match column {
        inbound_message::Column::Raw => Some(Expr::cust("''::bytea")),
        inbound_message::Column::TextBody | inbound_message::Column::HtmlBody => Some(Expr::cust("NULL::text")),
        _ => None,
    });
    let mut query = shown
        .filter(inbound_message::Column::AccountId.eq(account_id))
        .order_by_desc(inbound_message::Column::Id)
        .limit(limit + 1);
    if let Some(cursor) = page.cursor {
        query = query.filter(inbound_message::Column::Id.lt(cursor));
    }
    if let Some(folder) = filter.folder {
        query = query.filter(inbound_message::Column::Folder.eq(folder));
    }
    if let Some(pattern) = from {
        query = query.filter(sea_orm::sea_query::Expr::cust_with_values("from_address ILIKE $1", [pattern]));
    }
    if let Some(pattern) = subject {
        query = query.filter(sea_orm::sea_query::Expr::cust_with_values("subject ILIKE $1", [pattern]));
    }
    if let Some(since) = filter.since {
        query = query.filter(inbound_message::Column::ReceivedAt.gte(since));
    }
    if let Some(until) = filter.until {
        query = query.filter(inbound_message::Column::ReceivedAt.lt(until));
    }
    page_of(positional::all(query, &ctx.db).await?, limit, |m| m.id.into(), |m| Ok(view(m)))
}

/// What a read of one message loads: the raw bytes (up to the inbound maximum, 50 MiB by default) only to serve or
/// decode them, never to show the parsed fields.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    Shown,
    WithRaw,
}

async fn find(ctx: &AppContext, scope: &TenantScope, id: InboundMessageId, load: Load) -> AppResult<inbound_message::Model> {
    scope.require(Role::Viewer)?;
    let query = inbound_message::Entity::in_tenant(scope.tenant_id).filter(inbound_message::Column::Id.eq(id));
    let query = match load {
        Load::WithRaw => query,
        Load::Shown => positional::with_columns(query, |column| {
            matches!(column, inbound_message::Column::Raw).then(|| Expr::cust("''::bytea"))
        }),
    };
    let found = positional::all(query.limit(1), &ctx.db).await?.into_iter().next();
    let model = found.ok_or(AppError::not_found(inbound_message::Entity::RESOURCE))?;
    // Members see only their own accounts' mail.
    accounts::find_visible(ctx, scope, model.account_id).await.map_err(|_| AppError::not_found("message"))?;
    Ok(model)
}

/// One message with its bodies; the HTML as sent, or sanitised.
pub async fn get(ctx: &AppContext, scope: &TenantScope, id: InboundMessageId, html: HtmlMode) -> AppResult<InboundMessage> {
    let mut message = view(find(ctx, scope, id, Load::Shown).await?);
    if let Some(body) = message.html.take_if(|_| html == HtmlMode::Sanitized) {
        // Up to 2 MiB of HTML to clean: off the async threads, like an attachment's decoding.
        let clean = tokio::task::spawn_blocking(move || content::sanitize_html(&body)).await;
        message.html = Some(clean.map_err(|e| AppError::Internal(anyhow::anyhow!("sanitising the HTML body failed: {e}")))?);
    }
    Ok(message)
}

/// Attachment `index` of a message: its description and decoded bytes (taken from the stored raw message).
pub async fn attachment(
    ctx: &AppContext,
    scope: &TenantScope,
    id: InboundMessageId,
    index: i32,
) -> AppResult<(Attachment, Vec<u8>)> {
    let model = find(ctx, scope, id, Load::WithRaw).await?;
    if !model.attachments.0.iter().any(|a| a.index == index) {
        return Err(AppError::not_found("attachment"));
    }
    // Parsing a message of up to 50 MiB takes a while: off the async threads, which serve other requests meanwhile;
    // a parser panic (a hostile message) ends that task only.
    let raw = model.raw;
    let decoded = tokio::task::spawn_blocking(move || content::attachment(&raw, index)).await;
    decoded.ok().flatten().ok_or_else(|| AppError::not_found("attachment"))
}

/// The message exactly as received (RFC 5322 bytes).
pub async fn raw(ctx: &AppContext, scope: &TenantScope, id: InboundMessageId) -> AppResult<Vec<u8>> {
    Ok(find(ctx, scope, id, Load::WithRaw).await?.raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_lists_keep_their_first_addresses_within_the_list_bytes() {
        let to: Vec<String> = (0..1000).map(|i| format!("{}{i}@example.org", "a".repeat(200))).collect();
        let raw = format!("From: ada@example.org\r\nTo: {}\r\nCc: bob@example.org\r\nSubject: many\r\n\r\nhi\r\n", to.join(", "));
        let summary = summarize(raw.as_bytes());
        let kept = summary.to.iter().map(String::len).sum::<usize>();
        assert!(kept <= content::MAX_LIST_BYTES && kept > content::MAX_LIST_BYTES - 300, "{kept} bytes kept");
        assert_eq!(summary.to[..], to[..summary.to.len()], "the first ones, in order");
        assert_eq!(summary.cc, ["bob@example.org"]);
        assert_eq!(summary.from.as_deref(), Some("ada@example.org"));
    }

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
