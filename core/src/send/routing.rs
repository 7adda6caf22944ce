//! Which outbound account sends a message: the account whose from filter is the address, else the one
//! whose filter is the domain, else the tenant's default sender (From then becomes the default
//! account's address, the display name is kept and the original address goes to Reply-To).

use std::sync::Arc;

use lettre::message::Mailbox;
use sea_orm::{ColumnTrait, Condition, ConnectionTrait, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;

use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::model::{AccountState, Direction, RoutedBy};
pub use crate::send::route_cache::Candidate;
use crate::send::route_cache::SenderKey;
use crate::store::entities::email_account;
use crate::store::ids::TenantId;
use crate::store::noticed::through;
use crate::store::tenant_owned::TenantOwned;
use crate::validate;
use async_graphql::SimpleObject;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// "Which account would send From X, and why".
#[derive(Clone, Debug, Serialize, Deserialize, SimpleObject, ToSchema)]
pub struct RouteExplanation {
    /// The chosen account; absent when a member asks and the account is not theirs (members see only their own).
    pub account_id: Option<Uuid>,
    pub routed_by: RoutedBy,
    /// The From the message will carry (the default sender's address when the fallback is used).
    pub effective_from: String,
    /// Set when the fallback rewrote From: the original address goes to Reply-To.
    pub reply_to: Option<String>,
    /// The chosen account's login; absent when it is not the asking member's account.
    pub account_login: Option<String>,
    /// Why this account, in words.
    pub reason: String,
    /// Set when the tenant's fallback (default) sender would be used: recipients see another From.
    pub warning: Option<String>,
    /// Accounts whose from filter matches but which cannot send now, with why.
    pub skipped: Vec<SkippedSender>,
}

/// An outbound account the router passed over.
#[derive(Clone, Debug, Serialize, Deserialize, SimpleObject, ToSchema)]
pub struct SkippedSender {
    pub account_id: Uuid,
    pub login: String,
    pub from_filter: Option<String>,
    pub state: AccountState,
    pub enabled: bool,
    pub reason: String,
}

pub struct Route {
    pub account: Candidate,
    pub routed_by: RoutedBy,
    /// The From the message carries.
    pub from: Mailbox,
    /// The original From when the fallback rewrote it.
    pub reply_to: Option<Mailbox>,
}

impl Route {
    /// The explanation; with `shown = false` (a member asking about an account that is not theirs) it names
    /// neither the account's id nor its login.
    pub fn explain(&self, requested: &Mailbox, skipped: Vec<SkippedSender>, shown: bool) -> RouteExplanation {
        let address = requested.email.to_string().to_lowercase();
        let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
        let account = if shown { format!("account {}", self.account.login) } else { "another member's account".to_owned() };
        let reason = match self.routed_by {
            RoutedBy::Address => format!("{account}'s from filter is the address {address}"),
            RoutedBy::Domain => format!("{account}'s from filter is the domain {domain}"),
            RoutedBy::Default => format!(
                "no usable account's from filter is {address} or {domain}, so the tenant's default sender ({account}) is used"
            ),
        };
        let warning = (self.routed_by == RoutedBy::Default).then(|| match &self.reply_to {
            Some(original) => format!(
                "the fallback sender is used: recipients see From {} and replies go to {original} (Reply-To); add an \
                 outbound account with from filter {address} or {domain} to send as {address}",
                self.from
            ),
            None => "the fallback sender is used (it sends as this very address)".to_owned(),
        });
        RouteExplanation {
            account_id: shown.then_some(self.account.id.into()),
            routed_by: self.routed_by,
            effective_from: self.from.to_string(),
            reply_to: self.reply_to.as_ref().map(|m| m.to_string()),
            account_login: shown.then(|| self.account.login.clone()),
            reason,
            warning,
            skipped,
        }
    }
}

/// Parses `addr` or `Name <addr>`.
pub fn parse_mailbox(field: &str, value: &str) -> AppResult<Mailbox> {
    let mailbox: Mailbox = value
        .trim()
        .parse()
        .map_err(|_| AppError::validation(field, "invalid_email", format!("{field} must be an address or Name <address>")))?;
    if !validate::is_email(mailbox.email.as_ref()) {
        return Err(AppError::validation(field, "invalid_email", format!("{field} must be an address or Name <address>")));
    }
    Ok(mailbox)
}

/// Accounts that may send: outbound, enabled, authorized or confirmed.
fn usable(account: &Candidate) -> bool {
    account.enabled && (account.state == AccountState::Authorized || account.state == AccountState::Confirmed)
}

/// The sender's address, lowercased, and its domain: what from filters are matched against.
fn address_and_domain(from: &Mailbox) -> (String, String) {
    let address = from.email.to_string().to_lowercase();
    let domain = address.rsplit_once('@').map(|(_, d)| d.to_owned()).unwrap_or_default();
    (address, domain)
}

/// The tenant's outbound accounts that could send for `address`: those filtering on it or on its domain, and the
/// default sender, oldest first. Only these are read, however many accounts the tenant has (an index serves it).
async fn candidates<C: ConnectionTrait>(db: &C, tenant_id: TenantId, address: &str, domain: &str) -> AppResult<Vec<Candidate>> {
    use email_account::Column;
    Ok(email_account::Entity::in_tenant(tenant_id)
        .select_only()
        .columns([
            Column::Id,
            Column::Login,
            Column::OwnerSubject,
            Column::FromFilter,
            Column::IsDefault,
            Column::Enabled,
            Column::State,
            Column::LastError,
        ])
        .filter(email_account::Column::Direction.eq(Direction::Outbound))
        .filter(
            Condition::any()
                .add(email_account::Column::FromFilter.is_in([address, domain]))
                .add(email_account::Column::IsDefault.eq(true)),
        )
        .order_by_asc(email_account::Column::Id)
        .into_model::<Candidate>()
        .all(db)
        .await?)
}

/// The address a default sender sends as: its from filter when that is an address, else its login.
fn sender_address(account: &Candidate) -> Option<String> {
    [account.from_filter.as_deref(), Some(account.login.as_str())]
        .into_iter()
        .flatten()
        .find(|a| validate::is_email(a))
        .map(str::to_lowercase)
}

/// Routes a message to send: the candidates come from this process's route cache when it holds them (see
/// `route_cache`), else from the database.
pub async fn route_to_send(ctx: &AppContext, tenant_id: TenantId, from: &Mailbox) -> AppResult<Route> {
    let (address, domain) = address_and_domain(from);
    let key = SenderKey::new(tenant_id, &address);
    let read = async { Ok(Arc::<[Candidate]>::from(candidates(&ctx.db, tenant_id, &address, &domain).await?)) };
    let accounts = through(&ctx.metrics.route_cache, ctx.route_cache.get(&key), read, |ticket, read| {
        ctx.route_cache.store(ticket, key, read.clone())
    })
    .await?;
    choose(&accounts, from, &address, &domain)
}

/// Routes `from` with the tenant's accounts as the database has them now.
pub async fn route<C: ConnectionTrait>(db: &C, tenant_id: TenantId, from: &Mailbox) -> AppResult<Route> {
    let (address, domain) = address_and_domain(from);
    choose(&candidates(db, tenant_id, &address, &domain).await?, from, &address, &domain)
}

/// The route among the usable candidates: the address's account, else the domain's, else the default sender.
fn choose(candidates: &[Candidate], from: &Mailbox, address: &str, domain: &str) -> AppResult<Route> {
    let mut senders = candidates.iter().filter(|a| usable(a));
    let by_filter = |wanted: &str| senders.clone().find(|a| a.from_filter.as_deref() == Some(wanted)).cloned();
    if let Some(account) = by_filter(address) {
        return Ok(Route { account, routed_by: RoutedBy::Address, from: from.clone(), reply_to: None });
    }
    if let Some(account) = by_filter(domain) {
        return Ok(Route { account, routed_by: RoutedBy::Domain, from: from.clone(), reply_to: None });
    }
    let default = senders.find(|a| a.is_default).cloned().ok_or_else(|| {
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
    scope: &crate::access::auth::TenantScope,
    from: &str,
) -> AppResult<RouteExplanation> {
    scope.require(crate::model::Role::Viewer)?;
    let mailbox = parse_mailbox("from", from)?;
    let chosen = route(&ctx.db, scope.tenant_id, &mailbox).await?;
    // Members see only their own accounts, here as everywhere else.
    let visible = |account: &Candidate| {
        scope.principal.role != crate::model::Role::Member || account.owner_subject == scope.principal.subject
    };
    let skipped = skipped_senders(&ctx.db, scope.tenant_id, &mailbox, &visible).await?;
    Ok(chosen.explain(&mailbox, skipped, visible(&chosen.account)))
}

/// Outbound accounts whose from filter matches the address or its domain (or that are the default sender) but
/// which cannot send now: the usual answer to "why did my mail go out from the fallback?".
async fn skipped_senders<C: ConnectionTrait>(
    db: &C,
    tenant_id: TenantId,
    from: &Mailbox,
    visible: &(dyn Fn(&Candidate) -> bool + Sync),
) -> AppResult<Vec<SkippedSender>> {
    let (address, domain) = address_and_domain(from);
    candidates(db, tenant_id, &address, &domain)
        .await?
        .into_iter()
        .filter(|a| !usable(a) && visible(a))
        .map(|a| {
            let state = a.state;
            let reason = if !a.enabled {
                "disabled".to_owned()
            } else {
                match (&a.last_error, state) {
                    (Some(error), AccountState::Error) => format!("in error: {error}"),
                    _ => format!("{state}: only authorized or confirmed accounts send"),
                }
            };
            Ok(SkippedSender {
                account_id: a.id.into(),
                login: a.login,
                from_filter: a.from_filter,
                state,
                enabled: a.enabled,
                reason,
            })
        })
        .collect()
}
