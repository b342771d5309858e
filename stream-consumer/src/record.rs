//! One DynamoDB Streams record, decoded from either source: the JSON Lambda delivers, or the
//! typed records of `aws-sdk-dynamodbstreams` (the local poller).
//!
//! Lambda's payload is taken as raw JSON and decoded record by record: `aws_lambda_events`'
//! `Event` would deserialise the whole batch at once, and one malformed attribute would fail
//! the batch before the handler could isolate the record.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use edge_documents::item::Item;
use edge_documents::tables::{TableKind, TableNames};
use serde_json::Value;

/// A decoded stream record.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRecord {
    pub sequence: String,
    pub table: TableKind,
    pub keys: Item,
    /// The item after the change; `None` for a removal.
    pub new: Option<Item>,
    /// The item before the change, when there was one.
    pub old: Option<Item>,
    /// When the change was made in this region (the record's approximate creation time):
    /// an edge write's time under the merge rule.
    pub created_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("record {sequence}: malformed {what}: {reason}")]
pub struct Malformed {
    pub sequence: String,
    pub what: &'static str,
    pub reason: String,
}

/// The sequence number of a Lambda record, for reporting it as a batch item failure.
pub fn sequence_number(record: &Value) -> String {
    record["dynamodb"]["SequenceNumber"]
        .as_str()
        .unwrap_or("unknown")
        .to_string()
}

fn json_image(record: &Value, which: &'static str) -> Result<Option<Item>, Malformed> {
    let Some(raw) = record["dynamodb"].get(which).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    decode_image(raw).map(Some).map_err(|reason| Malformed {
        sequence: sequence_number(record),
        what: which,
        reason,
    })
}

/// An image in Lambda's JSON (`{"name": {"S": "..."}, ...}`), decoded straight into the
/// SDK's attribute values from the borrowed JSON. What this does not take itself (binary
/// values, sets, anything malformed) is decoded by serde_dynamo, which also words the error.
fn decode_image(raw: &Value) -> Result<Item, String> {
    let Some(attrs) = raw.as_object() else {
        return serde_dynamo_image(raw);
    };
    let mut item = Item::with_capacity(attrs.len());
    for (name, value) in attrs {
        match decode_attribute(value) {
            Some(value) => {
                item.insert(name.clone(), value);
            }
            // The whole image through serde_dynamo, so that the error reads as it always has.
            None => return serde_dynamo_image(raw),
        }
    }
    Ok(item)
}

fn serde_dynamo_image(raw: &Value) -> Result<Item, String> {
    <serde_dynamo::Item as serde::Deserialize>::deserialize(raw)
        .map(to_item)
        .map_err(|e| e.to_string())
}

/// One attribute of the kinds JSON documents are made of; `None` for anything else.
fn decode_attribute(value: &Value) -> Option<AttributeValue> {
    let attr = value.as_object().filter(|o| o.len() == 1)?;
    let (kind, inner) = attr.iter().next()?;
    Some(match (kind.as_str(), inner) {
        ("S", Value::String(s)) => AttributeValue::S(s.clone()),
        ("N", Value::String(n)) => AttributeValue::N(n.clone()),
        ("BOOL", Value::Bool(b)) => AttributeValue::Bool(*b),
        ("NULL", Value::Bool(b)) => AttributeValue::Null(*b),
        ("M", Value::Object(map)) => {
            let mut out = HashMap::with_capacity(map.len());
            for (name, value) in map {
                out.insert(name.clone(), decode_attribute(value)?);
            }
            AttributeValue::M(out)
        }
        ("L", Value::Array(items)) => {
            AttributeValue::L(items.iter().map(decode_attribute).collect::<Option<_>>()?)
        }
        // Binary (base64) and sets, and what is malformed: serde_dynamo's.
        _ => return None,
    })
}

/// Whether an old image is used only for its replication attributes: a record with a new
/// image of an item that only core writes, where the old image serves the version-order
/// check alone. Identity items' old images feed ingestion, and a removal's old image names
/// what to invalidate: those are decoded in full.
fn only_replication_attrs(table: TableKind, has_new: bool) -> bool {
    has_new && table != TableKind::Identities
}

fn is_replication_attr(name: &str) -> bool {
    name.starts_with("_replication_")
}

