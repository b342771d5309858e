//! Per region, from the acknowledgements of a sample of recent writes (no I/O): the newest
//! acknowledgement, the writes not acknowledged yet, and the replication lag the consumers
//! recorded.
//!
//! A write of a document at version `v` is confirmed in a region when every one of its items
//! is acknowledged there at `v` or later: the items it put (when it put them), and the items
//! it deleted, at the version of the delete intent the writer recorded for them. A write that
//! only deleted items left the others at their older versions, so only its deletes count.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use edge_documents::acks::{Ack, DELETE_INTENT};
use serde::Serialize;

/// One item of a sampled write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampledItem {
    /// The item's ledger key (`edge_documents::acks::item_key`).
    pub ledger_key: String,
    /// A delete of the item was applied (it awaits its re-check).
    pub removed: bool,
}

/// A recent write and its items.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledWrite {
    pub doc_key: String,
    pub version: i64,
    pub written_at: DateTime<Utc>,
    /// The write put the document's items (false: it only deleted some).
    pub put_items: bool,
    pub items: Vec<SampledItem>,
}

/// What the sample says of one region.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegionFigures {
    pub name: String,
    /// Acknowledgements of the sampled items by this region.
    pub acknowledgements: usize,
    /// The newest of them: when it was recorded, and its lag from the core commit.
    pub newest_ack_at: Option<DateTime<Utc>>,
    pub newest_ack_lag_seconds: Option<f64>,
    /// Sampled writes with at least one item to confirm.
    pub writes_checked: usize,
    /// Of those, the writes this region has not acknowledged in full yet, and how many of
    /// them were written longer ago than the threshold.
    pub unconfirmed: usize,
    pub overdue: usize,
    /// The oldest unconfirmed write: its document and when it was written.
    pub oldest_unconfirmed_doc: Option<String>,
    pub oldest_unconfirmed_written_at: Option<DateTime<Utc>>,
    /// Lag (core commit to verification in the region) of the acknowledgements recorded in
    /// the lag window.
    pub lag_samples: usize,
    pub lag_p50_seconds: Option<f64>,
    pub lag_p99_seconds: Option<f64>,
}

/// The regions to report: those given, then those found acknowledging (sorted).
pub fn region_names(given: &[String], ledger: &HashMap<String, Vec<Ack>>) -> Vec<String> {
    let mut names: Vec<String> = given.to_vec();
    let mut found: Vec<&str> = ledger
        .values()
        .flatten()
        .map(|a| a.region.as_str())
        .filter(|r| *r != DELETE_INTENT && !given.iter().any(|g| g == r))
        .collect();
    found.sort_unstable();
    found.dedup();
    names.extend(found.into_iter().map(String::from));
    names
}

/// The item versions a write must see acknowledged: (ledger key, version).
fn to_confirm<'a>(
    write: &'a SampledWrite,
    ledger: &HashMap<String, Vec<Ack>>,
) -> Vec<(&'a str, i64)> {
    write
        .items
        .iter()
        .filter_map(|item| {
            if item.removed {
                // The delete's own version, from its intent (an item removed by an earlier
                // write keeps that write's intent).
                let intent = ledger
                    .get(&item.ledger_key)?
                    .iter()
                    .filter(|a| a.region == DELETE_INTENT)
                    .map(|a| a.version)
                    .max()?;
                Some((item.ledger_key.as_str(), intent))
            } else if write.put_items {
                Some((item.ledger_key.as_str(), write.version))
            } else {
                None
            }
        })
        .collect()
}

