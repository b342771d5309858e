//! Migrating one page of identities: the write procedure of the live path
//! ([`Replicator::replicate_locked`]: snapshot, version, plans, item keys, writes, bookkeeping)
//! applied to the page as one batch, with BatchWriteItem under leases as its write step
//! ([`crate::bulk_write`]). What is the page's own is which locks it takes and what it leaves
//! to the live path.
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

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;

use crate::bulk_write::BulkSettings;
use crate::doc_key::DocKey;
use crate::failure_policy::{classify_sqlx, error_chain, FailureKind};
use crate::replicate::{Job, Queued, ReplicateError, Replicator, WriteStep};
use crate::state::documents::{self, LockedDoc};
use crate::state::{dead_letters, pending};
use crate::store::ItemStore;

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

impl PageSettings {
    fn bulk(&self) -> BulkSettings {
        BulkSettings {
            lease: self.lease,
            late_writes: self.late_writes,
            batch_concurrency: self.batch_concurrency,
        }
    }
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
    /// A step the page's identities share failed (the snapshot, the bookkeeping, the
    /// batch writes).
    #[error(transparent)]
    Write(#[from] ReplicateError),
}

impl PageError {
    /// Whether retrying the page may help.
    pub fn is_transient(&self) -> bool {
        match self {
            PageError::Db(e) => classify_sqlx(e) == FailureKind::Transient,
            PageError::Write(e) => e.kind() == FailureKind::Transient,
        }
    }

    /// Whether the page's batches may still land: its leases were left to settle.
    pub fn left_leases(&self) -> bool {
        match self {
            PageError::Write(ReplicateError::Bulk { source, .. }) => source.left_leases(),
            _ => false,
        }
    }
}

/// Migrates the identities `ids` (sorted). Returns what it did; on error nothing of the
/// page is recorded and it can be retried.
pub async fn migrate_page<S: ItemStore>(
    replicator: &Replicator<S>,
    settings: &PageSettings,
    ids: &[i32],
) -> Result<PageStats, PageError> {
    let pool = replicator.pool();
    let mut stats = PageStats::default();
    let t0 = std::time::Instant::now();
    let keys: Vec<String> = ids
        .iter()
        .map(|i| DocKey::Identity(*i).to_string())
        .collect();

    // The lock rows exist first (committed), then the locks: an identity whose lock is held
    // is being written by the live path right now, and is left to it.
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
    // Under a lease, or one that has not settled: the live path's (it waits, or writes the
    // identity in full twice).
    deferred.extend(
        locked
            .iter()
            .filter(|l| l.leased)
            .map(|l| l.doc_key.clone()),
    );
    let jobs: Vec<Job> = locked
        .iter()
        .filter(|l| !l.leased)
        .filter_map(|l| job_of(l, settings.rewrite_unchanged))
        .collect();

    let bulk = settings.bulk();
    let results = match replicator
        .replicate_locked(&mut lock, &jobs, WriteStep::Bulk(&bulk))
        .await
    {
        Ok(results) => results,
        Err(e) => {
            // Releases the locks; nothing of this attempt is recorded.
            let _ = lock.rollback().await;
            return Err(e.into());
        }
    };
    lock.commit().await?;

    let mut parked: Vec<(String, FailureKind, String)> = Vec::new();
    for result in results {
        match result {
            Ok(outcome) if outcome.unchanged => stats.unchanged += 1,
            Ok(outcome) => {
                stats.migrated += 1;
                stats.items += outcome.written as u64;
            }
            Err(ReplicateError::Deferred { doc_key }) => deferred.push(doc_key),
            // A document's own bad data (it cannot be projected, or its item is too large):
            // parked at once, as the live path parks it.
            Err(e) => {
                let doc_key = match &e {
                    ReplicateError::Projection { doc_key, .. }
                    | ReplicateError::Item { doc_key, .. } => doc_key.clone(),
                    // The procedure returns nothing else per document for this step.
                    _ => return Err(PageError::Write(e)),
                };
                parked.push((doc_key, e.kind(), error_chain(&e)));
            }
        }
    }

    // Left to the live path: queued, so they are written even if nothing else changes.
    pending::schedule_many(&mut side, &deferred, Utc::now()).await?;
    for (key, kind, reason) in &parked {
        tracing::warn!(doc = %key, kind = kind.as_str(), reason = %reason, "identity skipped into dead letters");
        dead_letters::park(pool, key, kind.as_str(), reason, 1).await?;
    }

    tracing::debug!(
        first = ids[0],
        identities = ids.len(),
        ms = t0.elapsed().as_millis() as u64,
        "page migrated"
    );
    stats.deferred = deferred.len() as u64;
    stats.skipped = parked.into_iter().map(|(k, _, r)| (k, r)).collect();
    Ok(stats)
}

/// The procedure's job for a locked identity (None: not an identity's key).
fn job_of(l: &LockedDoc, rewrite_unchanged: bool) -> Option<Job> {
    let doc: DocKey = l.doc_key.parse().ok()?;
    Some(Job {
        doc,
        doc_key: l.doc_key.clone(),
        state: l.state(),
        queued: Queued {
            seq: l.pending_seq,
            first_change_at: l.first_change_at,
            last_change_at: l.last_change_at,
        },
        force: rewrite_unchanged,
    })
}
