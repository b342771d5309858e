//! Migrating one page of identities: lock, snapshot, version, lease, batch write, bookkeeping.
//!
//! How a page keeps the invariants of the design while the core API and the live writer
//! keep writing:
//!
//! - **Serialised with the live path.** The page's `edge.document` rows are locked
//!   (`FOR NO KEY UPDATE ... SKIP LOCKED`) in a lock transaction before anything is read. An
//!   identity whose lock is held elsewhere is being written by the live path right now, with
//!   a newer snapshot than ours could be: it is left to the live path (queued, counted as
//!   deferred), never waited for.
//! - **Snapshot after the lock, version after the snapshot.** As in the live path: every
//!   change committed before the lock is in the snapshot, and any later writer of these
//!   identities has both a newer snapshot and a higher version.
//! - **Unconditional batch writes made safe.** BatchWriteItem takes no condition. While the
//!   locks are held nobody else writes these documents, and a late conditional write from a
//!   live writer that lost its lock carries a lower version and is refused after ours lands.
//!   The remaining hole is ours: a batch request that DynamoDB has received can be applied
//!   after we gave up on it (the page timed out, the connection broke, the job was killed),
//!   and if a newer version was written meanwhile, ours would overwrite it. So before
//!   writing, a lease per document is committed on another connection
//!   (`edge.write_lease`), with two times: writers wait for `until` to pass (the batches
//!   are abandoned at half of it), and `settled_at`, `late_writes` later, is when an
//!   abandoned batch is taken to have landed or gone. A writer of the document between the
//!   two writes every item and writes them again after `settled_at` (the live path, see
//!   `replicate`); this job leaves such documents to the live path and writes every item of
//!   one whose lease has settled. Batches are never sent again by the SDK after a timeout,
//!   and the leases are released early only when every request was answered.
//! - **Progress only after the write.** Bookkeeping (versions, hashes, the queue rows the
//!   snapshot covered, the leases) commits in the lock transaction after every batch was
//!   accepted. A crash before that commit leaves the items written with a version the
//!   writer never recorded; the next writer of each identity writes a higher one.
//! - **Items recorded before they are written**, as in the live path, so an identity whose
//!   key later moves (an api_key change) has its old items deleted.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use edge_documents::item::{Item, ItemError, ReplicationMeta};
use edge_documents::tables::TableKind;
use futures::stream::{self, StreamExt};
use serde_json::Value;
use sqlx::{Acquire, PgPool};

use crate::doc_key::DocKey;
use crate::failure_policy::{classify_sqlx, error_chain, FailureKind};
use crate::projection::environment::iso;
use crate::projection::{self, load, Projected, ProjectionError};
use crate::state::documents::{self, LockedDoc};
use crate::state::{dead_letters, leases, pending};
use crate::store::{BatchPutError, ItemStore, BATCH_MAX_ITEMS};
use crate::write_plan::{document_hash, encode_all};

/// Tuning of a page.
#[derive(Debug, Clone)]
pub struct PageSettings {
    /// Bulk-write lease per document; batches are abandoned after half of it.
    pub lease: Duration,
    /// How long after a lease ends a batch abandoned under it may still be applied by
    /// DynamoDB: the lease settles then (see the module's documentation).
    pub late_writes: Duration,
    /// BatchWriteItem calls in flight per page.
    pub batch_concurrency: usize,
    /// Write documents whose content equals what was last written, too.
    pub rewrite_unchanged: bool,
}

/// What one page did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageStats {
    /// Identities written.
    pub migrated: u64,
    /// Identities whose content was already written.
    pub unchanged: u64,
    /// Identities parked in dead letters (bad data), with their reasons.
    pub skipped: Vec<(String, String)>,
    /// Identities left to the live path (locked by it, leased, or with items to delete).
    pub deferred: u64,
    /// Items sent to DynamoDB.
    pub items: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("Postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Store(#[from] BatchPutError),
    #[error(
        "batch writes did not finish within {0:?}; the page's leases are left to end and settle"
    )]
    TimedOut(Duration),
}

impl PageError {
    /// Whether retrying the page may help.
    pub fn is_transient(&self) -> bool {
        match self {
            PageError::Db(e) => classify_sqlx(e) == FailureKind::Transient,
            PageError::Store(e) => e.error.retryable,
            PageError::TimedOut(_) => true,
        }
    }

    /// Whether the page's batches may still land: its leases were left to settle.
    pub fn left_leases(&self) -> bool {
        match self {
            PageError::Db(_) => false,
            PageError::Store(e) => e.unanswered,
            PageError::TimedOut(_) => true,
        }
    }
}

struct ToWrite {
    doc_key: String,
    hash: Option<String>,
    next_change_at: Option<DateTime<Utc>>,
    pending_seq: Option<i64>,
    items: Vec<(TableKind, Value, Item)>,
}

