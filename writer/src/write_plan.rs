//! The write plan of one document, without I/O: from what the document projects to and what
//! was recorded for it, the items to put, the items to delete, the item keys to record
//! before writing, and what the bookkeeping records afterwards.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use edge_documents::hash::content_hash;
use edge_documents::item::{encode, EncodedItem, ItemError, ReplicationMeta};
use edge_documents::tables::TableKind;
use serde_json::{json, Value};

use crate::projection::environment::iso;
use crate::projection::{DesiredItem, Projected};
use crate::state::documents::RecordedItem;

/// What the plan is made from.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub doc_key: &'a str,
    pub projected: Projected,
    /// Items recorded for the document (removed ones included).
    pub recorded: Vec<RecordedItem>,
    /// The version this write carries (taken after the snapshot, under the lock).
    pub version: i64,
    /// Content hash of what was last written (None: nothing, or a delete).
    pub last_hash: Option<&'a str>,
    /// Capture time of the newest queued change the write covers, if any.
    pub last_change_at: Option<DateTime<Utc>>,
    /// Write every item even when the content equals what was last written.
    pub force: bool,
    pub compress_above: usize,
}

/// What one document's write does.
#[derive(Debug, Clone)]
pub struct WritePlan {
    pub version: i64,
    /// The change time the items carry (`_META.source_time`).
    pub source_time: DateTime<Utc>,
    pub snapshot_time: DateTime<Utc>,
    pub next_change_at: Option<DateTime<Utc>>,
    /// Hash of the whole document (None: it has no items).
    pub content_hash: Option<String>,
    /// Items to put (empty when the content equals what was last written).
    pub puts: Vec<(DesiredItem, EncodedItem)>,
    /// Recorded items the projection no longer has: deleted (or, once re-checked, forgotten).
    pub stale: Vec<RecordedItem>,
    /// Item keys to record (and commit) before any write; empty when all are recorded.
    pub to_record: Vec<(TableKind, Value)>,
    /// Nothing to send to DynamoDB: same content, nothing stale.
    pub nothing_to_write: bool,
    /// The document has no items (deleted, or not on the edge).
    pub absent: bool,
}

/// What the bookkeeping records about a plan's stale items once its writes were accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Removals {
    /// Deletes applied: the items are marked removed and checked again later.
    pub removed: Vec<(TableKind, Value)>,
    /// Items removed long enough ago that their re-check is this write: forgotten.
    pub forgotten: Vec<(TableKind, Value)>,
    /// When the document must be projected again (its next scheduled change, or the
    /// re-check of its deletes), if ever.
    pub again_at: Option<DateTime<Utc>>,
}

pub fn plan(i: Inputs<'_>) -> Result<WritePlan, ItemError> {
    let source_time = i.last_change_at.unwrap_or(i.projected.snapshot_time);
    let meta = ReplicationMeta {
        version: i.version,
        source_time: iso(source_time),
        doc_key: i.doc_key.to_string(),
    };
    let encoded = encode_all(&i.projected.items, &meta, i.compress_above)?;
    let hash = document_hash(&encoded);

    let desired: HashSet<(TableKind, String)> = i
        .projected
        .items
        .iter()
        .map(|d| (d.table, Value::Object(d.key.clone()).to_string()))
        .collect();
    // Items recorded and not marked removed: those need not be recorded again.
    let live: HashSet<(TableKind, String)> = i
        .recorded
        .iter()
        .filter(|r| r.removed_at.is_none())
        .map(|r| (r.table, r.key.to_string()))
        .collect();
    let stale: Vec<RecordedItem> = i
        .recorded
        .into_iter()
        .filter(|r| !desired.contains(&(r.table, r.key.to_string())))
        .collect();
    let content_unchanged = hash.as_deref() == i.last_hash && !i.force;
    let nothing_to_write = content_unchanged && stale.is_empty();
    let to_record = if nothing_to_write || desired.is_subset(&live) {
        vec![]
    } else {
        i.projected
            .items
            .iter()
            .map(|d| (d.table, Value::Object(d.key.clone())))
            .collect()
    };
    Ok(WritePlan {
        version: i.version,
        source_time,
        snapshot_time: i.projected.snapshot_time,
        next_change_at: i.projected.next_change_at,
        content_hash: hash,
        puts: if content_unchanged { vec![] } else { encoded },
        stale,
        to_record,
        nothing_to_write,
        absent: i.projected.items.is_empty(),
    })
}

