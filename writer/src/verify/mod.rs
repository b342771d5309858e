//! `writer verify`: Postgres against every region and against the acknowledgements.
//!
//! 1. **Expected**: every document of Postgres projected ([`expected`]), batch by batch, each
//!    item with the content hash it should have.
//! 2. **Observed**: every item of the streamed edge tables in every region ([`scan`]), with
//!    its replication metadata and its content hash recomputed, page by page.
//!
//!    Both, and the ledger, are staged in temporary tables of Postgres
//!    ([`crate::state::verify_stage`]), a few dozen bytes per item, one region at a time: the
//!    writer's memory stays the same at a thousand items and at millions.
//! 3. **Compared** ([`classify`](mod@classify), no I/O), key by key as the stage's join
//!    streams them back, per region: *missing* (expected, absent), *stale* (present,
//!    content differs from Postgres, older than a version some region acknowledged,
//!    or not written by the writer), *corrupted* (content does not match the hash the writer
//!    recorded), *extra* (written by the writer, no longer expected), and *unconfirmed*
//!    (written longer ago than the deadline, with no acknowledgement of that region at that
//!    version; deletes likewise). Documents with a change still queued in `edge.pending` are
//!    in flight and skipped. Items the writer never wrote and Postgres does not know
//!    (identities created by the Edge API) are counted as foreign and left alone.
//! 4. **Looked at again** ([`recheck`]) after a pause: what drifted is projected and read
//!    anew; only drift that persists is reported.
//! 5. **Repair** (`--repair`): every drifting document is re-written through the normal
//!    versioned path ([`Replicator::replicate_now_with`], forced): a new snapshot, a new
//!    version, conditional writes to the home region, from where replication carries them to
//!    every other region. An extra item is first recorded as an item of its owner, so that the
//!    owner's re-write deletes it under the owner's lock.

pub mod classify;
pub mod expected;
pub mod recheck;
pub mod scan;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::Utc;
use edge_documents::acks;
use edge_documents::tables::{TableKind, TableNames};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

use crate::doc_key::DocKey;
use crate::failure_policy::error_chain;
use crate::replicate::Replicator;
use crate::state::documents;
use crate::state::verify_stage::{ExpectedRow, LedgerRow, ObservedRow, Stage, StagedKey};
use crate::store::ItemStore;
use classify::{classify, Context, KeyView};
use expected::{Batches, ExpectedItem};
use scan::{scan_ledger, scan_table, Ledger, LedgerEntry, Observed};
use tokio::sync::mpsc;

/// Rows staged per statement.
const STAGE_BATCH: usize = 5000;
/// Progress is logged every this many staged rows.
const PROGRESS_EVERY: usize = 100_000;

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
    /// Pause before what drifted is looked at again (zero: report the first look).
    pub recheck_after: Duration,
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
    /// A core-owned item (environment, `_META`, API key) written by someone else: most likely
    /// Flagsmith core itself, with its DynamoDB table settings set.
    WrittenBySomeoneElse,
}

/// Advice on a core-owned item written by someone else.
pub const SOMEONE_ELSE_ADVICE: &str = "written without the writer's attributes, most likely by Flagsmith core itself: unset its ENVIRONMENTS_TABLE_NAME_DYNAMO, ENVIRONMENTS_API_KEY_TABLE_NAME_DYNAMO and ENVIRONMENTS_V2_TABLE_NAME_DYNAMO (see 'Running beside Flagsmith core' in the deployment guide); --repair writes the core document back";

