//! What a region holds: every item of the edge tables, read with a parallel scan and reduced
//! to what verification needs (a few dozen bytes per item besides its key); and the
//! replication ledger. Both are handed on page by page, never held whole.

use std::collections::HashMap;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_types::error::display::DisplayErrorContext;
use edge_documents::acks::{self, Ack};
use edge_documents::item::{item_content_hash, stored_meta, Item, ATTR_VERSION};
use edge_documents::tables::TableKind;
use futures::future::try_join_all;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

/// Segments of each table's parallel scan.
pub const SEGMENTS: i32 = 4;
/// One Scan page may take longer than the writer's 5 s per call: it is a full 1 MB page, and
/// DynamoDB Local on a large table is slow to produce one.
const PAGE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
/// Extra reads of a page that failed.
const PAGE_RETRIES: usize = 3;

/// A content hash in 32 bytes rather than its 71-character text.
pub type Digest = [u8; 32];

/// The digest of a content hash (`sha256:<hex>`); any other text is hashed as is.
pub fn digest(hash: &str) -> Digest {
    let mut out = [0u8; 32];
    if let Some(hex) = hash.strip_prefix("sha256:") {
        if hex::decode_to_slice(hex, &mut out).is_ok() {
            return out;
        }
    }
    Sha256::digest(hash.as_bytes()).into()
}

/// One stored item, reduced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The item's version; `None` for an item the writer did not write.
    pub version: Option<i64>,
    pub doc_key: Option<Box<str>>,
    /// Content hash recomputed from the item.
    pub hash: Option<Digest>,
    /// Why the item is corrupted (its content does not match its recorded hash, or it
    /// cannot be read back).
    pub corrupted: Option<Box<str>>,
}

#[derive(Debug, thiserror::Error)]
#[error("scanning {table}: {message}")]
pub struct ScanError {
    pub table: String,
    pub message: String,
}

/// An item reduced to what verification needs, with its ledger key.
pub fn observe(table: TableKind, item: &Item) -> Option<(Box<str>, Observed)> {
    let key_item: Item = table
        .key_attributes()
        .into_iter()
        .filter_map(|k| item.get(k).map(|v| (k.to_string(), v.clone())))
        .collect();
    let item_key = acks::item_key(table, &key_item)?.into_boxed_str();
    let mut observed = Observed {
        version: None,
        doc_key: None,
        hash: None,
        corrupted: None,
    };
    if !item.contains_key(ATTR_VERSION) {
        return Some((item_key, observed));
    }
    match (stored_meta(item), item_content_hash(item)) {
        (Ok(meta), Ok(actual)) => {
            if actual != meta.hash {
                observed.corrupted = Some(
                    format!(
                        "content hash {actual} does not match the recorded {}",
                        meta.hash
                    )
                    .into(),
                );
            }
            observed.version = Some(meta.version);
            observed.doc_key = Some(meta.doc_key.into());
            observed.hash = Some(digest(&actual));
        }
        (Err(e), _) | (_, Err(e)) => observed.corrupted = Some(e.to_string().into()),
    }
    Some((item_key, observed))
}

/// Reads one segment of a scan (`segment` of `total`, or the whole table), reduces each item
/// with `reduce` and hands each page's reductions to `out`: a bounded channel, so that the
/// scan waits for its consumer and memory holds a few pages at most.
async fn scan_segment<T>(
    client: &aws_sdk_dynamodb::Client,
    table_name: &str,
    segment: Option<(i32, i32)>,
    reduce: &(dyn Fn(&Item) -> Option<T> + Sync),
    out: &mpsc::Sender<Vec<T>>,
) -> Result<(), ScanError> {
    let mut start: Option<HashMap<String, AttributeValue>> = None;
    loop {
        // A page is read again from the same start key when it fails: a scan is read-only.
        let request = || {
            client
                .scan()
                .table_name(table_name)
                .set_segment(segment.map(|s| s.0))
                .set_total_segments(segment.map(|s| s.1))
                .consistent_read(true)
                .set_exclusive_start_key(start.clone())
                .customize()
                .config_override(
                    aws_sdk_dynamodb::config::Builder::default().timeout_config(
                        aws_config::timeout::TimeoutConfig::builder()
                            .operation_attempt_timeout(PAGE_ATTEMPT_TIMEOUT)
                            .operation_timeout(PAGE_ATTEMPT_TIMEOUT * 3)
                            .build(),
                    ),
                )
                .send()
        };
        let page = request
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_times(PAGE_RETRIES)
                    .with_jitter(),
            )
            .notify(|e, after| {
                tracing::warn!(table = table_name, error = %DisplayErrorContext(e),
                    retry_in_ms = after.as_millis() as u64, "scan page failed; reading it again")
            })
            .await
            .map_err(|e| ScanError {
                table: table_name.to_string(),
                message: DisplayErrorContext(e).to_string(),
            })?;
        let reduced: Vec<T> = page.items().iter().filter_map(reduce).collect();
        if !reduced.is_empty() && out.send(reduced).await.is_err() {
            // The consumer stopped (its own error ends the run).
            return Ok(());
        }
        match page.last_evaluated_key() {
            Some(k) if !k.is_empty() => start = Some(k.clone()),
            _ => return Ok(()),
        }
    }
}

