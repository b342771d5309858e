//! Backfill replays: re-project and re-write documents through the normal versioned path.
//!
//! Every document goes through the live path's procedure, in batches of `batch` documents
//! ([`Replicator::replicate_many_now`]): their locks (waited for, in key order), a fresh
//! snapshot of each, a version after the snapshots and conditional writes (in transactions
//! for a batch). A backfill can therefore run beside the live writer (and beside another
//! backfill) without ever writing something older than what is stored. Documents are taken
//! in key order, `concurrency` batches in flight (a sliding window: a slow batch does not
//! hold the others back), at most `rate` per second; the last key below which every
//! document is done is saved per scope in `edge.backfill_run`, so a stopped backfill
//! resumes where it stopped.
//!
//! `--dry-run` projects each document and compares it with DynamoDB item by item (by the
//! content hash the writer stores on every item), writing nothing.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use edge_documents::item::{encode, item_content_hash, stored_meta, ReplicationMeta};
use futures::stream::{self, StreamExt};
use serde_json::Value;
use sqlx::PgPool;

use crate::doc_key::DocKey;
use crate::failure_policy::error_chain;
use crate::migrate_identities::progress::Progress;
use crate::projection;
use crate::replicate::Replicator;
use crate::state::{backfill_runs, documents};
use crate::store::ItemStore;

/// Which documents to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One environment (its document and API key documents).
    Environment(i32),
    /// Every environment of a project, with their API key documents.
    Project(i32),
    /// Every environment and API key document.
    All,
    /// Every environment and API key document of the projects on the edge
    /// (`enable_dynamo_db`): what `writer bootstrap` writes. Other projects' documents are
    /// not touched at all.
    EdgeProjects,
    /// Every document (identities included) whose newest replicated change was captured at
    /// or after this time.
    Since(DateTime<Utc>),
    /// Every document the edge has or should have: every environment and API key, every
    /// identity of an edge project, and every document written before. What closes capture
    /// gaps (the given `edge.capture_gap` ids): changes made while capture was paused are
    /// not in the change log, so nothing narrower is known to hold them.
    Gap(Vec<i64>),
}