/// An identity item written at the edge whose content has not reached core yet (or waits
/// for the writer to merge it). Not drift, and `--repair` never rewrites it.
#[derive(Debug, Clone, Serialize)]
pub struct PendingIngestion {
    pub region: String,
    /// In reports, a server-side key by its prefix only ([`edge_documents::redact::item_key`]).
    #[serde(serialize_with = "redacted_item_key")]
    pub item_key: String,
    pub doc_key: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Drift {
    pub region: String,
    pub kind: DriftKind,
    /// In reports, a server-side key by its prefix only ([`edge_documents::redact::item_key`]).
    #[serde(serialize_with = "redacted_item_key")]
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
    /// Drift of the first look that was gone at the second (changes on their way).
    pub transient_drifts: usize,
    pub unprojectable: Vec<String>,
    pub counts: BTreeMap<DriftKind, usize>,
    pub drifts: Vec<Drift>,
    /// Identity items written at the edge and not merged into core yet.
    pub pending_ingestion: Vec<PendingIngestion>,
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

/// What a run found, as its exit code and its record in `edge.verify_run` say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No drift.
    Clean,
    /// Drift found (and not every drifting document re-written).
    Drift,
    /// Drift found and every drifting document re-written (`--repair`).
    Repaired,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Clean => "clean",
            Outcome::Drift => "drift",
            Outcome::Repaired => "repaired",
        }
    }

    /// `writer verify`'s exit code: 0 clean, 2 drift, 3 repaired.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Clean => 0,
            Outcome::Drift => 2,
            Outcome::Repaired => 3,
        }
    }
}

impl Report {
    pub fn outcome(&self, repair: bool) -> Outcome {
        if self.clean() {
            Outcome::Clean
        } else if repair && self.repaired() {
            Outcome::Repaired
        } else {
            Outcome::Drift
        }
    }
}

/// Records a run (what it found, or why it failed) in `edge.verify_run`, where `writer status`
/// reads the last one.
pub async fn record_run(
    pool: &PgPool,
    started_at: chrono::DateTime<Utc>,
    regions: &[Region],
    repair: bool,
    result: Result<&Report, &VerifyError>,
) -> Result<(), sqlx::Error> {
    let mut run = crate::state::verify_runs::VerifyRun {
        started_at,
        finished_at: Utc::now(),
        outcome: "failed".into(),
        regions: regions.iter().map(|r| r.name.clone()).collect(),
        repair,
        expected_items: 0,
        drift_counts: BTreeMap::new(),
        unprojectable: 0,
        repair_failures: 0,
        error: None,
    };
    match result {
        Ok(report) => {
            run.outcome = report.outcome(repair).as_str().into();
            run.expected_items = report.expected_items as i64;
            run.drift_counts = report
                .counts
                .iter()
                .map(|(k, n)| (drift_kind_name(*k), *n as i64))
                .collect();
            run.unprojectable = report.unprojectable.len() as i64;
            run.repair_failures = report.repair_failures.len() as i64;
        }
        Err(e) => run.error = Some(error_chain(e)),
    }
    crate::state::verify_runs::record(pool, &run).await
}

fn drift_kind_name(kind: DriftKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| format!("{kind:?}"))
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

/// Everything one comparison looks at.
#[derive(Default, Clone)]
pub struct Snapshot {
    pub expected: HashMap<Box<str>, ExpectedItem>,
    /// Per region (in the order given), its items by ledger key. [`run`] keeps one region at a
    /// time here.
    pub observed: Vec<(String, HashMap<Box<str>, Observed>)>,
    pub ledger: Ledger,
    pub in_flight: HashSet<String>,
    /// When each document was last written.
    pub written: HashMap<String, chrono::DateTime<Utc>>,
    /// Client API keys of environments whose project does not ingest edge writes: their
    /// identity items written at the edge are the edge's own (foreign), not pending.
    pub ingestion_off: HashSet<String>,
}

/// What [`compare`] finds.
#[derive(Default)]
pub struct Comparison {
    pub drifts: Vec<Drift>,
    /// Extra items, to hand to their owners before a repair: (owner, ledger key).
    pub extras: Vec<(String, String)>,
    pub regions: Vec<RegionSummary>,
    pub pending_ingestion: Vec<PendingIngestion>,
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
    let deadline = deadline(options);
    let mut stage = Stage::open(pool).await?;
    let staged = compare_staged(&mut stage, pool, tables, ledger, regions, deadline).await;
    if let Err(e) = stage.close().await {
        tracing::warn!(error = %e, "closing verify's staging session");
    }
    let (mut report, mut found) = staged?;

