//! The shapes of the jsonb columns, decoded in one place: when the row loads. A column that does not hold its shape
//! makes the row fail to load (as an unknown state word does), never reads as empty.

use std::collections::BTreeMap;

use sea_orm::FromJsonQueryResult;
use serde::{Deserialize, Serialize};

/// A list of strings: scopes, mail hosts, return origins, addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, FromJsonQueryResult)]
#[serde(transparent)]
pub struct StringList(pub Vec<String>);

/// One attachment (or inline part such as an embedded image) of a received message, as listed when it was stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, async_graphql::SimpleObject, utoipa::ToSchema)]
pub struct Attachment {
    /// Its position, as in `GET /v1/received-messages/{id}/attachments/{index}`.
    pub index: i32,
    pub filename: Option<String>,
    /// `type/subtype`, as the message declared it (`application/octet-stream` when it did not).
    pub content_type: String,
    /// Decoded size in bytes.
    pub size: i64,
    /// `Content-ID` without angle brackets: what `cid:` links in the HTML body point at.
    pub content_id: Option<String>,
    /// Shown inside the message (`Content-Disposition: inline`) rather than attached.
    pub inline: bool,
}

/// The attachments of a received message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, FromJsonQueryResult)]
#[serde(transparent)]
pub struct AttachmentList(pub Vec<Attachment>);

/// One envelope recipient's answer when a message was handed to the SMTP server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, async_graphql::SimpleObject, utoipa::ToSchema)]
pub struct RecipientResult {
    pub recipient: String,
    /// The server took the message for this recipient (`2xx` to `RCPT TO`); otherwise it refused it for good.
    pub accepted: bool,
    /// The server's reply to `RCPT TO`, e.g. `250 2.1.5 OK` or `550 5.1.1 no such user`.
    pub reply: String,
}

/// Each recipient's answer, in envelope order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, FromJsonQueryResult)]
#[serde(transparent)]
pub struct RecipientResults(pub Vec<RecipientResult>);

/// A map of strings: extra authorization parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, FromJsonQueryResult)]
#[serde(transparent)]
pub struct StringMap(pub BTreeMap<String, String>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_maps_are_plain_json() {
        let list = StringList(vec!["a".into(), "b".into()]);
        assert_eq!(serde_json::to_value(&list).ok(), Some(serde_json::json!(["a", "b"])));
        let map: Result<StringMap, _> = serde_json::from_value(serde_json::json!({"prompt": "consent"}));
        assert_eq!(map.ok().map(|m| m.0.len()), Some(1));
        assert!(
            serde_json::from_value::<StringList>(serde_json::json!([1, 2])).is_err(),
            "a list of numbers is not a string list"
        );
    }
}