impl Scope {
    /// The key under which progress is saved.
    pub fn key(&self) -> String {
        match self {
            Scope::Environment(e) => format!("environment:{e}"),
            Scope::Project(p) => format!("project:{p}"),
            Scope::All => "all".into(),
            Scope::EdgeProjects => "bootstrap:edge-projects".into(),
            Scope::Since(t) => format!("since:{}", t.to_rfc3339()),
            Scope::Gap(ids) => format!(
                "gap:{}",
                ids.iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub dry_run: bool,
    /// Documents per second at most (None: as fast as it goes).
    pub rate: Option<f64>,
    /// Batches in flight.
    pub concurrency: usize,
    /// Documents written together (one lock transaction, one version, their writes in
    /// transactions, one commit).
    pub batch: usize,
    /// Start from the first document even if a stopped run left a cursor.
    pub restart: bool,
    /// Compare each document with DynamoDB first (as a dry run does) and re-write only those
    /// whose items are missing, differ, or lack the writer's attributes; the others go
    /// through the versioned path unforced, which leaves their items and versions as they
    /// are. `false`: every document is re-written with a new version (forced).
    pub only_differing: bool,
    /// A progress bar on a terminal (log lines every 5 s otherwise).
    pub progress_bar: bool,
}

/// Documents a backfill writes together, unless told otherwise.
pub const DEFAULT_BATCH: usize = 25;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    pub scope: String,
    pub dry_run: bool,
    pub resumed_after: Option<String>,
    pub documents: u64,
    /// Documents written (or, in a dry run, that would be written).
    pub written: u64,
    /// Documents whose items were already as projected: nothing was sent to DynamoDB.
    pub unchanged: u64,
    /// Items that differ from DynamoDB or are missing there (dry run).
    pub items_differing: u64,
    pub items_missing: u64,
    pub items_compared: u64,
    pub failed: u64,
    pub seconds: f64,
    pub documents_per_second: f64,
    /// The first failures: (document key, error).
    pub failures: Vec<(String, String)>,
    /// Documents that differ from DynamoDB (dry run), the first ones.
    pub differing: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("environment {0} does not exist")]
    NoEnvironment(i32),
    #[error("project {0} does not exist")]
    NoProject(i32),
    #[error("Postgres: {0}")]
    Db(#[from] sqlx::Error),
}

/// The documents of a scope, in key order.
pub async fn documents(pool: &PgPool, scope: &Scope) -> Result<Vec<String>, BackfillError> {
    let envs: Vec<i32> = match scope {
        Scope::Environment(e) => {
            let found: Option<i32> =
                sqlx::query_scalar("SELECT id FROM environments_environment WHERE id = $1")
                    .bind(e)
                    .fetch_optional(pool)
                    .await?;
            vec![found.ok_or(BackfillError::NoEnvironment(*e))?]
        }
        Scope::Project(p) => {
            let found: Option<i32> =
                sqlx::query_scalar("SELECT id FROM projects_project WHERE id = $1")
                    .bind(p)
                    .fetch_optional(pool)
                    .await?;
            found.ok_or(BackfillError::NoProject(*p))?;
            sqlx::query_scalar("SELECT id FROM environments_environment WHERE project_id = $1")
                .bind(p)
                .fetch_all(pool)
                .await?
        }
        Scope::All => {
            sqlx::query_scalar("SELECT id FROM environments_environment")
                .fetch_all(pool)
                .await?
        }
        Scope::EdgeProjects => {
            sqlx::query_scalar(
                "SELECT e.id FROM environments_environment e
                   JOIN projects_project p ON p.id = e.project_id
                  WHERE p.enable_dynamo_db",
            )
            .fetch_all(pool)
            .await?
        }
        Scope::Since(t) => {
            // Sorted here, not by the database's collation: the cursor compares bytes.
            let mut keys = documents::written_since(pool, *t).await?;
            keys.sort();
            return Ok(keys);
        }
        Scope::Gap(_) => return gap_documents(pool).await,
    };
    let keys: Vec<i32> = sqlx::query_scalar(
        "SELECT id FROM environments_environmentapikey WHERE environment_id = ANY($1)",
    )
    .bind(&envs)
    .fetch_all(pool)
    .await?;
    let mut docs: Vec<String> = envs
        .into_iter()
        .map(|e| DocKey::Environment(e).to_string())
        .chain(keys.into_iter().map(|k| DocKey::ApiKey(k).to_string()))
        .collect();
    docs.sort();
    Ok(docs)
}

/// [`Scope::Gap`]'s documents, in key order.
async fn gap_documents(pool: &PgPool) -> Result<Vec<String>, BackfillError> {
    let mut keys: Vec<String> = sqlx::query_scalar(
        "SELECT 'environment:' || id FROM environments_environment
         UNION SELECT 'api_key:' || id FROM environments_environmentapikey
         UNION SELECT 'identity:' || i.id
                 FROM environments_identity i
                 JOIN environments_environment e ON e.id = i.environment_id
                 JOIN projects_project p ON p.id = e.project_id
                WHERE p.enable_dynamo_db
",
    )
    .fetch_all(pool)
    .await?;
    // And every document written before, whatever core holds now.
    keys.extend(documents::all_keys(pool).await?);
    keys.sort();
    keys.dedup();
    Ok(keys)
}

pub async fn run<S: ItemStore>(
    replicator: &Replicator<S>,
    scope: &Scope,
    options: &Options,
) -> Result<Summary, BackfillError> {
    let started = Instant::now();
    let pool = replicator.pool();
    let scope_key = scope.key();
    let all = documents(pool, scope).await?;
    let cursor: Option<String> = if options.dry_run {
        None
    } else {
        backfill_runs::start(pool, &scope_key, options.restart).await?
    };
    let todo: Vec<String> = all
        .into_iter()
        .filter(|k| cursor.as_ref().is_none_or(|c| k > c))
        .collect();
    let mut summary = Summary {
        scope: scope_key.clone(),
        dry_run: options.dry_run,
        resumed_after: cursor,
        documents: todo.len() as u64,
        ..Summary::default()
    };
    tracing::info!(scope = %scope_key, documents = todo.len(), dry_run = options.dry_run,
        resumed_after = ?summary.resumed_after, "backfill started");

    // One tick per document, taken as its batch starts (the stream starts batches in order).
    let pacer = tokio::sync::Mutex::new(options.rate.filter(|r| *r > 0.0).map(|r| {
        let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    }));
    let mut progress = Progress::new(
        "documents",
        summary.documents,
        options.progress_bar,
        Duration::from_secs(5),
    );
    // A sliding window of `concurrency` batches in flight. Documents finish out of order;
    // the cursor saved is a low-water mark (every document at or below it is done), moved
    // once per `concurrency` documents done and at the end.
    let concurrency = options.concurrency.max(1);
    let batch = options.batch.max(1);
    let mut done_above: BTreeSet<usize> = BTreeSet::new();
    let mut low_water = 0usize; // documents todo[..low_water] are done
    let (mut saved_at, mut done_since_saved) = (0usize, 0i64);
    let results =
        stream::iter(todo.chunks(batch).enumerate())
            .then(|(c, keys)| {
                let pacer = &pacer;
                async move {
                    if let Some(p) = pacer.lock().await.as_mut() {
                        for _ in keys {
                            p.tick().await;
                        }
                    }
                    (c * batch, keys)
                }
            })
            .map(|(start, keys)| async move {
                (start, keys, replay_batch(replicator, keys, options).await)
            })
            .buffer_unordered(concurrency);
    let mut results = std::pin::pin!(results);
    while let Some((start, keys, batch_results)) = results.next().await {
        for (j, (key, result)) in keys.iter().zip(batch_results).enumerate() {
            let i = start + j;
            match result {
                Ok(r) => {
                    if r.written {
                        summary.written += 1;
                    } else {
                        summary.unchanged += 1;
                    }
                    summary.items_compared += r.compared;
                    summary.items_differing += r.differing;
                    summary.items_missing += r.missing;
                    if (r.differing > 0 || r.missing > 0) && summary.differing.len() < 50 {
                        summary.differing.push(key.clone());
                    }
                }
                Err(e) => {
                    tracing::warn!(doc = %key, error = %e, "backfill of a document failed; it is queued for the writer");
                    summary.failed += 1;
                    if summary.failures.len() < 50 {
                        summary.failures.push((key.clone(), e));
                    }
                }
            }
            progress.advance(1);
            done_since_saved += 1;
            done_above.insert(i);
        }
        while done_above.remove(&low_water) {
            low_water += 1;
        }
        let finished = low_water == todo.len();
        if !options.dry_run
            && low_water > saved_at
            && (low_water - saved_at >= concurrency || finished)
        {
            backfill_runs::advance(
                pool,
                &scope_key,
                &todo[low_water - 1],
                done_since_saved,
                summary.failed as i64,
            )
            .await?;
            saved_at = low_water;
            done_since_saved = 0;
        }
    }
    progress.finish();
    if !options.dry_run {
        backfill_runs::finish(pool, &scope_key).await?;
    }
    summary.seconds = started.elapsed().as_secs_f64();
    summary.documents_per_second = summary.documents as f64 / summary.seconds.max(1e-9);
    Ok(summary)
}

struct DocResult {
    written: bool,
    compared: u64,
    differing: u64,
    missing: u64,
}

/// One batch of documents, each one's result in order.
async fn replay_batch<S: ItemStore>(
    replicator: &Replicator<S>,
    keys: &[String],
    options: &Options,
) -> Vec<Result<DocResult, String>> {
    let mut out: Vec<Option<Result<DocResult, String>>> = keys.iter().map(|_| None).collect();
    // Documents to write, forced or not, with their slots in `out`.
    let mut forced: Vec<(usize, DocKey)> = Vec::new();
    let mut unforced: Vec<(usize, DocKey)> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let doc: DocKey = match key.parse() {
            Ok(doc) => doc,
            Err(e) => {
                out[i] = Some(Err(error_chain(&e)));
                continue;
            }
        };
        if !(options.dry_run || options.only_differing) {
            forced.push((i, doc));
            continue;
        }
        match compare_with_store(replicator, doc, key).await {
            Err(e) => out[i] = Some(Err(e)),
            Ok(c) if options.dry_run => {
                out[i] = Some(Ok(DocResult {
                    written: c.differing > 0 || c.missing > 0,
                    compared: c.compared,
                    differing: c.differing,
                    missing: c.missing,
                }))
            }
            Ok(c) if c.differing > 0 || c.missing > 0 || c.foreign > 0 => forced.push((i, doc)),
            Ok(_) => unforced.push((i, doc)),
        }
    }
    for (group, force) in [(forced, true), (unforced, false)] {
        if group.is_empty() {
            continue;
        }
        let docs: Vec<DocKey> = group.iter().map(|(_, d)| *d).collect();
        let results = replicator.replicate_many_now(&docs, force).await;
        for ((i, _), result) in group.into_iter().zip(results) {
            out[i] = Some(
                result
                    .map(|outcome| DocResult {
                        written: outcome.written > 0 || outcome.deleted > 0,
                        compared: 0,
                        differing: 0,
                        missing: 0,
                    })
                    .map_err(|e| error_chain(&e)),
            );
        }
    }
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err("not replayed".into())))
        .collect()
}