    // A change committed during the scans, or still on its way to a region, looks like drift
    // for a moment. Look again at what drifted, after a pause: drift is what persists.
    if !found.drifts.is_empty() && !options.recheck_after.is_zero() {
        tokio::time::sleep(options.recheck_after).await;
        let again = recheck::snapshot(pool, tables, ledger, regions, &found.drifts).await?;
        let persisting = compare(&again, deadline);
        let before: HashSet<(String, String)> = found
            .drifts
            .iter()
            .map(|d| (d.region.clone(), d.item_key.clone()))
            .collect();
        report.transient_drifts = found.drifts.len();
        found.drifts = persisting
            .drifts
            .into_iter()
            .filter(|d| before.contains(&(d.region.clone(), d.item_key.clone())))
            .collect();
        report.transient_drifts -= found.drifts.len().min(report.transient_drifts);
        found.extras = persisting.extras;
    }

    report.drifts = found.drifts;
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
            &found.extras,
            &mut report.repair_failures,
        )
        .await
        .map(|n| report.repaired_documents = n)?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The first look: everything staged, then compared region by region.
async fn compare_staged(
    stage: &mut Stage,
    pool: &PgPool,
    tables: &TableNames,
    ledger: &aws_sdk_dynamodb::Client,
    regions: &[Region],
    deadline: chrono::DateTime<Utc>,
) -> Result<(Report, Comparison), VerifyError> {
    let (expected_items, unprojectable) = stage_expected(stage, pool).await?;
    let ledger_entries = stage_ledger(stage, ledger, &tables.acks).await?;
    tracing::info!(
        expected_items,
        ledger_entries,
        "verify: expected items and the ledger staged"
    );
    let ingestion_off = ingestion_off(pool).await?;
    let in_flight_documents = stage.in_flight_count().await?;
    let mut found = Comparison::default();
    for region in regions {
        stage.clear_observed().await?;
        let items = stage_region(stage, region, tables).await?;
        tracing::info!(region = %region.name, items, "verify: region staged; comparing");
        compare_staged_region(
            stage,
            &region.name,
            items,
            deadline,
            &ingestion_off,
            &mut found,
        )
        .await?;
    }
    let report = Report {
        expected_items,
        in_flight_documents,
        unprojectable,
        regions: std::mem::take(&mut found.regions),
        pending_ingestion: std::mem::take(&mut found.pending_ingestion),
        ..Report::default()
    };
    Ok((report, found))
}

/// Projects every document of Postgres into the stage; returns the number of distinct
/// expected items and the documents that could not be projected.
async fn stage_expected(
    stage: &mut Stage,
    pool: &PgPool,
) -> Result<(usize, Vec<String>), VerifyError> {
    let docs = expected::all_documents(pool).await?;
    let total = docs.len();
    let mut batches = Batches::new(pool, &docs);
    drop(docs);
    let mut failed = Vec::new();
    let mut rows: Vec<ExpectedRow> = Vec::new();
    let mut staged = 0;
    let mut logged = 0;
    while let Some(batch) = batches.next().await? {
        failed.extend(batch.failed);
        rows.extend(batch.items.into_iter().map(|(k, e)| (k, e.doc_key, e.hash)));
        if rows.len() >= STAGE_BATCH || batches.remaining() == 0 {
            stage.add_expected(&rows).await?;
            staged += rows.len();
            rows.clear();
        }
        if staged >= logged + PROGRESS_EVERY {
            logged = staged;
            tracing::info!(
                documents = total - batches.remaining(),
                of = total,
                items = staged,
                "verify: projecting Postgres"
            );
        }
    }
    if !rows.is_empty() {
        stage.add_expected(&rows).await?;
    }
    Ok((stage.expected_count().await?, failed))
}

