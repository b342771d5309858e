//! The figures of `writer status`, read from Postgres (schema `edge`, through
//! [`crate::state`]) and from the replication ledger.
//!
//! The ledger is keyed by item (hash `item_key`, range `region`), so the acknowledgements of
//! one item in every region are one Query. The sample is the newest write of each of the
//! `ack_sample` most recently written documents, at most ten items per write on average: its
//! cost is bounded whatever the size of the tables, and it says nothing of older writes
//! (`writer verify` checks every item).

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_types::error::display::DisplayErrorContext;
use chrono::{DateTime, Utc};
use edge_documents::acks::{self, Ack};
use edge_documents::tables::TableKind;
use futures::StreamExt;
use serde::Serialize;
use sqlx::PgPool;

use super::regions::{self, RegionFigures, SampledItem, SampledWrite};
use super::{Options, StatusError};
use crate::capture::control::{self, CaptureStatus};
use crate::state::dead_letters::{self, KindSummary};
use crate::state::identity_migrations::{self, Progress};
use crate::state::verify_runs::{self, VerifyRun};
use crate::state::write_log::{self, Lag};
use crate::verify::VERIFIED_TABLES;

/// Ledger reads in flight at once.
const LEDGER_CONCURRENCY: usize = 16;
/// Items checked per sampled write, on average.
const ITEMS_PER_WRITE: usize = 10;

/// Where the replication ledger is.
pub struct LedgerSource<'a> {
    pub client: &'a aws_sdk_dynamodb::Client,
    pub table: &'a str,
    /// For errors: the table and where it was looked for, e.g. `acks at http://...`.
    pub described: String,
}

/// Everything `writer status` looked at.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub checked_at: DateTime<Utc>,
    pub capture: CaptureStatus,
    pub queue: Queue,
    /// By kind (the writer's kinds, and `ingestion`), each with its oldest.
    pub dead_letters: Vec<KindSummary>,
    pub lag: LagFigures,
    pub migrations: Vec<Progress>,
    pub regions: Regions,
    /// The last `writer verify`, if any ran.
    pub verify: Option<VerifyRun>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Queue {
    /// Documents queued, and due now.
    pub depth: i64,
    pub due: i64,
    /// How long the oldest due document has waited (0: none due).
    pub oldest_due_age_seconds: f64,
    /// How long the oldest unresolved change of the change log has waited (0: none).
    pub oldest_change_age_seconds: f64,
}

/// Replication lag, core commit to DynamoDB (home region), of the writes in the window.
#[derive(Debug, Clone, Serialize)]
pub struct LagFigures {
    pub window_seconds: f64,
    #[serde(flatten)]
    pub lag: Lag,
}

#[derive(Debug, Clone, Serialize)]
pub struct Regions {
    /// The sample the figures come from.
    pub sampled_writes: usize,
    pub sampled_items: usize,
    /// The writes asked for (`--ack-sample`); fewer are sampled when fewer were written in
    /// the last hour, or when their items exceed the bound.
    pub sample_limit: usize,
    /// Writes were left out of the sample to keep to the bound on items.
    pub capped: bool,
    pub regions: Vec<RegionFigures>,
}

fn pg(what: &'static str) -> impl FnOnce(sqlx::Error) -> StatusError {
    move |source| StatusError::Postgres { what, source }
}

/// Reads every figure. Fails on the first source that cannot be read.
pub async fn gather(
    pool: &PgPool,
    ledger: &LedgerSource<'_>,
    options: &Options,
) -> Result<Figures, StatusError> {
    let checked_at = Utc::now();
    let capture = control::status(pool)
        .await
        .map_err(pg("capture's state (has `writer migrate` run?)"))?;
    let (depth, due) = crate::state::pending::depth(pool)
        .await
        .map_err(pg("the queue"))?;
    let ages = crate::health::ages(pool)
        .await
        .map_err(pg("the queue's ages"))?;
    let dead_letters = dead_letters::by_kind(pool)
        .await
        .map_err(pg("the dead letters"))?;
    let lag_window = options.lag_window.min(write_log::RETENTION);
    let lag = write_log::lag(pool, lag_window)
        .await
        .map_err(pg("the write log"))?;
    let migrations = identity_migrations::progress(pool)
        .await
        .map_err(pg("the identity migrations"))?;
    let verify = verify_runs::last(pool)
        .await
        .map_err(pg("the verify runs"))?;
    let regions = sample_regions(pool, ledger, options, checked_at).await?;
    Ok(Figures {
        checked_at,
        capture,
        queue: Queue {
            depth,
            due,
            oldest_due_age_seconds: ages.oldest_due.as_secs_f64(),
            oldest_change_age_seconds: ages.oldest_change.as_secs_f64(),
        },
        dead_letters,
        lag: LagFigures {
            window_seconds: lag_window.as_secs_f64(),
            lag,
        },
        migrations,
        regions,
        verify,
    })
}

