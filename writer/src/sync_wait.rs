//! Waiting until a sync's write is live everywhere: every item the sync left live (the
//! environment item, its `_META` item, its API key items), at the version stored in the home
//! region, acknowledged by the stream consumer of every region asked for.
//!
//! The acknowledgements are read from the replication ledger (`edge_documents::acks`) with a
//! consistent Query per item (one call returns every region's entry), in a loop that backs off
//! from [`FIRST_POLL`] to [`POLL_CAP`] and ends at its deadline. Items a sync deleted are not
//! waited on (see the README's `/v1/sync` subsection).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_types::error::display::DisplayErrorContext;
use chrono::{DateTime, TimeZone, Utc};
use edge_documents::acks::{self, Ack};
use edge_documents::item::stored_meta;
use edge_documents::tables::TableKind;
use serde::Serialize;

use crate::replicate::Replicator;
use crate::state::documents;
use crate::store::ItemStore;
use crate::sync::{SyncError, SyncResult};

/// First pause between two reads of the ledger; it grows by half each round up to
/// [`POLL_CAP`].
pub const FIRST_POLL: Duration = Duration::from_millis(100);
pub const POLL_CAP: Duration = Duration::from_secs(2);
/// Most regions one wait may name.
pub const MAX_REGIONS: usize = 32;
/// Longest wait one request may ask for, in seconds.
pub const MAX_TIMEOUT_SECS: u64 = 3600;

/// What to wait for: the regions (as their stream consumers name themselves in the ledger)
/// and for how long at most.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitFor {
    pub regions: Vec<String>,
    pub timeout: Duration,
}

impl WaitFor {
    /// Checks and normalises the regions (trimmed, duplicates dropped, order kept).
    pub fn new(regions: &[String], timeout: Duration) -> Result<WaitFor, String> {
        let mut out: Vec<String> = Vec::new();
        for r in regions {
            let r = r.trim();
            if r.is_empty() || r.len() > 64 || r.contains(char::is_whitespace) || r.starts_with('#')
            {
                return Err(format!("{r:?} is not a region name"));
            }
            if !out.iter().any(|o| o == r) {
                out.push(r.to_string());
            }
        }
        if out.is_empty() {
            return Err("no region to wait for".into());
        }
        if out.len() > MAX_REGIONS {
            return Err(format!("at most {MAX_REGIONS} regions"));
        }
        if timeout.is_zero() || timeout > Duration::from_secs(MAX_TIMEOUT_SECS) {
            return Err(format!(
                "the wait's timeout must be 1 to {MAX_TIMEOUT_SECS} seconds"
            ));
        }
        Ok(WaitFor {
            regions: out,
            timeout,
        })
    }
}

/// Reads acknowledgements from the replication ledger in the home region.
#[derive(Clone, Debug)]
pub struct AckReader {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl AckReader {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        AckReader {
            client,
            table: table.into(),
        }
    }

    /// Every ledger entry of one item (consistent read): each region's acknowledgement and
    /// the writer's delete intent.
    pub async fn entries(&self, item_key: &str) -> Result<Vec<Ack>, String> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("item_key = :k")
            .expression_attribute_values(":k", AttributeValue::S(item_key.to_string()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "replication ledger {}: Query: {}",
                    self.table,
                    DisplayErrorContext(e)
                )
            })?;
        Ok(out.items().iter().filter_map(Ack::from_item).collect())
    }
}

/// One item a sync left live, the version the regions must reach, and when the sync began
/// writing its document.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub item_key: String,
    pub version: i64,
    pub written_at: DateTime<Utc>,
}

/// The items `result` left live in the home region, at their stored versions (consistent
/// GetItem: the version may be newer than the sync's if the daemon wrote since, or older if
/// the sync found the document unchanged). Items gone from the home region since are not
/// waited on; project metadata has no stream and no acknowledgement.
pub async fn targets<S: ItemStore>(
    replicator: &Replicator<S>,
    result: &SyncResult,
) -> Result<Vec<Target>, SyncError> {
    let mut out = Vec::new();
    let docs = std::iter::once(&result.environment).chain(&result.api_keys);
    for outcome in docs {
        let written_at = result
            .write_started
            .get(&outcome.doc_key)
            .copied()
            .unwrap_or_else(Utc::now);
        let mut conn = replicator
            .pool()
            .acquire()
            .await
            .map_err(|e| SyncError::Lookup(outcome.doc_key.clone(), e))?;
        let items = documents::recorded_items(&mut conn, &outcome.doc_key)
            .await
            .map_err(|e| SyncError::Lookup(outcome.doc_key.clone(), e))?;
        drop(conn);
        for item in items {
            if item.removed_at.is_some() || item.table == TableKind::ProjectMetadata {
                continue;
            }
            let Some(key) = item.key.as_object() else {
                continue;
            };
            let Some(item_key) = acks::item_key_of_json(item.table, key) else {
                continue;
            };
            let Ok(key_item) = serde_dynamo::aws_sdk_dynamodb_1::to_item(&item.key) else {
                continue;
            };
            let stored = replicator.store().get(item.table, key_item).await?;
            let Some(version) = stored.and_then(|i| stored_meta(&i).ok()).map(|m| m.version) else {
                tracing::debug!(item = %item_key, "not in the home region any more; not waited on");
                continue;
            };
            out.push(Target {
                item_key,
                version,
                written_at,
            });
        }
    }
    Ok(out)
}

/// One region's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegionAck {
    pub region: String,
    /// Every item was acknowledged at its version or a newer one.
    pub acknowledged: bool,
    /// When acknowledged: the latest acknowledgement's time minus the time the sync began
    /// writing that item's document, in milliseconds (0 when the region had acknowledged the
    /// version before the sync, as for a document the sync found unchanged).
    pub lag_ms: Option<i64>,
    /// When acknowledged: the time of the latest acknowledgement (RFC 3339).
    pub acknowledged_at: Option<String>,
    /// Items this region had not acknowledged when the wait ended.
    pub unconfirmed_items: usize,
}