/// Scans the ledger into the stage; returns how many entries it holds.
async fn stage_ledger(
    stage: &mut Stage,
    client: &aws_sdk_dynamodb::Client,
    table_name: &str,
) -> Result<usize, VerifyError> {
    let (tx, mut rx) = mpsc::channel::<Vec<acks::Ack>>(4);
    let scan = async move {
        scan_ledger(client, table_name, &tx).await?;
        Ok::<_, VerifyError>(())
    };
    let consume = async {
        let mut rows: Vec<LedgerRow> = Vec::new();
        let mut staged = 0;
        while let Some(page) = rx.recv().await {
            rows.extend(page.into_iter().map(|a| {
                let intent = a.region == acks::DELETE_INTENT;
                (
                    a.item_key.into(),
                    a.region.into(),
                    a.version,
                    a.removed,
                    a.recorded_at_ms,
                    if intent { a.doc_key.into() } else { "".into() },
                )
            }));
            if rows.len() >= STAGE_BATCH {
                staged += rows.len();
                stage.add_ledger(&rows).await?;
                rows.clear();
            }
        }
        staged += rows.len();
        stage.add_ledger(&rows).await?;
        Ok::<_, VerifyError>(staged)
    };
    let ((), staged) = tokio::try_join!(scan, consume)?;
    Ok(staged)
}

/// Scans one region's verified tables into the (emptied) stage; returns how many items it
/// holds.
async fn stage_region(
    stage: &mut Stage,
    region: &Region,
    tables: &TableNames,
) -> Result<usize, VerifyError> {
    let (tx, mut rx) = mpsc::channel::<Vec<(Box<str>, Observed)>>(8);
    let scan = async move {
        for kind in VERIFIED_TABLES {
            scan_table(&region.client, tables.name(kind), kind, &tx).await?;
        }
        Ok::<_, VerifyError>(())
    };
    let consume = async {
        let mut rows: Vec<ObservedRow> = Vec::new();
        let (mut staged, mut logged) = (0, 0);
        while let Some(page) = rx.recv().await {
            rows.extend(
                page.into_iter()
                    .map(|(k, o)| (k, o.version, o.doc_key, o.hash, o.corrupted)),
            );
            if rows.len() >= STAGE_BATCH {
                staged += rows.len();
                stage.add_observed(&rows).await?;
                rows.clear();
            }
            if staged >= logged + PROGRESS_EVERY {
                logged = staged;
                tracing::info!(region = %region.name, items = staged, "verify: scanning");
            }
        }
        stage.add_observed(&rows).await?;
        Ok::<_, VerifyError>(())
    };
    tokio::try_join!(scan, consume)?;
    Ok(stage.observed_count().await?)
}

/// The staged region against the staged expectations and ledger, key by key through the rule.
async fn compare_staged_region(
    stage: &mut Stage,
    region: &str,
    items: usize,
    deadline: chrono::DateTime<Utc>,
    ingestion_off: &HashSet<String>,
    found: &mut Comparison,
) -> Result<(), VerifyError> {
    let ctx = Context {
        region,
        deadline,
        retained_since: retained_since(),
        ingestion_off,
    };
    let mut summary = RegionSummary {
        name: region.to_string(),
        items,
        foreign: 0,
    };
    stage
        .for_each_key(region, acks::DELETE_INTENT, |row| {
            classify_staged(&ctx, row, found, &mut summary)
        })
        .await?;
    found.regions.push(summary);
    Ok(())
}

/// One key as the stage's join returns it, through the rule.
fn classify_staged(
    ctx: &Context<'_>,
    row: StagedKey,
    found: &mut Comparison,
    summary: &mut RegionSummary,
) {
    let expected = match (row.expected_doc, row.expected_hash) {
        (Some(doc_key), Some(hash)) => Some(ExpectedItem {
            table: table_of(&row.item_key),
            doc_key: doc_key.into(),
            hash: to_digest(&hash),
        }),
        _ => None,
    };
    let observed = row.observed.then(|| Observed {
        version: row.observed_version,
        doc_key: row.observed_doc.map(Into::into),
        hash: row.observed_hash.as_deref().map(to_digest),
        corrupted: row.observed_corrupted.map(Into::into),
    });
    let intent = match (row.intent_version, row.intent_recorded_at_ms) {
        (Some(version), Some(recorded_at_ms)) => Some(LedgerEntry {
            version,
            removed: true,
            recorded_at_ms,
            doc_key: row.intent_doc.unwrap_or_default().into(),
        }),
        _ => None,
    };
    let view = KeyView {
        key: &row.item_key,
        expected: expected.as_ref(),
        observed: observed.as_ref(),
        ack: row.ack,
        newest_ack: row.newest_ack,
        intent: intent.as_ref(),
        expected_in_flight: row.expected_in_flight,
        owner_in_flight: row.owner_in_flight,
        written_at: row.written_at,
    };
    classify(ctx, &view, found, summary);
}