/// Every item of `table_name` (a table of kind `table`), reduced, by ledger key, in pages to
/// `out`; read with a parallel scan.
pub async fn scan_table(
    client: &aws_sdk_dynamodb::Client,
    table_name: &str,
    table: TableKind,
    out: &mpsc::Sender<Vec<(Box<str>, Observed)>>,
) -> Result<(), ScanError> {
    let reduce = |item: &Item| observe(table, item);
    try_join_all(
        (0..SEGMENTS).map(|segment| {
            scan_segment(client, table_name, Some((segment, SEGMENTS)), &reduce, out)
        }),
    )
    .await?;
    Ok(())
}

/// One ledger entry, reduced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub version: i64,
    pub removed: bool,
    pub recorded_at_ms: i64,
    /// The owner (delete intents only).
    pub doc_key: Box<str>,
}

/// The ledger by item key: each region's acknowledgement and the writer's delete intent.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    entries: HashMap<Box<str>, Vec<(Box<str>, LedgerEntry)>>,
}

impl Ledger {
    pub fn insert(&mut self, ack: &Ack) {
        let intent = ack.region == acks::DELETE_INTENT;
        let entry = LedgerEntry {
            version: ack.version,
            removed: ack.removed,
            recorded_at_ms: ack.recorded_at_ms,
            doc_key: if intent {
                ack.doc_key.clone().into()
            } else {
                "".into()
            },
        };
        let slot = self.entries.entry(ack.item_key.clone().into()).or_default();
        slot.retain(|(r, _)| **r != *ack.region);
        slot.push((ack.region.clone().into(), entry));
    }

    /// The entry of `region` (or [`acks::DELETE_INTENT`]) for an item.
    pub fn get(&self, item_key: &str, region: &str) -> Option<&LedgerEntry> {
        self.entries
            .get(item_key)?
            .iter()
            .find(|(r, _)| &**r == region)
            .map(|(_, e)| e)
    }

    /// The newest version any region acknowledged as present.
    pub fn newest_ack(&self, item_key: &str) -> Option<i64> {
        self.entries
            .get(item_key)?
            .iter()
            .filter(|(r, e)| &**r != acks::DELETE_INTENT && !e.removed)
            .map(|(_, e)| e.version)
            .max()
    }

    /// Every entry: (item key, region, entry).
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str, &LedgerEntry)> {
        self.entries
            .iter()
            .flat_map(|(k, v)| v.iter().map(move |(r, e)| (&**k, &**r, e)))
    }

    /// The writer's delete intents: (item key, intent).
    pub fn intents(&self) -> impl Iterator<Item = (&str, &LedgerEntry)> {
        self.entries.iter().filter_map(|(k, v)| {
            v.iter()
                .find(|(r, _)| &**r == acks::DELETE_INTENT)
                .map(|(_, e)| (&**k, e))
        })
    }

    pub fn len(&self) -> usize {
        self.entries.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Every entry of the ledger, in pages to `out`.
pub async fn scan_ledger(
    client: &aws_sdk_dynamodb::Client,
    table_name: &str,
    out: &mpsc::Sender<Vec<Ack>>,
) -> Result<(), ScanError> {
    scan_segment(client, table_name, None, &Ack::from_item, out).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_the_hashes_bytes() {
        let h = edge_documents::hash::content_hash(&serde_json::json!({"a": 1}));
        let d = digest(&h);
        assert_eq!(format!("sha256:{}", hex::encode(d)), h);
        assert_ne!(digest("not a hash"), [0u8; 32]);
    }

    #[test]
    fn the_ledger_keeps_one_entry_per_item_and_region() {
        let mut ledger = Ledger::default();
        let ack = |region: &str, version, removed| Ack {
            item_key: "environments|k".into(),
            region: region.into(),
            version,
            doc_key: "environment:1".into(),
            hash: String::new(),
            removed,
            source_time: String::new(),
            recorded_at_ms: 1,
            lag_ms: None,
        };
        ledger.insert(&ack("a", 1, false));
        ledger.insert(&ack("a", 3, false));
        ledger.insert(&ack("b", 2, false));
        ledger.insert(&ack(acks::DELETE_INTENT, 9, true));
        assert_eq!(ledger.len(), 3);
        assert_eq!(ledger.get("environments|k", "a").unwrap().version, 3);
        assert_eq!(ledger.newest_ack("environments|k"), Some(3));
        let intents: Vec<_> = ledger.intents().collect();
        assert_eq!(intents.len(), 1);
        assert_eq!(&*intents[0].1.doc_key, "environment:1");
    }
}
