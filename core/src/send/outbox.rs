//! The outbox: `POST /v1/messages` routes by From, composes the message once (its Message-ID is fixed
//! before the first attempt), and stores it; the worker sends it. An idempotency key returns the same row for
//! the same request, and is refused (422 `idempotency_key_mismatch`) for another one.

use base64::Engine;
use chrono::Utc;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set, TryIntoModel};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::routing;
use crate::access::auth::TenantScope;
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::model::{OutboundStatus, Page, PageRequest, Role, RoutedBy};
use crate::protocols::compose::{self, Attachment, Mailbox, OutgoingMessage};
use crate::store::entities::outbound_message;
use crate::store::ids::{OutboundMessageId, TenantId};
use crate::store::is_unique_violation;
use crate::store::json::StringList;
use crate::store::limit_of;
use crate::store::page_of;
use crate::store::positional;
use crate::store::tenant_owned::TenantOwned;
use async_graphql::{InputObject, SimpleObject};
use chrono::DateTime;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// A file attached to an outgoing message.
#[derive(Clone, Debug, Serialize, Deserialize, InputObject, ToSchema)]
pub struct AttachmentInput {
    pub filename: String,
    /// e.g. `application/pdf`; default `application/octet-stream`.
    pub content_type: Option<String>,
    /// The file's bytes, base64.
    pub content_base64: String,
}

/// A message to send. From decides the sending account (see the routing rules).
#[derive(Clone, Debug, Serialize, Deserialize, InputObject, ToSchema)]
pub struct SendMessage {
    /// `address@example.com` or `Display Name <address@example.com>`.
    pub from: String,
    #[serde(default)]
    #[graphql(default)]
    pub to: Vec<String>,
    #[serde(default)]
    #[graphql(default)]
    pub cc: Vec<String>,
    #[serde(default)]
    #[graphql(default)]
    pub bcc: Vec<String>,
    pub reply_to: Option<String>,
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
    /// Extra headers (`X-…` and the like); structural headers are refused.
    pub headers: Option<BTreeMap<String, String>>,
    pub attachments: Option<Vec<AttachmentInput>>,
    /// The same key returns the same message and never sends twice.
    pub idempotency_key: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, SimpleObject, ToSchema)]