/// A document's projection compared with DynamoDB, item by item.
struct Compared {
    compared: u64,
    /// Content differs from the projection.
    differing: u64,
    missing: u64,
    /// Content as projected, but without the writer's attributes (written by someone else).
    foreign: u64,
}

/// Projects `doc` in a snapshot and compares it with DynamoDB by content hash, writing
/// nothing.
async fn compare_with_store<S: ItemStore>(
    replicator: &Replicator<S>,
    doc: DocKey,
    key: &str,
) -> Result<Compared, String> {
    let mut conn = replicator
        .pool()
        .acquire()
        .await
        .map_err(|e| e.to_string())?;
    let projected = projection::project(&mut conn, doc)
        .await
        .map_err(|e| format!("{key}: {e}"))?;
    drop(conn);
    let meta = ReplicationMeta {
        version: 0,
        source_time: String::new(),
        doc_key: key.to_string(),
    };
    let mut c = Compared {
        compared: 0,
        differing: 0,
        missing: 0,
        foreign: 0,
    };
    for d in &projected.items {
        let threshold = d
            .compressible
            .then_some(replicator.settings().compress_above_bytes);
        let encoded = encode(&d.body, &meta, threshold).map_err(|e| format!("{key}: {e}"))?;
        let item_key = serde_dynamo::aws_sdk_dynamodb_1::to_item(Value::Object(d.key.clone()))
            .map_err(|e| e.to_string())?;
        let stored = replicator
            .store()
            .get(d.table, item_key)
            .await
            .map_err(|e| e.to_string())?;
        c.compared += 1;
        match stored {
            None => c.missing += 1,
            Some(item) => {
                let stored_hash = item_content_hash(&item).ok();
                if stored_hash.as_deref() != Some(encoded.hash.as_str()) {
                    c.differing += 1;
                } else if stored_meta(&item).is_err() {
                    c.foreign += 1;
                }
            }
        }
    }
    Ok(c)
}
