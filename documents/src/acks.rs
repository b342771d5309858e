//! The replication ledger: acknowledgements of the stream consumers and the writer's
//! delete intents, in table `flagsmith_edge_replication_acks` (hash `item_key`, range
//! `region`, TTL attribute `expires_at`).
//!
//! - An **acknowledgement** (`region` = the consumer's region) says that region's replica of
//!   an item verified at `version` (or was removed at `version`, for a delete), with the lag
//!   from the core commit to the verification. Written conditionally, so that a redelivered
//!   older record never replaces a newer acknowledgement.
//! - A **delete intent** (`region` = [`DELETE_INTENT`]) is written by the writer before it
//!   deletes an item, with the version of the delete. A consumer that sees a removal without
//!   an intent newer than the removed item knows the item was deleted behind the writer's back.
//!
//! `item_key` names one item of one table: `"{table kind}|{hash key}[|{range key}]"`.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use crate::item::Item;
use crate::tables::TableKind;

pub use crate::tables::ACK_TABLE;
/// Range key of the writer's delete intents.
pub const DELETE_INTENT: &str = "#delete";
/// How long acknowledgements and intents are kept (TTL), in seconds.
pub const RETENTION_SECONDS: i64 = 14 * 24 * 3600;

/// The ledger key of an item given its primary key attributes; `None` when a key attribute
/// is missing or not a string or number.
pub fn item_key(kind: TableKind, key: &Item) -> Option<String> {
    let mut out = kind.as_str().to_string();
    for attr in kind.key_attributes() {
        let part = match key.get(attr)? {
            AttributeValue::S(s) => s.as_str(),
            AttributeValue::N(n) => n.as_str(),
            _ => return None,
        };
        out.push('|');
        out.push_str(part);
    }
    Some(out)
}

/// The ledger key of an item given its key as JSON (as the writer records it).
pub fn item_key_of_json(
    kind: TableKind,
    key: &serde_json::Map<String, serde_json::Value>,
) -> Option<String> {
    let mut out = kind.as_str().to_string();
    for attr in kind.key_attributes() {
        out.push('|');
        match key.get(attr)? {
            serde_json::Value::String(s) => out.push_str(s),
            serde_json::Value::Number(n) => out.push_str(&n.to_string()),
            _ => return None,
        }
    }
    Some(out)
}

/// The table and primary key of a ledger key (the inverse of [`item_key`]). Only the last key
/// attribute may contain `|`.
pub fn key_of(item_key: &str) -> Option<(TableKind, Item)> {
    let (kind, rest) = item_key.split_once('|')?;
    let kind = TableKind::parse(kind)?;
    let def = kind.definition();
    let attrs: Vec<(&str, crate::tables::AttrType)> =
        std::iter::once(def.hash_key).chain(def.range_key).collect();
    let parts: Vec<&str> = rest.splitn(attrs.len(), '|').collect();
    if parts.len() != attrs.len() {
        return None;
    }
    let key = attrs
        .into_iter()
        .zip(parts)
        .map(|((name, t), v)| {
            let value = match t {
                crate::tables::AttrType::S => AttributeValue::S(v.to_string()),
                crate::tables::AttrType::N => AttributeValue::N(v.to_string()),
            };
            (name.to_string(), value)
        })
        .collect();
    Some((kind, key))
}

/// One ledger entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Ack {
    pub item_key: String,
    /// The acknowledging region, or [`DELETE_INTENT`].
    pub region: String,
    pub version: i64,
    pub doc_key: String,
    /// Content hash of the verified item (empty for removals and intents).
    pub hash: String,
    /// The item was removed (acknowledgements of deletes, and intents).
    pub removed: bool,
    /// Capture time of the core change (ISO 8601).
    pub source_time: String,
    /// When the entry was written (Unix milliseconds).
    pub recorded_at_ms: i64,
    /// Milliseconds from `source_time` to the verification (acknowledgements only).
    pub lag_ms: Option<i64>,
}

