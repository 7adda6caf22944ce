//! Which outbound account sends a message: the account whose from filter is the address, else the one
//! whose filter is the domain, else the tenant's default sender (From then becomes the default
//! account's address, the display name is kept and the original address goes to Reply-To).

use lettre::message::Mailbox;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder};
use uuid::Uuid;

use crate::entities::email_account;
use crate::error::{AppError, AppResult};
use crate::model::{AccountState, Direction, RouteExplanation, RoutedBy};
use crate::validate;

pub struct Route {
    pub account: email_account::Model,
    pub routed_by: RoutedBy,
    /// The From the message carries.
    pub from: Mailbox,
    /// The original From when the fallback rewrote it.
    pub reply_to: Option<Mailbox>,
}

impl Route {
    pub fn explain(&self) -> RouteExplanation {
        RouteExplanation {
            account_id: self.account.id,
            routed_by: self.routed_by,
            effective_from: self.from.to_string(),
            reply_to: self.reply_to.as_ref().map(|m| m.to_string()),
        }
    }
}

/// Parses `addr` or `Name <addr>`.
pub fn parse_mailbox(field: &str, value: &str) -> AppResult<Mailbox> {
    let mailbox: Mailbox = value
        .trim()
        .parse()
        .map_err(|_| AppError::validation(field, "invalid_email", format!("{field} must be an address or Name <address>")))?;
    if !validate::is_email(&mailbox.email.to_string()) {
        return Err(AppError::validation(field, "invalid_email", format!("{field} must be an address or Name <address>")));
    }
    Ok(mailbox)
}

/// Accounts that may send: outbound, enabled, authorized or confirmed.
fn usable(account: &email_account::Model) -> bool {
    account.enabled && (account.state == AccountState::Authorized.as_str() || account.state == AccountState::Confirmed.as_str())
}

/// The address a default sender sends as: its from filter when that is an address, else its login.
fn sender_address(account: &email_account::Model) -> Option<String> {
    [account.from_filter.as_deref(), Some(account.login.as_str())]
        .into_iter()
        .flatten()
        .find(|a| validate::is_email(a))
        .map(str::to_lowercase)
}

pub async fn route<C: ConnectionTrait>(db: &C, tenant_id: Uuid, from: &Mailbox) -> AppResult<Route> {
    let address = from.email.to_string().to_lowercase();
    let domain = address.rsplit_once('@').map(|(_, d)| d.to_owned()).unwrap_or_default();
    let accounts: Vec<email_account::Model> = email_account::Entity::find()
        .filter(email_account::Column::TenantId.eq(tenant_id))
        .filter(email_account::Column::Direction.eq(Direction::Outbound.as_str()))
        .order_by_asc(email_account::Column::Id)
        .all(db)
        .await?
        .into_iter()
        .filter(usable)
        .collect();
    let by_filter = |wanted: &str| accounts.iter().find(|a| a.from_filter.as_deref() == Some(wanted)).cloned();
    if let Some(account) = by_filter(&address) {
        return Ok(Route { account, routed_by: RoutedBy::Address, from: from.clone(), reply_to: None });
    }
    if let Some(account) = by_filter(&domain) {
        return Ok(Route { account, routed_by: RoutedBy::Domain, from: from.clone(), reply_to: None });
    }
    let default = accounts.iter().find(|a| a.is_default).cloned().ok_or_else(|| {
        AppError::validation(
            "from",
            "no_sender",
            format!("no outbound account sends for {address} (no from filter matches it or its domain) and the tenant has no usable default sender"),
        )
    })?;
    let sender = sender_address(&default)
        .ok_or_else(|| AppError::validation("from", "no_sender", "the default sender has no address to send as"))?;
    let sender_mailbox =
        sender.parse().map_err(|_| AppError::validation("from", "no_sender", "the default sender's address is not valid"))?;
    // Same address: nothing to rewrite.
    if sender == address {
        return Ok(Route { account: default, routed_by: RoutedBy::Default, from: from.clone(), reply_to: None });
    }
    Ok(Route {
        account: default,
        routed_by: RoutedBy::Default,
        from: Mailbox::new(from.name.clone(), sender_mailbox),
        reply_to: Some(from.clone()),
    })
}

/// "Which account would send From X, and why" — without sending anything.
pub async fn explain(
    ctx: &crate::context::AppContext,
    scope: &crate::auth::TenantScope,
    from: &str,
) -> AppResult<RouteExplanation> {
    scope.require(crate::model::Role::Viewer)?;
    let mailbox = parse_mailbox("from", from)?;
    Ok(route(&ctx.db, scope.tenant_id, &mailbox).await?.explain())
}
