//! Webhook endpoints: create, list, change, delete, and rotate their signing secrets.

use async_graphql::MaybeUndefined;
use sea_orm::{ConnectionTrait, FromQueryResult, TransactionTrait};

use super::check_description;
use super::check_event_types;
use super::check_url;
use super::decrypt;
use super::event_types_sql;
use super::find;
use super::generate_secret;
use super::json_list;
use super::log::fail_pending;
use super::one_endpoint;
use super::statement;
use super::view;
use super::CreateWebhookEndpoint;
use super::EndpointRow;
use super::UpdateWebhookEndpoint;
use super::WebhookEndpoint;
use super::WebhookEndpointSecret;
use super::ENDPOINT_COLUMNS;
use super::PREVIOUS_SECRET_GRACE_HOURS;
use crate::access::auth::TenantScope;
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::model::{Page, PageRequest, Role};
use crate::observe::audit;
use crate::secrets::{self};
use crate::store::ids::WebhookEndpointId;
use crate::store::limit_of;
use crate::store::page_of;

// ---- endpoints ----

/// Webhook endpoints one tenant may have: every event is delivered to each, so a tenant with thousands would take
/// every worker's webhook slots from the other tenants.
pub const MAX_ENDPOINTS_PER_TENANT: i64 = 50;

/// Creates an endpoint (admin); the answer carries its signing secret, the only time it is shown.
pub async fn create(ctx: &AppContext, scope: &TenantScope, input: CreateWebhookEndpoint) -> AppResult<WebhookEndpointSecret> {
    scope.require(Role::Admin)?;
    let url = check_url(ctx, &input.url).await?;
    let description = check_description(input.description)?;
    let event_types = check_event_types(input.event_types.unwrap_or_default())?;
    let enabled = input.enabled.unwrap_or(true);
    let id = WebhookEndpointId::new();
    let secret = generate_secret();
    let stored = secrets::WEBHOOK_SECRET.seal(&ctx.cipher, scope.tenant_id, id, &secret)?;
    let sql = format!(
        "INSERT INTO webhook_endpoints (id, tenant_id, url, description, event_types, enabled, secret, created_by) \
         VALUES ($1, $2, $3, $4, {}, $6, $7, $8) RETURNING {ENDPOINT_COLUMNS}",
        event_types_sql(5)
    );
    let values = vec![
        id.into(),
        scope.tenant_id.into(),
        url.clone().into(),
        description.clone().into(),
        json_list(&event_types).into(),
        enabled.into(),
        stored.into(),
        scope.principal.subject.clone().into(),
    ];
    let changes = audit::Changes::new()
        .set("url", Some(&url))
        .set("description", description.as_ref())
        .set("event_types", Some(&event_types))
        .set("enabled", Some(enabled))
        .secret("secret", true);
    let txn = ctx.db.begin().await?;
    check_room(&txn, scope).await?;
    let row = one_endpoint(&txn, statement(sql, values))
        .await?
        .ok_or_else(|| AppError::Internal(anyhow::anyhow!("INSERT .. RETURNING gave no row")))?;
    audit::record_in_tenant(&txn, scope, "webhook_endpoint.created", id.into(), changes).await?;
    txn.commit().await?;
    Ok(WebhookEndpointSecret { endpoint: view(row)?, secret })
}

/// Refuses a new endpoint once the tenant has [`MAX_ENDPOINTS_PER_TENANT`]. Creations in one tenant take turns
/// (a lock held to the end of `txn`), so two at once cannot both pass the count.
async fn check_room(txn: &sea_orm::DatabaseTransaction, scope: &TenantScope) -> AppResult<()> {
    crate::store::take_turns(txn, "webhook_endpoints", scope.tenant_id.to_string()).await?;
    let counted = "SELECT count(*) AS n FROM webhook_endpoints WHERE tenant_id = $1";
    let existing = txn.query_one_raw(statement(counted, vec![scope.tenant_id.into()])).await?;
    let existing: i64 = existing.map(|row| row.try_get("", "n")).transpose()?.unwrap_or(0);
    if existing >= MAX_ENDPOINTS_PER_TENANT {
        return Err(AppError::validation(
            "url",
            "too_many_webhook_endpoints",
            format!("a tenant has at most {MAX_ENDPOINTS_PER_TENANT} webhook endpoints; delete one it no longer needs"),
        ));
    }
    Ok(())
}

