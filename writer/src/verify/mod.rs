//! `writer verify`: Postgres against every region and against the acknowledgements.
//!
//! 1. **Expected**: every document of Postgres projected ([`expected`]), each item with the
//!    content hash it should have.
//! 2. **Observed**: every item of the streamed edge tables in every region ([`scan`]), with
//!    its replication metadata and its content hash recomputed.
//! 3. **Compared**, per region: *missing* (expected, absent), *stale* (present, content differs
//!    from Postgres, or not written by the writer), *corrupted* (content does not match the
//!    hash the writer recorded), *extra* (written by the writer, no longer expected), and
//!    *unconfirmed* (written longer ago than the deadline, with no acknowledgement of that
//!    region at that version; deletes likewise). Documents with a change still queued in
//!    `edge.pending` are in flight and skipped. Items the writer never wrote and Postgres does
//!    not know (identities created by the Edge API) are counted as foreign and left alone.
//! 4. **Repair** (`--repair`): every drifting document is re-written through the normal
//!    versioned path ([`Replicator::replicate_now_with`], forced): a new snapshot, a new
//!    version, conditional writes to the home region, from where replication carries them to
//!    every other region. An extra item is first recorded as an item of its owner, so that the
//!    owner's re-write deletes it under the owner's lock.

pub mod expected;
pub mod scan;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::Utc;
use edge_documents::acks::{self, Ack};
use edge_documents::tables::{TableKind, TableNames};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

use crate::doc_key::DocKey;
use crate::replicate::{error_chain, Replicator};
use crate::state::documents;
use crate::store::ItemStore;
use expected::{expected_items, ExpectedItem};
use scan::{scan_ledger, scan_table, Observed};

/// The tables the consumers verify (the project metadata table has no stream and no versions).
pub const VERIFIED_TABLES: [TableKind; 4] = [
    TableKind::Environments,
    TableKind::EnvironmentsV2,
    TableKind::Identities,
    TableKind::EnvironmentApiKeys,
];

/// One region to verify: its name (as its consumer acknowledges) and a client for it.
pub struct Region {
    pub name: String,
    pub client: aws_sdk_dynamodb::Client,
}

pub struct Options {
    /// A write older than this without an acknowledgement of a region is unconfirmed.
    pub ack_deadline: Duration,
    pub repair: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    Missing,
    Stale,
    Corrupted,
    Extra,
    Unconfirmed,
}

#[derive(Debug, Clone, Serialize)]
pub struct Drift {
    pub region: String,
    pub kind: DriftKind,
    pub item_key: String,
    pub doc_key: Option<String>,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RegionSummary {
    pub name: String,
    pub items: usize,
    pub foreign: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub expected_items: usize,
    pub regions: Vec<RegionSummary>,
    pub in_flight_documents: usize,
    pub unprojectable: Vec<String>,
    pub counts: BTreeMap<DriftKind, usize>,
    pub drifts: Vec<Drift>,
    pub repaired_documents: usize,
    pub repair_failures: Vec<String>,
    pub seconds: f64,
}

impl Report {
    pub fn clean(&self) -> bool {
        self.drifts.is_empty() && self.unprojectable.is_empty()
    }

