//! Handling a batch of stream records: verify, acknowledge, invalidate.
//!
//! Records of a shard are ordered. With `ReportBatchItemFailures`, Lambda checkpoints before
//! the *first* reported failure and redelivers it and everything after it, so the batch is
//! handled in order up to the first record that fails (verification, a malformed record, or
//! an acknowledgement that could not be written), and exactly that record is reported.
//! Everything is idempotent (acknowledgements never go backwards, invalidations can repeat),
//! so redelivery is harmless. The local poller uses the same contract: it rewinds its shard
//! iterator to the failed record.
//!
//! Per record:
//! 1. a new image that carries replication attributes is verified (content hash, version
//!    order); one without them was not written by the writer and is skipped;
//! 2. a removal of a writer's item must have a delete intent of the writer at a newer
//!    version; otherwise the item was deleted behind the writer's back;
//! 3. the acknowledgement (region, item, version, lag from the core commit) is recorded;
//! 4. after the batch, the verified changes are invalidated in every cache target.
//!
//! Steps 1-3 are pipelined: a record's acknowledgement is sent as soon as it is checked, up
//! to [`ACK_CONCURRENCY`] in flight (a sliding window), while the next records are checked.
//! The outcome is the same as checking every record first: records after the first failure
//! are neither checked nor acknowledged, and an acknowledgement written for a record before
//! it is harmless on redelivery (acknowledgements never go backwards).

use std::time::Instant;

use chrono::{DateTime, Utc};
use edge_documents::acks::{self, Ack};
use edge_documents::item::{stored_meta, ATTR_VERSION};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;

use crate::ingest::{self, Ingestion};
use crate::invalidate::{dedupe, Change, Invalidation};
use crate::ledger::Ledger;
use crate::record::{ChangeRecord, Malformed};
use crate::verify::{verify, VerifyError};
use edge_documents::tables::TableKind;

/// Acknowledgements in flight at once within a batch.
const ACK_CONCURRENCY: usize = 16;

/// What happened to one batch.
#[derive(Debug, Default, Clone)]
pub struct BatchReport {
    pub records: usize,
    pub verified: usize,
    pub removals: usize,
    pub skipped: usize,
    /// The first record that failed (its sequence number) and why; it and every later
    /// record of the batch are to be redelivered.
    pub failure: Option<(String, String)>,
    /// Replication lag of each acknowledged record, in milliseconds.
    pub lags_ms: Vec<i64>,
    pub invalidated: usize,
    pub invalidation_failures: Vec<String>,
    /// Identity items written at the edge, applied to core (see [`crate::ingest`]).
    pub ingested: usize,
    /// Edge items that could not be ingested and were parked.
    pub ingest_parked: usize,
    pub seconds: f64,
}

impl BatchReport {
    pub fn max_lag_ms(&self) -> Option<i64> {
        self.lags_ms.iter().copied().max()
    }
}

/// A checked record, before its acknowledgement.
enum Checked {
    Ack(Box<Ack>, Change),
    Skipped,
    Ingested,
    Parked,
}

pub struct Consumer<L> {
    region: String,
    ledger: L,
    invalidation: Invalidation,
    ingestion: Option<Ingestion>,
}

impl<L: Ledger> Consumer<L> {
    pub fn new(region: impl Into<String>, ledger: L, invalidation: Invalidation) -> Self {
        Consumer {
            region: region.into(),
            ledger,
            invalidation,
            ingestion: None,
        }
    }

