//! Verifying one replicated item, without I/O.
//!
//! For each new image from a DynamoDB stream the consumer recomputes the content hash the
//! writer recorded (`_replication_hash`) from the item itself, and checks that the version
//! never goes backwards between the old and the new image.

use edge_documents::item::{item_content_hash, stored_meta, Item, ItemError, StoredMeta};

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
    let actual = item_content_hash(new)?;
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

    #[test]
    fn the_same_version_again_verifies() {
        // A redelivered or re-put item: its version did not go backwards.
        let meta = verify(&item(2, "a"), Some(&item(2, "b"))).unwrap();
        assert_eq!(meta.version, 2);
    }

    #[test]
    fn a_decompression_bomb_in_a_record_fails_it_naming_the_item() {
        use edge_documents::item::MAX_DECOMPRESSED_BYTES;
        use std::io::Write;
        // 16 MiB + 1 of zeros: about 16 KiB of gzip, a plausible item.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&vec![b'0'; MAX_DECOMPRESSED_BYTES + 1])
            .unwrap();
        let mut bomb = item(2, "a");
        bomb.insert(
            "feature_states".into(),
            AttributeValue::B(aws_smithy_types::Blob::new(gz.finish().unwrap())),
        );
        bomb.insert("compressed".into(), AttributeValue::Bool(true));
        let err = verify(&bomb, None).unwrap_err().to_string();
        assert!(err.contains("api_key=k of environment:1"), "{err}");
        assert!(err.contains("decompressed"), "{err}");
    }

    #[test]
    fn an_unexpected_removal_names_a_server_key_by_its_prefix() {
        let err = VerifyError::UnexpectedRemoval {
            item_key: "environment_api_keys|ser.abcdefghijklmnopqrstuvwx".into(),
            doc_key: "api_key:3".into(),
            version: 2,
            intent: None,
        }
        .to_string();
        assert!(
            err.contains("item environment_api_keys|ser.abcd… of api_key:3"),
            "{err}"
        );
        assert!(!err.contains("efgh"), "{err}");
    }
}
