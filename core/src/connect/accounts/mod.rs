//! Email accounts: inbound (IMAP/POP3) and outbound (SMTP) mailbox connections.
//! Members see and change only accounts they own; viewers only read.

use async_graphql::MaybeUndefined;
use chrono::Utc;
use sea_orm::{ColumnTrait, IntoActiveModel, QueryFilter, QueryOrder, QuerySelect, Select, Set, TransactionTrait};
use uuid::Uuid;

use crate::access::auth::TenantScope;
use crate::connect::account_lifecycle::AccountEvent;
use crate::context::AppContext;
use crate::error::{AppError, AppResult};
use crate::model::{AccountState, AfterFetch, AuthMethod, Direction, Page, PageRequest, Protocol, Role, SecretInput, Security};
use crate::observe::audit;
use crate::store::entities::email_account;
use crate::store::ids::AccountId;
use crate::store::limit_of;
use crate::store::page_of;
use crate::store::positional;
use crate::store::tenant_owned::TenantOwned;
use async_graphql::{InputObject, SimpleObject};
use chrono::DateTime;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

mod settings;
use settings::check_admin_only_fields;
use settings::check_send_rate_change;
use settings::check_spec;
use settings::encrypt_password;
use settings::existing_grant;
use settings::save;
use settings::PasswordChange;
use settings::Spec;

pub(crate) use settings::may_approve_app_grants;

#[derive(Clone, Debug, Serialize, Deserialize, SimpleObject, ToSchema)]
pub struct Account {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub direction: Direction,
    pub protocol: Protocol,
    pub host: String,
    pub port: i32,
    pub security: Security,
    pub auth: AuthMethod,
    pub login: String,
    /// Whether a password is stored (the password itself is write-only).
    pub password_set: bool,
    pub token_config_id: Option<Uuid>,
    /// The OAuth grant in use, once someone consented (shared by the mailbox's inbound and outbound accounts).
    pub grant_id: Option<Uuid>,
    pub state: AccountState,
    pub last_error: Option<String>,
    /// Set while the account is in error (or its last test or poll failed): a stable reason and the next step.
    pub problem: Option<crate::observe::hints::Problem>,
    pub enabled: bool,
    /// Outbound: the From address or domain this account sends for.
    pub from_filter: Option<String>,
    /// Outbound: the tenant's fallback sender (at most one per tenant).
    pub is_default: bool,
    /// A shared or delegated mailbox: the consenting user may differ from the login.
    pub shared_mailbox: bool,
    /// Inbound: the folder to fetch from.
    pub folder: Option<String>,
    pub poll_interval_seconds: Option<i32>,
    pub after_fetch: Option<AfterFetch>,
    pub move_to_folder: Option<String>,
    /// Outbound: messages per minute this account may send (0: no limit); null: the deployment's pace.
    pub send_rate_per_minute: Option<i32>,
    /// The credential subject that created the account (members see only their own).
    pub owner: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, Deserialize, InputObject, ToSchema)]
pub struct CreateAccount {
    /// Defaults to the login.
    pub name: Option<String>,
    pub protocol: Protocol,
    /// Implied by the protocol; if given it must match.
    pub direction: Option<Direction>,
    /// Derived from the token configuration's provider when omitted (Microsoft, Google).
    pub host: Option<String>,
    /// Derived from protocol and security when omitted.
    pub port: Option<i32>,
    /// Default: tls for IMAP/POP3, starttls for SMTP (or the provider's).
    pub security: Option<Security>,
    pub auth: AuthMethod,
    pub login: String,
    #[schema(value_type = Option<String>, format = Password)]
    pub password: Option<SecretInput>,
    pub token_config_id: Option<Uuid>,
    pub enabled: Option<bool>,
    pub from_filter: Option<String>,
    pub is_default: Option<bool>,
    pub shared_mailbox: Option<bool>,
    pub folder: Option<String>,
    pub poll_interval_seconds: Option<i32>,
    pub after_fetch: Option<AfterFetch>,
    pub move_to_folder: Option<String>,
    /// Outbound, admins only: messages per minute (0 to 100000, 0: no limit); omitted: the deployment's pace.
    pub send_rate_per_minute: Option<i32>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, InputObject, ToSchema)]