/// Migrates the identities `ids` (sorted). Returns what it did; on error nothing of the
/// page is recorded and it can be retried.
pub async fn migrate_page<S: ItemStore>(
    pool: &PgPool,
    store: &S,
    settings: &PageSettings,
    ids: &[i32],
) -> Result<PageStats, PageError> {
    let mut stats = PageStats::default();
    let t0 = std::time::Instant::now();
    let keys: Vec<String> = ids
        .iter()
        .map(|i| DocKey::Identity(*i).to_string())
        .collect();

    // The lock rows exist first (committed), then the locks.
    let mut side = pool.acquire().await?;
    documents::ensure_many(&mut side, &keys).await?;
    let mut lock = pool.begin().await?;
    let locked = documents::lock_many_skip_locked(&mut lock, &keys).await?;
    let mut deferred: Vec<String> = {
        let got: HashSet<&str> = locked.iter().map(|l| l.doc_key.as_str()).collect();
        keys.iter()
            .filter(|k| !got.contains(k.as_str()))
            .cloned()
            .collect()
    };
    deferred.extend(
        locked
            .iter()
            .filter(|l| l.leased)
            .map(|l| l.doc_key.clone()),
    );
    let locked: Vec<LockedDoc> = locked.into_iter().filter(|l| !l.leased).collect();
    // An earlier page's lease ended unreleased and has settled: DynamoDB may hold that page's
    // batch, whatever the recorded hash says, so these are written in full.
    let rewrite: HashSet<&str> = locked
        .iter()
        .filter(|l| l.lease_settled)
        .map(|l| l.doc_key.as_str())
        .collect();

    // One snapshot for the page, begun after the locks were taken.
    let locked_ids: Vec<i32> = locked
        .iter()
        .filter_map(|l| match l.doc_key.parse() {
            Ok(DocKey::Identity(id)) => Some(id),
            _ => None,
        })
        .collect();
    let (snapshot_time, rows) = load::identities_at(&mut side, &locked_ids).await?;
    let version = documents::next_version(&mut lock).await?;
    let t_snapshot = t0.elapsed();

    let mut projected: HashMap<String, Result<Projected, String>> = rows
        .iter()
        .map(|r| {
            let key = DocKey::Identity(r.identity.id).to_string();
            let p = projection::identity_projected(r).map_err(|e| match e {
                ProjectionError::InvalidData(m) => m,
                other => other.to_string(),
            });
            (key, p)
        })
        .collect();
    let locked_keys: Vec<&str> = locked.iter().map(|l| l.doc_key.as_str()).collect();
    let recorded = documents::live_items_of_many(&mut lock, &locked_keys).await?;

    let mut to_write: Vec<ToWrite> = Vec::new();
    let mut unchanged: Vec<(String, Option<i64>)> = Vec::new();
    let mut parked: Vec<(String, &'static str, String)> = Vec::new();
    for l in &locked {
        let projection = projected.remove(&l.doc_key).unwrap_or_else(|| {
            // The identity is gone since the page was listed.
            Ok(Projected {
                items: vec![],
                next_change_at: None,
                snapshot_time,
            })
        });
        let p = match projection {
            Ok(p) => p,
            Err(reason) => {
                parked.push((l.doc_key.clone(), FailureKind::InvalidData.as_str(), reason));
                continue;
            }
        };
        let desired: HashSet<(TableKind, String)> = p
            .items
            .iter()
            .map(|d| (d.table, Value::Object(d.key.clone()).to_string()))
            .collect();
        let has_stale = recorded
            .get(&l.doc_key)
            .is_some_and(|r| r.iter().any(|k| !desired.contains(k)));
        if has_stale {
            // Items to delete (a moved key, a removed override): the live path's job.
            deferred.push(l.doc_key.clone());
            continue;
        }
        if p.items.is_empty() {
            unchanged.push((l.doc_key.clone(), l.pending_seq));
            continue;
        }
        let meta = ReplicationMeta {
            version,
            source_time: iso(snapshot_time),
            doc_key: l.doc_key.clone(),
        };
        let encoded = match encode_all(&p.items, &meta, usize::MAX) {
            Ok(e) => e,
            Err(e) => {
                let kind = match e {
                    ItemError::TooLarge { .. } | ItemError::TooLargeUncompressible { .. } => {
                        FailureKind::TooLarge
                    }
                    _ => FailureKind::InvalidData,
                };
                parked.push((l.doc_key.clone(), kind.as_str(), error_chain(&e)));
                continue;
            }
        };
        let hash = document_hash(&encoded);
        if hash == l.content_hash
            && !settings.rewrite_unchanged
            && !rewrite.contains(l.doc_key.as_str())
        {
            unchanged.push((l.doc_key.clone(), l.pending_seq));
            continue;
        }
        to_write.push(ToWrite {
            doc_key: l.doc_key.clone(),
            hash,
            next_change_at: p.next_change_at,
            pending_seq: l.pending_seq,
            items: encoded
                .into_iter()
                .map(|(d, e)| (d.table, Value::Object(d.key), e.item))
                .collect(),
        });
    }

    let t_projected = t0.elapsed();
    // Record the items and take the leases (committed before any write).
    let write_keys: Vec<String> = to_write.iter().map(|w| w.doc_key.clone()).collect();
    if !to_write.is_empty() {
        let rows: Vec<(&str, TableKind, &Value)> = to_write
            .iter()
            .flat_map(|w| w.items.iter().map(|(t, k, _)| (w.doc_key.as_str(), *t, k)))
            .collect();
        let mut tx = side.begin().await?;
        documents::record_items_of_many(&mut tx, &rows).await?;
        leases::take(&mut tx, &write_keys, settings.lease, settings.late_writes).await?;
        tx.commit().await?;
    }

    // The writes: batches of 25 in parallel; every batch finishes (or the deadline passes)
    // before this returns, so nothing is left in flight unless the deadline passed.
    // The items move into the batches (bookkeeping needs only the documents' keys).
    let mut batches: Vec<Vec<(TableKind, Item)>> = Vec::new();
    let mut batch = Vec::with_capacity(BATCH_MAX_ITEMS);
    for w in to_write.iter_mut() {
        for (table, _, item) in w.items.drain(..) {
            stats.items += 1;
            batch.push((table, item));
            if batch.len() == BATCH_MAX_ITEMS {
                batches.push(std::mem::replace(
                    &mut batch,
                    Vec::with_capacity(BATCH_MAX_ITEMS),
                ));
            }
        }
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    let t_recorded = t0.elapsed();
    let deadline = settings.lease / 2;
    let results = tokio::time::timeout(
        deadline,
        stream::iter(batches)
            .map(|b| store.batch_put(b))
            .buffer_unordered(settings.batch_concurrency.max(1))
            .collect::<Vec<_>>(),
    )
    .await;
    let results = match results {
        Ok(r) => r,
        Err(_) => {
            // Batches may still land: the leases stay, to end and settle.
            let _ = lock.rollback().await;
            return Err(PageError::TimedOut(deadline));
        }
    };
    let errors: Vec<BatchPutError> = results.into_iter().filter_map(Result::err).collect();
    if let Some(err) = errors.first() {
        let _ = lock.rollback().await;
        // Every batch has returned; unless a request went unanswered, nothing can land
        // later, and the leases can go now.
        if !errors.iter().any(|e| e.unanswered) {
            leases::release(&mut side, &write_keys).await?;
        }
        let err = errors.iter().find(|e| e.unanswered).unwrap_or(err).clone();
        return Err(err.into());
    }
    crate::failpoint::crash_point(crate::failpoint::AFTER_DYNAMODB_WRITE);

    let t_written = t0.elapsed();
    // Bookkeeping, in the lock transaction.
    if !to_write.is_empty() {
        let hashes: Vec<Option<&str>> = to_write.iter().map(|w| w.hash.as_deref()).collect();
        let nexts: Vec<Option<DateTime<Utc>>> = to_write.iter().map(|w| w.next_change_at).collect();
        documents::record_writes(
            &mut lock,
            &write_keys,
            &hashes,
            &nexts,
            version,
            snapshot_time,
        )
        .await?;
        leases::release(&mut lock, &write_keys).await?;
        for w in &to_write {
            if let Some(at) = w.next_change_at {
                pending::schedule(&mut lock, &w.doc_key, at).await?;
            }
        }
    }
    // Queue rows that the snapshot covered are done (unless a change arrived since).
    let (done_keys, done_seqs): (Vec<&str>, Vec<i64>) = to_write
        .iter()
        .map(|w| (w.doc_key.as_str(), w.pending_seq))
        .chain(unchanged.iter().map(|(k, s)| (k.as_str(), *s)))
        .filter_map(|(k, s)| s.map(|s| (k, s)))
        .unzip();
    pending::complete_many(&mut lock, &done_keys, &done_seqs).await?;
    let cleared: Vec<&str> = to_write
        .iter()
        .map(|w| w.doc_key.as_str())
        .chain(unchanged.iter().map(|(k, _)| k.as_str()))
        .collect();
    dead_letters::clear_many(&mut lock, &cleared).await?;
    lock.commit().await?;

    // Left to the live path: queued, so they are written even if nothing else changes.
    pending::schedule_many(&mut side, &deferred, Utc::now()).await?;
    for (key, kind, reason) in &parked {
        tracing::warn!(doc = %key, kind, reason = %reason, "identity skipped into dead letters");
        dead_letters::park(pool, key, kind, reason, 1).await?;
    }

    tracing::debug!(
        first = ids[0],
        identities = ids.len(),
        lock_and_snapshot_ms = t_snapshot.as_millis() as u64,
        project_ms = (t_projected - t_snapshot).as_millis() as u64,
        record_ms = (t_recorded - t_projected).as_millis() as u64,
        write_ms = (t_written - t_recorded).as_millis() as u64,
        bookkeeping_ms = (t0.elapsed() - t_written).as_millis() as u64,
        "page migrated"
    );
    stats.migrated = to_write.len() as u64;
    stats.unchanged = unchanged.len() as u64;
    stats.deferred = deferred.len() as u64;
    stats.skipped = parked.into_iter().map(|(k, _, r)| (k, r)).collect();
    Ok(stats)
}
