//! A test-only relay that emulates DynamoDB global-table replication between two DynamoDB
//! Local instances ("regions"): every change in one region's edge tables is applied to the
//! other region, as AWS does for global tables.
//!
//! - **Last writer wins** by the stream record's creation time: a record older than the last
//!   change the relay applied to that item in the destination is dropped.
//! - **No echo**: the relay's own write shows up in the destination's stream; it remembers
//!   the image it wrote and does not send that record back.
//! - Like AWS, it replicates whatever is written, corruption included: a write behind the
//!   writer's back in one region reaches every region.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use edge_documents::acks;
use edge_documents::hash::content_hash;
use edge_documents::item::Item;
use edge_documents::tables::TableKind;
use stream_consumer::poller::{StartAt, StreamTail};
use stream_consumer::record;
use tokio::task::JoinHandle;

use crate::dynamo::TestTables;

pub const STREAMED: [TableKind; 4] = [
    TableKind::Environments,
    TableKind::EnvironmentsV2,
    TableKind::Identities,
    TableKind::EnvironmentApiKeys,
];

/// Streams client for a DynamoDB Local endpoint (same static credentials as the tables).
pub async fn streams_client(endpoint: &str) -> aws_sdk_dynamodbstreams::Client {
    let config = stream_consumer::config::loader()
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("eu-west-2"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "local", "local", None, None, "static",
        ))
        .load()
        .await;
    aws_sdk_dynamodbstreams::Client::new(&config)
}

fn fingerprint(image: Option<&Item>) -> String {
    match image {
        None => "removed".into(),
        Some(item) => {
            let value: serde_json::Value =
                serde_dynamo::aws_sdk_dynamodb_1::from_item(item.clone()).unwrap_or_default();
            content_hash(&value)
        }
    }
}

#[derive(Default)]
struct Memory {
    /// (destination, item) -> fingerprints of the images the relay wrote there and has not
    /// seen come back yet (several, when an item changes faster than the relay's round trip).
    written: HashMap<(usize, String), Vec<String>>,
    /// (destination, item) -> creation time of the last change applied there.
    applied_at: HashMap<(usize, String), f64>,
}

/// The running relay; stopped on drop.
pub struct Relay {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Relay {
    /// Relays between `a` and `b` (tables of the same names on two instances), from the start
    /// of their streams.
    pub async fn start(a: &TestTables, b: &TestTables) -> Relay {
        let memory = Arc::new(Mutex::new(Memory::default()));
        let regions = [a.clone(), b.clone()];
        let mut tasks = Vec::new();
        for (src, dst) in [(0usize, 1usize), (1, 0)] {
            for kind in STREAMED {
                let from = regions[src].clone();
                let to = regions[dst].clone();
                let memory = memory.clone();
                let streams = streams_client(&from.endpoint).await;
                let mut tail = StreamTail::open(
                    &from.client,
                    streams,
                    from.names.name(kind),
                    StartAt::TrimHorizon,
                )
                .await
                .expect("open the stream to relay");
                tasks.push(tokio::spawn(async move {
                    loop {
                        let batches = match tail.poll().await {
                            Ok(b) => b,
                            Err(e) => {
                                tracing::warn!(error = %e, "relay: reading the stream failed");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                        };
                        if batches.is_empty() {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        for (_, records) in batches {
                            for r in records {
                                let at = r
                                    .dynamodb()
                                    .and_then(|d| d.approximate_creation_date_time())
                                    .map(|t| t.as_secs_f64())
                                    .unwrap_or_default();
                                let Ok(change) = record::from_streams(&r, kind) else {
                                    continue;
                                };
                                apply(&to, kind, src, dst, &change, at, &memory).await;
                            }
                        }
                    }
                }));
            }
        }
        Relay { tasks }
    }
}

async fn apply(
    to: &TestTables,
    kind: TableKind,
    src: usize,
    dst: usize,
    change: &record::ChangeRecord,
    at: f64,
    memory: &Mutex<Memory>,
) {
    let Some(key) = acks::item_key(kind, &change.keys) else {
        return;
    };
    let print = fingerprint(change.new.as_ref());
    {
        let mut m = memory.lock().unwrap();
        // Our own write arriving back from the destination: not a new change.
        if let Some(prints) = m.written.get_mut(&(src, key.clone())) {
            if let Some(i) = prints.iter().position(|p| *p == print) {
                prints.remove(i);
                return;
            }
        }
        if m.applied_at
            .get(&(dst, key.clone()))
            .is_some_and(|t| *t > at)
        {
            return;
        }
        m.applied_at.insert((dst, key.clone()), at);
        m.written.entry((dst, key.clone())).or_default().push(print);
    }
    let table = to.names.name(kind);
    let result = match &change.new {
        Some(item) => to
            .client
            .put_item()
            .table_name(table)
            .set_item(Some(item.clone()))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| display(&e)),
        None => {
            let keys: HashMap<String, AttributeValue> = change.keys.clone();
            to.client
                .delete_item()
                .table_name(table)
                .set_key(Some(keys))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| display(&e))
        }
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "relay: write failed");
    }
}

fn display(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
