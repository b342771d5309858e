//! One DynamoDB Streams record, decoded from either source: the JSON Lambda delivers, or the
//! typed records of `aws-sdk-dynamodbstreams` (the local poller).
//!
//! Lambda's payload is taken as raw JSON and decoded record by record: `aws_lambda_events`'
//! `Event` would deserialise the whole batch at once, and one malformed attribute would fail
//! the batch before the handler could isolate the record.

use std::collections::HashMap;

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
    let item: serde_dynamo::Item = serde_json::from_value(raw.clone()).map_err(|e| Malformed {
        sequence: sequence_number(record),
        what: which,
        reason: e.to_string(),
    })?;
    Ok(Some(to_item(item)))
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
    Ok(ChangeRecord {
        new: json_image(record, "NewImage")?,
        old: json_image(record, "OldImage")?,
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
    Ok(ChangeRecord {
        keys: streams_image(data.keys.as_ref()).unwrap_or_default(),
        new: streams_image(data.new_image.as_ref()),
        old: streams_image(data.old_image.as_ref()),
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
