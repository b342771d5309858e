//! From a document to a DynamoDB item and back.
//!
//! Items are stored as native DynamoDB attributes, as Flagsmith's core API writes them
//! (`put_item(Item=document)`), plus four replication attributes that Flagsmith's readers
//! ignore (they read known keys only):
//!
//! | attribute | type | meaning |
//! |---|---|---|
//! | `_replication_version` | N | the document version; every write is conditional on it |
//! | `_replication_hash` | S | [`content_hash`] of the logical item |
//! | `_replication_source_time` | S | capture time of the newest core change the item reflects |
//! | `_replication_doc` | S | the writer's document key that owns the item |
//!
//! The *logical item* is what the hash covers: the item without the replication attributes,
//! with compressed fields decompressed and without the `compressed` flag. A plain item and
//! its compressed form have the same logical item, hence the same hash.
//!
//! Environment documents (and `_META` items) whose item would exceed the compression
//! threshold are written in Flagsmith's compressed form: `compressed: true`, and `project`
//! and `feature_states` as Binary gzip of compact, key-sorted JSON (gzip mtime 0).
//!
//! Reading a compressed item back is bounded: its fields may decompress to
//! [`MAX_DECOMPRESSED_BYTES`] together, no more (a decompression bomb in a stream record or
//! a scanned item is a typed error naming the item, not an out-of-memory crash), and the
//! writer refuses to write a document that its readers would refuse.

use std::collections::HashMap;
use std::io::{Read, Write};

use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_types::Blob;
use serde_json::Value;

use crate::hash::{canonical_json, content_hash};

pub const ATTR_VERSION: &str = "_replication_version";
pub const ATTR_HASH: &str = "_replication_hash";
pub const ATTR_SOURCE_TIME: &str = "_replication_source_time";
pub const ATTR_DOC: &str = "_replication_doc";
pub const REPLICATION_ATTRS: [&str; 4] = [ATTR_VERSION, ATTR_HASH, ATTR_SOURCE_TIME, ATTR_DOC];

/// Fields that Flagsmith's compressed environment form stores as gzip Binary.
pub const COMPRESSED_FIELDS: [&str; 2] = ["project", "feature_states"];
pub const COMPRESSED_FLAG: &str = "compressed";

/// DynamoDB's hard limit on the size of one item.
pub const MAX_ITEM_BYTES: usize = 400 * 1024;

/// Default size above which compressible items are compressed. Below DynamoDB's limit with
/// room for the replication attributes and for the estimate's error.
pub const DEFAULT_COMPRESS_ABOVE_BYTES: usize = 350 * 1024;

/// Most bytes the compressed fields of one item may decompress to, together.
///
/// The compressed fields sit in an item of at most [`MAX_ITEM_BYTES`] (400 KiB). Compact JSON
/// of environment documents gzips about 10:1 to 20:1 (repeated keys; 16 MiB of typical
/// feature states gzip to about 1 MiB), so the largest document DynamoDB can hold in the
/// compressed form is about 8 MiB; 16 MiB leaves twice that (a ratio of 40:1 over a full
/// item). Deflate reaches about 1000:1, so a crafted 400 KiB item could claim some 400 MiB,
/// and its parsed JSON several times that: more than the consumer's Lambda has (256 MB).
/// Reading and hashing an item at the limit peaks well under it (measured: a process doing
/// it stayed below 170 MB).
pub const MAX_DECOMPRESSED_BYTES: usize = 16 * 1024 * 1024;

pub type Item = HashMap<String, AttributeValue>;