impl Ack {
    pub fn to_item(&self) -> Item {
        let mut item: Item = HashMap::from([
            ("item_key".into(), AttributeValue::S(self.item_key.clone())),
            ("region".into(), AttributeValue::S(self.region.clone())),
            (
                "version".into(),
                AttributeValue::N(self.version.to_string()),
            ),
            ("doc_key".into(), AttributeValue::S(self.doc_key.clone())),
            ("removed".into(), AttributeValue::Bool(self.removed)),
            (
                "source_time".into(),
                AttributeValue::S(self.source_time.clone()),
            ),
            (
                "recorded_at_ms".into(),
                AttributeValue::N(self.recorded_at_ms.to_string()),
            ),
            (
                "expires_at".into(),
                AttributeValue::N((self.recorded_at_ms / 1000 + RETENTION_SECONDS).to_string()),
            ),
        ]);
        if !self.hash.is_empty() {
            item.insert("hash".into(), AttributeValue::S(self.hash.clone()));
        }
        if let Some(lag) = self.lag_ms {
            item.insert("lag_ms".into(), AttributeValue::N(lag.to_string()));
        }
        item
    }

    /// Reads an entry back; `None` if it is not one of ours.
    pub fn from_item(item: &Item) -> Option<Ack> {
        let s = |k: &str| match item.get(k) {
            Some(AttributeValue::S(s)) => Some(s.clone()),
            _ => None,
        };
        let n = |k: &str| match item.get(k) {
            Some(AttributeValue::N(n)) => n.parse::<i64>().ok(),
            _ => None,
        };
        Some(Ack {
            item_key: s("item_key")?,
            region: s("region")?,
            version: n("version")?,
            doc_key: s("doc_key").unwrap_or_default(),
            hash: s("hash").unwrap_or_default(),
            removed: matches!(item.get("removed"), Some(AttributeValue::Bool(true))),
            source_time: s("source_time").unwrap_or_default(),
            recorded_at_ms: n("recorded_at_ms").unwrap_or_default(),
            lag_ms: n("lag_ms"),
        })
    }
}

/// The condition that keeps ledger entries from going backwards: write only over an older
/// entry (or none). Names: `#ver` = `version`; values: `:v` the new version.
pub const NEWER_CONDITION: &str = "attribute_not_exists(#ver) OR #ver < :v";

/// The PutItem of `ack` into `table`, conditional on [`NEWER_CONDITION`]. A conditional check
/// failure means a newer entry is already there.
pub fn put_newer(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    ack: &Ack,
) -> aws_sdk_dynamodb::operation::put_item::builders::PutItemFluentBuilder {
    client
        .put_item()
        .table_name(table)
        .set_item(Some(ack.to_item()))
        .condition_expression(NEWER_CONDITION)
        .expression_attribute_names("#ver", "version")
        .expression_attribute_values(":v", AttributeValue::N(ack.version.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_keys_follow_the_key_schema() {
        let key: Item = HashMap::from([
            ("environment_id".into(), AttributeValue::S("12".into())),
            ("document_key".into(), AttributeValue::S("_META".into())),
        ]);
        assert_eq!(
            item_key(TableKind::EnvironmentsV2, &key).as_deref(),
            Some("environments_v2|12|_META")
        );
        let json = serde_json::json!({"environment_id": "12", "document_key": "_META"});
        assert_eq!(
            item_key_of_json(TableKind::EnvironmentsV2, json.as_object().unwrap()),
            item_key(TableKind::EnvironmentsV2, &key)
        );
        assert_eq!(item_key(TableKind::Environments, &key), None);
        assert_eq!(
            key_of("environments_v2|12|_META"),
            Some((TableKind::EnvironmentsV2, key))
        );
        let identity: Item = HashMap::from([(
            "composite_key".to_string(),
            AttributeValue::S("env_a|b".into()),
        )]);
        assert_eq!(
            key_of("identities|env_a|b"),
            Some((TableKind::Identities, identity))
        );
        assert_eq!(key_of("nope|x"), None);
    }

    #[test]
    fn entries_round_trip() {
        let ack = Ack {
            item_key: "environments|k".into(),
            region: "eu-west-1".into(),
            version: 7,
            doc_key: "environment:1".into(),
            hash: "abc".into(),
            removed: false,
            source_time: "2026-01-01T00:00:00+00:00".into(),
            recorded_at_ms: 1_700_000_000_000,
            lag_ms: Some(120),
        };
        assert_eq!(Ack::from_item(&ack.to_item()), Some(ack));
    }
}