/// [`json_image`] of only the replication attributes (`_replication_*`) of the image.
fn json_replication_attrs(record: &Value, which: &'static str) -> Result<Option<Item>, Malformed> {
    let Some(raw) = record["dynamodb"].get(which).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let malformed = |reason: String| Malformed {
        sequence: sequence_number(record),
        what: which,
        reason,
    };
    let Some(attrs) = raw.as_object() else {
        return Err(malformed(format!("not a map of attributes: {raw}")));
    };
    let mut item = Item::new();
    for (name, value) in attrs.iter().filter(|(n, _)| is_replication_attr(n)) {
        let value = match decode_attribute(value) {
            Some(value) => value,
            None => <serde_dynamo::AttributeValue as serde::Deserialize>::deserialize(value)
                .map_err(|e| malformed(format!("{name}: {e}")))?
                .into(),
        };
        item.insert(name.clone(), value);
    }
    Ok(Some(item))
}

fn to_item(item: serde_dynamo::Item) -> Item {
    item.into_inner()
        .into_iter()
        .map(|(k, v)| (k, v.into()))
        .collect()
}

/// Decodes one record of a Lambda DynamoDB Streams event. The table comes from the record's
/// `eventSourceARN` (`arn:aws:dynamodb:<region>:<account>:table/<name>/stream/<label>`).
pub fn from_lambda(record: &Value, tables: &TableNames) -> Result<ChangeRecord, Malformed> {
    let sequence = sequence_number(record);
    let malformed = |what, reason: String| Malformed {
        sequence: sequence.clone(),
        what,
        reason,
    };
    if sequence == "unknown" {
        return Err(malformed("SequenceNumber", "missing".into()));
    }
    let arn = record["eventSourceARN"]
        .as_str()
        .ok_or_else(|| malformed("eventSourceARN", "missing".into()))?;
    let table_name = arn
        .split_once(":table/")
        .and_then(|(_, rest)| rest.split('/').next())
        .ok_or_else(|| malformed("eventSourceARN", format!("{arn} is not a table stream")))?;
    let table = tables.kind_of(table_name).ok_or_else(|| {
        malformed(
            "eventSourceARN",
            format!("table {table_name} is not one of the edge tables this consumer verifies"),
        )
    })?;
    let keys = json_image(record, "Keys")?.ok_or_else(|| malformed("Keys", "missing".into()))?;
    // Epoch seconds (a number; Lambda may send a fraction).
    let created_at = record["dynamodb"]["ApproximateCreationDateTime"]
        .as_f64()
        .and_then(|s| DateTime::from_timestamp_micros((s * 1e6) as i64));
    let new = json_image(record, "NewImage")?;
    let old = if only_replication_attrs(table, new.is_some()) {
        json_replication_attrs(record, "OldImage")?
    } else {
        json_image(record, "OldImage")?
    };
    Ok(ChangeRecord {
        new,
        old,
        sequence,
        table,
        keys,
        created_at,
    })
}

type StreamsImage = HashMap<String, aws_sdk_dynamodbstreams::types::AttributeValue>;

fn streams_image(image: Option<&StreamsImage>) -> Option<Item> {
    image.map(|m| to_item(serde_dynamo::Item::from(m.clone())))
}

/// [`streams_image`] of only the replication attributes.
fn streams_replication_attrs(image: Option<&StreamsImage>) -> Option<Item> {
    image.map(|m| {
        let attrs: StreamsImage = m
            .iter()
            .filter(|(n, _)| is_replication_attr(n))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        to_item(serde_dynamo::Item::from(attrs))
    })
}