pub struct UpdateAccount {
    pub name: Option<String>,
    pub host: Option<String>,
    pub port: Option<i32>,
    pub security: Option<Security>,
    pub auth: Option<AuthMethod>,
    pub login: Option<String>,
    #[schema(value_type = Option<String>, format = Password)]
    pub password: Option<SecretInput>,
    #[serde(default)]
    #[schema(value_type = Option<Uuid>)]
    pub token_config_id: MaybeUndefined<Uuid>,
    pub enabled: Option<bool>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub from_filter: MaybeUndefined<String>,
    pub is_default: Option<bool>,
    pub shared_mailbox: Option<bool>,
    pub folder: Option<String>,
    pub poll_interval_seconds: Option<i32>,
    pub after_fetch: Option<AfterFetch>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub move_to_folder: MaybeUndefined<String>,
    /// Outbound, admins only: messages per minute (0: no limit); null returns to the deployment's pace.
    #[serde(default)]
    #[schema(value_type = Option<i32>)]
    pub send_rate_per_minute: MaybeUndefined<i32>,
}

pub const DEFAULT_POLL_INTERVAL_SECONDS: i32 = 60;
pub const POLL_INTERVAL_RANGE: std::ops::RangeInclusive<i32> = 10..=86_400;
pub const SEND_RATE_RANGE: std::ops::RangeInclusive<i32> = 0..=100_000;

pub(crate) fn view(model: email_account::Model) -> AppResult<Account> {
    let problem = crate::observe::hints::for_account(&model);
    Ok(Account {
        id: model.id.into(),
        tenant_id: model.tenant_id.into(),
        name: model.name,
        direction: model.direction,
        protocol: model.protocol,
        host: model.host,
        port: model.port,
        security: model.security,
        auth: model.auth_method,
        login: model.login,
        password_set: model.password.is_some(),
        token_config_id: model.token_config_id.map(Into::into),
        grant_id: model.grant_id.map(Into::into),
        state: model.state,
        last_error: model.last_error,
        problem,
        enabled: model.enabled,
        from_filter: model.from_filter,
        is_default: model.is_default,
        shared_mailbox: model.shared_mailbox,
        folder: model.folder,
        poll_interval_seconds: model.poll_interval_seconds,
        after_fetch: model.after_fetch,
        move_to_folder: model.move_to_folder,
        send_rate_per_minute: model.send_rate_per_minute,
        owner: model.owner_subject,
        created_at: model.created_at,
        updated_at: model.updated_at,
    })
}

/// Accounts the caller may see: the tenant's, and for members only their own.
fn visible(scope: &TenantScope) -> Select<email_account::Entity> {
    let query = email_account::Entity::in_tenant(scope.tenant_id);
    if scope.principal.role == Role::Member {
        query.filter(email_account::Column::OwnerSubject.eq(scope.principal.subject.clone()))
    } else {
        query
    }
}

pub(crate) async fn find_visible(ctx: &AppContext, scope: &TenantScope, id: AccountId) -> AppResult<email_account::Model> {
    visible(scope).filter(email_account::Column::Id.eq(id)).one(&ctx.db).await?.ok_or(AppError::not_found("account"))
}