fn table_of(item_key: &str) -> TableKind {
    item_key
        .split_once('|')
        .and_then(|(t, _)| TableKind::parse(t))
        .unwrap_or(TableKind::Environments)
}

fn to_digest(bytes: &[u8]) -> scan::Digest {
    let mut d = [0u8; 32];
    let n = bytes.len().min(32);
    d[..n].copy_from_slice(&bytes[..n]);
    d
}

/// Acknowledgements expire (TTL): a write older than their retention (less a day, for
/// expiry's lag) can no longer be checked against them.
fn retained_since() -> chrono::DateTime<Utc> {
    Utc::now() - chrono::Duration::seconds(acks::RETENTION_SECONDS - 86_400)
}

fn deadline(options: &Options) -> chrono::DateTime<Utc> {
    Utc::now()
        - chrono::Duration::from_std(options.ack_deadline).unwrap_or(chrono::Duration::zero())
}

/// Compares a snapshot as [`run`] compares everything: staged in Postgres, one region at a
/// time, the join streamed through the rule. Finds what [`compare`] finds (a test checks it).
pub async fn compare_staged_snapshot(
    pool: &PgPool,
    snap: &Snapshot,
    deadline: chrono::DateTime<Utc>,
) -> Result<Comparison, VerifyError> {
    let in_flight: Vec<String> = snap.in_flight.iter().cloned().collect();
    let written: Vec<(String, chrono::DateTime<Utc>)> =
        snap.written.iter().map(|(d, t)| (d.clone(), *t)).collect();
    let mut stage = Stage::open_given(pool, &in_flight, &written).await?;
    let expected: Vec<ExpectedRow> = snap
        .expected
        .iter()
        .map(|(k, e)| (k.clone(), e.doc_key.clone(), e.hash))
        .collect();
    stage.add_expected(&expected).await?;
    let ledger: Vec<LedgerRow> = snap
        .ledger
        .entries()
        .map(|(k, r, e)| {
            (
                k.into(),
                r.into(),
                e.version,
                e.removed,
                e.recorded_at_ms,
                e.doc_key.clone(),
            )
        })
        .collect();
    stage.add_ledger(&ledger).await?;
    let mut found = Comparison::default();
    for (region, observed) in &snap.observed {
        stage.clear_observed().await?;
        let rows: Vec<ObservedRow> = observed
            .iter()
            .map(|(k, o)| {
                (
                    k.clone(),
                    o.version,
                    o.doc_key.clone(),
                    o.hash,
                    o.corrupted.clone(),
                )
            })
            .collect();
        stage.add_observed(&rows).await?;
        let items = stage.observed_count().await?;
        compare_staged_region(
            &mut stage,
            region,
            items,
            deadline,
            &snap.ingestion_off,
            &mut found,
        )
        .await?;
    }
    stage.close().await?;
    Ok(found)
}

/// Compares a snapshot, without I/O. Writes older than `deadline` must be acknowledged.
pub fn compare(snap: &Snapshot, deadline: chrono::DateTime<Utc>) -> Comparison {
    let mut out = Comparison::default();
    for (region, observed) in &snap.observed {
        compare_region(snap, region, observed, deadline, &mut out);
    }
    out
}