impl WritePlan {
    /// The bookkeeping of the stale items, at `now`: deletes applied are marked removed and
    /// re-checked after `recheck_after`; items removed at least that long before the
    /// snapshot are forgotten.
    pub fn removals(&self, recheck_after: Duration, now: DateTime<Utc>) -> Removals {
        let recheck = chrono::Duration::from_std(recheck_after).unwrap_or(chrono::Duration::MAX);
        let mut removed = vec![];
        let mut forgotten = vec![];
        for item in &self.stale {
            let entry = (item.table, item.key.clone());
            if item
                .removed_at
                .is_some_and(|t| self.snapshot_time - t >= recheck)
            {
                forgotten.push(entry);
            } else {
                removed.push(entry);
            }
        }
        let recheck_at = (!removed.is_empty()).then(|| now + recheck);
        let again_at = match (self.next_change_at, recheck_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Removals {
            removed,
            forgotten,
            again_at,
        }
    }

    /// Stale items whose delete this write sends (those not already removed).
    pub fn deletes(&self) -> usize {
        self.stale.iter().filter(|s| s.removed_at.is_none()).count()
    }
}

pub(crate) fn encode_all(
    items: &[DesiredItem],
    meta: &ReplicationMeta,
    compress_above: usize,
) -> Result<Vec<(DesiredItem, EncodedItem)>, ItemError> {
    items
        .iter()
        .map(|d| {
            let threshold = d.compressible.then_some(compress_above);
            encode(&d.body, meta, threshold).map(|e| (d.clone(), e))
        })
        .collect()
}

/// Hash of a whole document: its items' tables, keys and content hashes. `None` when the
/// document has no items.
pub(crate) fn document_hash(encoded: &[(DesiredItem, EncodedItem)]) -> Option<String> {
    if encoded.is_empty() {
        return None;
    }
    let mut parts: Vec<Value> = encoded
        .iter()
        .map(|(d, e)| json!([d.table.as_str(), Value::Object(d.key.clone()), e.hash]))
        .collect();
    parts.sort_by_key(|p| p.to_string());
    Some(content_hash(&Value::Array(parts)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).expect("a time")
    }

    fn identity_item(key: &str, trait_value: i64) -> DesiredItem {
        let mut k = Map::new();
        k.insert("composite_key".into(), json!(key));
        DesiredItem {
            table: TableKind::Identities,
            key: k,
            body: json!({"composite_key": key, "traits": [{"trait_key": "age", "trait_value": trait_value}]}),
            compressible: false,
        }
    }

    fn recorded(key: &str, removed_at: Option<DateTime<Utc>>) -> RecordedItem {
        RecordedItem {
            table: TableKind::Identities,
            key: json!({ "composite_key": key }),
            removed_at,
        }
    }

    fn projected(items: Vec<DesiredItem>) -> Projected {
        Projected {
            items,
            next_change_at: None,
            snapshot_time: t(0),
        }
    }

    fn inputs(projected: Projected, recorded: Vec<RecordedItem>) -> Inputs<'static> {
        Inputs {
            doc_key: "identity:1",
            projected,
            recorded,
            version: 7,
            last_hash: None,
            last_change_at: None,
            force: false,
            compress_above: usize::MAX,
        }
    }

    fn hash_of(items: Vec<DesiredItem>) -> String {
        plan(inputs(projected(items), vec![]))
            .expect("plan")
            .content_hash
            .expect("a hash")
    }

    /// Each case: what was written before (hash, recorded items), what the document projects
    /// to now, and what the plan must do.
    #[test]
    fn the_plan_puts_deletes_and_records_what_changed() {
        struct Case {
            name: &'static str,
            items: Vec<DesiredItem>,
            recorded: Vec<RecordedItem>,
            same_hash_as_last: bool,
            force: bool,
            puts: usize,
            stale: usize,
            recorded_first: usize,
            nothing_to_write: bool,
        }
        let cases = vec![
            Case {
                name: "a new document: put and record every item",
                items: vec![identity_item("k_a", 1)],
                recorded: vec![],
                same_hash_as_last: false,
                force: false,
                puts: 1,
                stale: 0,
                recorded_first: 1,
                nothing_to_write: false,
            },
            Case {
                name: "the same content again: nothing",
                items: vec![identity_item("k_a", 1)],
                recorded: vec![recorded("k_a", None)],
                same_hash_as_last: true,
                force: false,
                puts: 0,
                stale: 0,
                recorded_first: 0,
                nothing_to_write: true,
            },
            Case {
                name: "the same content, forced: put, nothing to record",
                items: vec![identity_item("k_a", 1)],
                recorded: vec![recorded("k_a", None)],
                same_hash_as_last: true,
                force: true,
                puts: 1,
                stale: 0,
                recorded_first: 0,
                nothing_to_write: false,
            },
            Case {
                name: "new content under a recorded key: put only",
                items: vec![identity_item("k_a", 2)],
                recorded: vec![recorded("k_a", None)],
                same_hash_as_last: false,
                force: false,
                puts: 1,
                stale: 0,
                recorded_first: 0,
                nothing_to_write: false,
            },
            Case {
                name: "a moved key: put and record the new, delete the old",
                items: vec![identity_item("k_b", 1)],
                recorded: vec![recorded("k_a", None)],
                same_hash_as_last: false,
                force: false,
                puts: 1,
                stale: 1,
                recorded_first: 1,
                nothing_to_write: false,
            },
            Case {
                name: "a key removed before and desired again: recorded again (clears the removal)",
                items: vec![identity_item("k_a", 1)],
                recorded: vec![recorded("k_a", Some(t(-10)))],
                same_hash_as_last: false,
                force: false,
                puts: 1,
                stale: 0,
                recorded_first: 1,
                nothing_to_write: false,
            },
            Case {
                name: "the document is gone: delete what is recorded",
                items: vec![],
                recorded: vec![recorded("k_a", None)],
                same_hash_as_last: false,
                force: false,
                puts: 0,
                stale: 1,
                recorded_first: 0,
                nothing_to_write: false,
            },
            Case {
                name: "unchanged content with a stale item left: only the delete",
                items: vec![identity_item("k_a", 1)],
                recorded: vec![recorded("k_a", None), recorded("k_old", Some(t(-5)))],
                same_hash_as_last: true,
                force: false,
                puts: 0,
                stale: 1,
                recorded_first: 0,
                nothing_to_write: false,
            },
        ];
        for c in cases {
            let last = c.same_hash_as_last.then(|| hash_of(c.items.clone()));
            let mut i = inputs(projected(c.items), c.recorded);
            i.last_hash = last.as_deref();
            i.force = c.force;
            let p = plan(i).expect("plan");
            assert_eq!(p.puts.len(), c.puts, "{}: puts", c.name);
            assert_eq!(p.stale.len(), c.stale, "{}: stale", c.name);
            assert_eq!(p.to_record.len(), c.recorded_first, "{}: to record", c.name);
            assert_eq!(p.nothing_to_write, c.nothing_to_write, "{}", c.name);
            assert_eq!(p.version, 7, "{}", c.name);
        }
    }