#[derive(Debug, thiserror::Error)]
pub enum ItemError {
    #[error("document for {doc_key} is {size} bytes even in compressed form, over DynamoDB's {MAX_ITEM_BYTES}-byte item limit")]
    TooLarge { doc_key: String, size: usize },
    #[error("document for {doc_key} is {size} bytes, over DynamoDB's {MAX_ITEM_BYTES}-byte item limit, and has no compressed form")]
    TooLargeUncompressible { doc_key: String, size: usize },
    #[error("document body must be a JSON object")]
    NotAnObject,
    #[error("cannot convert to DynamoDB attributes: {0}")]
    Convert(#[from] serde_dynamo::Error),
    #[error("document for {doc_key} has {size} bytes of compressed fields uncompressed, over the {MAX_DECOMPRESSED_BYTES}-byte limit of its readers")]
    TooLargeToDecompress { doc_key: String, size: usize },
    #[error("item {item}: compressed field `{field}` is not valid gzip JSON: {reason}")]
    BadCompressedField {
        item: String,
        field: String,
        reason: String,
    },
    #[error("item {item}: compressed field `{field}` takes the item over {limit} bytes decompressed (a decompression bomb or a corrupt item); not read")]
    DecompressionLimit {
        item: String,
        field: String,
        limit: usize,
    },
    #[error("replication attribute `{0}` is missing or has the wrong type")]
    MissingReplicationAttr(&'static str),
}

/// Replication metadata written with every item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationMeta {
    pub version: i64,
    pub source_time: String,
    pub doc_key: String,
}

/// Replication metadata and content hash read back from an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMeta {
    pub version: i64,
    pub hash: String,
    pub source_time: String,
    pub doc_key: String,
}

/// An item ready to be written.
#[derive(Debug, Clone)]
pub struct EncodedItem {
    pub item: Item,
    pub hash: String,
    pub compressed: bool,
    /// Size as DynamoDB counts it (attribute names plus values).
    pub size: usize,
}

/// Encodes a logical item (a JSON object) with its replication metadata.
///
/// `compress_above`: `Some(bytes)` for items that have Flagsmith's compressed form
/// (environments and `_META`), `None` otherwise.
pub fn encode(
    body: &Value,
    meta: &ReplicationMeta,
    compress_above: Option<usize>,
) -> Result<EncodedItem, ItemError> {
    let object = body.as_object().ok_or(ItemError::NotAnObject)?;
    let hash = content_hash(body);
    let mut item: Item = serde_dynamo::aws_sdk_dynamodb_1::to_item(object)?;
    add_meta(&mut item, meta, &hash);
    let size = item_size(&item);

    let Some(threshold) = compress_above else {
        if size > MAX_ITEM_BYTES {
            return Err(ItemError::TooLargeUncompressible {
                doc_key: meta.doc_key.clone(),
                size,
            });
        }
        return Ok(EncodedItem {
            item,
            hash,
            compressed: false,
            size,
        });
    };
    if size <= threshold {
        return Ok(EncodedItem {
            item,
            hash,
            compressed: false,
            size,
        });
    }

    let mut uncompressed = 0;
    for field in COMPRESSED_FIELDS {
        if let Some(value) = object.get(field) {
            let text = canonical_json(value);
            uncompressed += text.len();
            item.insert(field.to_string(), AttributeValue::B(Blob::new(gzip(&text))));
        }
    }
    if uncompressed > MAX_DECOMPRESSED_BYTES {
        return Err(ItemError::TooLargeToDecompress {
            doc_key: meta.doc_key.clone(),
            size: uncompressed,
        });
    }
    item.insert(COMPRESSED_FLAG.to_string(), AttributeValue::Bool(true));
    let size = item_size(&item);
    if size > MAX_ITEM_BYTES {
        return Err(ItemError::TooLarge {
            doc_key: meta.doc_key.clone(),
            size,
        });
    }
    Ok(EncodedItem {
        item,
        hash,
        compressed: true,
        size,
    })
}

fn add_meta(item: &mut Item, meta: &ReplicationMeta, hash: &str) {
    item.insert(
        ATTR_VERSION.into(),
        AttributeValue::N(meta.version.to_string()),
    );
    item.insert(ATTR_HASH.into(), AttributeValue::S(hash.to_string()));
    item.insert(
        ATTR_SOURCE_TIME.into(),
        AttributeValue::S(meta.source_time.clone()),
    );
    item.insert(ATTR_DOC.into(), AttributeValue::S(meta.doc_key.clone()));
}

/// Gzip (mtime 0) of compact, key-sorted JSON: Flagsmith's `json_gzip`.
pub fn gzip_json(value: &Value) -> Vec<u8> {
    gzip(&canonical_json(value))
}

fn gzip(text: &str) -> Vec<u8> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    encoder
        .write_all(text.as_bytes())
        .expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail")
}