/// Compares one region's items with the snapshot's expected items and ledger, in memory.
fn compare_region(
    snap: &Snapshot,
    region: &str,
    observed: &HashMap<Box<str>, Observed>,
    deadline: chrono::DateTime<Utc>,
    out: &mut Comparison,
) {
    let ctx = Context {
        region,
        deadline,
        retained_since: retained_since(),
        ingestion_off: &snap.ingestion_off,
    };
    let mut summary = RegionSummary {
        name: region.to_string(),
        items: observed.len(),
        foreign: 0,
    };
    let intents: HashMap<&str, &LedgerEntry> = snap.ledger.intents().collect();
    let keys: HashSet<&str> = snap
        .expected
        .keys()
        .chain(observed.keys())
        .map(|k| &**k)
        .chain(intents.keys().copied())
        .collect();
    for key in keys {
        let expected = snap.expected.get(key);
        let observed = observed.get(key);
        let view = KeyView {
            key,
            expected,
            observed,
            ack: snap.ledger.get(key, region).map(|a| a.version),
            newest_ack: snap.ledger.newest_ack(key),
            intent: intents.get(key).copied(),
            expected_in_flight: expected.is_some_and(|e| snap.in_flight.contains(&*e.doc_key)),
            owner_in_flight: observed
                .and_then(|o| o.doc_key.as_deref())
                .is_some_and(|d| snap.in_flight.contains(d)),
            written_at: expected.and_then(|e| snap.written.get(&*e.doc_key).copied()),
        };
        classify(&ctx, &view, out, &mut summary);
    }
    out.regions.push(summary);
}

pub(crate) async fn ingestion_off(pool: &PgPool) -> Result<HashSet<String>, sqlx::Error> {
    Ok(edge_ingest::switch::api_keys_without_ingestion(pool)
        .await?
        .into_iter()
        .collect())
}

pub(crate) async fn in_flight_documents(pool: &PgPool) -> Result<HashSet<String>, sqlx::Error> {
    Ok(crate::state::pending::all_keys(pool)
        .await?
        .into_iter()
        .collect())
}

/// When each of the documents was last written.
pub(crate) async fn written_documents(
    pool: &PgPool,
    docs: &[String],
) -> Result<HashMap<String, chrono::DateTime<Utc>>, sqlx::Error> {
    Ok(crate::state::documents::written_at_of(pool, docs)
        .await?
        .into_iter()
        .collect())
}

fn redacted_item_key<S: serde::Serializer>(key: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&edge_documents::redact::item_key(key))
}

