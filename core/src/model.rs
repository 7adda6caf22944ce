//! Types the API speaks: views (output) and inputs, shared by REST (serde + OpenAPI) and GraphQL.

use std::collections::BTreeMap;
use std::fmt;

use async_graphql::{InputObject, MaybeUndefined, SimpleObject};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// A stored value outside its closed set (a row written by hand, or by a newer Postbridge).
#[derive(Debug, thiserror::Error)]
#[error("unknown {kind} value: {text:?}")]
pub struct UnknownValue {
    pub kind: &'static str,
    pub text: String,
}

/// Defines a closed set of values stored as text, spoken as snake_case in REST and as enum values in GraphQL.
/// Entities hold the enum itself (sea-orm's string value type): a row is read into its enum or fails to load.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, async_graphql::Enum, sea_orm::DeriveValueType)]
        #[serde(rename_all = "snake_case")]
        #[sea_orm(value_type = "String")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl std::str::FromStr for $name {
            type Err = UnknownValue;
            fn from_str(text: &str) -> Result<Self, UnknownValue> {
                Self::parse(text).ok_or_else(|| UnknownValue { kind: stringify!($name), text: text.to_owned() })
            }
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses the stored/REST spelling.
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

string_enum!(TenantStatus { Active => "active", Suspended => "suspended" });
string_enum!(
    /// What a credential may do: operator (every tenant), admin, member (own accounts), viewer (read only).
    Role { Operator => "operator", Admin => "admin", Member => "member", Viewer => "viewer" }
);
string_enum!(Provider { Microsoft => "microsoft", Google => "google", Generic => "generic" });
string_enum!(
    /// `user`: authorization code with consent; `app`: client credentials, no browser.
    OAuthFlow { User => "user", App => "app" }
);
string_enum!(Direction { Inbound => "inbound", Outbound => "outbound" });
string_enum!(Protocol { Imap => "imap", Pop3 => "pop3", Smtp => "smtp" });
string_enum!(Security { Tls => "tls", Starttls => "starttls", None => "none" });
string_enum!(AuthMethod { Password => "password", Oauth2 => "oauth2" });
string_enum!(AccountState {
    Draft => "draft",
    Authorized => "authorized",
    Confirmed => "confirmed",
    Error => "error",
    Disabled => "disabled",
});
string_enum!(AfterFetch { Keep => "keep", MarkSeen => "mark_seen", Move => "move", Delete => "delete" });

impl Role {
    /// Roles an API key may carry; operator is a deployment credential, never a tenant key.
    pub fn is_tenant_role(self) -> bool {
        !matches!(self, Role::Operator)
    }
}

impl Protocol {
    pub fn direction(self) -> Direction {
        match self {
            Protocol::Imap | Protocol::Pop3 => Direction::Inbound,
            Protocol::Smtp => Direction::Outbound,
        }
    }
}

/// A write-only secret in an input. Its `Debug` never shows the value, so it cannot reach logs.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct SecretInput(String);

impl SecretInput {
    pub fn new(value: impl Into<String>) -> Self {
        SecretInput(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Serializing an input (the audit log does) says only that a secret was given, never its value.
impl Serialize for SecretInput {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(crate::observe::audit::SECRET_CHANGED)
    }
}

impl fmt::Debug for SecretInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretInput([redacted])")
    }
}

/// A write-only secret (password, client secret). Accepted as a string, never returned.
#[async_graphql::Scalar(name = "Secret")]
impl async_graphql::ScalarType for SecretInput {
    fn parse(value: async_graphql::Value) -> async_graphql::InputValueResult<Self> {
        match value {
            async_graphql::Value::String(s) => Ok(SecretInput(s)),
            // The message must not echo the value.
            _ => Err(async_graphql::InputValueError::custom("a secret must be a string")),
        }
    }

    fn to_value(&self) -> async_graphql::Value {
        async_graphql::Value::String("[redacted]".to_owned())
    }
}

/// One page of a list; pass `next_cursor` back as `cursor` for the next page.
#[derive(Debug, Serialize, Deserialize, SimpleObject, ToSchema)]
#[graphql(concrete(name = "TenantPage", params(Tenant)))]
#[graphql(concrete(name = "ApiKeyPage", params(ApiKey)))]
#[graphql(concrete(name = "TokenConfigPage", params(TokenConfig)))]
#[graphql(concrete(name = "AccountPage", params(Account)))]
#[graphql(concrete(name = "GrantPage", params(Grant)))]
#[graphql(concrete(name = "InboundMessagePage", params(InboundMessage)))]
#[graphql(concrete(name = "OutboundMessagePage", params(OutboundMessage)))]
#[graphql(concrete(name = "AuditEntryPage", params(crate::observe::audit::AuditEntry)))]
#[graphql(concrete(name = "EventPage", params(crate::observe::events::Event)))]
#[graphql(concrete(name = "WebhookEndpointPage", params(crate::observe::webhooks::WebhookEndpoint)))]
#[graphql(concrete(name = "WebhookDeliveryPage", params(crate::observe::webhooks::WebhookDelivery)))]
#[graphql(concrete(name = "WebhookAttemptPage", params(crate::observe::webhooks::WebhookAttempt)))]
pub struct Page<T: async_graphql::OutputType> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageRequest {
    /// Items per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<Uuid>,
}