/// Gunzips one compressed field, reading at most `budget` bytes of it (the rest of the
/// item's [`MAX_DECOMPRESSED_BYTES`]); returns the JSON and the bytes it took.
fn gunzip_json(
    item: &Item,
    field: &str,
    bytes: &[u8],
    budget: usize,
) -> Result<(Value, usize), ItemError> {
    let bad = |reason: String| ItemError::BadCompressedField {
        item: describe(item),
        field: field.to_string(),
        reason,
    };
    let mut text = Vec::new();
    // One byte past the budget tells a field at the limit from one over it.
    flate2::read::GzDecoder::new(bytes)
        .take(budget as u64 + 1)
        .read_to_end(&mut text)
        .map_err(|e| bad(e.to_string()))?;
    if text.len() > budget {
        return Err(ItemError::DecompressionLimit {
            item: describe(item),
            field: field.to_string(),
            limit: MAX_DECOMPRESSED_BYTES,
        });
    }
    let value = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    Ok((value, text.len()))
}

/// Names an item in an error: its key attributes (a server-side key by its prefix only, see
/// [`crate::redact`]) and the writer's document, when it has them.
pub fn describe(item: &Item) -> String {
    let s = |k: &str| match item.get(k) {
        Some(AttributeValue::S(s)) => Some(s.as_str()),
        _ => None,
    };
    let mut parts = Vec::new();
    for attr in ["api_key", "environment_id", "document_key", "composite_key"] {
        if let Some(v) = s(attr) {
            parts.push(format!("{attr}={v}"));
        }
    }
    if let Some(key) = s("key") {
        parts.push(format!("key={}", crate::redact::prefix(key)));
    }
    let mut out = if parts.is_empty() {
        "without key attributes".to_string()
    } else {
        parts.join(",")
    };
    if let Some(doc) = s(ATTR_DOC) {
        out.push_str(&format!(" of {doc}"));
    }
    out
}

/// The logical item (what the content hash covers) of a stored item.
pub fn logical_item(item: &Item) -> Result<Value, ItemError> {
    let mut plain = item.clone();
    for attr in REPLICATION_ATTRS {
        plain.remove(attr);
    }
    let compressed = matches!(
        plain.remove(COMPRESSED_FLAG),
        Some(AttributeValue::Bool(true))
    );
    let mut decompressed = serde_json::Map::new();
    if compressed {
        let mut budget = MAX_DECOMPRESSED_BYTES;
        for field in COMPRESSED_FIELDS {
            if let Some(AttributeValue::B(blob)) = plain.remove(field) {
                let (value, took) = gunzip_json(item, field, blob.as_ref(), budget)?;
                budget -= took;
                decompressed.insert(field.to_string(), value);
            }
        }
    }
    let mut value: serde_json::Map<String, Value> =
        serde_dynamo::aws_sdk_dynamodb_1::from_item(plain)?;
    value.extend(decompressed);
    Ok(Value::Object(value))
}

/// The content hash of a stored item: [`content_hash`] of its [`logical_item`], computed from
/// the attributes directly when the item is plain (no copy of the item, no JSON tree), which
/// is what the stream consumer does for every record. Compressed items, and attribute kinds
/// JSON never produces, take the general path.
pub fn item_content_hash(item: &Item) -> Result<String, ItemError> {
    match plain_canonical(item) {
        Some(text) => Ok(crate::hash::hash_of_canonical(&text)),
        None => Ok(content_hash(&logical_item(item)?)),
    }
}

/// The canonical JSON text of a plain item's logical item, or `None` when the item needs
/// [`logical_item`] (compressed, or holding a kind of value this walk does not take).
fn plain_canonical(item: &Item) -> Option<Vec<u8>> {
    if matches!(item.get(COMPRESSED_FLAG), Some(AttributeValue::Bool(true))) {
        return None;
    }
    let mut out = Vec::with_capacity(4096);
    let fields = item
        .iter()
        .filter(|(k, _)| !REPLICATION_ATTRS.contains(&k.as_str()) && *k != COMPRESSED_FLAG);
    write_canonical_map(fields, &mut out)?;
    Some(out)
}

fn write_canonical_map<'a>(
    fields: impl Iterator<Item = (&'a String, &'a AttributeValue)>,
    out: &mut Vec<u8>,
) -> Option<()> {
    let mut fields: Vec<(&String, &AttributeValue)> = fields.collect();
    fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.push(b'{');
    for (i, (key, value)) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        crate::hash::write_str(key, out);
        out.push(b':');
        write_canonical_value(value, out)?;
    }
    out.push(b'}');
    Some(())
}