pub struct OutboundMessage {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub idempotency_key: Option<String>,
    pub requested_from: String,
    /// The account used (chosen at submission).
    pub account_id: Option<Uuid>,
    pub routed_by: RoutedBy,
    pub recipients: Vec<String>,
    pub subject: String,
    pub message_id: String,
    pub size: i32,
    pub status: OutboundStatus,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    /// The SMTP server's final reply.
    pub smtp_reply: Option<String>,
    /// Each recipient's answer once the message was handed over (empty before): who got it, who was refused, why.
    pub recipient_results: Vec<crate::store::json::RecipientResult>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

pub(crate) fn view(model: outbound_message::Model) -> AppResult<OutboundMessage> {
    Ok(OutboundMessage {
        id: model.id.into(),
        tenant_id: model.tenant_id.into(),
        idempotency_key: model.idempotency_key,
        requested_from: model.requested_from,
        account_id: model.account_id.map(Into::into),
        routed_by: model.routed_by,
        recipients: model.recipients.0,
        subject: model.subject,
        message_id: model.message_id,
        size: model.size,
        status: model.status,
        attempts: model.attempts,
        next_attempt_at: model.next_attempt_at,
        last_error: model.last_error,
        smtp_reply: model.smtp_reply,
        recipient_results: model.recipient_results.map(|r| r.0).unwrap_or_default(),
        created_at: model.created_at,
        sent_at: model.sent_at,
    })
}

fn to_compose(mailbox: &lettre::message::Mailbox) -> Mailbox {
    Mailbox::new(mailbox.name.as_deref(), mailbox.email.as_ref())
}

fn mailboxes(field: &str, values: &[String]) -> AppResult<Vec<Mailbox>> {
    values.iter().enumerate().map(|(i, v)| routing::parse_mailbox(&format!("{field}[{i}]"), v).map(|m| to_compose(&m))).collect()
}

async fn find_by_key(ctx: &AppContext, tenant_id: TenantId, key: &str) -> AppResult<Option<outbound_message::Model>> {
    let found = positional::all(shown(tenant_id).filter(outbound_message::Column::IdempotencyKey.eq(key)).limit(1), &ctx.db);
    Ok(found.await?.into_iter().next())
}

/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// An idempotency key as given (header or body): trimmed; empty is a missing field (422); longer than
/// [`MAX_IDEMPOTENCY_KEY_BYTES`] or holding a control character, it cannot be a key (400).
pub fn idempotency_key(raw: &str) -> AppResult<String> {
    let key = raw.trim();
    if key.is_empty() {
        return Err(AppError::validation("idempotency_key", "required", "idempotency_key must not be empty"));
    }
    if key.len() > MAX_IDEMPOTENCY_KEY_BYTES || key.chars().any(char::is_control) {
        return Err(invalid_idempotency_key(format!(
            "an idempotency key is at most {MAX_IDEMPOTENCY_KEY_BYTES} bytes of printable text"
        )));
    }
    Ok(key.to_owned())
}

pub fn invalid_idempotency_key(message: impl Into<String>) -> AppError {
    AppError::BadRequest { code: "invalid_idempotency_key", message: message.into() }
}

/// What makes two submissions "the same request": everything but the key, hashed (SHA-256, hex). The fields
/// serialize in declaration order and the headers map is sorted, so the same request hashes the same over
/// REST and GraphQL.
fn request_hash(unkeyed: &SendMessage) -> AppResult<String> {
    debug_assert!(unkeyed.idempotency_key.is_none());
    let mut hasher = Sha256::new();
    serde_json::to_writer(&mut hasher, unkeyed).map_err(|e| AppError::Internal(anyhow::Error::new(e).context("hash request")))?;
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The message stored under a key, if the request is the one it was stored for.
fn same_request(existing: outbound_message::Model, hash: &str) -> AppResult<OutboundMessage> {
    // Messages stored before hashes were kept cannot be compared: they answer as before.
    if existing.request_hash.as_deref().is_some_and(|stored| stored != hash) {
        return Err(AppError::validation(
            "idempotency_key",
            "idempotency_key_mismatch",
            format!("this idempotency key was used for another message ({}); a new message needs a new key", existing.id),
        ));
    }
    view(existing)
}

/// Recipients one message may have, to, cc and bcc together: every one is checked, stored and given its own outcome,
/// so the count is bounded before any of it (a mailing list is for a list server).
pub const MAX_RECIPIENTS: usize = 1000;
/// Extra headers one message may carry.
pub const MAX_HEADERS: usize = 100;

/// Validates, routes and stores a message to send; the same idempotency key with the same request returns the
/// first message.
pub async fn submit(ctx: &AppContext, scope: &TenantScope, mut input: SendMessage) -> AppResult<OutboundMessage> {
    scope.require(Role::Member)?;
    let recipients = input.to.len().saturating_add(input.cc.len()).saturating_add(input.bcc.len());
    if recipients > MAX_RECIPIENTS {
        return Err(AppError::validation(
            "to",
            "too_many_recipients",
            format!("a message has at most {MAX_RECIPIENTS} recipients (to, cc and bcc together); this one has {recipients}"),
        ));
    }
    if input.headers.as_ref().is_some_and(|headers| headers.len() > MAX_HEADERS) {
        return Err(AppError::validation(
            "headers",
            "too_many_headers",
            format!("a message has at most {MAX_HEADERS} extra headers"),
        ));
    }
    let key = input.idempotency_key.take().as_deref().map(idempotency_key).transpose()?;
    let hash = request_hash(&input)?;
    if let Some(key) = &key {
        if let Some(existing) = find_by_key(ctx, scope.tenant_id, key).await? {
            return same_request(existing, &hash);
        }
    }
    let requested = routing::parse_mailbox("from", &input.from)?;
    let to = mailboxes("to", &input.to)?;
    let cc = mailboxes("cc", &input.cc)?;
    let bcc = mailboxes("bcc", &input.bcc)?;
    let explicit_reply_to = input.reply_to.as_deref().map(|r| routing::parse_mailbox("reply_to", r)).transpose()?;
    if input.text.is_none() && input.html.is_none() {
        return Err(AppError::validation("text", "required", "a message needs text or html"));
    }
    let mut attachments = Vec::new();
    for (i, a) in input.attachments.unwrap_or_default().into_iter().enumerate() {
        let bytes = base64::engine::general_purpose::STANDARD.decode(a.content_base64.trim()).map_err(|_| {
            AppError::validation(
                format!("attachments[{i}].content_base64"),
                "invalid_base64",
                "attachment content must be base64",
            )
        })?;
        attachments.push(Attachment {
            filename: a.filename,
            content_type: a.content_type.unwrap_or_else(|| "application/octet-stream".to_owned()),
            bytes,
        });
    }
    let route = routing::route_to_send(ctx, scope.tenant_id, &requested).await?;
    let from = to_compose(&route.from);
    let reply_to = explicit_reply_to.or(route.reply_to.clone()).map(|m| to_compose(&m));
    let domain = from.address.rsplit_once('@').map(|(_, d)| d.to_owned()).unwrap_or_default();
    let message = OutgoingMessage {
        from,
        reply_to,
        to,
        cc,
        bcc,
        subject: input.subject,
        text: input.text,
        html: input.html,
        headers: input.headers.unwrap_or_default().into_iter().collect(),
        attachments,
        message_id: compose::new_message_id(&domain),
    };
    let composed =
        compose::compose(&message).map_err(|e| AppError::validation(e.field().to_owned(), "invalid_message", e.to_string()))?;
    if composed.raw.len() > ctx.settings.max_message_bytes {
        return Err(AppError::TooLarge {
            code: "message_too_large",
            message: format!(
                "the composed message is {} bytes; this deployment sends at most {} (POSTBRIDGE_MAX_MESSAGE_BYTES)",
                composed.raw.len(),
                ctx.settings.max_message_bytes
            ),
        });
    }
    // Postgres keeps microseconds: the answer shows the times as a later read of the row will.
    let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
    let row = outbound_message::ActiveModel {
        id: Set(OutboundMessageId::new()),
        tenant_id: Set(scope.tenant_id),
        idempotency_key: Set(key.clone()),
        requested_from: Set(requested.to_string()),
        account_id: Set(Some(route.account.id)),
        routed_by: Set(route.routed_by),
        envelope_from: Set(composed.envelope_from.clone()),
        recipients: Set(StringList(composed.envelope_to.clone())),
        subject: Set(message.subject.clone()),
        message_id: Set(message.message_id.clone()),
        size: Set(i32::try_from(composed.raw.len()).unwrap_or(i32::MAX)),
        raw: Set(composed.raw),
        status: Set(OutboundStatus::Queued),
        attempts: Set(0),
        next_attempt_at: Set(now),
        lease_until: Set(None),
        lease_token: Set(None),
        leased_by: Set(None),
        handed_at: Set(None),
        dispatched_until: Set(None),
        sent_folder_checked_at: Set(None),
        last_error: Set(None),
        smtp_reply: Set(None),
        created_at: Set(now),
        sent_at: Set(None),
        updated_at: Set(now),
        request_hash: Set(Some(hash.clone())),
        recipient_results: Set(None),
    };
    // Inserted without `RETURNING *`, which would send the raw message straight back: the answer is built from
    // the row as written (every column is set here).
    let model = row.clone().try_into_model()?;
    match outbound_message::Entity::insert(row).exec_without_returning(&ctx.db).await {
        Ok(_) => {
            ctx.sends_due.announce();
            view(model)
        }
        // Two submissions with one key at the same moment: the first one wins, both get it.
        Err(e) if is_unique_violation(&e) => match &key {
            Some(key) => {
                same_request(find_by_key(ctx, scope.tenant_id, key).await?.ok_or(AppError::not_found("message"))?, &hash)
            }
            None => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

pub async fn get(ctx: &AppContext, scope: &TenantScope, id: OutboundMessageId) -> AppResult<OutboundMessage> {
    scope.require(Role::Viewer)?;
    view(find_shown(&ctx.db, scope.tenant_id, id).await?)
}

/// The tenant's messages with every column but the raw message (up to the sending maximum each, 25 MiB by
/// default), an empty value in its place: no view shows it, only a delivery reads it.
pub(crate) fn shown(tenant_id: TenantId) -> sea_orm::Select<outbound_message::Entity> {
    positional::with_columns(outbound_message::Entity::in_tenant(tenant_id), |column| {
        matches!(column, outbound_message::Column::Raw).then(|| Expr::cust("''::bytea"))
    })
}

/// One of the tenant's messages, [`shown`]; another tenant's is as missing as one that never was (404).
pub(crate) async fn find_shown<C: sea_orm::ConnectionTrait>(
    db: &C,
    tenant_id: TenantId,
    id: OutboundMessageId,
) -> AppResult<outbound_message::Model> {
    let found = positional::all(shown(tenant_id).filter(outbound_message::Column::Id.eq(id)).limit(1), db).await?;
    found.into_iter().next().ok_or(AppError::not_found(outbound_message::Entity::RESOURCE))
}

/// Which sent and queued messages a list shows; every condition given must hold.
#[derive(Clone, Debug, Default, Deserialize, InputObject, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SentFilter {
    /// Only messages in this status.
    pub status: Option<OutboundStatus>,
    /// Only messages routed to this outbound account.
    pub account_id: Option<Uuid>,
    /// Only messages submitted at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Only messages submitted before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
}

/// The tenant's sent and queued messages, newest first, filtered; the cursor pages through the filtered list.
pub async fn list(
    ctx: &AppContext,
    scope: &TenantScope,
    page: PageRequest,
    filter: SentFilter,
) -> AppResult<Page<OutboundMessage>> {
    scope.require(Role::Viewer)?;
    let limit = limit_of(&page)?;
    crate::store::check_time_range(filter.since, filter.until)?;
    let mut query = shown(scope.tenant_id).order_by_desc(outbound_message::Column::Id).limit(limit + 1);
    if let Some(cursor) = page.cursor {
        query = query.filter(outbound_message::Column::Id.lt(cursor));
    }
    if let Some(status) = filter.status {
        query = query.filter(outbound_message::Column::Status.eq(status));
    }
    if let Some(account_id) = filter.account_id {
        query = query.filter(outbound_message::Column::AccountId.eq(account_id));
    }
    if let Some(since) = filter.since {
        query = query.filter(outbound_message::Column::CreatedAt.gte(since));
    }
    if let Some(until) = filter.until {
        query = query.filter(outbound_message::Column::CreatedAt.lt(until));
    }
    page_of(positional::all(query, &ctx.db).await?, limit, |m| m.id.into(), view)
}