impl PageRequest {
    pub const MAX_LIMIT: u64 = 200;

    pub fn limit(&self) -> Result<u64, crate::error::AppError> {
        match self.limit {
            None => Ok(50),
            Some(n) if (1..=Self::MAX_LIMIT).contains(&n) => Ok(n),
            Some(_) => Err(crate::error::AppError::validation("limit", "invalid_limit", "limit must be between 1 and 200")),
        }
    }
}

// ---- tenants ----

#[derive(Clone, Debug, Serialize, Deserialize, SimpleObject, ToSchema)]
pub struct Tenant {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub status: TenantStatus,
    /// Origins (`https://app.example.com`) that post-consent return URLs may point at.
    pub allowed_return_origins: Vec<String>,
    /// API requests per minute this tenant may make; null: the deployment's default. Set by operators.
    pub api_rate_limit_per_minute: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, Deserialize, InputObject, ToSchema)]
pub struct CreateTenant {
    /// Lowercase letters, digits and '-', 2 to 63 characters; unique.
    pub slug: String,
    pub name: String,
    pub allowed_return_origins: Option<Vec<String>>,
    /// 1 to 1000000; omitted: the deployment's default.
    pub api_rate_limit_per_minute: Option<i32>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, InputObject, ToSchema)]
pub struct UpdateTenant {
    pub name: Option<String>,
    /// `suspended` stops every credential of the tenant; `active` restores them.
    pub status: Option<TenantStatus>,
    pub allowed_return_origins: Option<Vec<String>>,
    /// 1 to 1000000; null returns the tenant to the deployment's default.
    #[serde(default)]
    #[schema(value_type = Option<i32>)]
    pub api_rate_limit_per_minute: MaybeUndefined<i32>,
}

// ---- API keys ----

#[derive(Clone, Debug, Serialize, Deserialize, SimpleObject, ToSchema)]
pub struct ApiKey {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub role: Role,
    /// The public start of the key, to recognise it; the secret is shown only once, at creation.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, InputObject, ToSchema)]
pub struct CreateApiKey {
    pub name: String,
    /// admin, member or viewer.
    pub role: Role,
}

#[derive(Clone, Debug, Serialize, Deserialize, SimpleObject, ToSchema)]
pub struct CreatedApiKey {
    pub api_key: ApiKey,
    /// The full key. Shown only in this response; store it now.
    pub secret: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, SimpleObject, ToSchema)]
pub struct IssuedToken {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: i64,
}

// ---- token configurations ----

#[derive(Clone, Debug, Serialize, Deserialize, SimpleObject, ToSchema)]
pub struct TokenConfig {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub provider: Provider,
    pub flow: OAuthFlow,
    pub client_id: String,
    /// Whether a client secret is stored (the secret itself is write-only).
    pub client_secret_set: bool,
    pub client_secret_expires_at: Option<NaiveDate>,
    /// Microsoft directory (tenant id, domain, `common` or `organizations`).
    pub directory_tenant_id: Option<String>,
    pub auth_url: Option<String>,
    pub token_url: String,
    /// Generic configurations: the authorization server's issuer identifier; an authorization response carrying
    /// another `iss` (RFC 9207) is refused. Microsoft and Google configurations know their issuer (null here).
    pub issuer: Option<String>,
    pub scopes: Vec<String>,
    pub extra_auth_params: BTreeMap<String, String>,
    /// The only mail hosts this configuration's tokens are sent to: the provider's own for Microsoft and Google,
    /// the admin's list for generic configurations (`*.example.com` matches subdomains).
    pub allowed_mail_hosts: Vec<String>,
    /// Paste this at the provider as the app's redirect URI.
    pub redirect_uri: String,
    /// The provider refused the client id or secret: create a new secret at the provider and paste it here.
    pub needs_admin: bool,
    pub last_error: Option<String>,
    /// Google only: the app's OAuth consent screen is in "Testing", so Google expires its refresh tokens 7 days after
    /// consent (credential health warns before). Always false for other providers.
    pub testing_app: bool,
    /// Set while the provider refuses the client credentials or the secret is past its expiry date: why, and the fix.
    pub problem: Option<crate::observe::hints::Problem>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, Deserialize, InputObject, ToSchema)]
