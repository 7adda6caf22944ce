//! Types the API speaks: views (output) and inputs, shared by REST (serde + OpenAPI) and GraphQL.

use std::fmt;

use async_graphql::SimpleObject;
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

/// What stands in for a secret's value wherever an input is written down (the audit log).
pub const SECRET_CHANGED: &str = "(secret changed)";

/// Serializing an input (the audit log does) says only that a secret was given, never its value.
impl Serialize for SecretInput {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(SECRET_CHANGED)
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
// Its GraphQL name is its item's name + `Page` (`AccountPage`), so a new list needs no entry here.
#[derive(Debug, Serialize, Deserialize, SimpleObject, ToSchema)]
#[graphql(name_type)]
pub struct Page<T: async_graphql::OutputType> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T: async_graphql::OutputType> async_graphql::TypeName for Page<T> {
    fn type_name() -> std::borrow::Cow<'static, str> {
        format!("{}Page", T::type_name()).into()
    }
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

// ---- API keys ----

#[derive(Clone, Debug, Serialize, Deserialize, SimpleObject, ToSchema)]
pub struct IssuedToken {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: i64,
}

// ---- token configurations ----

// ---- email accounts ----

// ---- OAuth grants ----

string_enum!(
    /// `reauth_required`: the provider refused the refresh token; someone must consent again.
    GrantStatus { Valid => "valid", ReauthRequired => "reauth_required" }
);
string_enum!(
    /// `redirect`: send the browser to `authorization_url`; `authorized`: done (app flow).
    AuthorizeStatus { Redirect => "redirect", Authorized => "authorized" }
);

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
    /// `partially_sent`: handed over for some recipients while the server refused others for good (see
    /// `recipient_results`). `unknown`: the connection was lost after the message content was sent; not resent
    /// blindly. `cancelled`: taken out of the queue by the user before any attempt handed it over.
    OutboundStatus {
        Queued => "queued",
        Sending => "sending",
        Sent => "sent",
        PartiallySent => "partially_sent",
        Failed => "failed",
        Unknown => "unknown",
        Cancelled => "cancelled",
    }
);
string_enum!(
    /// How the sending account was chosen: its from filter is the address, or the domain, or it is the tenant's default.
    RoutedBy { Address => "address", Domain => "domain", Default => "default" }
);