/// The recent writes, their items' ledger entries, and the summary per region.
async fn sample_regions(
    pool: &PgPool,
    ledger: &LedgerSource<'_>,
    options: &Options,
    now: DateTime<Utc>,
) -> Result<Regions, StatusError> {
    if options.ack_sample == 0 {
        return Ok(Regions {
            sampled_writes: 0,
            sampled_items: 0,
            sample_limit: 0,
            capped: false,
            regions: Vec::new(),
        });
    }
    // One read of the ledger in any case: an unreachable DynamoDB or a missing ledger is an
    // error, not an empty sample.
    query_item(ledger, "#writer-status").await?;
    let recent = write_log::recent(pool, options.ack_sample as i64)
        .await
        .map_err(pg("the write log"))?;
    let bound = options.ack_sample * ITEMS_PER_WRITE;
    let mut writes = Vec::new();
    let mut items = 0;
    let mut capped = false;
    for w in recent {
        let sampled: Vec<SampledItem> = w
            .items
            .iter()
            .filter_map(|(table, key, removed)| {
                let kind = TableKind::parse(table).filter(|k| VERIFIED_TABLES.contains(k))?;
                Some(SampledItem {
                    ledger_key: acks::item_key_of_json(kind, key.as_object()?)?,
                    removed: *removed,
                })
            })
            .collect();
        if items + sampled.len() > bound {
            capped = true;
            break;
        }
        items += sampled.len();
        writes.push(SampledWrite {
            doc_key: w.doc_key,
            version: w.version,
            written_at: w.written_at,
            put_items: w.put_items,
            items: sampled,
        });
    }
    let mut keys: Vec<&str> = writes
        .iter()
        .flat_map(|w| w.items.iter().map(|i| i.ledger_key.as_str()))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let mut entries: HashMap<String, Vec<Ack>> = HashMap::new();
    let mut reads = futures::stream::iter(keys)
        .map(|key| async move { query_item(ledger, key).await.map(|acks| (key, acks)) })
        .buffer_unordered(LEDGER_CONCURRENCY);
    while let Some(read) = reads.next().await {
        let (key, acks) = read?;
        entries.insert(key.to_string(), acks);
    }
    drop(reads);
    let regions = regions::summarise(
        &writes,
        &entries,
        &options.regions,
        now,
        options.thresholds.unconfirmed_after,
        options.lag_window,
    );
    Ok(Regions {
        sampled_writes: writes.len(),
        sampled_items: items,
        sample_limit: options.ack_sample,
        capped,
        regions,
    })
}

/// Every ledger entry of one item: each region's acknowledgement and the delete intent.
async fn query_item(ledger: &LedgerSource<'_>, key: &str) -> Result<Vec<Ack>, StatusError> {
    let out = ledger
        .client
        .query()
        .table_name(ledger.table)
        .key_condition_expression("item_key = :k")
        .expression_attribute_values(":k", AttributeValue::S(key.to_string()))
        .send()
        .await
        .map_err(|e| StatusError::Ledger {
            ledger: ledger.described.clone(),
            message: DisplayErrorContext(e).to_string(),
        })?;
    Ok(out.items().iter().filter_map(Ack::from_item).collect())
}

/// Seconds from `t` to `now` (0 when `t` is later).
pub fn age(now: DateTime<Utc>, t: DateTime<Utc>) -> Duration {
    (now - t).to_std().unwrap_or_default()
}