/// One attribute as [`logical_item`] reads it (serde_dynamo into serde_json) and the hash
/// writes it: numbers are tried as i64, then u64, then f64, in that order.
fn write_canonical_value(value: &AttributeValue, out: &mut Vec<u8>) -> Option<()> {
    match value {
        AttributeValue::S(s) => crate::hash::write_str(s, out),
        AttributeValue::N(n) => {
            if let Ok(i) = n.parse::<i64>() {
                crate::hash::write_i64(i, out);
            } else if let Ok(u) = n.parse::<u64>() {
                crate::hash::write_u64(u, out);
            } else {
                let f = n.parse::<f64>().ok().filter(|f| f.is_finite())?;
                crate::hash::write_f64(f, out);
            }
        }
        AttributeValue::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        AttributeValue::Null(true) => out.extend_from_slice(b"null"),
        AttributeValue::L(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical_value(item, out)?;
            }
            out.push(b']');
        }
        AttributeValue::M(map) => write_canonical_map(map.iter(), out)?,
        // Binary, sets, `NULL: false` and kinds the SDK may add: the general path.
        _ => return None,
    }
    Some(())
}

/// Reads the replication attributes of a stored item.
pub fn stored_meta(item: &Item) -> Result<StoredMeta, ItemError> {
    let version = match item.get(ATTR_VERSION) {
        Some(AttributeValue::N(n)) => n
            .parse::<i64>()
            .map_err(|_| ItemError::MissingReplicationAttr(ATTR_VERSION))?,
        _ => return Err(ItemError::MissingReplicationAttr(ATTR_VERSION)),
    };
    let string = |name: &'static str| match item.get(name) {
        Some(AttributeValue::S(s)) => Ok(s.clone()),
        _ => Err(ItemError::MissingReplicationAttr(name)),
    };
    Ok(StoredMeta {
        version,
        hash: string(ATTR_HASH)?,
        source_time: string(ATTR_SOURCE_TIME)?,
        doc_key: string(ATTR_DOC)?,
    })
}

/// Size of an item as DynamoDB counts it: attribute name lengths plus value sizes.
pub fn item_size(item: &Item) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