pub struct CreateTokenConfig {
    pub name: String,
    pub provider: Provider,
    /// Default `user`.
    pub flow: Option<OAuthFlow>,
    pub client_id: String,
    /// Required for the app flow and for Microsoft/Google; write-only.
    #[schema(value_type = Option<String>, format = Password)]
    pub client_secret: Option<SecretInput>,
    pub client_secret_expires_at: Option<NaiveDate>,
    /// Microsoft only, required there.
    pub directory_tenant_id: Option<String>,
    /// Derived for microsoft/google; required for generic user flow.
    pub auth_url: Option<String>,
    /// Derived for microsoft/google; required for generic.
    pub token_url: Option<String>,
    /// Generic only, optional: the issuer identifier the provider returns as `iss` (RFC 9207), e.g.
    /// `https://id.example.com`; an authorization response naming another issuer is refused.
    pub issuer: Option<String>,
    /// Derived from provider and flow when omitted.
    pub scopes: Option<Vec<String>>,
    pub extra_auth_params: Option<BTreeMap<String, String>>,
    /// Generic only, and needed before an oauth2 account can use the configuration: the mail hosts its tokens may be
    /// sent to (host names, or `*.example.com` for subdomains; at most 50).
    pub allowed_mail_hosts: Option<Vec<String>>,
    /// Google only: the app's consent screen is in "Testing" (refresh tokens expire after 7 days). Default false.
    pub testing_app: Option<bool>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, InputObject, ToSchema)]
pub struct UpdateTokenConfig {
    pub name: Option<String>,
    pub client_id: Option<String>,
    #[schema(value_type = Option<String>, format = Password)]
    pub client_secret: Option<SecretInput>,
    /// `null` clears the date.
    #[serde(default)]
    #[schema(value_type = Option<NaiveDate>)]
    pub client_secret_expires_at: MaybeUndefined<NaiveDate>,
    pub directory_tenant_id: Option<String>,
    /// Changing `auth_url` or `token_url` (directly, or through a Microsoft directory) while grants exist needs
    /// `client_secret` in the same request, and sends every grant of the configuration to `reauth_required`.
    pub auth_url: Option<String>,
    pub token_url: Option<String>,
    /// Generic only; `null` clears it.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub issuer: MaybeUndefined<String>,
    pub scopes: Option<Vec<String>>,
    pub extra_auth_params: Option<BTreeMap<String, String>>,
    /// Generic only: replaces the list of mail hosts the configuration's tokens may be sent to. Accounts on a host
    /// no longer listed stop receiving tokens.
    pub allowed_mail_hosts: Option<Vec<String>>,
    /// Google only: the app's consent screen is in "Testing" (refresh tokens expire after 7 days).
    pub testing_app: Option<bool>,
}

// ---- email accounts ----

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

// ---- OAuth grants ----

string_enum!(
    /// `reauth_required`: the provider refused the refresh token; someone must consent again.
    GrantStatus { Valid => "valid", ReauthRequired => "reauth_required" }
);
string_enum!(
    /// `redirect`: send the browser to `authorization_url`; `authorized`: done (app flow).
    AuthorizeStatus { Redirect => "redirect", Authorized => "authorized" }
);

/// Tokens one identity granted to one token configuration (the tokens themselves are never shown).
#[derive(Clone, Debug, Serialize, Deserialize, SimpleObject, ToSchema)]
pub struct Grant {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub token_config_id: Uuid,
    /// The mailbox login the grant serves, or `app` for the app flow.
    pub subject: String,
    /// Who consented, as the provider said.
    pub consented_by: Option<String>,
    pub status: GrantStatus,
    /// When the current access token expires.
    pub expires_at: Option<DateTime<Utc>>,
    pub scopes: Vec<String>,
    pub has_refresh_token: bool,
    pub last_error: Option<String>,
    /// Set while the grant needs re-consent or its last refresh failed: a stable reason and the next step.
    pub problem: Option<crate::observe::hints::Problem>,
    pub last_refreshed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Default, Deserialize, InputObject, ToSchema)]
pub struct AuthorizeAccount {
    /// Where the browser goes after consent (must be on one of the tenant's `allowed_return_origins`);
    /// `status`, `reason` and `account_id` are appended.
    pub return_url: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, SimpleObject, ToSchema)]
pub struct AuthorizeResult {
    pub status: AuthorizeStatus,
    /// The provider's consent page (user flow).
    pub authorization_url: Option<String>,
    /// The authorization must finish before this time.
    pub expires_at: Option<DateTime<Utc>>,
    pub account: Account,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExpiringQuery {
    /// Days ahead to look (default 30, at most 365).
    pub within_days: Option<i64>,
}

// ---- webhooks ----

string_enum!(
    /// Where one event's delivery to one endpoint stands.
    WebhookDeliveryStatus {
        /// Waiting for its next attempt.
        Pending => "pending",
        Delivered => "delivered",
        /// Every attempt failed (or the endpoint was disabled); can be redelivered by hand.
        Failed => "failed",
    }
);

// ---- messages ----

string_enum!(
    /// `unknown`: the connection was lost after the message content was sent; not resent blindly.
    OutboundStatus { Queued => "queued", Sending => "sending", Sent => "sent", Failed => "failed", Unknown => "unknown" }
);
string_enum!(
    /// How the sending account was chosen: its from filter is the address, or the domain, or it is the tenant's default.
    RoutedBy { Address => "address", Domain => "domain", Default => "default" }
);

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
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

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