/// Re-writes every drifting document; returns how many were re-written.
async fn repair<S: ItemStore>(
    replicator: &Replicator<S>,
    drifts: &[Drift],
    extras: &[(String, String)],
    failures: &mut Vec<String>,
) -> Result<usize, VerifyError> {
    let mut conn = replicator.pool().acquire().await?;
    for (owner, item_key) in extras {
        let Some((table, key)) = acks::key_of(item_key) else {
            failures.push(format!(
                "{}: not a ledger key",
                edge_documents::redact::item_key(item_key)
            ));
            continue;
        };
        let key: Value = serde_dynamo::aws_sdk_dynamodb_1::from_item(key).map_err(|e| {
            VerifyError::Scan(scan::ScanError {
                table: table.as_str().into(),
                message: e.to_string(),
            })
        })?;
        if owner.parse::<DocKey>().is_ok() {
            documents::ensure_many(&mut conn, std::slice::from_ref(owner)).await?;
            documents::record_items(&mut conn, owner, &[(table, key)]).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use edge_documents::acks::Ack;
    use scan::digest;

    fn expected(doc: &str, hash: &str) -> ExpectedItem {
        ExpectedItem {
            doc_key: doc.into(),
            table: TableKind::Environments,
            hash: digest(hash),
        }
    }

    fn observed(doc: Option<&str>, version: Option<i64>, hash: &str) -> Observed {
        Observed {
            version,
            doc_key: doc.map(Into::into),
            hash: version.map(|_| digest(hash)),
            corrupted: None,
        }
    }

    fn ack(key: &str, region: &str, version: i64) -> Ack {
        {
            Ack {
                item_key: key.into(),
                region: region.into(),
                version,
                doc_key: "d".into(),
                hash: String::new(),
                removed: false,
                source_time: String::new(),
                recorded_at_ms: 0,
                lag_ms: None,
            }
        }
    }

    fn kinds(c: &Comparison) -> Vec<(String, DriftKind)> {
        let mut k: Vec<(String, DriftKind)> = c
            .drifts
            .iter()
            .map(|d| (d.item_key.clone(), d.kind))
            .collect();
        k.sort();
        k
    }

    #[test]
    fn every_kind_of_drift_is_told_apart_and_the_rest_is_quiet() {
        let now = Utc::now();
        let long_ago = now - chrono::Duration::hours(1);
        let mut corrupted = observed(Some("environment:3"), Some(5), "h3");
        corrupted.corrupted = Some("hash mismatch".into());
        let snap = Snapshot {
            expected: HashMap::from([
                ("ok".into(), expected("environment:1", "h1")),
                ("missing".into(), expected("environment:2", "h2")),
                ("corrupted".into(), expected("environment:3", "h3")),
                ("stale".into(), expected("environment:4", "new")),
                ("older".into(), expected("environment:5", "h5")),
                ("unacked".into(), expected("environment:6", "h6")),
                ("moving".into(), expected("environment:7", "h7")),
                ("overwritten".into(), expected("environment:9", "h9")),
                ("identities|envA_alice".into(), expected("identity:1", "i1")),
                (
                    "environments_v2|7|identity_override:1:u".into(),
                    expected("identity:1", "o1"),
                ),
            ]),
            observed: vec![(
                "r".into(),
                HashMap::from([
                    ("ok".into(), observed(Some("environment:1"), Some(5), "h1")),
                    ("corrupted".into(), corrupted),
                    (
                        "stale".into(),
                        observed(Some("environment:4"), Some(5), "old"),
                    ),
                    (
                        "older".into(),
                        observed(Some("environment:5"), Some(4), "h5"),
                    ),
                    (
                        "unacked".into(),
                        observed(Some("environment:6"), Some(5), "h6"),
                    ),
                    (
                        "extra".into(),
                        observed(Some("environment:8"), Some(5), "h8"),
                    ),
                    ("foreign".into(), observed(None, None, "")),
                    ("overwritten".into(), observed(None, None, "")),
                    // Written at the edge: an identity core knows, one it does not yet, and
                    // one of a project whose ingestion is off.
                    ("identities|envA_alice".into(), observed(None, None, "")),
                    (
                        "environments_v2|7|identity_override:1:u".into(),
                        observed(None, None, ""),
                    ),
                    ("identities|envA_new".into(), observed(None, None, "")),
                    ("identities|envOff_bob".into(), observed(None, None, "")),
                ]),
            )],
            ledger: {
                let mut l = Ledger::default();
                l.insert(&ack("ok", "r", 5));
                l.insert(&ack("older", "r", 5));
                l
            },
            in_flight: HashSet::from(["environment:7".to_string()]),
            written: (1..=8)
                .map(|i| (format!("environment:{i}"), long_ago))
                .collect(),
            ingestion_off: HashSet::from(["envOff".to_string()]),
        };
        let c = compare(&snap, now - chrono::Duration::minutes(5));
        assert_eq!(
            kinds(&c),
            vec![
                ("corrupted".into(), DriftKind::Corrupted),
                ("extra".into(), DriftKind::Extra),
                ("missing".into(), DriftKind::Missing),
                ("older".into(), DriftKind::Stale),
                ("overwritten".into(), DriftKind::WrittenBySomeoneElse),
                ("stale".into(), DriftKind::Stale),
                ("unacked".into(), DriftKind::Unconfirmed),
            ]
        );
        let mut pending: Vec<&str> = c
            .pending_ingestion
            .iter()
            .map(|p| p.item_key.as_str())
            .collect();
        pending.sort();
        assert_eq!(
            pending,
            vec![
                "environments_v2|7|identity_override:1:u",
                "identities|envA_alice",
                "identities|envA_new"
            ]
        );
        assert_eq!(c.regions[0].foreign, 2);
        assert_eq!(c.extras.len(), 1);

        // Older than the acknowledgements' retention: no longer checked against them.
        let mut ancient = snap.clone();
        ancient.written = (1..=8)
            .map(|i| (format!("environment:{i}"), now - chrono::Duration::days(30)))
            .collect();
        let c = compare(&ancient, now - chrono::Duration::minutes(5));
        assert!(!kinds(&c).iter().any(|(_, k)| *k == DriftKind::Unconfirmed));

        // Within the deadline, a missing acknowledgement is not yet drift.
        let c = compare(&snap, long_ago - chrono::Duration::minutes(1));
        assert!(!kinds(&c).iter().any(|(_, k)| *k == DriftKind::Unconfirmed));
    }
}