    #[test]
    fn new_content_is_written_and_the_same_content_is_not() {
        let written_before = hash_of(vec![identity_item("k_a", 1)]);
        let with_last = |items| {
            let mut i = inputs(projected(items), vec![recorded("k_a", None)]);
            i.last_hash = Some(written_before.as_str());
            plan(i).expect("plan")
        };
        let changed = with_last(vec![identity_item("k_a", 2)]);
        assert_eq!(changed.puts.len(), 1);
        assert!(!changed.nothing_to_write);
        assert_ne!(
            changed.content_hash.as_deref(),
            Some(written_before.as_str())
        );
        let same = with_last(vec![identity_item("k_a", 1)]);
        assert!(same.nothing_to_write);
        assert_eq!(same.content_hash.as_deref(), Some(written_before.as_str()));
        // A document without items has no hash: what was written before is deleted.
        let gone = with_last(vec![]);
        assert_eq!(gone.content_hash, None);
        assert!(gone.absent);
        assert_eq!(gone.deletes(), 1);
    }

    #[test]
    fn deletes_count_only_items_not_removed_yet() {
        let p = plan(inputs(
            projected(vec![]),
            vec![
                recorded("a", None),
                recorded("b", None),
                recorded("c", Some(t(-1))),
            ],
        ))
        .expect("plan");
        assert_eq!(p.stale.len(), 3);
        assert_eq!(p.deletes(), 2);
        let p = plan(inputs(projected(vec![identity_item("k_a", 1)]), vec![])).expect("plan");
        assert_eq!(p.deletes(), 0);
    }

    #[test]
    fn the_items_carry_the_version_and_the_change_time() {
        let mut i = inputs(projected(vec![identity_item("k_a", 1)]), vec![]);
        i.last_change_at = Some(t(-3));
        let p = plan(i).expect("plan");
        assert_eq!(p.source_time, t(-3));
        let item = &p.puts[0].1.item;
        let meta = format!("{:?}", item);
        assert!(meta.contains("identity:1"), "{meta}");
        // Without a queued change, the snapshot's time.
        let p = plan(inputs(projected(vec![identity_item("k_a", 1)]), vec![])).expect("plan");
        assert_eq!(p.source_time, t(0));
    }

    #[test]
    fn deletes_are_rechecked_then_forgotten() {
        let recheck = Duration::from_secs(120);
        let now = t(1);
        let mut p = plan(inputs(
            projected(vec![]),
            vec![
                recorded("fresh", None),
                recorded("removed_recently", Some(t(-60))),
                recorded("removed_long_ago", Some(t(-120))),
            ],
        ))
        .expect("plan");
        assert_eq!(p.deletes(), 1);
        let r = p.removals(recheck, now);
        let keys = |v: &[(TableKind, Value)]| -> Vec<String> {
            v.iter()
                .map(|(_, k)| k["composite_key"].as_str().unwrap_or_default().to_string())
                .collect()
        };
        assert_eq!(keys(&r.removed), ["fresh", "removed_recently"]);
        assert_eq!(keys(&r.forgotten), ["removed_long_ago"]);
        assert_eq!(r.again_at, Some(now + chrono::Duration::seconds(120)));

        // A scheduled change earlier than the re-check comes first; with nothing removed,
        // only the scheduled change.
        p.next_change_at = Some(t(30));
        assert_eq!(p.removals(recheck, now).again_at, Some(t(30)));
        p.stale.clear();
        p.next_change_at = None;
        assert_eq!(p.removals(recheck, now).again_at, None);
    }
}
