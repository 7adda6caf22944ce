//! An account's settings checked (hosts the tenant allows, admin-only fields, member walls, a grant of the right
//! configuration) and saved, the password sealed.

use chrono::Utc;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, PaginatorTrait, QueryFilter, TransactionTrait};
use uuid::Uuid;

use super::DEFAULT_POLL_INTERVAL_SECONDS;
use super::POLL_INTERVAL_RANGE;
use super::SEND_RATE_RANGE;
use crate::access::auth::TenantScope;
use crate::connect::presets;
use crate::connect::token_configs;
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::model::{AfterFetch, AuthMethod, Direction, GrantStatus, Protocol, Role, Security};
use crate::observe::audit;
use crate::store::entities::{email_account, grant};
use crate::store::ids::{AccountId, TenantId, TokenConfigId};
use crate::store::is_unique_violation;
use crate::store::tenant_owned::TenantOwned;
use crate::{secrets, validate};

/// What a password field asks for.
pub(super) enum PasswordChange<'a> {
    Keep { stored: bool },
    Set(&'a str),
}

/// The effective account, checked as a whole (create and update share every rule).
pub(super) struct Spec<'a> {
    pub(super) name: Option<String>,
    pub(super) protocol: Protocol,
    pub(super) host: Option<String>,
    pub(super) port: Option<i32>,
    pub(super) security: Option<Security>,
    pub(super) auth: AuthMethod,
    pub(super) login: String,
    pub(super) password: PasswordChange<'a>,
    pub(super) token_config_id: Option<Uuid>,
    pub(super) enabled: bool,
    pub(super) from_filter: Option<String>,
    pub(super) is_default: bool,
    pub(super) shared_mailbox: bool,
    pub(super) folder: Option<String>,
    pub(super) poll_interval_seconds: Option<i32>,
    pub(super) after_fetch: Option<AfterFetch>,
    pub(super) move_to_folder: Option<String>,
    pub(super) send_rate_per_minute: Option<i32>,
    /// The caller sets the filter or moves it to another login (a member may then only use the account's own address).
    pub(super) from_filter_changed: bool,
}

/// A from filter routes every message the tenant sends From that address (or domain) through the account, so a
/// member may only claim the account's own address, and only where a consent proved it is theirs: an OAuth2
/// account that is not a shared mailbox (the callback holds the consenting identity to the login). A password
/// proves only that some server accepts it, perhaps the member's own. Any other filter is an admin's decision.
fn check_member_from_filter(scope: &TenantScope, spec: &Spec<'_>) -> AppResult<()> {
    let Some(filter) = spec.from_filter.as_deref() else { return Ok(()) };
    if scope.principal.role != Role::Member {
        return Ok(());
    }
    let login = spec.login.trim();
    if !filter.eq_ignore_ascii_case(login) || !validate::is_email(login) {
        return Err(AppError::forbidden(
            "members may set from_filter only to the account's own address (its login); other addresses and domains are set by an admin",
        ));
    }
    if spec.auth != AuthMethod::Oauth2 || spec.shared_mailbox {
        return Err(AppError::forbidden(
            "members may set from_filter only on an OAuth2 account whose sign-in proves the address (not a password or shared-mailbox account); an admin sets it here",
        ));
    }
    Ok(())
}

fn not_for(field: &str, direction: Direction) -> AppError {
    let applies = if direction == Direction::Inbound { "outbound" } else { "inbound" };
    AppError::validation(field, "not_applicable", format!("{field} applies to {applies} accounts only"))
}