pub async fn create(ctx: &AppContext, scope: &TenantScope, input: CreateAccount) -> AppResult<Account> {
    scope.require(Role::Member)?;
    let changes = audit::Changes::of(&input);
    if input.direction.is_some_and(|d| d != input.protocol.direction()) {
        return Err(AppError::validation(
            "direction",
            "direction_mismatch",
            format!("{} accounts are {}", input.protocol, input.protocol.direction()),
        ));
    }
    let is_default = input.is_default.unwrap_or(false);
    let shared_mailbox = input.shared_mailbox.unwrap_or(false);
    check_admin_only_fields(scope, is_default, shared_mailbox)?;
    check_send_rate_change(scope, input.send_rate_per_minute.is_some())?;
    let mut spec = Spec {
        name: input.name,
        protocol: input.protocol,
        host: input.host,
        port: input.port,
        security: input.security,
        auth: input.auth,
        login: input.login,
        password: match &input.password {
            Some(p) => PasswordChange::Set(p.expose()),
            None => PasswordChange::Keep { stored: false },
        },
        token_config_id: input.token_config_id,
        enabled: input.enabled.unwrap_or(true),
        from_filter: input.from_filter,
        is_default,
        shared_mailbox,
        folder: input.folder,
        poll_interval_seconds: input.poll_interval_seconds,
        after_fetch: input.after_fetch,
        move_to_folder: input.move_to_folder,
        send_rate_per_minute: input.send_rate_per_minute,
        from_filter_changed: true,
    };
    check_spec(ctx, scope, &mut spec).await?;
    let id = AccountId::new();
    let password = match spec.password {
        PasswordChange::Set(p) if spec.auth == AuthMethod::Password => Some(encrypt_password(ctx, scope.tenant_id, id, p)?),
        _ => None,
    };
    let now = Utc::now();
    let grant_id = existing_grant(ctx, scope, spec.auth, spec.token_config_id.map(Into::into), &spec.login).await?;
    let state = AccountState::Draft.after(AccountEvent::Saved {
        enabled: spec.enabled,
        has_grant: grant_id.is_some(),
        connection_changed: true,
    });
    let active = email_account::ActiveModel {
        id: Set(id),
        tenant_id: Set(scope.tenant_id),
        name: Set(spec.name.unwrap_or_default()),
        direction: Set(spec.protocol.direction()),
        protocol: Set(spec.protocol),
        host: Set(spec.host.unwrap_or_default()),
        port: Set(spec.port.unwrap_or_default()),
        security: Set(spec.security.unwrap_or(Security::Tls)),
        auth_method: Set(spec.auth),
        login: Set(spec.login),
        password: Set(password),
        token_config_id: Set(spec.token_config_id.map(Into::into)),
        grant_id: Set(grant_id.map(Into::into)),
        state: Set(state),
        last_error: Set(None),
        last_error_kind: Set(None),
        enabled: Set(spec.enabled),
        from_filter: Set(spec.from_filter),
        is_default: Set(spec.is_default),
        shared_mailbox: Set(spec.shared_mailbox),
        folder: Set(spec.folder),
        poll_interval_seconds: Set(spec.poll_interval_seconds),
        after_fetch: Set(spec.after_fetch),
        move_to_folder: Set(spec.move_to_folder),
        send_rate_per_minute: Set(spec.send_rate_per_minute),
        owner_subject: Set(scope.principal.subject.clone()),
        app_grant_approved: Set(may_approve_app_grants(scope)),
        created_at: Set(now),
        updated_at: Set(now),
        // Sync position and schedule start empty; the database's defaults apply.
        ..Default::default()
    };
    view(save(ctx, scope, active, true, changes).await?)
}

pub async fn list(ctx: &AppContext, scope: &TenantScope, page: PageRequest) -> AppResult<Page<Account>> {
    scope.require(Role::Viewer)?;
    let limit = limit_of(&page)?;
    let mut query = visible(scope).order_by_asc(email_account::Column::Id).limit(limit + 1);
    if let Some(cursor) = page.cursor {
        query = query.filter(email_account::Column::Id.gt(cursor));
    }
    page_of(positional::all(query, &ctx.db).await?, limit, |m| m.id.into(), view)
}

pub async fn get(ctx: &AppContext, scope: &TenantScope, id: AccountId) -> AppResult<Account> {
    scope.require(Role::Viewer)?;
    view(find_visible(ctx, scope, id).await?)
}

