//! Verifying one replicated item, without I/O.
//!
//! For each new image from a DynamoDB stream the consumer recomputes the content hash the
//! writer recorded (`_replication_hash`) from the item itself, and checks that the version
//! never goes backwards between the old and the new image.

use edge_documents::hash::content_hash;
use edge_documents::item::{logical_item, stored_meta, Item, ItemError, StoredMeta};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("item of {doc_key} v{version}: content hash {actual} does not match the recorded {recorded}")]
    HashMismatch {
        doc_key: String,
        version: i64,
        recorded: String,
        actual: String,
    },
    #[error("item of {doc_key}: version went backwards from {old} to {new}")]
    VersionWentBackwards { doc_key: String, old: i64, new: i64 },
    #[error("item cannot be read: {0}")]
    Unreadable(String),
    #[error("ingesting the edge's write into core failed (retried): {0}")]
    Ingestion(String),
    #[error("item {} of {doc_key} v{version} was removed without a delete of the writer (newest delete intent: {intent:?})", edge_documents::redact::item_key(.item_key))]
    UnexpectedRemoval {
        item_key: String,
        doc_key: String,
        version: i64,
        intent: Option<i64>,
    },
}

impl From<ItemError> for VerifyError {
    fn from(e: ItemError) -> Self {
        VerifyError::Unreadable(e.to_string())
    }
}

/// Verifies a replicated item against the metadata it carries; `old` is the stream's old
/// image, when there is one. Returns the item's replication metadata.
pub fn verify(new: &Item, old: Option<&Item>) -> Result<StoredMeta, VerifyError> {
    let meta = stored_meta(new)?;
    let actual = content_hash(&logical_item(new)?);
    if actual != meta.hash {
        return Err(VerifyError::HashMismatch {
            doc_key: meta.doc_key,
            version: meta.version,
            recorded: meta.hash,
            actual,
        });
    }
    if let Some(old) = old {
        if let Ok(old_meta) = stored_meta(old) {
            if old_meta.version > meta.version {
                return Err(VerifyError::VersionWentBackwards {
                    doc_key: meta.doc_key,
                    old: old_meta.version,
                    new: meta.version,
                });
            }
        }
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::types::AttributeValue;
    use edge_documents::item::{encode, ReplicationMeta};
    use serde_json::json;

    fn item(version: i64, name: &str) -> Item {
        let meta = ReplicationMeta {
            version,
            source_time: "2025-01-01T00:00:00+00:00".into(),
            doc_key: "environment:1".into(),
        };
        encode(
            &json!({"api_key": "k", "name": name, "id": 1}),
            &meta,
            Some(1024),
        )
        .unwrap()
        .item
    }

    #[test]
    fn a_faithful_replica_verifies() {
        let meta = verify(&item(2, "a"), Some(&item(1, "b"))).unwrap();
        assert_eq!(meta.version, 2);
    }

    #[test]
    fn a_changed_attribute_is_detected() {
        let mut tampered = item(2, "a");
        tampered.insert("name".into(), AttributeValue::S("tampered".into()));
        assert!(matches!(
            verify(&tampered, None),
            Err(VerifyError::HashMismatch { .. })
        ));
    }

    #[test]
    fn an_older_version_over_a_newer_one_is_detected() {
        let err = verify(&item(1, "a"), Some(&item(2, "a"))).unwrap_err();
        assert_eq!(
            err,
            VerifyError::VersionWentBackwards {
                doc_key: "environment:1".into(),
                old: 2,
                new: 1
            }
        );
    }
}
