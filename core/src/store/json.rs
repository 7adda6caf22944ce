//! The shapes of the jsonb columns, decoded in one place: when the row loads. A column that does not hold its shape
//! makes the row fail to load (as an unknown state word does), never reads as empty.

use std::collections::BTreeMap;

use sea_orm::FromJsonQueryResult;
use serde::{Deserialize, Serialize};

/// A list of strings: scopes, mail hosts, return origins, addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, FromJsonQueryResult)]
#[serde(transparent)]
pub struct StringList(pub Vec<String>);

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