pub(super) async fn check_spec(ctx: &AppContext, scope: &TenantScope, spec: &mut Spec<'_>) -> AppResult<()> {
    let direction = spec.protocol.direction();
    spec.login = validate::non_empty("login", &spec.login, 320)?;
    spec.name = Some(validate::non_empty("name", spec.name.as_deref().unwrap_or(&spec.login), 200)?);

    // Credentials; an oauth2 account's token configuration.
    let config = match spec.auth {
        AuthMethod::Password => {
            if spec.token_config_id.is_some() {
                return Err(AppError::validation(
                    "token_config_id",
                    "not_applicable",
                    "a password account takes no token configuration",
                ));
            }
            match spec.password {
                PasswordChange::Set(p) if !p.trim().is_empty() => {
                    if p.len() > 1024 {
                        return Err(AppError::validation("password", "too_long", "password is too long"));
                    }
                }
                PasswordChange::Keep { stored: true } => {}
                _ => return Err(AppError::validation("password", "required", "a password account needs a password")),
            }
            None
        }
        AuthMethod::Oauth2 => {
            let id = spec.token_config_id.ok_or_else(|| {
                AppError::validation("token_config_id", "required", "an oauth2 account needs a token_config_id")
            })?;
            if matches!(spec.password, PasswordChange::Set(_)) {
                return Err(AppError::validation("password", "not_applicable", "an oauth2 account takes no password"));
            }
            // Another tenant's configuration is indistinguishable from a missing one.
            let config = token_configs::find(ctx, scope.tenant_id, id.into()).await.map_err(|e| match e {
                AppError::NotFound { .. } => {
                    AppError::validation("token_config_id", "unknown_token_config", "no such token configuration")
                }
                other => other,
            })?;
            spec.login = validate::email("login", &spec.login)?;
            Some(config)
        }
    };
    let provider = config.as_ref().map(|c| c.provider);

    // Server: explicit, else the provider's, else required.
    let preset = provider.and_then(|p| presets::mail_host(p, spec.protocol));
    let host = match (&spec.host, preset) {
        (Some(host), _) => validate::hostname("host", host)?,
        (None, Some((host, _, _))) => host.to_owned(),
        (None, None) => return Err(AppError::validation("host", "required", "host is required for this account")),
    };
    // Tokens go only to the provider's own mail hosts or to those the configuration's admin listed.
    if let Some(config) = &config {
        token_configs::check_mail_host(config, &host, "host")?;
    }
    ctx.guard.check_host_for_storage(&host, "host").await?;
    let host_is_preset = preset.is_some_and(|(h, _, _)| h == host);
    let security = spec.security.unwrap_or(match preset {
        Some((_, _, security)) if host_is_preset => security,
        _ => presets::default_security(spec.protocol),
    });
    if security == Security::None && !ctx.guard.allows_private() {
        return Err(AppError::validation(
            "security",
            "insecure_connection",
            "security none sends credentials in clear text; use tls or starttls",
        ));
    }
    let port = match spec.port {
        Some(port) => validate::port("port", port)?,
        None => match preset {
            Some((_, port, preset_security)) if host_is_preset && preset_security == security => port,
            _ => presets::default_port(spec.protocol, security),
        },
    };
    spec.host = Some(host);
    spec.security = Some(security);
    spec.port = Some(port);

    // Direction-specific settings.
    match direction {
        Direction::Outbound => {
            for (field, given) in [
                ("folder", spec.folder.is_some()),
                ("poll_interval_seconds", spec.poll_interval_seconds.is_some()),
                ("after_fetch", spec.after_fetch.is_some()),
                ("move_to_folder", spec.move_to_folder.is_some()),
            ] {
                if given {
                    return Err(not_for(field, direction));
                }
            }
            if spec.send_rate_per_minute.is_some_and(|rate| !SEND_RATE_RANGE.contains(&rate)) {
                return Err(AppError::validation(
                    "send_rate_per_minute",
                    "invalid_rate",
                    "send_rate_per_minute must be between 0 (no limit) and 100000",
                ));
            }
            spec.from_filter = spec.from_filter.as_deref().map(|f| validate::from_filter("from_filter", f)).transpose()?;
            if spec.from_filter_changed {
                check_member_from_filter(scope, spec)?;
            }
        }
        Direction::Inbound => {
            if spec.from_filter.is_some() {
                return Err(not_for("from_filter", direction));
            }
            if spec.is_default {
                return Err(not_for("is_default", direction));
            }
            if spec.send_rate_per_minute.is_some() {
                return Err(not_for("send_rate_per_minute", direction));
            }
            let interval = spec.poll_interval_seconds.unwrap_or(DEFAULT_POLL_INTERVAL_SECONDS);
            if !POLL_INTERVAL_RANGE.contains(&interval) {
                return Err(AppError::validation(
                    "poll_interval_seconds",
                    "invalid_interval",
                    "poll_interval_seconds must be between 10 and 86400",
                ));
            }
            spec.poll_interval_seconds = Some(interval);
            let after_fetch = spec.after_fetch.unwrap_or(AfterFetch::Keep);
            if spec.protocol == Protocol::Pop3 {
                if spec.folder.is_some() {
                    return Err(AppError::validation("folder", "not_applicable", "POP3 has no folders"));
                }
                if !matches!(after_fetch, AfterFetch::Keep | AfterFetch::Delete) {
                    return Err(AppError::validation(
                        "after_fetch",
                        "unsupported_action",
                        "POP3 can only keep or delete fetched messages",
                    ));
                }
            } else {
                spec.folder = Some(validate::non_empty("folder", spec.folder.as_deref().unwrap_or("INBOX"), 255)?);
            }
            match (after_fetch, spec.move_to_folder.as_deref()) {
                (AfterFetch::Move, Some(target)) => {
                    spec.move_to_folder = Some(validate::non_empty("move_to_folder", target, 255)?);
                }
                (AfterFetch::Move, None) => {
                    return Err(AppError::validation("move_to_folder", "required", "after_fetch move needs move_to_folder"));
                }
                (_, Some(_)) => {
                    return Err(AppError::validation(
                        "move_to_folder",
                        "not_applicable",
                        "move_to_folder goes with after_fetch move",
                    ));
                }
                (_, None) => {}
            }
            spec.after_fetch = Some(after_fetch);
        }
    }
    Ok(())
}

