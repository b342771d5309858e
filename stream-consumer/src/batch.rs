//! A batch of DynamoDB Streams records, as Lambda delivers it.
//!
//! The payload is taken as raw JSON and parsed record by record: `aws_lambda_events`'
//! `Event` would deserialise the whole batch at once, and one malformed attribute would fail
//! the batch before the handler could isolate it. Records of a shard are ordered; with
//! `ReportBatchItemFailures` Lambda checkpoints before the *first* reported failure and
//! redelivers it and everything after it, so processing stops at the first failure and
//! reports exactly that record. Handling is idempotent, so redelivery is harmless.

use aws_lambda_events::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use edge_documents::item::{Item, StoredMeta};
use serde_json::Value;

use crate::{verify, VerifyError};

/// What one record was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// A new or changed item that verified.
    Verified(StoredMeta),
    /// A removal, or an item the writer does not own (no replication attributes).
    Skipped(&'static str),
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record {sequence}: {source}")]
    Verify {
        sequence: String,
        #[source]
        source: VerifyError,
    },
    #[error("record {sequence}: malformed {what}: {reason}")]
    Malformed {
        sequence: String,
        what: &'static str,
        reason: String,
    },
}

fn sequence_number(record: &Value) -> String {
    record["dynamodb"]["SequenceNumber"]
        .as_str()
        .unwrap_or("unknown")
        .to_string()
}

fn image(record: &Value, which: &'static str) -> Result<Option<Item>, RecordError> {
    let Some(raw) = record["dynamodb"].get(which).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let item: serde_dynamo::Item =
        serde_json::from_value(raw.clone()).map_err(|e| RecordError::Malformed {
            sequence: sequence_number(record),
            what: which,
            reason: e.to_string(),
        })?;
    Ok(Some(
        item.into_inner()
            .into_iter()
            .map(|(k, v)| (k, v.into()))
            .collect(),
    ))
}

/// Verifies one stream record.
pub fn handle_record(record: &Value) -> Result<RecordOutcome, RecordError> {
    let Some(new) = image(record, "NewImage")? else {
        return Ok(RecordOutcome::Skipped("removal"));
    };
    if !new.contains_key(edge_documents::item::ATTR_VERSION) {
        return Ok(RecordOutcome::Skipped("not written by the edge writer"));
    }
    let old = image(record, "OldImage")?;
    verify(&new, old.as_ref())
        .map(RecordOutcome::Verified)
        .map_err(|source| RecordError::Verify {
            sequence: sequence_number(record),
            source,
        })
}

/// Handles a batch: every record up to the first failure; that record is reported.
pub fn handle_batch(payload: &Value) -> DynamoDbEventResponse {
    let mut response = DynamoDbEventResponse::default();
    let records = payload["Records"].as_array().cloned().unwrap_or_default();
    for record in &records {
        match handle_record(record) {
            Ok(RecordOutcome::Verified(meta)) => {
                tracing::info!(doc = %meta.doc_key, version = meta.version, "replica verified");
            }
            Ok(RecordOutcome::Skipped(why)) => tracing::debug!(why, "record skipped"),
            Err(e) => {
                tracing::error!(error = %e, "replica failed verification");
                let mut failure = DynamoDbBatchItemFailure::default();
                failure.item_identifier = Some(sequence_number(record));
                response.batch_item_failures.push(failure);
                break;
            }
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_documents::item::{encode, ReplicationMeta};
    use serde_json::json;

    fn stream_image(version: i64, name: &str) -> Value {
        let meta = ReplicationMeta {
            version,
            source_time: "2025-01-01T00:00:00+00:00".into(),
            doc_key: "environment:1".into(),
        };
        let item = encode(&json!({"api_key": "k", "name": name, "id": 1}), &meta, None)
            .unwrap()
            .item;
        let item: serde_dynamo::Item = item
            .into_iter()
            .map(|(k, v)| (k, serde_dynamo::AttributeValue::from(v)))
            .collect::<std::collections::HashMap<_, _>>()
            .into();
        serde_json::to_value(item).unwrap()
    }

    fn record(seq: &str, new: Value, old: Option<Value>) -> Value {
        json!({"eventName": "MODIFY", "dynamodb": {"SequenceNumber": seq, "NewImage": new, "OldImage": old}})
    }

    #[test]
    fn a_poison_record_is_the_only_failure_reported() {
        let mut tampered = stream_image(3, "a");
        tampered["name"] = json!({"S": "changed behind the writer's back"});
        let batch = json!({"Records": [
            record("100", stream_image(2, "a"), Some(stream_image(1, "a"))),
            record("200", tampered, None),
            record("300", stream_image(4, "a"), None),
        ]});
        let response = handle_batch(&batch);
        assert_eq!(response.batch_item_failures.len(), 1);
        assert_eq!(
            response.batch_item_failures[0].item_identifier.as_deref(),
            Some("200")
        );
    }

    #[test]
    fn malformed_records_and_removals_are_told_apart() {
        let malformed = json!({"dynamodb": {"SequenceNumber": "7", "NewImage": {"x": {"Q": 1}}}});
        let err = handle_record(&malformed).unwrap_err();
        assert!(
            err.to_string().contains("record 7: malformed NewImage"),
            "{err}"
        );
        let removal = json!({"eventName": "REMOVE", "dynamodb": {"SequenceNumber": "8", "OldImage": stream_image(1, "a")}});
        assert_eq!(
            handle_record(&removal).unwrap(),
            RecordOutcome::Skipped("removal")
        );
        let batch = json!({"Records": [record("1", stream_image(1, "a"), None)]});
        assert!(handle_batch(&batch).batch_item_failures.is_empty());
    }
}