/// The outcome of a wait.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WaitReport {
    /// Every region acknowledged every item.
    pub complete: bool,
    /// Items waited on.
    pub items: usize,
    /// The time the wait was given, in milliseconds (the smaller of the one asked for and
    /// what the request's own time limit left).
    pub timeout_ms: u64,
    /// The request's time limit (`--sync-timeout-secs`) was the shorter one.
    pub limited_by_request_timeout: bool,
    /// How long the wait took, in milliseconds.
    pub waited_ms: u64,
    /// Per region, in the order asked for.
    pub regions: Vec<RegionAck>,
}

impl WaitReport {
    /// The regions that did not confirm.
    pub fn unconfirmed(&self) -> Vec<&str> {
        self.regions
            .iter()
            .filter(|r| !r.acknowledged)
            .map(|r| r.region.as_str())
            .collect()
    }
}

/// Polls the ledger until every region of `regions` acknowledged every target, or until
/// `deadline` (at least one read is always made). `limited_by_request_timeout` is reported as
/// given.
pub async fn wait_for_acks(
    ledger: &AckReader,
    targets: &[Target],
    regions: &[String],
    deadline: Instant,
    limited_by_request_timeout: bool,
) -> WaitReport {
    let started = Instant::now();
    let timeout_ms = deadline.saturating_duration_since(started).as_millis() as u64;
    // (target, region) -> time of the acknowledgement (ms).
    let mut acked: HashMap<(usize, usize), i64> = HashMap::new();
    let mut pause = FIRST_POLL;
    let mut failures = 0usize;
    loop {
        let pending: Vec<usize> = (0..targets.len())
            .filter(|t| (0..regions.len()).any(|r| !acked.contains_key(&(*t, r))))
            .collect();
        if pending.is_empty() {
            break;
        }
        let reads = futures::future::join_all(
            pending
                .iter()
                .map(|t| ledger.entries(&targets[*t].item_key)),
        )
        .await;
        for (t, read) in pending.iter().zip(reads) {
            match read {
                Ok(entries) => {
                    for entry in entries {
                        if entry.version < targets[*t].version {
                            continue;
                        }
                        if let Some(r) = regions.iter().position(|r| *r == entry.region) {
                            acked.insert((*t, r), entry.recorded_at_ms);
                        }
                    }
                }
                Err(e) => {
                    failures += 1;
                    // The first failure of a wait at warn, the rest at debug: one unreadable
                    // ledger must not flood the log.
                    if failures == 1 {
                        tracing::warn!(error = %e, "sync wait: reading the ledger failed; retrying until the deadline");
                    } else {
                        tracing::debug!(error = %e, "sync wait: reading the ledger failed");
                    }
                }
            }
        }
        let done =
            (0..targets.len()).all(|t| (0..regions.len()).all(|r| acked.contains_key(&(t, r))));
        let now = Instant::now();
        if done || now >= deadline {
            break;
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = pause.mul_f64(1.5).min(POLL_CAP);
    }

    let regions: Vec<RegionAck> = regions
        .iter()
        .enumerate()
        .map(|(r, name)| {
            let unconfirmed = (0..targets.len())
                .filter(|t| !acked.contains_key(&(*t, r)))
                .count();
            if unconfirmed > 0 {
                let keys: Vec<&str> = (0..targets.len())
                    .filter(|t| !acked.contains_key(&(*t, r)))
                    .map(|t| targets[t].item_key.as_str())
                    .collect();
                tracing::warn!(region = %name, items = ?keys, "sync wait: not acknowledged in time");
                return RegionAck {
                    region: name.clone(),
                    acknowledged: false,
                    lag_ms: None,
                    acknowledged_at: None,
                    unconfirmed_items: unconfirmed,
                };
            }
            // The latest acknowledgement, and the largest lag of any item.
            let latest = (0..targets.len()).filter_map(|t| acked.get(&(t, r)).copied()).max();
            let lag = (0..targets.len())
                .filter_map(|t| {
                    let at = acked.get(&(t, r))?;
                    Some((at - targets[t].written_at.timestamp_millis()).max(0))
                })
                .max()
                .unwrap_or(0);
            RegionAck {
                region: name.clone(),
                acknowledged: true,
                lag_ms: Some(lag),
                acknowledged_at: latest
                    .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                unconfirmed_items: 0,
            }
        })
        .collect();
    WaitReport {
        complete: regions.iter().all(|r| r.acknowledged),
        items: targets.len(),
        timeout_ms,
        limited_by_request_timeout,
        waited_ms: started.elapsed().as_millis() as u64,
        regions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_checked_and_deduplicated() {
        let t = Duration::from_secs(5);
        let w = WaitFor::new(&[" a".into(), "b".into(), "a".into()], t).unwrap();
        assert_eq!(w.regions, vec!["a", "b"]);
        assert!(WaitFor::new(&[], t).is_err());
        assert!(WaitFor::new(&["".into()], t).is_err());
        assert!(WaitFor::new(&["x y".into()], t).is_err());
        assert!(WaitFor::new(&[acks::DELETE_INTENT.into()], t).is_err());
        assert!(WaitFor::new(&["a".into()], Duration::ZERO).is_err());
        assert!(WaitFor::new(&["a".into()], Duration::from_secs(MAX_TIMEOUT_SECS + 1)).is_err());
        let many: Vec<String> = (0..=MAX_REGIONS).map(|i| format!("r{i}")).collect();
        assert!(WaitFor::new(&many, t).is_err());
    }
}