pub(super) fn encrypt_password(ctx: &AppContext, tenant_id: TenantId, id: AccountId, password: &str) -> AppResult<String> {
    Ok(secrets::ACCOUNT_PASSWORD.seal(&ctx.cipher, tenant_id, id, password)?)
}

/// A valid grant this mailbox can use already (its other direction was authorized first): consent once, both
/// authorized. A member's account is linked only to a grant that member connected; an app-flow grant reaches every
/// mailbox of the directory, so only an admin's account is linked to it.
pub(super) async fn existing_grant(
    ctx: &AppContext,
    scope: &TenantScope,
    auth: AuthMethod,
    config_id: Option<TokenConfigId>,
    login: &str,
) -> AppResult<Option<Uuid>> {
    let (AuthMethod::Oauth2, Some(config_id)) = (auth, config_id) else { return Ok(None) };
    let mut query = grant::Entity::in_tenant(scope.tenant_id)
        .filter(grant::Column::TokenConfigId.eq(config_id))
        .filter(grant::Column::Status.eq(GrantStatus::Valid));
    query = if may_approve_app_grants(scope) {
        query.filter(grant::Column::Subject.is_in([login.to_lowercase(), grant::APP_SUBJECT.to_owned()]))
    } else {
        query
            .filter(grant::Column::Subject.eq(login.to_lowercase()))
            .filter(grant::Column::ConnectedBy.eq(scope.principal.subject.clone()))
    };
    Ok((query.one(&ctx.db).await?.map(|g| g.id)).map(Into::into))
}

/// Admins (and operators acting in the tenant) decide which accounts use shared grants.
pub(crate) fn may_approve_app_grants(scope: &TenantScope) -> bool {
    matches!(scope.principal.role, Role::Admin | Role::Operator)
}