fn merge<T>(patch: MaybeUndefined<T>, current: Option<T>) -> Option<T> {
    match patch {
        MaybeUndefined::Undefined => current,
        MaybeUndefined::Null => None,
        MaybeUndefined::Value(v) => Some(v),
    }
}

pub async fn update(ctx: &AppContext, scope: &TenantScope, id: AccountId, input: UpdateAccount) -> AppResult<Account> {
    // Look up first: an id the caller cannot see answers 404 whatever the caller's role.
    let model = find_visible(ctx, scope, id).await?;
    let changes = audit::Changes::of(&input)
        .cleared("token_config_id", &input.token_config_id)
        .cleared("from_filter", &input.from_filter)
        .cleared("move_to_folder", &input.move_to_folder)
        .cleared("send_rate_per_minute", &input.send_rate_per_minute);
    scope.require(Role::Member)?;
    let current = view(model.clone())?;
    let is_default = input.is_default.unwrap_or(current.is_default);
    let shared_mailbox = input.shared_mailbox.unwrap_or(current.shared_mailbox);
    check_admin_only_fields(
        scope,
        is_default && !current.is_default,
        shared_mailbox != current.shared_mailbox && shared_mailbox,
    )?;
    let auth = input.auth.unwrap_or(current.auth);
    // Leaving `move` drops its target unless the caller sets one explicitly.
    let drop_move_target = input.after_fetch.is_some_and(|a| a != AfterFetch::Move) && input.move_to_folder.is_undefined();
    let password = match &input.password {
        Some(p) => PasswordChange::Set(p.expose()),
        // Switching to password auth needs a new password; so does a member's move of the account to another
        // server or login (a password an admin set goes only where it was given for). A stored one is kept otherwise.
        None => {
            let moved = scope.principal.role == Role::Member
                && (input.host.as_ref().is_some_and(|h| !h.trim().eq_ignore_ascii_case(current.host.trim()))
                    || input.port.is_some_and(|p| p != current.port)
                    || input.login.as_ref().is_some_and(|l| *l != current.login));
            PasswordChange::Keep { stored: current.password_set && current.auth == auth && !moved }
        }
    };
    let direction = current.direction;
    // A filter is checked again whenever what it rests on changes: the filter, the login, or how the login is proven.
    let from_filter_changed = !input.from_filter.is_undefined()
        || input.login.as_ref().is_some_and(|l| *l != current.login)
        || auth != current.auth
        || shared_mailbox != current.shared_mailbox;
    let mut spec = Spec {
        name: Some(input.name.unwrap_or(current.name.clone())),
        protocol: current.protocol,
        host: Some(input.host.unwrap_or(current.host.clone())),
        port: Some(input.port.unwrap_or(current.port)),
        security: Some(input.security.unwrap_or(current.security)),
        auth,
        login: input.login.unwrap_or(current.login.clone()),
        password,
        token_config_id: merge(input.token_config_id, current.token_config_id),
        enabled: input.enabled.unwrap_or(current.enabled),
        from_filter: merge(input.from_filter, current.from_filter.clone()),
        is_default,
        shared_mailbox,
        folder: if direction == Direction::Inbound { input.folder.or(current.folder.clone()) } else { input.folder },
        poll_interval_seconds: input.poll_interval_seconds.or(current.poll_interval_seconds),
        after_fetch: input.after_fetch.or(current.after_fetch),
        move_to_folder: merge(input.move_to_folder, current.move_to_folder.clone()),
        send_rate_per_minute: merge(input.send_rate_per_minute, current.send_rate_per_minute),
        from_filter_changed,
    };
    check_send_rate_change(scope, spec.send_rate_per_minute != current.send_rate_per_minute)?;
    if drop_move_target {
        spec.move_to_folder = None;
    }
    // Switching to a password drops the token configuration unless the caller names one (which is then refused).
    if spec.auth == AuthMethod::Password && input.token_config_id.is_undefined() {
        spec.token_config_id = None;
    }
    // An admin's marking it a shared mailbox (whose consent is not held to the login) does not follow a member's
    // move of the account to another identity: the new one is proven by its own consent.
    let identity_moves =
        spec.auth != current.auth || spec.login != current.login || spec.token_config_id != current.token_config_id;
    if identity_moves && !may_approve_app_grants(scope) {
        spec.shared_mailbox = false;
    }
    check_spec(ctx, scope, &mut spec).await?;

    let host = spec.host.clone().unwrap_or_default();
    let port = spec.port.unwrap_or(current.port);
    let security = spec.security.unwrap_or(current.security);
    let credentials_or_server_changed = host != current.host
        || port != current.port
        || security != current.security
        || spec.auth != current.auth
        || spec.login != current.login
        || matches!(spec.password, PasswordChange::Set(_))
        || spec.token_config_id != current.token_config_id;

    let mut active = model.into_active_model();
    match spec.password {
        PasswordChange::Set(p) => active.password = Set(Some(encrypt_password(ctx, scope.tenant_id, id, p)?)),
        PasswordChange::Keep { .. } if spec.auth == AuthMethod::Oauth2 => active.password = Set(None),
        PasswordChange::Keep { .. } => {}
    }
    // A grant serves one login at one configuration; another identity needs its own.
    let identity_changed =
        spec.auth != current.auth || spec.login != current.login || spec.token_config_id != current.token_config_id;
    let grant_id = if identity_changed {
        // Another mailbox or configuration: an earlier admin approval does not carry over to it.
        active.app_grant_approved = Set(may_approve_app_grants(scope));
        existing_grant(ctx, scope, spec.auth, spec.token_config_id.map(Into::into), &spec.login).await?
    } else {
        current.grant_id
    };
    // A confirmed connection is only confirmed for the settings it was tested with.
    let state = current.state.after(AccountEvent::Saved {
        enabled: spec.enabled,
        has_grant: grant_id.is_some(),
        connection_changed: credentials_or_server_changed,
    });
    active.grant_id = Set(grant_id.map(Into::into));
    if state != current.state {
        active.state = Set(state);
        active.last_error = Set(None);
        active.last_error_kind = Set(None);
    }
    active.name = Set(spec.name.unwrap_or_default());
    active.host = Set(host);
    active.port = Set(port);
    active.security = Set(security);
    active.auth_method = Set(spec.auth);
    active.login = Set(spec.login);
    active.token_config_id = Set(spec.token_config_id.map(Into::into));
    active.enabled = Set(spec.enabled);
    active.from_filter = Set(spec.from_filter);
    active.is_default = Set(spec.is_default);
    active.shared_mailbox = Set(spec.shared_mailbox);
    active.folder = Set(spec.folder);
    active.poll_interval_seconds = Set(spec.poll_interval_seconds);
    active.after_fetch = Set(spec.after_fetch);
    active.move_to_folder = Set(spec.move_to_folder);
    active.send_rate_per_minute = Set(spec.send_rate_per_minute);
    active.updated_at = Set(Utc::now());
    view(save(ctx, scope, active, false, changes).await?)
}

pub async fn delete(ctx: &AppContext, scope: &TenantScope, id: AccountId) -> AppResult<()> {
    let model = find_visible(ctx, scope, id).await?;
    scope.require(Role::Member)?;
    let txn = ctx.db.begin().await?;
    email_account::Entity::delete_in_tenant(scope.tenant_id).filter(email_account::Column::Id.eq(model.id)).exec(&txn).await?;
    audit::record_in_tenant(&txn, scope, "account.deleted", model.id.into(), audit::Changes::new()).await?;
    txn.commit().await?;
    // Routing in this process sees the change at once; the others hear it announced.
    ctx.route_cache.changed();
    Ok(())
}