/// Decodes a record read with `aws-sdk-dynamodbstreams` from the stream of `table`.
pub fn from_streams(
    record: &aws_sdk_dynamodbstreams::types::Record,
    table: TableKind,
) -> Result<ChangeRecord, Malformed> {
    let data = record.dynamodb();
    let sequence = data
        .and_then(|d| d.sequence_number())
        .unwrap_or("unknown")
        .to_string();
    let Some(data) = data else {
        return Err(Malformed {
            sequence,
            what: "dynamodb",
            reason: "missing".into(),
        });
    };
    let created_at = data
        .approximate_creation_date_time()
        .and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()));
    let new = streams_image(data.new_image.as_ref());
    let old = if only_replication_attrs(table, new.is_some()) {
        streams_replication_attrs(data.old_image.as_ref())
    } else {
        streams_image(data.old_image.as_ref())
    };
    Ok(ChangeRecord {
        keys: streams_image(data.keys.as_ref()).unwrap_or_default(),
        new,
        old,
        sequence,
        table,
        created_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lambda_records_name_their_table_by_arn() {
        let tables = TableNames::with_prefix("p_");
        let record = json!({
            "eventSourceARN": "arn:aws:dynamodb:eu-west-1:1:table/p_flagsmith_identities/stream/2026",
            "dynamodb": {"SequenceNumber": "5", "Keys": {"composite_key": {"S": "k_a"}},
                         "NewImage": {"composite_key": {"S": "k_a"}}}
        });
        let decoded = from_lambda(&record, &tables).unwrap();
        assert_eq!(decoded.table, TableKind::Identities);
        assert!(decoded.new.is_some() && decoded.old.is_none());

        let foreign = json!({
            "eventSourceARN": "arn:aws:dynamodb:eu-west-1:1:table/other/stream/2026",
            "dynamodb": {"SequenceNumber": "6", "Keys": {}}
        });
        let err = from_lambda(&foreign, &tables).unwrap_err();
        assert!(
            err.to_string().contains("table other is not one of"),
            "{err}"
        );
    }

    #[test]
    fn a_malformed_attribute_names_the_record_and_image() {
        let record = json!({
            "eventSourceARN": "arn:aws:dynamodb:r:1:table/flagsmith_environments/stream/x",
            "dynamodb": {"SequenceNumber": "7", "Keys": {"api_key": {"S": "k"}},
                         "NewImage": {"x": {"Q": 1}}}
        });
        let err = from_lambda(&record, &TableNames::default()).unwrap_err();
        assert!(
            err.to_string().starts_with("record 7: malformed NewImage"),
            "{err}"
        );
    }
}

/// Property tests: any record decodes to exactly its images, from either source, and any
/// JSON at all is decoded or refused as malformed, never a panic.
#[cfg(test)]
mod properties {
    use super::*;
    use aws_sdk_dynamodbstreams::types::{Record, StreamRecord};
    use proptest::prelude::*;
    use serde_dynamo::AttributeValue as Av;
    use serde_json::json;

    type Image = HashMap<String, Av>;

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..32)
    }

    fn attribute() -> impl Strategy<Value = Av> {
        let leaf = prop_oneof![
            any::<String>().prop_map(Av::S),
            prop_oneof![
                any::<i64>().prop_map(|n| n.to_string()),
                any::<f64>().prop_map(|f| f.to_string()),
                "-?[0-9]{1,38}(\\.[0-9]{1,20})?",
            ]
            .prop_map(Av::N),
            bytes().prop_map(Av::B),
            any::<bool>().prop_map(Av::Bool),
            Just(Av::Null(true)),
            prop::collection::vec(any::<String>(), 1..4).prop_map(Av::Ss),
            prop::collection::vec("-?[0-9]{1,10}", 1..4).prop_map(Av::Ns),
            prop::collection::vec(bytes(), 1..4).prop_map(Av::Bs),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Av::L),
                prop::collection::hash_map(any::<String>(), inner, 0..4).prop_map(Av::M),
            ]
        })
    }

    fn image() -> impl Strategy<Value = Image> {
        let name = prop_oneof![
            any::<String>(),
            Just("_replication_version".to_string()),
            Just("_replication_doc".to_string()),
        ];
        prop::collection::hash_map(name, attribute(), 0..6)
    }

    fn sdk(image: &Image) -> Item {
        to_item(serde_dynamo::Item::from(image.clone()))
    }

    /// The old image as decoded: only its replication attributes where nothing else of it
    /// is used.
    fn old_as_kept(table: TableKind, has_new: bool, old: &Image) -> Item {
        let mut item = sdk(old);
        if only_replication_attrs(table, has_new) {
            item.retain(|name, _| is_replication_attr(name));
        }
        item
    }

    fn lambda_json(image: &Image) -> Value {
        serde_json::to_value(serde_dynamo::Item::from(image.clone())).unwrap()
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<f64>().prop_map(|f| json!(f)),
            any::<i64>().prop_map(|i| json!(i)),
            any::<String>().prop_map(Value::String),
            prop_oneof![
                Just("S"),
                Just("N"),
                Just("B"),
                Just("M"),
                Just("L"),
                Just("NULL")
            ]
            .prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        any::<String>(),
                        Just("S".to_string()),
                        Just("N".to_string()),
                        Just("B".to_string()),
                        Just("M".to_string()),
                        Just("L".to_string()),
                        Just("BOOL".to_string()),
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn lambda_records_decode_to_their_images(
            sequence in "[0-9]{1,40}",
            table in prop::sample::select(TableKind::ALL.to_vec()),
            keys in image(),
            new in prop::option::of(image()),
            old in prop::option::of(image()),
            created in any::<f64>(),
        ) {
            let tables = TableNames::with_prefix("p_");
            let record = json!({
                "eventSourceARN": format!("arn:aws:dynamodb:eu-west-1:1:table/{}/stream/2026", tables.name(table)),
                "dynamodb": {"SequenceNumber": sequence, "Keys": lambda_json(&keys),
                             "NewImage": new.as_ref().map(lambda_json),
                             "OldImage": old.as_ref().map(lambda_json),
                             "ApproximateCreationDateTime": created}
            });
            let decoded = from_lambda(&record, &tables).unwrap();
            prop_assert_eq!(decoded.sequence, sequence);
            prop_assert_eq!(decoded.table, table);
            prop_assert_eq!(decoded.keys, sdk(&keys));
            prop_assert_eq!(decoded.new, new.as_ref().map(sdk));
            prop_assert_eq!(decoded.old, old.as_ref().map(|o| old_as_kept(table, new.is_some(), o)));
        }

        #[test]
        fn streams_records_decode_to_their_images(
            sequence in "[0-9]{1,40}",
            table in prop::sample::select(TableKind::ALL.to_vec()),
            keys in image(),
            new in prop::option::of(image()),
            old in prop::option::of(image()),
            created in any::<i64>(),
        ) {
            let streams = |i: &Image| serde_dynamo::Item::from(i.clone()).into();
            let data = StreamRecord::builder()
                .sequence_number(&sequence)
                .set_keys(Some(streams(&keys)))
                .set_new_image(new.as_ref().map(streams))
                .set_old_image(old.as_ref().map(streams))
                .approximate_creation_date_time(aws_smithy_types::DateTime::from_secs(created))
                .build();
            let record = Record::builder().dynamodb(data).build();
            let decoded = from_streams(&record, table).unwrap();
            prop_assert_eq!(decoded.sequence, sequence);
            prop_assert_eq!(decoded.keys, sdk(&keys));
            prop_assert_eq!(decoded.new, new.as_ref().map(sdk));
            prop_assert_eq!(decoded.old, old.as_ref().map(|o| old_as_kept(table, new.is_some(), o)));
            prop_assert_eq!(decoded.created_at.map(|t| t.timestamp()), DateTime::from_timestamp(created, 0).map(|t| t.timestamp()));
        }

        /// The direct decoding of an image gives what serde_dynamo gives, for valid images
        /// and for anything at all in an image's place (and refuses what it refuses).
        #[test]
        fn images_decode_as_serde_dynamo_decodes_them(
            image in image(),
            anything in json(),
            wrapped in json(),
        ) {
            let valid = lambda_json(&image);
            prop_assert_eq!(decode_image(&valid), Ok(sdk(&image)));
            for raw in [anything, json!({"name": wrapped}), json!({"a": {"M": {"b": valid}}})] {
                let direct = decode_image(&raw);
                let general = serde_dynamo_image(&raw);
                prop_assert_eq!(direct.as_ref().ok(), general.as_ref().ok());
                prop_assert_eq!(direct.is_err(), general.is_err());
            }
        }

        /// Anything at all in a record's place, or in its images: decoded, or refused as
        /// malformed under the record's own sequence number.
        #[test]
        fn any_lambda_record_is_decoded_or_refused_never_a_panic(
            record in json(),
            images in prop::collection::btree_map(
                prop_oneof![Just("Keys"), Just("NewImage"), Just("OldImage"), Just("SequenceNumber"), Just("ApproximateCreationDateTime")],
                json(),
                0..5,
            ),
        ) {
            let tables = TableNames::default();
            let mut shaped = json!({
                "eventSourceARN": "arn:aws:dynamodb:r:1:table/flagsmith_environments/stream/x",
                "dynamodb": {"SequenceNumber": "9"}
            });
            for (k, v) in images {
                shaped["dynamodb"][k] = v;
            }
            for r in [record, shaped] {
                if let Err(m) = from_lambda(&r, &tables) {
                    prop_assert_eq!(m.sequence, sequence_number(&r));
                }
            }
        }
    }
}