/// A receiver's URL often is a bearer secret itself (a token in its path or query): only admins see it whole;
/// everyone else, and every event, sees its origin only.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(url) => {
            let hidden = url.path() != "/" || url.query().is_some() || url.fragment().is_some();
            let origin = url.origin().ascii_serialization();
            if hidden {
                format!("{origin}/…")
            } else {
                origin
            }
        }
        Err(_) => "(hidden)".to_owned(),
    }
}

fn view_for(scope: &TenantScope, row: EndpointRow) -> AppResult<WebhookEndpoint> {
    let mut endpoint = view(row)?;
    if !matches!(scope.principal.role, Role::Admin | Role::Operator) {
        endpoint.url = redact_url(&endpoint.url);
    }
    Ok(endpoint)
}

pub async fn list(ctx: &AppContext, scope: &TenantScope, page: PageRequest) -> AppResult<Page<WebhookEndpoint>> {
    scope.require(Role::Viewer)?;
    let limit = limit_of(&page)?;
    let mut sql = format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant_id = $1");
    let mut values: Vec<sea_orm::Value> = vec![scope.tenant_id.into()];
    if let Some(cursor) = page.cursor {
        values.push(cursor.into());
        sql.push_str(" AND id > $2");
    }
    sql.push_str(&format!(" ORDER BY id LIMIT {}", limit + 1));
    let rows = ctx.db.query_all_raw(statement(sql, values)).await?;
    let rows = rows.iter().map(|r| EndpointRow::from_query_result(r, "")).collect::<Result<Vec<_>, _>>()?;
    page_of(rows, limit, |r| r.id.into(), |row| view_for(scope, row))
}

pub async fn get(ctx: &AppContext, scope: &TenantScope, id: WebhookEndpointId) -> AppResult<WebhookEndpoint> {
    scope.require(Role::Viewer)?;
    view_for(scope, find(&ctx.db, scope.tenant_id, id).await?)
}

/// Changes an endpoint (admin). Disabling it fails its pending deliveries; enabling it clears the reason
/// Postbridge disabled it and its failure streak.
pub async fn update(
    ctx: &AppContext,
    scope: &TenantScope,
    id: WebhookEndpointId,
    input: UpdateWebhookEndpoint,
) -> AppResult<WebhookEndpoint> {
    // Look up first: another tenant's id answers 404 whatever the caller's role.
    let current = find(&ctx.db, scope.tenant_id, id).await?;
    scope.require(Role::Admin)?;
    let new_url = match &input.url {
        Some(url) => Some(check_url(ctx, url).await?),
        None => None,
    };
    let description = match input.description.clone() {
        MaybeUndefined::Undefined => current.description.clone(),
        MaybeUndefined::Null => None,
        MaybeUndefined::Value(text) => check_description(Some(text))?,
    };
    let new_event_types = input.event_types.map(check_event_types).transpose()?;
    let current_view = view(current)?;
    let enabled = input.enabled.unwrap_or(current_view.enabled);
    let event_types = new_event_types.clone().unwrap_or_else(|| current_view.event_types.clone());
    let url = new_url.clone().unwrap_or_else(|| current_view.url.clone());
    // Column references on the right-hand side are the row's values before this update.
    let sql = format!(
        "UPDATE webhook_endpoints SET url = $3, description = $4, event_types = {}, enabled = $6, \
         disabled_reason = CASE WHEN $6 THEN NULL ELSE disabled_reason END, \
         failing_since = CASE WHEN $6 AND NOT enabled THEN NULL ELSE failing_since END, updated_at = now() \
         WHERE id = $1 AND tenant_id = $2 RETURNING {ENDPOINT_COLUMNS}",
        event_types_sql(5)
    );
    let values = vec![
        id.into(),
        scope.tenant_id.into(),
        url.into(),
        description.clone().into(),
        json_list(&event_types).into(),
        enabled.into(),
    ];
    let description_change = match &input.description {
        MaybeUndefined::Undefined => None,
        _ => Some(&description),
    };
    let changes = audit::Changes::new()
        .set("url", new_url.as_ref())
        .set("description", description_change)
        .set("event_types", new_event_types.as_ref())
        .set("enabled", input.enabled);
    let txn = ctx.db.begin().await?;
    let row = one_endpoint(&txn, statement(sql, values)).await?.ok_or(AppError::not_found("webhook endpoint"))?;
    if current_view.enabled && !enabled {
        fail_pending(&txn, id, "the endpoint was disabled").await?;
    }
    audit::record_in_tenant(&txn, scope, "webhook_endpoint.updated", id.into(), changes).await?;
    txn.commit().await?;
    view(row)
}