/// Only admins set up a tenant's default sender or shared mailboxes.
pub(super) fn check_admin_only_fields(scope: &TenantScope, is_default: bool, shared: bool) -> AppResult<()> {
    if (is_default || shared) && scope.principal.role == Role::Member {
        return Err(AppError::forbidden("only admins may set is_default or shared_mailbox"));
    }
    Ok(())
}

/// A mailbox's sending pace is the tenant's policy (it can lift the deployment's pace), not its owner's.
pub(super) fn check_send_rate_change(scope: &TenantScope, changed: bool) -> AppResult<()> {
    if changed && scope.principal.role == Role::Member {
        return Err(AppError::forbidden("only admins may set send_rate_per_minute"));
    }
    Ok(())
}

/// Accounts one member may own: a member connects its own mailboxes, a handful; each inbound one is polled or
/// watched by the tenant's share of the workers, so a member creating thousands would take that share from
/// everyone else. Admins are the tenant's own authority and are not held to it.
pub const MAX_ACCOUNTS_PER_MEMBER: i64 = 50;

/// Refuses a member's new account past [`MAX_ACCOUNTS_PER_MEMBER`]. A member's creations take turns (a lock held
/// to the end of `txn`), so two at once cannot both pass the count.
async fn check_member_room(txn: &sea_orm::DatabaseTransaction, scope: &TenantScope) -> AppResult<()> {
    let subject = scope.principal.subject.clone();
    crate::store::take_turns(txn, "email_accounts", format!("{} {subject}", scope.tenant_id)).await?;
    let owned = email_account::Entity::in_tenant(scope.tenant_id)
        .filter(email_account::Column::OwnerSubject.eq(subject))
        .count(txn)
        .await?;
    if owned >= MAX_ACCOUNTS_PER_MEMBER as u64 {
        return Err(AppError::validation(
            "login",
            "too_many_accounts",
            format!("a member owns at most {MAX_ACCOUNTS_PER_MEMBER} accounts; delete one, or ask an admin to add this one"),
        ));
    }
    Ok(())
}

/// Saves `active` and, for a new default sender, clears the previous one in the same transaction, with
/// the audit entry.
pub(super) async fn save(
    ctx: &AppContext,
    scope: &TenantScope,
    active: email_account::ActiveModel,
    insert: bool,
    changes: audit::Changes,
) -> AppResult<email_account::Model> {
    let tenant_id = scope.tenant_id;
    let becomes_default = matches!(active.is_default, sea_orm::ActiveValue::Set(true));
    let id = match &active.id {
        sea_orm::ActiveValue::Set(id) | sea_orm::ActiveValue::Unchanged(id) => *id,
        sea_orm::ActiveValue::NotSet => return Err(AppError::Internal(anyhow::anyhow!("account without id"))),
    };
    let txn = ctx.db.begin().await?;
    if insert && scope.principal.role == Role::Member {
        check_member_room(&txn, scope).await?;
    }
    if becomes_default {
        email_account::Entity::update_in_tenant(tenant_id)
            .col_expr(email_account::Column::IsDefault, Expr::value(false))
            .col_expr(email_account::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(email_account::Column::IsDefault.eq(true))
            .filter(email_account::Column::Id.ne(id))
            .exec(&txn)
            .await?;
    }
    let saved = if insert { active.insert(&txn).await } else { active.update(&txn).await };
    let model = match saved {
        Ok(model) => model,
        Err(e) if is_unique_violation(&e) => {
            return Err(AppError::Conflict {
                code: "default_sender_conflict",
                message: "another account became the default sender at the same time; retry".to_owned(),
            })
        }
        Err(e) => return Err(e.into()),
    };
    let action = if insert { "account.created" } else { "account.updated" };
    audit::record_in_tenant(&txn, scope, action, id.into(), changes).await?;
    txn.commit().await?;
    // Routing in this process sees the change at once; the others hear it announced.
    ctx.route_cache.changed();
    Ok(model)
}