fn value_size(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::S(s) => s.len(),
        // Numbers take about one byte per two significant digits, plus one.
        AttributeValue::N(n) => n.len().div_ceil(2) + 1,
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::L(items) => 3 + items.iter().map(|v| 1 + value_size(v)).sum::<usize>(),
        AttributeValue::M(map) => {
            3 + map
                .iter()
                .map(|(k, v)| 1 + k.len() + value_size(v))
                .sum::<usize>()
        }
        AttributeValue::Ss(v) => v.iter().map(String::len).sum(),
        AttributeValue::Ns(v) => v.iter().map(|n| n.len().div_ceil(2) + 1).sum(),
        AttributeValue::Bs(v) => v.iter().map(|b| b.as_ref().len()).sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta() -> ReplicationMeta {
        ReplicationMeta {
            version: 7,
            source_time: "2025-01-01T00:00:00+00:00".into(),
            doc_key: "environment:1".into(),
        }
    }

    #[test]
    fn plain_item_round_trips_to_the_same_hash() {
        let body =
            json!({"api_key": "k", "id": 1, "feature_states": [{"x": 50.0}], "project": {"id": 2}});
        let encoded = encode(&body, &meta(), Some(DEFAULT_COMPRESS_ABOVE_BYTES)).unwrap();
        assert!(!encoded.compressed);
        let back = logical_item(&encoded.item).unwrap();
        assert_eq!(content_hash(&back), encoded.hash);
        let stored = stored_meta(&encoded.item).unwrap();
        assert_eq!(stored.version, 7);
        assert_eq!(stored.hash, encoded.hash);
    }

    #[test]
    fn large_item_is_compressed_and_hash_is_that_of_the_plain_form() {
        let big = "v".repeat(20_000);
        let states: Vec<Value> = (0..30)
            .map(|i| json!({"feature": {"id": i}, "feature_state_value": format!("{big}{i}")}))
            .collect();
        let body = json!({"api_key": "k", "id": 1, "name": "n", "feature_states": states, "project": {"id": 2}});
        let encoded = encode(&body, &meta(), Some(DEFAULT_COMPRESS_ABOVE_BYTES)).unwrap();
        assert!(encoded.compressed);
        assert!(encoded.size < MAX_ITEM_BYTES);
        assert!(matches!(
            encoded.item.get("project"),
            Some(AttributeValue::B(_))
        ));
        assert!(matches!(
            encoded.item.get("compressed"),
            Some(AttributeValue::Bool(true))
        ));
        let back = logical_item(&encoded.item).unwrap();
        assert_eq!(back, body);
        assert_eq!(content_hash(&back), encoded.hash);
    }

    #[test]
    fn oversized_item_without_compressed_form_is_refused() {
        let body = json!({"key": "ser.x", "name": "n".repeat(MAX_ITEM_BYTES)});
        let err = encode(&body, &meta(), None).unwrap_err();
        assert!(
            matches!(err, ItemError::TooLargeUncompressible { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("environment:1"));
    }

    /// A compressed environment item whose fields are the given gzip blobs.
    fn compressed_item(fields: &[(&str, Vec<u8>)]) -> Item {
        let body = json!({"api_key": "envBomb", "id": 1, "name": "n"});
        let mut item = encode(&body, &meta(), None).unwrap().item;
        for (field, blob) in fields {
            item.insert(
                field.to_string(),
                AttributeValue::B(Blob::new(blob.clone())),
            );
        }
        item.insert(COMPRESSED_FLAG.into(), AttributeValue::Bool(true));
        item
    }

    /// Gzip of `len` bytes of JSON (a string of spaces), at the fastest level.
    fn gzipped_json_of_len(len: usize) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut text = String::with_capacity(len);
        text.push('"');
        text.push_str(&" ".repeat(len - 2));
        text.push('"');
        encoder.write_all(text.as_bytes()).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn a_decompression_bomb_is_a_typed_error_naming_the_item() {
        let bomb = gzipped_json_of_len(MAX_DECOMPRESSED_BYTES + 1);
        assert!(bomb.len() < MAX_ITEM_BYTES, "the bomb fits in an item");
        let err = logical_item(&compressed_item(&[("feature_states", bomb)])).unwrap_err();
        match &err {
            ItemError::DecompressionLimit { item, field, limit } => {
                assert_eq!(item, "api_key=envBomb of environment:1");
                assert_eq!(field, "feature_states");
                assert_eq!(*limit, MAX_DECOMPRESSED_BYTES);
            }
            other => panic!("expected DecompressionLimit, got {other:?}"),
        }
        assert!(err.to_string().contains("envBomb"), "{err}");
    }

    #[test]
    fn the_limit_covers_the_fields_of_an_item_together() {
        let half = MAX_DECOMPRESSED_BYTES / 2;
        // Exactly at the limit: read.
        let at = compressed_item(&[
            ("project", gzipped_json_of_len(half)),
            (
                "feature_states",
                gzipped_json_of_len(MAX_DECOMPRESSED_BYTES - half),
            ),
        ]);
        logical_item(&at).expect("fields at the limit together are read");
        // One byte over it, with each field under it: refused.
        let over = compressed_item(&[
            ("project", gzipped_json_of_len(half)),
            (
                "feature_states",
                gzipped_json_of_len(MAX_DECOMPRESSED_BYTES - half + 1),
            ),
        ]);
        let err = logical_item(&over).unwrap_err();
        assert!(
            matches!(err, ItemError::DecompressionLimit { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn the_writer_refuses_a_document_its_readers_would_refuse() {
        // Compresses far below DynamoDB's limit, but decompresses over the readers' limit.
        let body = json!({"api_key": "k", "id": 1, "name": "n",
            "feature_states": [" ".repeat(MAX_DECOMPRESSED_BYTES)], "project": {"id": 2}});
        let err = encode(&body, &meta(), Some(DEFAULT_COMPRESS_ABOVE_BYTES)).unwrap_err();
        assert!(
            matches!(err, ItemError::TooLargeToDecompress { ref doc_key, .. } if doc_key == "environment:1"),
            "{err:?}"
        );
    }
}
