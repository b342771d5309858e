//! Two regions: the shared DynamoDB Local as the home region `a` (where the writer writes and
//! the replication ledger lives) and a second instance as region `b`, the same tables in
//! both, the test relay between them, and a stream consumer (the local poller) on each.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use edge_documents::acks::Ack;
use edge_documents::tables::TableKind;
use stream_consumer::ingest::{Ingestion, Role};
use stream_consumer::invalidate::Invalidation;
use stream_consumer::ledger::DynamoLedger;
use stream_consumer::poller::{self, PollOptions, StartAt};
use stream_consumer::{BatchReport, Consumer};
use tokio::task::JoinHandle;

use crate::dynamo::{self, TestTables};
use crate::relay::{self, Relay, STREAMED};

pub const HOME: &str = "a";
pub const OTHER: &str = "b";

/// A batch one of the consumers handled.
#[derive(Debug, Clone)]
pub struct Handled {
    pub region: String,
    pub table: TableKind,
    pub report: BatchReport,
}

pub struct TwoRegions {
    pub a: TestTables,
    pub b: TestTables,
    pub relay: Relay,
    pub handled: Arc<Mutex<Vec<Handled>>>,
    /// Each region's consumer, by region name.
    consumers: Vec<(String, JoinHandle<()>)>,
}

impl Drop for TwoRegions {
    fn drop(&mut self) {
        for (_, c) in &self.consumers {
            c.abort();
        }
    }
}

impl TwoRegions {
    /// Starts both regions; `invalidation(region)` gives each consumer its targets.
    pub async fn start(invalidation: impl Fn(&str) -> Invalidation) -> TwoRegions {
        Self::start_with(invalidation, None).await
    }

    /// As [`Self::start`], the consumers also ingesting edge writes into `ingest`'s core
    /// database: region `a`'s as the home region, region `b`'s as a replica.
    pub async fn start_with(
        invalidation: impl Fn(&str) -> Invalidation,
        ingest: Option<sqlx::PgPool>,
    ) -> TwoRegions {
        let a = TestTables::new().await;
        let b = TestTables::named(&dynamo::second().endpoint, a.names.clone(), true).await;
        let relay = Relay::start(&a, &b).await;
        let handled = Arc::new(Mutex::new(Vec::new()));
        let mut consumers = Vec::new();
        for (name, tables) in [(HOME, &a), (OTHER, &b)] {
            // Both consumers acknowledge in the home region's ledger (on AWS the ledger is a
            // global table and each consumer writes to its own replica).
            let ledger = DynamoLedger::new(a.client.clone(), a.names.acks.clone());
            let mut consumer = Consumer::new(name, ledger, invalidation(name));
            if let Some(pool) = &ingest {
                let role = if name == HOME {
                    Role::Home
                } else {
                    Role::Replica
                };
                consumer = consumer.with_ingestion(
                    Ingestion::from_pool(pool.clone(), role)
                        .with_time_precision(crate::edge::LOCAL_TIME_PRECISION),
                );
            }
            let handled = handled.clone();
            let region = name.to_string();
            let on_batch = move |table: TableKind, report: &BatchReport| {
                handled.lock().unwrap().push(Handled {
                    region: region.clone(),
                    table,
                    report: report.clone(),
                });
            };
            // Ingestion failures are retried until they succeed (as Lambda does within its
            // retry budget); verification failures are given up after 3.
            let max_attempts = if ingest.is_some() { 0 } else { 3 };
            consumers.push((
                name.to_string(),
                spawn_poller(consumer, tables, max_attempts, on_batch),
            ));
        }
        TwoRegions {
            a,
            b,
            relay,
            handled,
            consumers,
        }
    }

    /// Stops the stream consumer of `region` (the relay goes on: the region still receives
    /// the writes, nothing acknowledges them there any more). Returns once it has stopped.
    pub async fn stop_consumer(&mut self, region: &str) {
        let i = self
            .consumers
            .iter()
            .position(|(name, _)| name == region)
            .unwrap_or_else(|| panic!("no consumer in region {region}"));
        let (_, handle) = self.consumers.remove(i);
        handle.abort();
        let _ = handle.await;
    }

    /// The acknowledgements of an item, by region (consistent read of the home ledger).
    pub async fn acks(&self, item_key: &str) -> Vec<Ack> {
        let out = self
            .a
            .client
            .query()
            .table_name(&self.a.names.acks)
            .key_condition_expression("item_key = :k")
            .expression_attribute_values(":k", AttributeValue::S(item_key.to_string()))
            .consistent_read(true)
            .send()
            .await
            .expect("query the ledger");
        out.items().iter().filter_map(Ack::from_item).collect()
    }

    /// Failures the consumers reported so far: (region, error).
    pub fn failures(&self) -> Vec<(String, String)> {
        self.handled
            .lock()
            .unwrap()
            .iter()
            .filter_map(|h| {
                h.report
                    .failure
                    .as_ref()
                    .map(|f| (h.region.clone(), f.1.clone()))
            })
            .collect()
    }

    /// Invalidations the consumers gave up on after all attempts: (region, error).
    pub fn invalidation_failures(&self) -> Vec<(String, String)> {
        self.handled
            .lock()
            .unwrap()
            .iter()
            .flat_map(|h| {
                h.report
                    .invalidation_failures
                    .iter()
                    .map(|f| (h.region.clone(), f.clone()))
            })
            .collect()
    }

    /// Every lag the consumers recorded, in milliseconds.
    pub fn lags_ms(&self) -> Vec<i64> {
        self.handled
            .lock()
            .unwrap()
            .iter()
            .flat_map(|h| h.report.lags_ms.clone())
            .collect()
    }
}

/// Runs `consumer` (the local poller) on one region's streams from their start; panics if it
/// stops. `max_attempts`: attempts at a failing record before it is given up (0: forever).
pub fn spawn_poller(
    consumer: Consumer<DynamoLedger>,
    tables: &TestTables,
    max_attempts: u32,
    on_batch: impl Fn(TableKind, &BatchReport) + Send + Sync + 'static,
) -> JoinHandle<()> {
    let tables = tables.clone();
    tokio::spawn(async move {
        let streams = relay::streams_client(&tables.endpoint).await;
        let options = PollOptions {
            start: StartAt::TrimHorizon,
            max_attempts,
        };
        if let Err(e) = poller::run(
            &consumer,
            &tables.client,
            &streams,
            &tables.names,
            &STREAMED,
            options,
            &on_batch,
        )
        .await
        {
            panic!("stream consumer stopped: {e}");
        }
    })
}

/// A short retry policy for invalidation targets in tests.
pub fn test_invalidation(
    targets: Vec<Box<dyn stream_consumer::invalidate::Target>>,
) -> Invalidation {
    Invalidation::new(targets, 4, Duration::from_millis(20))
}