    /// Applies identity items written at the edge to the core database too.
    pub fn with_ingestion(mut self, ingestion: Ingestion) -> Self {
        self.ingestion = Some(ingestion);
        self
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn invalidation(&self) -> &Invalidation {
        &self.invalidation
    }

    /// Handles a batch, in order, up to its first failure.
    /// Records may be decoded lazily (an iterator over the event's JSON): decoding is then
    /// pipelined with the acknowledgements too.
    pub async fn handle<I>(&self, records: I) -> BatchReport
    where
        I: IntoIterator<Item = Result<ChangeRecord, Malformed>>,
        I::IntoIter: ExactSizeIterator + Send,
    {
        let records = records.into_iter();
        let started = Instant::now();
        let mut report = BatchReport {
            records: records.len(),
            ..BatchReport::default()
        };
        // 1-3, pipelined: records are checked in order until one fails, and each checked
        // record's acknowledgement is sent at once, up to ACK_CONCURRENCY in flight, while
        // the next records are checked. Results are put back in record order below.
        let mut checked: Vec<(String, Checked)> = Vec::with_capacity(records.len());
        let mut acked: Vec<Option<Result<(), String>>> = Vec::with_capacity(records.len());
        let mut in_flight = FuturesUnordered::new();
        for record in records {
            let record = match record {
                Ok(r) => r,
                Err(m) => {
                    report.failure = Some((m.sequence.clone(), m.to_string()));
                    break;
                }
            };
            let c = match self.check(&record).await {
                Ok(c) => c,
                Err(e) => {
                    report.failure = Some((
                        record.sequence.clone(),
                        format!("record {}: {e}", record.sequence),
                    ));
                    break;
                }
            };
            let slot = checked.len();
            match &c {
                Checked::Ack(ack, _) => {
                    acked.push(None);
                    in_flight.push(self.acknowledge(slot, ack.as_ref().clone()));
                }
                Checked::Skipped | Checked::Ingested | Checked::Parked => acked.push(Some(Ok(()))),
            }
            checked.push((record.sequence, c));
            // Sends what was just pushed and takes what has finished, without waiting...
            while let Some(Some((slot, result))) = in_flight.next().now_or_never() {
                acked[slot] = Some(result);
            }
            // ...unless the window is full.
            while in_flight.len() >= ACK_CONCURRENCY {
                if let Some((slot, result)) = in_flight.next().await {
                    acked[slot] = Some(result);
                }
            }
        }
        while let Some((slot, result)) = in_flight.next().await {
            acked[slot] = Some(result);
        }
        let mut changes = Vec::new();
        for ((sequence, c), result) in checked.into_iter().zip(acked) {
            if let Some(Err(e)) = result {
                // An earlier record's failure wins over a later verification failure.
                report.failure = Some((sequence.clone(), format!("record {sequence}: {e}")));
                break;
            }
            match c {
                Checked::Ack(ack, change) => {
                    if ack.removed {
                        report.removals += 1;
                    } else {
                        report.verified += 1;
                    }
                    report.lags_ms.extend(ack.lag_ms);
                    changes.push(change);
                }
                Checked::Skipped => report.skipped += 1,
                Checked::Ingested => report.ingested += 1,
                Checked::Parked => report.ingest_parked += 1,
            }
        }
        // 4: invalidation of what was verified; failures are reported, never fatal.
        let changes = dedupe(changes);
        report.invalidated = changes.len();
        report.invalidation_failures = self
            .invalidation
            .run(&self.region, &changes)
            .await
            .into_iter()
            .map(|e| e.to_string())
            .collect();
        for failure in &report.invalidation_failures {
            tracing::error!(error = %failure, changes = changes.len(), "cache invalidation failed after all attempts");
        }
        report.seconds = started.elapsed().as_secs_f64();
        report
    }

    /// Writes one acknowledgement; `slot` travels with the result.
    async fn acknowledge(&self, slot: usize, ack: Ack) -> (usize, Result<(), String>) {
        let result = self
            .ledger
            .acknowledge(&ack)
            .await
            .map_err(|e| e.to_string());
        (slot, result)
    }

    /// Ingests an edge write of an identity item into core.
    async fn ingest(
        &self,
        ingestion: &Ingestion,
        record: &ChangeRecord,
    ) -> Result<Checked, VerifyError> {
        let composite_key = composite_key(record)?;
        match ingestion.apply(record, &composite_key).await {
            Ok(ingest::Outcome::Ingested(result)) => {
                tracing::debug!(item = %composite_key, ?result, "edge write ingested");
                Ok(Checked::Ingested)
            }
            Ok(ingest::Outcome::Parked(_)) => Ok(Checked::Parked),
            Err(e) => Err(VerifyError::Ingestion(e)),
        }
    }

    async fn check(&self, record: &ChangeRecord) -> Result<Checked, VerifyError> {
        let item_key = acks::item_key(record.table, &record.keys).ok_or_else(|| {
            VerifyError::Unreadable(format!(
                "keys {:?} do not match table {}",
                record.keys,
                record.table.as_str()
            ))
        })?;
        let now = Utc::now();
        match &record.new {
            Some(new) => {
                if !new.contains_key(ATTR_VERSION) {
                    if let (Some(ingestion), TableKind::Identities) =
                        (&self.ingestion, record.table)
                    {
                        if ingestion.role() == ingest::Role::Home {
                            return self.ingest(ingestion, record).await;
                        }
                    }
                    return Ok(Checked::Skipped);
                }
                if let (Some(ingestion), TableKind::Identities, Some(old)) =
                    (&self.ingestion, record.table, &record.old)
                {
                    if ingestion.role() == ingest::Role::Replica && !old.contains_key(ATTR_VERSION)
                    {
                        let key = composite_key(record)?;
                        ingestion
                            .ingest_lost(record, &key, old)
                            .await
                            .map_err(VerifyError::Ingestion)?;
                    }
                }
                let meta = verify(new, record.old.as_ref())?;
                let lag_ms = DateTime::parse_from_rfc3339(&meta.source_time)
                    .ok()
                    .map(|t| (now - t.with_timezone(&Utc)).num_milliseconds().max(0));
                let change = Change::of_item(record.table, new, &meta.doc_key, meta.version, false);
                Ok(Checked::Ack(
                    Box::new(Ack {
                        item_key,
                        region: self.region.clone(),
                        version: meta.version,
                        doc_key: meta.doc_key,
                        hash: meta.hash,
                        removed: false,
                        source_time: meta.source_time,
                        recorded_at_ms: now.timestamp_millis(),
                        lag_ms,
                    }),
                    change,
                ))
            }
            None => {
                let Some(old) = &record.old else {
                    return Ok(Checked::Skipped);
                };
                let home = self.ingestion.as_ref().filter(|i| {
                    i.role() == ingest::Role::Home && record.table == TableKind::Identities
                });
                let ours = stored_meta(old).ok();
                if ours.is_none() && home.is_none() {
                    return Ok(Checked::Skipped);
                }
                // One read of the writer's delete intent, for both questions below.
                let intent = self
                    .ledger
                    .delete_intent(&item_key)
                    .await
                    .map_err(|e| VerifyError::Unreadable(e.to_string()))?;
                if let Some(ingestion) = home {
                    let at_ms = record.created_at.unwrap_or(now).timestamp_millis();
                    let seen = intent.as_ref().map(|i| (i.version, i.recorded_at_ms));
                    if ingest::is_edge_delete(old, seen, at_ms) {
                        return self.ingest(ingestion, record).await;
                    }
                }
                let Some(old_meta) = ours else {
                    return Ok(Checked::Skipped);
                };
                let newest = intent.as_ref().map(|i| i.version);
                let Some(intent) = intent.filter(|i| i.version > old_meta.version) else {
                    return Err(VerifyError::UnexpectedRemoval {
                        item_key,
                        doc_key: old_meta.doc_key,
                        version: old_meta.version,
                        intent: newest,
                    });
                };
                let change =
                    Change::of_item(record.table, old, &old_meta.doc_key, intent.version, true);
                Ok(Checked::Ack(
                    Box::new(Ack {
                        item_key,
                        region: self.region.clone(),
                        version: intent.version,
                        doc_key: old_meta.doc_key,
                        hash: String::new(),
                        removed: true,
                        lag_ms: Some((now.timestamp_millis() - intent.recorded_at_ms).max(0)),
                        source_time: intent.source_time,
                        recorded_at_ms: now.timestamp_millis(),
                    }),
                    change,
                ))
            }
        }
    }
}

fn composite_key(record: &ChangeRecord) -> Result<String, VerifyError> {
    match record.keys.get("composite_key") {
        Some(aws_sdk_dynamodb::types::AttributeValue::S(k)) => Ok(k.clone()),
        _ => Err(VerifyError::Unreadable(
            "an identity record without a composite_key".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::LedgerError;
    use aws_sdk_dynamodb::types::AttributeValue;
    use edge_documents::item::{encode, Item, ReplicationMeta};
    use serde_json::json;
    use std::sync::Mutex;

    #[derive(Default)]
    struct FakeLedger {
        acks: Mutex<Vec<Ack>>,
        intents: Mutex<Vec<Ack>>,
        fail_acks_of: Option<i64>,
    }

    impl Ledger for FakeLedger {
        async fn acknowledge(&self, ack: &Ack) -> Result<(), LedgerError> {
            if self.fail_acks_of == Some(ack.version) {
                return Err(LedgerError {
                    table: "acks".into(),
                    op: "PutItem",
                    message: "unreachable".into(),
                });
            }
            self.acks.lock().unwrap().push(ack.clone());
            Ok(())
        }
        async fn delete_intent(&self, item_key: &str) -> Result<Option<Ack>, LedgerError> {
            Ok(self
                .intents
                .lock()
                .unwrap()
                .iter()
                .find(|a| a.item_key == item_key)
                .cloned())
        }
    }

    fn item(version: i64, name: &str) -> Item {
        let meta = ReplicationMeta {
            version,
            source_time: "2026-01-01T00:00:00+00:00".into(),
            doc_key: "environment:1".into(),
        };
        encode(&json!({"api_key": "k", "name": name, "id": 1}), &meta, None)
            .unwrap()
            .item
    }

    fn record(seq: &str, new: Option<Item>, old: Option<Item>) -> Result<ChangeRecord, Malformed> {
        Ok(ChangeRecord {
            sequence: seq.into(),
            table: TableKind::Environments,
            keys: [("api_key".to_string(), AttributeValue::S("k".into()))].into(),
            new,
            old,
            created_at: None,
        })
    }

    #[tokio::test]
    async fn a_poison_record_is_the_only_failure_and_later_records_wait() {
        let consumer = Consumer::new("r1", FakeLedger::default(), Invalidation::none());
        let mut tampered = item(3, "a");
        tampered.insert("name".into(), AttributeValue::S("changed".into()));
        let report = consumer
            .handle(vec![
                record("100", Some(item(2, "a")), Some(item(1, "a"))),
                record("200", Some(tampered), None),
                record("300", Some(item(4, "a")), None),
            ])
            .await;
        let (seq, error) = report.failure.unwrap();
        assert_eq!(seq, "200");
        assert!(error.contains("content hash"), "{error}");
        let acked: Vec<i64> = consumer
            .ledger
            .acks
            .lock()
            .unwrap()
            .iter()
            .map(|a| a.version)
            .collect();
        assert_eq!(
            acked,
            vec![2],
            "only the records before the failure are done"
        );
        assert_eq!(report.verified, 1);
    }

    #[tokio::test]
    async fn removals_need_a_newer_delete_intent() {
        let ledger = FakeLedger::default();
        let consumer = Consumer::new("r1", ledger, Invalidation::none());
        let report = consumer
            .handle(vec![record("1", None, Some(item(5, "a")))])
            .await;
        assert!(report
            .failure
            .unwrap()
            .1
            .contains("removed without a delete of the writer"));

        consumer.ledger.intents.lock().unwrap().push(Ack {
            item_key: "environments|k".into(),
            region: acks::DELETE_INTENT.into(),
            version: 6,
            doc_key: "environment:1".into(),
            hash: String::new(),
            removed: true,
            source_time: String::new(),
            recorded_at_ms: Utc::now().timestamp_millis(),
            lag_ms: None,
        });
        let report = consumer
            .handle(vec![record("1", None, Some(item(5, "a")))])
            .await;
        assert!(report.failure.is_none(), "{:?}", report.failure);
        assert_eq!(report.removals, 1);
        let acks = consumer.ledger.acks.lock().unwrap();
        assert!(acks[0].removed && acks[0].version == 6);
    }

    /// An item as the writer writes it, its core commit `age` ago.
    fn item_committed(version: i64, age: chrono::Duration) -> Item {
        let meta = ReplicationMeta {
            version,
            source_time: (Utc::now() - age).to_rfc3339(),
            doc_key: "environment:1".into(),
        };
        encode(&json!({"api_key": "k", "name": "a", "id": 1}), &meta, None)
            .unwrap()
            .item
    }

    /// The writer's delete intent of the environment item `k`, recorded `age` ago.
    fn intent(version: i64, age: chrono::Duration) -> Ack {
        Ack {
            item_key: "environments|k".into(),
            region: acks::DELETE_INTENT.into(),
            version,
            doc_key: "environment:1".into(),
            hash: String::new(),
            removed: true,
            source_time: String::new(),
            recorded_at_ms: (Utc::now() - age).timestamp_millis(),
            lag_ms: None,
        }
    }

    #[tokio::test]
    async fn a_report_counts_each_kind_of_record() {
        let consumer = Consumer::new("r1", FakeLedger::default(), Invalidation::none());
        consumer
            .ledger
            .intents
            .lock()
            .unwrap()
            .push(intent(9, chrono::Duration::zero()));
        // Not the writer's: an item without replication attributes, its removal, and a
        // removal without an old image.
        let foreign: Item = [("api_key".to_string(), AttributeValue::S("k".into()))].into();
        let report = consumer
            .handle(vec![
                record("1", Some(item(7, "a")), None),
                record("2", Some(foreign.clone()), None),
                record("3", None, Some(foreign)),
                record("4", None, None),
                record("5", None, Some(item(8, "a"))),
            ])
            .await;
        assert!(report.failure.is_none(), "{:?}", report.failure);
        assert_eq!(report.records, 5);
        assert_eq!(report.verified, 1);
        assert_eq!(report.removals, 1);
        assert_eq!(report.skipped, 3);
        assert_eq!((report.ingested, report.ingest_parked), (0, 0));
        assert_eq!(report.lags_ms.len(), 2, "{:?}", report.lags_ms);
        // The name metrics are published under.
        assert_eq!(consumer.region(), "r1");
    }

    #[tokio::test]
    async fn lags_run_from_the_core_commit_and_from_the_delete_intent() {
        let consumer = Consumer::new("r1", FakeLedger::default(), Invalidation::none());
        consumer
            .ledger
            .intents
            .lock()
            .unwrap()
            .push(intent(9, chrono::Duration::seconds(30)));
        let report = consumer
            .handle(vec![
                record(
                    "1",
                    Some(item_committed(7, chrono::Duration::seconds(5))),
                    None,
                ),
                record("2", None, Some(item(8, "a"))),
            ])
            .await;
        assert!(report.failure.is_none(), "{:?}", report.failure);
        let &[put, removal] = &report.lags_ms[..] else {
            panic!("two lags: {:?}", report.lags_ms);
        };
        // At least the age, and not much more: the batch took well under a minute.
        assert!((5_000..65_000).contains(&put), "{put}");
        assert!((30_000..90_000).contains(&removal), "{removal}");
        assert_eq!(report.max_lag_ms(), Some(removal));
        let mut recorded: Vec<Option<i64>> = consumer
            .ledger
            .acks
            .lock()
            .unwrap()
            .iter()
            .map(|a| a.lag_ms)
            .collect();
        recorded.sort();
        assert_eq!(recorded, vec![Some(put), Some(removal)]);
    }

    #[test]
    fn the_largest_lag_of_a_batch_is_its_maximum() {
        let report = BatchReport {
            lags_ms: vec![1_200, 40, 7_000, 3],
            ..BatchReport::default()
        };
        assert_eq!(report.max_lag_ms(), Some(7_000));
        assert_eq!(BatchReport::default().max_lag_ms(), None);
    }

    #[tokio::test]
    async fn a_delete_intent_at_the_items_own_version_does_not_cover_its_removal() {
        let consumer = Consumer::new("r1", FakeLedger::default(), Invalidation::none());
        consumer
            .ledger
            .intents
            .lock()
            .unwrap()
            .push(intent(5, chrono::Duration::zero()));
        let report = consumer
            .handle(vec![record("1", None, Some(item(5, "a")))])
            .await;
        let (seq, error) = report.failure.expect("an unexpected removal");
        assert_eq!(seq, "1");
        assert!(
            error.contains("removed without a delete of the writer") && error.contains("Some(5)"),
            "{error}"
        );
        assert!(consumer.ledger.acks.lock().unwrap().is_empty());
    }

    /// Ingestion into a core database that cannot be reached: whatever is routed to it fails
    /// its record, naming the item, and nothing else touches it.
    fn unreachable_core(role: ingest::Role) -> Ingestion {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(std::time::Duration::from_millis(300))
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        Ingestion::from_pool(pool, role)
    }

    fn identity_record(
        seq: &str,
        new: Option<Item>,
        old: Option<Item>,
    ) -> Result<ChangeRecord, Malformed> {
        Ok(ChangeRecord {
            sequence: seq.into(),
            table: TableKind::Identities,
            keys: [(
                "composite_key".to_string(),
                AttributeValue::S("envI_alice".into()),
            )]
            .into(),
            new,
            old,
            created_at: None,
        })
    }

    /// An identity item as the writer writes it.
    fn writers_identity(version: i64) -> Item {
        let meta = ReplicationMeta {
            version,
            source_time: Utc::now().to_rfc3339(),
            doc_key: "identity:1".into(),
        };
        encode(&edge_identity_json(), &meta, None).unwrap().item
    }

    fn edge_identity_json() -> serde_json::Value {
        json!({"composite_key": "envI_alice", "identifier": "alice",
               "environment_api_key": "envI", "identity_traits": [],
               "identity_features": []})
    }

    /// An identity item as the edge writes it: no replication attributes.
    fn edges_identity() -> Item {
        serde_dynamo::aws_sdk_dynamodb_1::to_item(edge_identity_json()).unwrap()
    }

    /// Runs one record through a consumer with ingestion into an unreachable core.
    async fn routed(role: ingest::Role, record: Result<ChangeRecord, Malformed>) -> BatchReport {
        let consumer = Consumer::new("r1", FakeLedger::default(), Invalidation::none())
            .with_ingestion(unreachable_core(role));
        consumer.handle(vec![record]).await
    }

    fn ingestion_failure(report: &BatchReport) -> bool {
        report.failure.as_ref().is_some_and(|(_, e)| {
            e.contains("ingesting the edge's write") && e.contains("edge item envI_alice")
        })
    }

    #[tokio::test]
    async fn an_edge_write_is_ingested_by_the_home_region_only() {
        let edge_put = || identity_record("1", Some(edges_identity()), None);
        let report = routed(ingest::Role::Home, edge_put()).await;
        assert!(ingestion_failure(&report), "{:?}", report.failure);
        let report = routed(ingest::Role::Replica, edge_put()).await;
        assert!(report.failure.is_none(), "{:?}", report.failure);
        assert_eq!(report.skipped, 1);
    }

    #[tokio::test]
    async fn an_edge_delete_is_ingested_by_the_home_region_only() {
        let edge_delete = || identity_record("1", None, Some(edges_identity()));
        let report = routed(ingest::Role::Home, edge_delete()).await;
        assert!(ingestion_failure(&report), "{:?}", report.failure);
        let report = routed(ingest::Role::Replica, edge_delete()).await;
        assert!(report.failure.is_none(), "{:?}", report.failure);
        assert_eq!(report.skipped, 1);
        // Only identities are ingested: the same removal in another table is not the edge's.
        let not_an_identity = Ok(ChangeRecord {
            table: TableKind::Environments,
            keys: [("api_key".to_string(), AttributeValue::S("k".into()))].into(),
            ..identity_record("1", None, Some(edges_identity())).unwrap()
        });
        let report = routed(ingest::Role::Home, not_an_identity).await;
        assert!(report.failure.is_none(), "{:?}", report.failure);
        assert_eq!(report.skipped, 1);
    }

    #[tokio::test]
    async fn a_replica_ingests_an_edge_image_the_writer_replaced_and_nothing_else() {
        // The writer's item replaced an edge image that never replicated.
        let replaced = || identity_record("1", Some(writers_identity(3)), Some(edges_identity()));
        let report = routed(ingest::Role::Replica, replaced()).await;
        assert!(ingestion_failure(&report), "{:?}", report.failure);
        // The home region saw the edge image itself: it only verifies the writer's item.
        let report = routed(ingest::Role::Home, replaced()).await;
        assert!(report.failure.is_none(), "{:?}", report.failure);
        assert_eq!(report.verified, 1);
        // The writer's item replaced its own earlier item: nothing to ingest anywhere.
        let report = routed(
            ingest::Role::Replica,
            identity_record("1", Some(writers_identity(3)), Some(writers_identity(2))),
        )
        .await;
        assert!(report.failure.is_none(), "{:?}", report.failure);
        assert_eq!(report.verified, 1);
    }

    #[tokio::test]
    async fn an_acknowledgement_that_cannot_be_written_fails_its_record() {
        let ledger = FakeLedger {
            fail_acks_of: Some(2),
            ..FakeLedger::default()
        };
        let consumer = Consumer::new("r1", ledger, Invalidation::none());
        let report = consumer
            .handle(vec![
                record("1", Some(item(1, "a")), None),
                record("2", Some(item(2, "a")), None),
                record("3", Some(item(3, "a")), None),
            ])
            .await;
        assert_eq!(report.failure.unwrap().0, "2");
        assert_eq!(report.verified, 1);
    }
}