/// Deletes an endpoint (admin) with its deliveries and their log.
pub async fn delete(ctx: &AppContext, scope: &TenantScope, id: WebhookEndpointId) -> AppResult<()> {
    let current = find(&ctx.db, scope.tenant_id, id).await?;
    scope.require(Role::Admin)?;
    let txn = ctx.db.begin().await?;
    let deleted = txn
        .execute_raw(statement(
            "DELETE FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2",
            vec![id.into(), scope.tenant_id.into()],
        ))
        .await?;
    if deleted.rows_affected() == 0 {
        return Err(AppError::not_found("webhook endpoint"));
    }
    let changes = audit::Changes::new().set("url", Some(&current.url));
    audit::record_in_tenant(&txn, scope, "webhook_endpoint.deleted", id.into(), changes).await?;
    txn.commit().await?;
    Ok(())
}

/// Replaces the signing secret (admin); the previous one keeps signing for 24 hours, so deliveries carry
/// both signatures while the receiver switches over. The new secret is shown only in this answer.
pub async fn rotate_secret(ctx: &AppContext, scope: &TenantScope, id: WebhookEndpointId) -> AppResult<WebhookEndpointSecret> {
    let current = find(&ctx.db, scope.tenant_id, id).await?;
    scope.require(Role::Admin)?;
    let old = decrypt(ctx, &current, secrets::WEBHOOK_SECRET, &current.secret)?;
    // Moving a value to another column means encrypting it again: the column is part of its associated data.
    let previous = secrets::WEBHOOK_PREVIOUS_SECRET.seal(&ctx.cipher, scope.tenant_id, id, &old)?;
    let secret = generate_secret();
    let stored = secrets::WEBHOOK_SECRET.seal(&ctx.cipher, scope.tenant_id, id, &secret)?;
    let sql = format!(
        "UPDATE webhook_endpoints SET secret = $3, previous_secret = $4, \
         previous_secret_expires_at = now() + make_interval(hours => $5), updated_at = now() \
         WHERE id = $1 AND tenant_id = $2 AND secret = $6 RETURNING {ENDPOINT_COLUMNS}"
    );
    let values = vec![
        id.into(),
        scope.tenant_id.into(),
        stored.into(),
        previous.into(),
        PREVIOUS_SECRET_GRACE_HOURS.into(),
        current.secret.clone().into(),
    ];
    let txn = ctx.db.begin().await?;
    // Compare-and-set: of two rotations at once, the second would otherwise drop the first one's secret unseen.
    let row = one_endpoint(&txn, statement(sql, values)).await?.ok_or_else(|| AppError::Conflict {
        code: "concurrent_rotation",
        message: "the secret was rotated at the same time by another request; rotate again if needed".to_owned(),
    })?;
    audit::record_in_tenant(
        &txn,
        scope,
        "webhook_endpoint.secret_rotated",
        id.into(),
        audit::Changes::new().secret("secret", true),
    )
    .await?;
    txn.commit().await?;
    Ok(WebhookEndpointSecret { endpoint: view(row)?, secret })
}