    /// Drift was found and every drifting document was re-written.
    pub fn repaired(&self) -> bool {
        !self.drifts.is_empty()
            && self.repair_failures.is_empty()
            && self.repaired_documents > 0
            && self.unprojectable.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Expected(#[from] expected::ExpectedError),
    #[error(transparent)]
    Scan(#[from] scan::ScanError),
    #[error("Postgres: {0}")]
    Db(#[from] sqlx::Error),
}

struct Written {
    written_at: chrono::DateTime<Utc>,
}

pub async fn run<S: ItemStore>(
    replicator: &Replicator<S>,
    tables: &TableNames,
    ledger: &aws_sdk_dynamodb::Client,
    regions: &[Region],
    options: &Options,
) -> Result<Report, VerifyError> {
    let started = Instant::now();
    let pool = replicator.pool();
    let (expected, unprojectable) = expected_items(pool).await?;
    let in_flight = in_flight_documents(pool).await?;
    let written = written_documents(pool).await?;
    let ledger_entries = scan_ledger(ledger, &tables.acks).await?;
    let deadline = Utc::now()
        - chrono::Duration::from_std(options.ack_deadline).unwrap_or(chrono::Duration::zero());
    // The newest version any region acknowledged for each item: a replica holding an older
    // one went backwards (an older version written behind the writer's back).
    let mut newest_ack: HashMap<&str, i64> = HashMap::new();
    for ((key, region), ack) in &ledger_entries {
        if region != acks::DELETE_INTENT && !ack.removed {
            let slot = newest_ack.entry(key.as_str()).or_insert(ack.version);
            *slot = (*slot).max(ack.version);
        }
    }
    let old_enough = |doc: &str| written.get(doc).is_some_and(|w| w.written_at < deadline);

    let mut report = Report {
        expected_items: expected.len(),
        in_flight_documents: in_flight.len(),
        unprojectable,
        ..Report::default()
    };
    // Extra items to hand to their owners before a repair: (owner, table, key).
    let mut extras: Vec<(String, TableKind, Value)> = Vec::new();
    for region in regions {
        let mut observed: HashMap<String, Observed> = HashMap::new();
        for kind in VERIFIED_TABLES {
            observed.extend(scan_table(&region.client, tables.name(kind), kind).await?);
        }
        let mut summary = RegionSummary {
            name: region.name.clone(),
            items: observed.len(),
            foreign: 0,
        };
        let mut drift = |kind, item_key: &str, doc_key: Option<&str>, detail: String| {
            report.drifts.push(Drift {
                region: region.name.clone(),
                kind,
                item_key: item_key.to_string(),
                doc_key: doc_key.map(String::from),
                detail,
            })
        };
        for (key, exp) in &expected {
            if in_flight.contains(&exp.doc_key) {
                continue;
            }
            compare_expected(key, exp, observed.get(key), &mut drift);
        }
        for (key, obs) in &observed {
            let ack = ledger_entries.get(&(key.clone(), region.name.clone()));
            let faithful = |exp: &ExpectedItem| {
                obs.corrupted.is_none() && obs.hash.as_deref() == Some(exp.hash.as_str())
            };
            match (expected.get(key), &obs.version, &obs.doc_key) {
                (None, None, _) => summary.foreign += 1,
                (None, Some(v), Some(owner)) if !in_flight.contains(owner) => {
                    drift(
                        DriftKind::Extra,
                        key,
                        Some(owner),
                        format!("v{v} of {owner} is not expected by Postgres"),
                    );
                    extras.push((owner.clone(), obs.table, Value::Object(obs.key.clone())));
                }
                (Some(exp), Some(v), _)
                    if faithful(exp) && newest_ack.get(key.as_str()).is_some_and(|a| a > v) =>
                {
                    drift(
                        DriftKind::Stale,
                        key,
                        Some(&exp.doc_key),
                        format!(
                            "v{v} is older than the v{} a region acknowledged",
                            newest_ack[key.as_str()]
                        ),
                    );
                }
                (Some(exp), Some(v), _)
                    if faithful(exp)
                        && old_enough(&exp.doc_key)
                        && !in_flight.contains(&exp.doc_key)
                        && ack.is_none_or(|a| a.version < *v) =>
                {
                    drift(
                        DriftKind::Unconfirmed,
                        key,
                        Some(&exp.doc_key),
                        format!(
                            "v{v} has no acknowledgement of {} (newest: {:?})",
                            region.name,
                            ack.map(|a| a.version)
                        ),
                    );
                }
                _ => {}
            }
        }
        // Deletes the writer made longer ago than the deadline must be acknowledged too.
        for ((key, r), intent) in &ledger_entries {
            if r != acks::DELETE_INTENT
                || observed.contains_key(key)
                || intent.recorded_at_ms > deadline.timestamp_millis()
            {
                continue;
            }
            let ack: Option<&Ack> = ledger_entries.get(&(key.clone(), region.name.clone()));
            if ack.is_none_or(|a| a.version < intent.version) {
                drift(
                    DriftKind::Unconfirmed,
                    key,
                    Some(&intent.doc_key),
                    format!(
                        "the delete at v{} has no acknowledgement of {}",
                        intent.version, region.name
                    ),
                );
            }
        }
        report.regions.push(summary);
    }
    for d in &report.drifts {
        *report.counts.entry(d.kind).or_default() += 1;
    }
    report
        .drifts
        .sort_by(|a, b| (&a.item_key, &a.region, a.kind).cmp(&(&b.item_key, &b.region, b.kind)));

    if options.repair && !report.drifts.is_empty() {
        repair(
            replicator,
            &report.drifts,
            &extras,
            &mut report.repair_failures,
        )
        .await
        .map(|n| report.repaired_documents = n)?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn compare_expected(
    key: &str,
    exp: &ExpectedItem,
    obs: Option<&Observed>,
    drift: &mut impl FnMut(DriftKind, &str, Option<&str>, String),
) {
    let doc = Some(exp.doc_key.as_str());
    match obs {
        None => drift(DriftKind::Missing, key, doc, "not in the region".into()),
        Some(o) => {
            if let Some(why) = &o.corrupted {
                drift(
                    DriftKind::Corrupted,
                    key,
                    doc,
                    format!("v{}: {why}", o.version.unwrap_or_default()),
                );
            } else if o.version.is_none() {
                drift(
                    DriftKind::Stale,
                    key,
                    doc,
                    "the stored item was not written by the writer".into(),
                );
            } else if o.hash.as_deref() != Some(exp.hash.as_str()) {
                drift(
                    DriftKind::Stale,
                    key,
                    doc,
                    format!(
                        "v{} differs from what Postgres projects now",
                        o.version.unwrap_or_default()
                    ),
                );
            }
        }
    }
}

async fn in_flight_documents(pool: &PgPool) -> Result<HashSet<String>, sqlx::Error> {
    let keys: Vec<String> = sqlx::query_scalar("SELECT doc_key FROM edge.pending")
        .fetch_all(pool)
        .await?;
    Ok(keys.into_iter().collect())
}

async fn written_documents(pool: &PgPool) -> Result<HashMap<String, Written>, sqlx::Error> {
    let rows: Vec<(String, chrono::DateTime<Utc>)> = sqlx::query_as(
        "SELECT doc_key, written_at FROM edge.document WHERE written_at IS NOT NULL",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(k, written_at)| (k, Written { written_at }))
        .collect())
}

/// Re-writes every drifting document; returns how many were re-written.
async fn repair<S: ItemStore>(
    replicator: &Replicator<S>,
    drifts: &[Drift],
    extras: &[(String, TableKind, Value)],
    failures: &mut Vec<String>,
) -> Result<usize, VerifyError> {
    let mut conn = replicator.pool().acquire().await?;
    for (owner, table, key) in extras {
        if owner.parse::<DocKey>().is_ok() {
            documents::ensure_many(&mut conn, std::slice::from_ref(owner)).await?;
            documents::record_items(&mut conn, owner, &[(*table, key.clone())]).await?;
        }
    }
    drop(conn);
    let docs: Vec<String> = {
        let mut d: Vec<String> = drifts.iter().filter_map(|d| d.doc_key.clone()).collect();
        d.sort();
        d.dedup();
        d
    };
    let mut repaired = 0;
    for doc_key in docs {
        let doc: DocKey = match doc_key.parse() {
            Ok(d) => d,
            Err(e) => {
                failures.push(format!("{doc_key}: {e}"));
                continue;
            }
        };
        match replicator.replicate_now_with(doc, true).await {
            Ok(outcome) => {
                repaired += 1;
                tracing::info!(doc = %doc_key, version = ?outcome.version, written = outcome.written,
                    deleted = outcome.deleted, "drift repaired");
            }
            Err(e) => failures.push(format!("{doc_key}: {}", error_chain(&e))),
        }
    }
    Ok(repaired)
}