/// Summarises the sample per region. `ledger`: every ledger entry of the sampled items, by
/// ledger key.
pub fn summarise(
    writes: &[SampledWrite],
    ledger: &HashMap<String, Vec<Ack>>,
    given: &[String],
    now: DateTime<Utc>,
    unconfirmed_after: Duration,
    lag_window: Duration,
) -> Vec<RegionFigures> {
    let overdue_before = now - chrono::Duration::from_std(unconfirmed_after).unwrap_or_default();
    let lag_since =
        (now - chrono::Duration::from_std(lag_window).unwrap_or_default()).timestamp_millis();
    let acked: HashMap<(&str, &str), i64> = ledger
        .values()
        .flatten()
        .filter(|a| a.region != DELETE_INTENT)
        .fold(HashMap::new(), |mut m, a| {
            let v = m
                .entry((a.item_key.as_str(), a.region.as_str()))
                .or_insert(a.version);
            *v = (*v).max(a.version);
            m
        });
    let checks: Vec<(&SampledWrite, Vec<(&str, i64)>)> = writes
        .iter()
        .map(|w| (w, to_confirm(w, ledger)))
        .filter(|(_, c)| !c.is_empty())
        .collect();
    region_names(given, ledger)
        .into_iter()
        .map(|name| {
            let acks: Vec<&Ack> = ledger
                .values()
                .flatten()
                .filter(|a| a.region == name)
                .collect();
            let newest = acks.iter().max_by_key(|a| a.recorded_at_ms);
            let mut lags: Vec<f64> = acks
                .iter()
                .filter(|a| a.recorded_at_ms >= lag_since)
                .filter_map(|a| a.lag_ms)
                .map(|ms| ms as f64 / 1000.0)
                .collect();
            lags.sort_by(f64::total_cmp);
            let unconfirmed: Vec<&SampledWrite> = checks
                .iter()
                .filter(|(_, items)| {
                    items.iter().any(|(key, version)| {
                        acked
                            .get(&(*key, name.as_str()))
                            .is_none_or(|acked| acked < version)
                    })
                })
                .map(|(w, _)| *w)
                .collect();
            let oldest = unconfirmed.iter().min_by_key(|w| w.written_at);
            RegionFigures {
                acknowledgements: acks.len(),
                newest_ack_at: newest
                    .and_then(|a| Utc.timestamp_millis_opt(a.recorded_at_ms).single()),
                newest_ack_lag_seconds: newest.and_then(|a| a.lag_ms).map(|ms| ms as f64 / 1e3),
                writes_checked: checks.len(),
                unconfirmed: unconfirmed.len(),
                overdue: unconfirmed
                    .iter()
                    .filter(|w| w.written_at < overdue_before)
                    .count(),
                oldest_unconfirmed_doc: oldest.map(|w| w.doc_key.clone()),
                oldest_unconfirmed_written_at: oldest.map(|w| w.written_at),
                lag_samples: lags.len(),
                lag_p50_seconds: percentile(&lags, 0.5),
                lag_p99_seconds: percentile(&lags, 0.99),
                name,
            }
        })
        .collect()
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(key: &str, region: &str, version: i64, at: DateTime<Utc>, lag_ms: i64) -> Ack {
        Ack {
            item_key: key.into(),
            region: region.into(),
            version,
            doc_key: "d".into(),
            hash: String::new(),
            removed: region == DELETE_INTENT,
            source_time: String::new(),
            recorded_at_ms: at.timestamp_millis(),
            lag_ms: (region != DELETE_INTENT).then_some(lag_ms),
        }
    }

    fn item(key: &str, removed: bool) -> SampledItem {
        SampledItem {
            ledger_key: key.into(),
            removed,
        }
    }

    fn ledger(acks: Vec<Ack>) -> HashMap<String, Vec<Ack>> {
        let mut m: HashMap<String, Vec<Ack>> = HashMap::new();
        for a in acks {
            m.entry(a.item_key.clone()).or_default().push(a);
        }
        m
    }

    #[test]
    fn a_write_is_confirmed_once_every_item_is_acknowledged_at_its_version() {
        let now = Utc::now();
        let old = now - chrono::Duration::minutes(10);
        let recent = now - chrono::Duration::seconds(5);
        let writes = vec![
            // Both items acknowledged by a at v7, only one by b.
            SampledWrite {
                doc_key: "environment:1".into(),
                version: 7,
                written_at: old,
                put_items: true,
                items: vec![
                    item("environments|k1", false),
                    item("environments_v2|1|_META", false),
                ],
            },
            // Deleted an item (intent v9): a acknowledged the delete, b did not.
            SampledWrite {
                doc_key: "identity:2".into(),
                version: 9,
                written_at: recent,
                put_items: false,
                items: vec![
                    item("identities|k1_x", true),
                    item("identities|k1_y", false),
                ],
            },
        ];
        let ledger = ledger(vec![
            ack("environments|k1", "a", 7, old, 100),
            ack("environments_v2|1|_META", "a", 8, old, 300),
            ack("environments|k1", "b", 7, old, 900),
            ack("environments_v2|1|_META", "b", 6, old, 50),
            ack("identities|k1_x", DELETE_INTENT, 9, recent, 0),
            ack("identities|k1_x", "a", 9, recent, 200),
            ack("identities|k1_x", "b", 8, old, 10),
            // Never confirmed anywhere, but the write only deleted: not checked.
            ack("identities|k1_y", "a", 3, old, 10),
        ]);
        let given = vec!["b".to_string(), "c".to_string()];
        let figures = summarise(
            &writes,
            &ledger,
            &given,
            now,
            Duration::from_secs(300),
            Duration::from_secs(3600),
        );
        let names: Vec<&str> = figures.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["b", "c", "a"], "given first, then found");
        let [b, c, a] = [&figures[0], &figures[1], &figures[2]];
        assert_eq!((a.writes_checked, a.unconfirmed, a.overdue), (2, 0, 0));
        assert_eq!(a.acknowledgements, 4);
        assert_eq!(
            a.newest_ack_at.map(|t| t.timestamp_millis()),
            Some(recent.timestamp_millis())
        );
        assert_eq!(a.newest_ack_lag_seconds, Some(0.2));
        assert_eq!(a.lag_samples, 4);
        assert_eq!(a.lag_p50_seconds, Some(0.1));
        assert_eq!(a.lag_p99_seconds, Some(0.3));
        // b: the environment write (old: overdue) and the delete (recent: not yet).
        assert_eq!((b.unconfirmed, b.overdue), (2, 1));
        assert_eq!(b.oldest_unconfirmed_doc.as_deref(), Some("environment:1"));
        // c never acknowledged anything.
        assert_eq!((c.acknowledgements, c.unconfirmed, c.overdue), (0, 2, 1));
        assert_eq!(c.newest_ack_at, None);

        // A shorter lag window leaves out the old acknowledgements.
        let figures = summarise(
            &writes,
            &ledger,
            &[],
            now,
            Duration::from_secs(300),
            Duration::from_secs(60),
        );
        let a = figures.iter().find(|f| f.name == "a").unwrap();
        assert_eq!((a.lag_samples, a.lag_p99_seconds), (1, Some(0.2)));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[1.0], 0.99), Some(1.0));
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
    }
}
