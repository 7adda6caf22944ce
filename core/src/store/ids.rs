//! One type per kind of id, so a grant's id cannot be passed where an account's is wanted and argument orders
//! cannot be swapped unnoticed. Each is a `Uuid` on the wire and in Postgres (serde and sea-orm see through it);
//! the API's views and inputs stay plain UUIDs, and handlers wrap them as they call the core.

use std::fmt;
use std::str::FromStr;

use sea_orm::DeriveValueType;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_types {
    ($($(#[$doc:meta])* $name:ident),+ $(,)?) => {$(
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, DeriveValueType)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id (v7), so new rows sort by creation and cursors follow.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub fn uuid(self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl PartialEq<Uuid> for $name {
            fn eq(&self, other: &Uuid) -> bool {
                self.0 == *other
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::from_str(s).map(Self)
            }
        }

        // Primary keys must say whether an auto-increment number fits them; a UUID never does.
        impl sea_orm::TryFromU64 for $name {
            fn try_from_u64(_: u64) -> Result<Self, sea_orm::DbErr> {
                Err(sea_orm::DbErr::ConvertFromU64(stringify!($name)))
            }
        }
    )+};
}

id_types!(
    /// A tenant: the wall every other row stands behind.
    TenantId,
    /// An API key of a tenant's.
    ApiKeyId,
    /// A token configuration (an OAuth client at a provider).
    TokenConfigId,
    /// An email account (one direction of a mailbox).
    AccountId,
    /// A grant: the tokens of one consent, shared by a mailbox's accounts.
    GrantId,
    /// A pending authorization (the OAuth `state`).
    OAuthStateId,
    /// A received message.
    InboundMessageId,
    /// A submitted (outbound) message.
    OutboundMessageId,
    /// A webhook endpoint.
    WebhookEndpointId,
);

/// A list of ids as one bound value, for `id = ANY($n::text::uuid[])`, the one way statements take a list of ids:
/// unlike a join on a set-returning function, the planner always looks such ids up by primary key, whatever its
/// statistics say.
/// Only ids go in, so the array's text is hex digits, dashes and commas.
pub fn uuid_array<T: Copy + Into<Uuid>>(ids: &[T]) -> sea_orm::Value {
    let listed: Vec<String> = ids.iter().map(|&id| id.into().to_string()).collect();
    format!("{{{}}}", listed.join(",")).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_its_uuid_on_the_wire_and_in_text() {
        let uuid = Uuid::now_v7();
        let id = AccountId::from(uuid);
        assert_eq!(serde_json::to_string(&id).ok(), serde_json::to_string(&uuid).ok());
        assert_eq!(serde_json::from_str::<AccountId>(&format!("\"{uuid}\"")).ok(), Some(id));
        assert_eq!(id.to_string(), uuid.to_string());
        assert_eq!(id.to_string().parse::<AccountId>().ok(), Some(id));
        assert_eq!(sea_orm::Value::from(id), sea_orm::Value::from(uuid));
        assert_eq!(uuid_array(&[id, id]), sea_orm::Value::from(format!("{{{uuid},{uuid}}}")));
        assert_eq!(uuid_array::<AccountId>(&[]), sea_orm::Value::from("{}".to_owned()));
    }

    #[test]
    fn new_ids_sort_by_creation() {
        let first = GrantId::new();
        let second = GrantId::new();
        assert!(first < second, "v7 ids are time-ordered: {first} then {second}");
    }
}
