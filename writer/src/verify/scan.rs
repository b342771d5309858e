//! What a region holds: every item of the edge tables, read with a parallel scan and reduced
//! to what verification needs; and the replication ledger.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_types::error::display::DisplayErrorContext;
use edge_documents::acks::{self, Ack};
use edge_documents::hash::content_hash;
use edge_documents::item::{logical_item, stored_meta, Item, ATTR_VERSION};
use edge_documents::tables::TableKind;
use futures::future::try_join_all;

/// Segments of one parallel scan.
const SEGMENTS: i32 = 4;

/// One stored item, reduced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub table: TableKind,
    /// The item's primary key attributes (for a repair's delete).
    pub key: serde_json::Map<String, serde_json::Value>,
    /// Replication metadata; `None` for an item the writer did not write.
    pub version: Option<i64>,
    pub doc_key: Option<String>,
    /// Content hash recomputed from the item.
    pub hash: Option<String>,
    /// Why the item is corrupted (its content does not match its recorded hash, or it
    /// cannot be read back).
    pub corrupted: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("scanning {table}: {message}")]
pub struct ScanError {
    pub table: String,
    pub message: String,
}

/// An item reduced to what verification needs, with its ledger key.
pub fn observe(table: TableKind, item: &Item) -> Option<(String, Observed)> {
    let key_item: Item = table
        .key_attributes()
        .into_iter()
        .filter_map(|k| item.get(k).map(|v| (k.to_string(), v.clone())))
        .collect();
    let item_key = acks::item_key(table, &key_item)?;
    let key = serde_dynamo::aws_sdk_dynamodb_1::from_item(key_item).ok()?;
    let mut observed = Observed {
        table,
        key,
        version: None,
        doc_key: None,
        hash: None,
        corrupted: None,
    };
    if !item.contains_key(ATTR_VERSION) {
        return Some((item_key, observed));
    }
    match (stored_meta(item), logical_item(item)) {
        (Ok(meta), Ok(logical)) => {
            let actual = content_hash(&logical);
            if actual != meta.hash {
                observed.corrupted = Some(format!(
                    "content hash {actual} does not match the recorded {}",
                    meta.hash
                ));
            }
            observed.version = Some(meta.version);
            observed.doc_key = Some(meta.doc_key);
            observed.hash = Some(actual);
        }
        (Err(e), _) | (_, Err(e)) => observed.corrupted = Some(e.to_string()),
    }
    Some((item_key, observed))
}

/// Every item of one segment of a scan (`segment` of `total`), reduced by `keep`.
async fn scan_segment<T>(
    client: &aws_sdk_dynamodb::Client,
    table_name: &str,
    segment: Option<(i32, i32)>,
    keep: impl Fn(&Item) -> Option<T>,
) -> Result<Vec<T>, ScanError> {
    let mut out = Vec::new();
    let mut start: Option<HashMap<String, AttributeValue>> = None;
    loop {
        let page = client
            .scan()
            .table_name(table_name)
            .set_segment(segment.map(|s| s.0))
            .set_total_segments(segment.map(|s| s.1))
            .consistent_read(true)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(|e| ScanError {
                table: table_name.to_string(),
                message: DisplayErrorContext(e).to_string(),
            })?;
        out.extend(page.items().iter().filter_map(&keep));
        match page.last_evaluated_key() {
            Some(k) if !k.is_empty() => start = Some(k.clone()),
            _ => return Ok(out),
        }
    }
}

/// Every item of `table_name` (a table of kind `table`), by ledger key.
pub async fn scan_table(
    client: &aws_sdk_dynamodb::Client,
    table_name: &str,
    table: TableKind,
) -> Result<HashMap<String, Observed>, ScanError> {
    let segments = (0..SEGMENTS).map(|segment| {
        scan_segment(client, table_name, Some((segment, SEGMENTS)), move |i| {
            observe(table, i)
        })
    });
    let parts = try_join_all(segments).await?;
    Ok(parts.into_iter().flatten().collect())
}

/// Every ledger entry, by (item key, region).
pub async fn scan_ledger(
    client: &aws_sdk_dynamodb::Client,
    table_name: &str,
) -> Result<HashMap<(String, String), Ack>, ScanError> {
    let entries = scan_segment(client, table_name, None, Ack::from_item).await?;
    Ok(entries
        .into_iter()
        .map(|a| ((a.item_key.clone(), a.region.clone()), a))
        .collect())
}
