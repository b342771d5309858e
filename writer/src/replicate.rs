//! Replicating one document, or a batch of them: lock, snapshot, version, conditional write,
//! bookkeeping. A batch (identity documents of a fan-out storm, [`Replicator::replicate_due`])
//! is the same procedure with each step done once for all of its documents: every lock is
//! taken by the claim, then one snapshot, one version, one statement recording the item keys,
//! the documents' writes (or, with `batch_transactions`, transactions of them,
//! [`crate::transact_write`]), and the bookkeeping of every document in one statement
//! before one commit. Backfills take batches the same way,
//! waiting for the locks in key order ([`Replicator::replicate_many_now`]).
//!
//! How this keeps the invariants of the design (for each document of a batch):
//!
//! - **Serialised per document.** The document's `edge.document` row is locked
//!   (`FOR NO KEY UPDATE`) in a READ COMMITTED transaction (the *lock transaction*) before
//!   anything is read, and held until the bookkeeping commits.
//! - **One snapshot.** The core rows are read on a second connection, in a REPEATABLE READ
//!   READ ONLY transaction begun *after* the lock was taken, so the snapshot includes every
//!   commit of every earlier holder and every change that was queued before the claim.
//! - **Version after the snapshot.** The version comes from one global sequence, taken on the
//!   lock connection after the snapshot. A later lock holder therefore always has both a newer
//!   snapshot and a higher version, even when the earlier holder lost its connection (and so
//!   its lock) with a write still in flight: that late write carries the lower version and
//!   DynamoDB's condition refuses it.
//! - **Conditional writes.** Puts apply only over an older version; deletes only to our own
//!   older item. A transaction of a batch's puts keeps each item's condition, and applies
//!   none of them if one fails. A delete cannot carry its version forward (the item is
//!   gone), so a late put could resurrect it; every applied delete is re-checked after the
//!   longest time a write can be in flight ([`Settings::delete_recheck_after`]), durably, through the queue.
//! - **Bulk writes settle.** The identity migration writes without conditions, under a lease
//!   per document (`edge.write_lease`): a document whose lease has not ended is not written
//!   (retried after it). One whose lease ended without being released may still receive a
//!   batch its job abandoned, until the lease settles: it is written in full, then again
//!   once the lease has settled, and that write removes the lease ([`crate::state::leases`]).
//! - **Progress only after a durable write.** The queue row is removed, and the state
//!   advanced, in the lock transaction after DynamoDB accepted every write. A crash anywhere
//!   before that commit leaves the queue row: the document is projected again (with a new
//!   snapshot and a higher version), which at worst rewrites the same content.
//! - **Items written are known.** The items a write will touch are recorded (and committed)
//!   before the write, so an item whose key later changes is found and deleted even if the
//!   writer died before its bookkeeping.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use edge_documents::item::{Item, ItemError};
use edge_documents::tables::TableKind;
use futures::future::{join_all, BoxFuture};
use futures::stream::{self, StreamExt};
use serde_json::Value;
use sqlx::{Acquire, PgConnection, PgPool};

use crate::bulk_write::{self, BulkError, BulkSettings};
use crate::doc_key::{DocKey, InvalidDocKey};
use crate::failure_policy::{self, classify_sqlx, error_chain, Decision, FailureKind, RetryPolicy};
use crate::metrics as m;
use crate::projection::{self, ProjectionError};
use crate::state::documents::{self, DocState};
use crate::state::{dead_letters, foreign, leases, pending};
use crate::store::{Guard, ItemStore, StoreError, WriteOutcome};
use crate::transact_write;
use crate::write_plan::{self, Removals, WritePlan};

/// Tuning of the replication of one document.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Environment and `_META` items above this size are written compressed.
    pub compress_above_bytes: usize,
    /// Delay before an applied delete is checked again (longer than a write can be in flight).
    pub delete_recheck_after: Duration,
    /// Attempts before a document that keeps failing with an unclassified error is parked.
    /// Transient errors (DynamoDB or Postgres unreachable, throttling) are retried forever.
    pub max_attempts: i32,
    /// Backoff between failed attempts: doubles from `retry_base` up to `retry_cap`, with
    /// full jitter.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// How long `sync` waits for a document's lock.
    pub lock_timeout: Duration,
    /// How long an identity item someone else wrote may wait for a stream consumer to ingest
    /// it before the writer ingests it itself (with the time it first found it).
    pub ingest_grace: Duration,
    /// Write the documents of a batch in TransactWriteItems calls (conditional, twice the
    /// write capacity of their puts) rather than one PutItem per item.
    pub batch_transactions: bool,
}

impl Settings {
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            retry_base: self.retry_base,
            retry_cap: self.retry_cap,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            compress_above_bytes: edge_documents::item::DEFAULT_COMPRESS_ABOVE_BYTES,
            delete_recheck_after: Duration::from_secs(120),
            max_attempts: 5,
            retry_base: Duration::from_millis(500),
            retry_cap: Duration::from_secs(60),
            lock_timeout: Duration::from_secs(30),
            ingest_grace: Duration::from_secs(60),
            batch_transactions: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    #[error("{doc_key}: {source}")]
    Projection {
        doc_key: String,
        #[source]
        source: ProjectionError,
    },
    #[error("{source}")]
    Item {
        doc_key: String,
        #[source]
        source: ItemError,
    },
    #[error("{doc_key}: {source}")]
    Store {
        doc_key: String,
        #[source]
        source: StoreError,
    },
    #[error("{doc_key}: writer state in Postgres: {source}")]
    State {
        doc_key: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(transparent)]
    InvalidKey(#[from] InvalidDocKey),
    /// The document's identity item was written by someone else (the edge) and its content
    /// has not reached core yet: it is not replaced; the document waits for ingestion.
    #[error("{doc_key}: the identity item was written at the edge and is not ingested into core yet; waiting for ingestion")]
    Foreign {
        doc_key: String,
        /// The item found (None: it changed or vanished meanwhile).
        item: Option<Box<Item>>,
    },
    /// Committing the bookkeeping failed: the writes are done, progress is not recorded
    /// (the document is written again, at a higher version).
    #[error("writer state in Postgres: commit: {source}")]
    Commit {
        #[source]
        source: sqlx::Error,
    },
    /// A step that the documents of a batch share failed (its error is the source).
    #[error("{doc_key}: a step of its batch failed: {source}")]
    Batch {
        doc_key: String,
        #[source]
        source: Arc<ReplicateError>,
    },
    /// The bulk write step failed for the batch (its source says whether batches may still
    /// land, under the leases).
    #[error("{doc_key}: {source}")]
    Bulk {
        doc_key: String,
        #[source]
        source: BulkError,
    },
    /// The bulk write step leaves the document to the live path: it has items to delete.
    #[error("{doc_key}: items to delete; left to the live path")]
    Deferred { doc_key: String },
    /// A bulk writer that died may still have a write in flight for the document.
    #[error("{doc_key}: a bulk write lease holds the document until {until}; retrying after it")]
    Leased {
        doc_key: String,
        until: DateTime<Utc>,
    },
}

impl ReplicateError {
    pub fn kind(&self) -> FailureKind {
        match self {
            ReplicateError::Projection { source, .. } => match source {
                ProjectionError::InvalidData(_) => FailureKind::InvalidData,
                ProjectionError::Db(e) => classify_sqlx(e),
            },
            ReplicateError::Item { source, .. } => match source {
                ItemError::TooLarge { .. } | ItemError::TooLargeUncompressible { .. } => {
                    FailureKind::TooLarge
                }
                _ => FailureKind::InvalidData,
            },
            ReplicateError::Store { source, .. } => {
                if source.retryable {
                    FailureKind::Transient
                } else {
                    FailureKind::Rejected
                }
            }
            ReplicateError::State { source, .. } => classify_sqlx(source),
            ReplicateError::InvalidKey(_) => FailureKind::InvalidData,
            ReplicateError::Leased { .. } => FailureKind::Transient,
            ReplicateError::Commit { source } => classify_sqlx(source),
            ReplicateError::Batch { source, .. } => source.kind(),
            ReplicateError::Foreign { .. } => FailureKind::AwaitingIngestion,
            ReplicateError::Bulk { source, .. } => {
                if source.is_transient() {
                    FailureKind::Transient
                } else {
                    FailureKind::Rejected
                }
            }
            ReplicateError::Deferred { .. } => FailureKind::Transient,
        }
    }
}

/// What one replication did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    pub doc_key: String,
    /// The document's version in DynamoDB after this call (None: never written).
    pub version: Option<i64>,
    /// Items put / deleted, and writes DynamoDB refused because a newer version was there.
    pub written: usize,
    pub deleted: usize,
    pub superseded: usize,
    /// The projection matched what was last written: nothing was sent to DynamoDB.
    pub unchanged: bool,
    /// The document has no items (deleted, or not on the edge).
    pub absent: bool,
}

impl Outcome {
    fn metrics(&self) -> m::DocumentWrite {
        m::DocumentWrite {
            unchanged: self.unchanged,
            written: self.written,
            deleted: self.deleted,
            superseded: self.superseded,
        }
    }
}

/// Replicates documents into an [`ItemStore`].
#[derive(Clone)]
pub struct Replicator<S> {
    pool: PgPool,
    store: S,
    settings: Arc<Settings>,
}

impl<S: ItemStore> Replicator<S> {
    pub fn new(pool: PgPool, store: S, settings: Settings) -> Self {
        Replicator {
            pool,
            store,
            settings: Arc::new(settings),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Claims the next due document whose lock is free and replicates it. `Ok(None)` when
    /// nothing is due. A failed document is rescheduled or parked here; its error is
    /// returned for logging.
    pub async fn replicate_next(
        &self,
    ) -> Result<Option<Result<Outcome, ReplicateError>>, sqlx::Error> {
        Ok(self.replicate_due(1).await?.into_iter().next())
    }

    /// Claims the next due document whose lock is free and, when it is an identity document
    /// and more are due, up to `max` documents in all (see [`pending::claim_due`]), and
    /// replicates them together: one snapshot, one version, their writes concurrently, one
    /// commit. Empty when nothing is due. Failed documents are rescheduled or parked here;
    /// their errors are returned for logging.
    pub async fn replicate_due(
        &self,
        max: usize,
    ) -> Result<Vec<Result<Outcome, ReplicateError>>, sqlx::Error> {
        let mut lock = self.pool.begin().await?;
        let claims = pending::claim_due(&mut lock, max.max(1)).await?;
        if claims.is_empty() {
            return Ok(vec![]);
        }
        let started = Instant::now();
        let mut results: Vec<Option<Result<Outcome, ReplicateError>>> =
            claims.iter().map(|_| None).collect();
        let mut jobs = Vec::with_capacity(claims.len());
        let mut slots = Vec::with_capacity(claims.len());
        for (slot, claim) in claims.iter().enumerate() {
            match (claim.doc_key.parse::<DocKey>(), claim.state.leased_until) {
                (Ok(_), Some(until)) => {
                    results[slot] = Some(Err(ReplicateError::Leased {
                        doc_key: claim.doc_key.clone(),
                        until,
                    }))
                }
                (Ok(doc), None) => {
                    slots.push(slot);
                    jobs.push(Job {
                        doc,
                        doc_key: claim.doc_key.clone(),
                        state: claim.state.clone(),
                        queued: Queued {
                            seq: Some(claim.seq),
                            first_change_at: claim.first_change_at,
                            last_change_at: claim.last_change_at,
                        },
                        force: false,
                    })
                }
                (Err(e), _) => results[slot] = Some(Err(e.into())),
            }
        }
        let done = self.replicate_and_commit(lock, &jobs).await;
        for (slot, result) in slots.into_iter().zip(done) {
            results[slot] = Some(result);
        }
        let results: Vec<Result<Outcome, ReplicateError>> = results.into_iter().flatten().collect();
        for (claim, result) in claims.iter().zip(&results) {
            match result {
                Ok(outcome) => {
                    m::record_outcome(outcome.metrics(), started.elapsed());
                    if let (false, Some(first)) = (outcome.unchanged, claim.first_change_at) {
                        m::record_lag(first);
                    }
                }
                Err(err) => self.handle_failure(claim, err).await?,
            }
        }
        Ok(results)
    }

    /// The procedure with conditional writes for `jobs`, whose locks `lock` holds, and its
    /// commit; on a failure of a shared step, the rollback, which releases the locks with
    /// nothing of the attempt recorded.
    async fn replicate_and_commit(
        &self,
        mut lock: sqlx::Transaction<'_, sqlx::Postgres>,
        jobs: &[Job],
    ) -> Vec<Result<Outcome, ReplicateError>> {
        match self
            .replicate_locked(&mut lock, jobs, WriteStep::Conditional)
            .await
        {
            Ok(done) => match lock.commit().await {
                Ok(()) => done,
                Err(source) => fail_all(jobs, ReplicateError::Commit { source }),
            },
            Err(e) => {
                let _ = lock.rollback().await;
                fail_all(jobs, e)
            }
        }
    }

    /// Replicates one document now, waiting for its lock (write-through for callers that
    /// need read-your-writes). On failure the document is queued for the daemon as well.
    pub async fn replicate_now(&self, doc: DocKey) -> Result<Outcome, ReplicateError> {
        self.replicate_now_with(doc, false).await
    }

    /// As [`Self::replicate_now`]; `force` writes every item even when the projection matches
    /// what was last written (backfills, repairs of drift in DynamoDB).
    pub async fn replicate_now_with(
        &self,
        doc: DocKey,
        force: bool,
    ) -> Result<Outcome, ReplicateError> {
        let doc_key = doc.to_string();
        self.replicate_many_now(&[doc], force)
            .await
            .pop()
            .unwrap_or(Err(ReplicateError::State {
                doc_key,
                source: sqlx::Error::RowNotFound,
            }))
    }

    /// Replicates the documents now, together (the procedure applied to a batch: one lock
    /// transaction, one version, their writes, one commit), waiting for their locks in key
    /// order ([`documents::lock_many`]): backfills, sync, repairs. `force` writes every item
    /// even when the projection matches what was last written. Each document's result, in
    /// the order of `docs`; a failed document is queued for the daemon as well.
    pub async fn replicate_many_now(
        &self,
        docs: &[DocKey],
        force: bool,
    ) -> Vec<Result<Outcome, ReplicateError>> {
        let keys: Vec<String> = docs.iter().map(DocKey::to_string).collect();
        let results = self.replicate_many_locked(docs, &keys, force).await;
        let failed: Vec<String> = keys
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_err())
            .map(|(k, _)| k.clone())
            .collect();
        if !failed.is_empty() {
            // Left to the daemon's retry and dead-letter policy too.
            if let Ok(mut conn) = self.pool.acquire().await {
                let _ = pending::schedule_many(&mut conn, &failed, Utc::now()).await;
            }
        }
        results
    }

    async fn replicate_many_locked(
        &self,
        docs: &[DocKey],
        keys: &[String],
        force: bool,
    ) -> Vec<Result<Outcome, ReplicateError>> {
        let Some(first) = keys.first() else {
            return vec![];
        };
        let state_err = |source| ReplicateError::State {
            doc_key: first.clone(),
            source,
        };
        let fail_keys = |err: ReplicateError| -> Vec<Result<Outcome, ReplicateError>> {
            let jobs: Vec<Job> = docs
                .iter()
                .zip(keys)
                .map(|(doc, key)| Job {
                    doc: *doc,
                    doc_key: key.clone(),
                    state: DocState::default(),
                    queued: Queued::default(),
                    force,
                })
                .collect();
            fail_all(&jobs, err)
        };
        let mut lock = match self.pool.begin().await {
            Ok(lock) => lock,
            Err(e) => return fail_keys(state_err(e)),
        };
        // Planned at every execution: a backfill's batch can meet tables much larger than
        // when the connection planned them (see `pending::claim_due`).
        let settings = format!(
            "SET LOCAL lock_timeout = '{}ms'; SET LOCAL plan_cache_mode = force_custom_plan",
            self.settings.lock_timeout.as_millis()
        );
        let set = crate::simple_query::sets(&mut lock, &settings).await;
        let locked = match set {
            Ok(_) => documents::lock_many(&mut lock, keys).await,
            Err(e) => Err(e),
        };
        let mut locked: std::collections::HashMap<String, documents::Locked> = match locked {
            Ok(rows) => rows.into_iter().map(|l| (l.doc_key.clone(), l)).collect(),
            Err(e) => {
                let _ = lock.rollback().await;
                return fail_keys(state_err(e));
            }
        };
        let started = Instant::now();
        let mut results: Vec<Option<Result<Outcome, ReplicateError>>> =
            keys.iter().map(|_| None).collect();
        let mut jobs = Vec::with_capacity(keys.len());
        let mut slots = Vec::with_capacity(keys.len());
        for (slot, (doc, key)) in docs.iter().zip(keys).enumerate() {
            let Some(l) = locked.remove(key) else {
                // Pruned between its row's creation and the lock, or given twice: written
                // by the daemon, for which it is queued.
                results[slot] = Some(Err(ReplicateError::State {
                    doc_key: key.clone(),
                    source: sqlx::Error::RowNotFound,
                }));
                continue;
            };
            if let Some(until) = l.state.leased_until {
                results[slot] = Some(Err(ReplicateError::Leased {
                    doc_key: key.clone(),
                    until,
                }));
                continue;
            }
            slots.push(slot);
            jobs.push(Job {
                doc: *doc,
                doc_key: key.clone(),
                state: l.state,
                // Not a replication of queued changes: no lag is recorded for it.
                queued: Queued {
                    seq: l.pending.map(|p| p.0),
                    first_change_at: None,
                    last_change_at: l.pending.and_then(|p| p.1),
                },
                force,
            });
        }
        let done = self.replicate_and_commit(lock, &jobs).await;
        for (slot, result) in slots.into_iter().zip(done) {
            if let Ok(outcome) = &result {
                m::record_outcome(outcome.metrics(), started.elapsed());
            }
            results[slot] = Some(result);
        }
        results
            .into_iter()
            .zip(keys)
            .map(|(r, key)| {
                r.unwrap_or_else(|| {
                    Err(ReplicateError::State {
                        doc_key: key.clone(),
                        source: sqlx::Error::RowNotFound,
                    })
                })
            })
            .collect()
    }

    async fn handle_failure(
        &self,
        claim: &pending::Claim,
        err: &ReplicateError,
    ) -> Result<(), sqlx::Error> {
        if let ReplicateError::Foreign { item, .. } = err {
            return self.await_ingestion(claim, item.as_deref()).await;
        }
        let kind = err.kind();
        let attempts = claim.attempts + 1;
        let message = error_chain(err);
        m::record_failure(kind);
        let leased_until = match err {
            ReplicateError::Leased { until, .. } => Some(*until),
            _ => None,
        };
        let policy = self.settings.retry_policy();
        match failure_policy::decide(&policy, kind, claim.attempts, leased_until, Utc::now()) {
            Decision::Park => {
                tracing::error!(doc = %claim.doc_key, kind = kind.as_str(), attempts, error = %message,
                    "document parked in dead letters; other documents carry on");
                dead_letters::park(
                    &self.pool,
                    &claim.doc_key,
                    kind.as_str(),
                    &message,
                    attempts,
                )
                .await?;
                pending::drop_parked(&self.pool, &claim.doc_key, claim.seq).await?;
            }
            Decision::Retry(delay) => {
                if let Some(until) = leased_until {
                    tracing::debug!(doc = %claim.doc_key, %until, "waiting for a bulk write lease to pass");
                } else {
                    tracing::warn!(doc = %claim.doc_key, kind = kind.as_str(), attempts,
                        retry_in_ms = delay.as_millis() as u64, error = %message, "replication failed; will retry");
                }
                pending::record_failure(&self.pool, &claim.doc_key, &message, delay).await?;
            }
        }
        Ok(())
    }

    /// The document's identity item was written by someone else and not yet ingested.
    ///
    /// - Ingestion off for the project: the edge owns the identity; the item is left to it
    ///   and the queue row is done (a later core change tries again).
    /// - Otherwise the document waits for a stream consumer to ingest the item (ingestion
    ///   queues the document again, due at once), retried with backoff meanwhile. After
    ///   [`Settings::ingest_grace`] the writer ingests the item itself, as written at the time
    ///   it was first found (no consumer may be configured, or the stream record may be gone).
    async fn await_ingestion(
        &self,
        claim: &pending::Claim,
        found: Option<&Item>,
    ) -> Result<(), sqlx::Error> {
        let doc_key = claim.doc_key.as_str();
        let identity_id = match claim.doc_key.parse::<DocKey>() {
            Ok(DocKey::Identity(id)) => id,
            _ => return Ok(()),
        };
        let mut conn = self.pool.acquire().await?;
        let enabled = edge_ingest::switch::enabled_for_identity(&mut conn, identity_id).await?;
        drop(conn);
        if !enabled {
            m::record_foreign("edge_owned");
            foreign::mark(&self.pool, doc_key, "edge_owned").await?;
            tracing::info!(doc = %doc_key,
                "identity item written at the edge and ingestion is off for its project: left to the edge");
            pending::drop_parked(&self.pool, doc_key, claim.seq).await?;
            return Ok(());
        }
        let since = foreign::mark(&self.pool, doc_key, "awaiting_ingestion").await?;
        let waited = (Utc::now() - since).to_std().unwrap_or_default();
        if let (true, Some(item)) = (waited >= self.settings.ingest_grace, found) {
            let composite_key = match item.get("composite_key") {
                Some(aws_sdk_dynamodb::types::AttributeValue::S(k)) => k.clone(),
                _ => String::new(),
            };
            let write = edge_ingest::EdgeWrite {
                composite_key: &composite_key,
                new: Some(item),
                old: None,
                at: since,
                precision: chrono::Duration::zero(),
            };
            match edge_ingest::ingest(&self.pool, &write).await {
                Ok(result) => {
                    m::record_foreign("ingested_by_writer");
                    tracing::warn!(doc = %doc_key, waited_s = waited.as_secs(), ?result,
                        "no consumer ingested the edge's identity item in time; the writer ingested it");
                    pending::record_failure(
                        &self.pool,
                        doc_key,
                        "ingested by the writer",
                        Duration::ZERO,
                    )
                    .await?;
                    return Ok(());
                }
                Err(e) if e.is_invalid() => {
                    m::record_foreign("edge_owned");
                    let reason = error_chain(&e);
                    tracing::error!(doc = %doc_key, error = %reason,
                        "the edge's identity item cannot be ingested; parked and left to the edge");
                    edge_ingest::dead_letters::park(&self.pool, &composite_key, &reason, None)
                        .await?;
                    foreign::mark(&self.pool, doc_key, "edge_owned").await?;
                    pending::drop_parked(&self.pool, doc_key, claim.seq).await?;
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(doc = %doc_key, error = %error_chain(&e), "ingesting the edge's identity item failed; will retry");
                }
            }
        }
        m::record_foreign("awaiting_ingestion");
        let delay = failure_policy::ingestion_wait(claim.attempts);
        tracing::info!(doc = %doc_key, waited_s = waited.as_secs(), retry_in_ms = delay.as_millis() as u64,
            "identity item written at the edge; waiting for its ingestion into core");
        pending::record_failure(
            &self.pool,
            doc_key,
            "awaiting ingestion of an identity item written at the edge",
            delay,
        )
        .await?;
        Ok(())
    }

    /// An owned write (see [`Guard::Owned`]) found an item someone else wrote. If exactly that
    /// item was ingested into core (its digest is the last one ingested for its key), the
    /// merged document replaces it, conditional on it being unchanged; otherwise the document
    /// waits for ingestion ([`ReplicateError::Foreign`]).
    async fn adopt(
        &self,
        doc_key: &str,
        table: TableKind,
        write: Planned<'_>,
        version: i64,
        found: Option<Box<Item>>,
    ) -> Result<WriteOutcome, ReplicateError> {
        let waiting = |item| ReplicateError::Foreign {
            doc_key: doc_key.to_string(),
            item,
        };
        let Some(found) = found else {
            return Err(waiting(None));
        };
        let composite_key = match found.get("composite_key") {
            Some(aws_sdk_dynamodb::types::AttributeValue::S(k)) => k.clone(),
            _ => return Err(waiting(Some(found))),
        };
        let digest = edge_ingest::edge_item::digest(&found).ok();
        let ingested = foreign::ingested_digest(&self.pool, &composite_key)
            .await
            .map_err(|source| ReplicateError::State {
                doc_key: doc_key.to_string(),
                source,
            })?;
        if digest.is_none() || digest != ingested {
            return Err(waiting(Some(found)));
        }
        let guard = Guard::Adopt(found);
        let outcome = match write {
            Planned::Put(item) => {
                with_retry(|| self.store.put(table, item.clone(), version, &guard)).await
            }
            Planned::Delete(key) => {
                with_retry(|| {
                    self.store
                        .delete(table, key.clone(), doc_key, version, &guard)
                })
                .await
            }
        }
        .map_err(|source| ReplicateError::Store {
            doc_key: doc_key.to_string(),
            source,
        })?;
        match outcome {
            WriteOutcome::Foreign { item } => Err(waiting(item)),
            other => {
                m::record_foreign("adopted");
                Ok(other)
            }
        }
    }

    /// The procedure, for one document or a batch, under the documents' locks (held by
    /// `lock`'s transaction, which the caller commits): the snapshot, then the version, the
    /// plans, the item keys recorded, the writes (`step`), the bookkeeping. A failure of a
    /// step all documents share is the outer error (the caller rolls back); a document's own
    /// failure is its result, and the others carry on.
    pub(crate) async fn replicate_locked(
        &self,
        lock: &mut PgConnection,
        jobs: &[Job],
        step: WriteStep<'_>,
    ) -> Result<Vec<Result<Outcome, ReplicateError>>, ReplicateError> {
        let Some(first) = jobs.first() else {
            return Ok(vec![]);
        };
        let shared_state = |source| ReplicateError::State {
            doc_key: first.doc_key.clone(),
            source,
        };
        let t_start = Instant::now();
        // The snapshot, on its own connection, begun after the locks were taken.
        let mut snap = self.pool.acquire().await.map_err(shared_state)?;
        let docs: Vec<DocKey> = jobs.iter().map(|j| j.doc).collect();
        let projected = projection::project_many(&mut snap, &docs)
            .await
            .map_err(|source| ReplicateError::Projection {
                doc_key: first.doc_key.clone(),
                source,
            })?;

        // The version, after the snapshot, under the locks; with the items recorded so far.
        let keys: Vec<String> = jobs.iter().map(|j| j.doc_key.clone()).collect();
        let (version, mut recorded) = documents::next_version_and_items(lock, &keys)
            .await
            .map_err(shared_state)?;
        let mut plans: Vec<Result<WritePlan, ReplicateError>> = jobs
            .iter()
            .zip(projected)
            .map(|(job, projected)| {
                let projected = projected.map_err(|source| ReplicateError::Projection {
                    doc_key: job.doc_key.clone(),
                    source,
                })?;
                let plan = write_plan::plan(write_plan::Inputs {
                    doc_key: &job.doc_key,
                    projected,
                    recorded: recorded.remove(&job.doc_key).unwrap_or_default(),
                    version,
                    last_hash: job.state.content_hash.as_deref(),
                    last_change_at: job.queued.last_change_at,
                    // After an abandoned bulk write, what DynamoDB holds is not what was
                    // recorded: every item is written (and again once the lease settles,
                    // `documents::finish`).
                    force: job.force || job.state.lease_settles_at.is_some(),
                    compress_above: self.settings.compress_above_bytes,
                })
                .map_err(|source| ReplicateError::Item {
                    doc_key: job.doc_key.clone(),
                    source,
                })?;
                // BatchWriteItem cannot delete only our own older item: documents with items
                // to delete (or to re-check) are the live path's.
                if matches!(step, WriteStep::Bulk(_)) && !plan.stale.is_empty() {
                    return Err(ReplicateError::Deferred {
                        doc_key: job.doc_key.clone(),
                    });
                }
                Ok(plan)
            })
            .collect();

        // The item keys, recorded before they are written (committed at once, outside the
        // locks), for every document in one statement; for a bulk write, with the leases.
        let mut docs = Vec::new();
        let mut tables = Vec::new();
        let mut item_keys = Vec::new();
        let mut leased: Vec<String> = Vec::new();
        for (job, plan) in jobs.iter().zip(&plans) {
            if let Ok(plan) = plan {
                for (table, key) in &plan.to_record {
                    docs.push(job.doc_key.clone());
                    tables.push(*table);
                    item_keys.push(key.clone());
                }
                if !plan.nothing_to_write {
                    leased.push(job.doc_key.clone());
                }
            }
        }
        let t_write;
        let written: Vec<Result<usize, ReplicateError>> = match step {
            WriteStep::Conditional => {
                documents::record_item_keys(&mut snap, docs, tables, item_keys)
                    .await
                    .map_err(shared_state)?;
                drop(snap);
                t_write = Instant::now();
                self.write_conditional(jobs, &plans).await
            }
            WriteStep::Bulk(settings) => {
                let mut tx = snap.begin().await.map_err(shared_state)?;
                documents::record_item_keys(&mut tx, docs, tables, item_keys)
                    .await
                    .map_err(shared_state)?;
                leases::take(&mut tx, &leased, settings.lease, settings.late_writes)
                    .await
                    .map_err(shared_state)?;
                tx.commit().await.map_err(shared_state)?;
                // The items move into the batches; the bookkeeping needs only the plans'
                // other fields.
                t_write = Instant::now();
                let mut items = Vec::new();
                for plan in plans.iter_mut().flatten() {
                    if !plan.nothing_to_write {
                        for (d, e) in plan.puts.iter_mut() {
                            items.push((d.table, std::mem::take(&mut e.item)));
                        }
                    }
                }
                if let Err(source) = bulk_write::write_all(&self.store, items, settings).await {
                    // Unless a batch may still land, the leases can go now.
                    if !source.left_leases() {
                        leases::release(&mut snap, &leased)
                            .await
                            .map_err(shared_state)?;
                    }
                    return Err(ReplicateError::Bulk {
                        doc_key: first.doc_key.clone(),
                        source,
                    });
                }
                drop(snap);
                jobs.iter().map(|_| Ok(0)).collect()
            }
        };

        crate::failpoint::crash_point(crate::failpoint::AFTER_DYNAMODB_WRITE);
        let t_bookkeeping = Instant::now();

        // Bookkeeping, in the lock transaction, one statement for the batch: only now does
        // progress move.
        let now = Utc::now();
        let mut out = Vec::with_capacity(jobs.len());
        let mut finished: Vec<(&Job, WritePlan, Removals)> = Vec::with_capacity(jobs.len());
        for ((job, plan), written) in jobs.iter().zip(plans).zip(written) {
            match (plan, written) {
                (Ok(plan), Ok(superseded)) => {
                    let removals = plan.removals(self.settings.delete_recheck_after, now);
                    out.push(Ok(if plan.nothing_to_write {
                        Outcome {
                            doc_key: job.doc_key.clone(),
                            version: job.state.version,
                            written: 0,
                            deleted: 0,
                            superseded: 0,
                            unchanged: true,
                            absent: plan.absent,
                        }
                    } else {
                        Outcome {
                            doc_key: job.doc_key.clone(),
                            version: Some(plan.version),
                            written: plan.puts.len(),
                            deleted: plan.deletes(),
                            superseded,
                            unchanged: false,
                            absent: plan.absent,
                        }
                    }));
                    finished.push((job, plan, removals));
                }
                (Err(e), _) | (_, Err(e)) => out.push(Err(e)),
            }
        }
        let bulk = matches!(step, WriteStep::Bulk(_));
        let finishes: Vec<(&str, documents::Finish<'_>)> = finished
            .iter()
            .map(|(job, plan, removals)| {
                (job.doc_key.as_str(), finish_of(job, plan, removals, bulk))
            })
            .collect();
        documents::finish_many(lock, &finishes)
            .await
            .map_err(shared_state)?;
        tracing::debug!(
            documents = jobs.len(),
            version,
            project_ms = (t_write - t_start).as_secs_f64() * 1e3,
            write_ms = (t_bookkeeping - t_write).as_secs_f64() * 1e3,
            bookkeeping_ms = t_bookkeeping.elapsed().as_secs_f64() * 1e3,
            "documents written"
        );
        Ok(out)
    }

    /// The conditional write step: the documents of a batch that only put items, in
    /// transactions ([`transact_write`]); the rest, and those a transaction left out, one
    /// document at a time ([`Self::write`]), concurrently. In the order of `jobs`.
    async fn write_conditional(
        &self,
        jobs: &[Job],
        plans: &[Result<WritePlan, ReplicateError>],
    ) -> Vec<Result<usize, ReplicateError>> {
        let mut done: Vec<Option<Result<usize, ReplicateError>>> =
            jobs.iter().map(|_| None).collect();
        if self.settings.batch_transactions && jobs.len() > 1 {
            let together: Vec<usize> = plans
                .iter()
                .enumerate()
                .filter(|(_, p)| {
                    p.as_ref().is_ok_and(|p| {
                        !p.nothing_to_write && p.stale.is_empty() && !p.puts.is_empty()
                    })
                })
                .map(|(i, _)| i)
                .collect();
            let docs: Vec<(&str, &WritePlan)> = together
                .iter()
                .filter_map(|&i| Some((jobs[i].doc_key.as_str(), plans[i].as_ref().ok()?)))
                .collect();
            let written =
                transact_write::put_documents(&self.store, &docs, TRANSACTIONS_IN_FLIGHT).await;
            for (&i, written) in together.iter().zip(written) {
                done[i] = match written {
                    transact_write::Written::Applied => Some(Ok(0)),
                    transact_write::Written::Alone => None,
                    transact_write::Written::Failed(source) => Some(Err(ReplicateError::Store {
                        doc_key: jobs[i].doc_key.clone(),
                        source,
                    })),
                };
            }
        }
        // Each document's writes in order (see [`Self::write`]), documents concurrently.
        let writes: Vec<BoxFuture<'_, Result<usize, ReplicateError>>> = jobs
            .iter()
            .zip(plans)
            .zip(done.iter_mut())
            .map(
                |((job, plan), done)| -> BoxFuture<'_, Result<usize, ReplicateError>> {
                    if let Some(result) = done.take() {
                        return Box::pin(async { result });
                    }
                    match plan {
                        Ok(plan) if !plan.nothing_to_write => {
                            Box::pin(self.write(&job.doc_key, plan))
                        }
                        _ => Box::pin(async { Ok(0) }),
                    }
                },
            )
            .collect();
        stream::iter(writes)
            .buffered(WRITES_IN_FLIGHT)
            .collect()
            .await
    }

    /// One document's writes, each conditional on the version. Items with other writers (an
    /// identity document's identity item: the edge writes it too) go first, one at a time,
    /// under [`Guard::Owned`]; the rest only once those are the writer's, all in parallel.
    /// Returns how many writes DynamoDB refused because a newer version was there.
    async fn write(&self, doc_key: &str, plan: &WritePlan) -> Result<usize, ReplicateError> {
        let version = plan.version;
        let owned = |t: TableKind| Guard::for_put(t) == Guard::Owned;
        let store_err = |source| ReplicateError::Store {
            doc_key: doc_key.to_string(),
            source,
        };
        let mut outcomes: Vec<WriteOutcome> = Vec::new();
        for (d, e) in plan.puts.iter().filter(|(d, _)| owned(d.table)) {
            let outcome = with_retry(|| {
                self.store
                    .put(d.table, e.item.clone(), version, &Guard::Owned)
            })
            .await
            .map_err(store_err)?;
            outcomes.push(match outcome {
                WriteOutcome::Foreign { item } => {
                    self.adopt(doc_key, d.table, Planned::Put(&e.item), version, item)
                        .await?
                }
                other => other,
            });
        }
        for r in plan.stale.iter().filter(|r| owned(r.table)) {
            let key = key_item(&r.key);
            let outcome = with_retry(|| {
                self.store
                    .delete(r.table, key.clone(), doc_key, version, &Guard::Owned)
            })
            .await
            .map_err(store_err)?;
            outcomes.push(match outcome {
                WriteOutcome::Foreign { item } => {
                    self.adopt(doc_key, r.table, Planned::Delete(&key), version, item)
                        .await?
                }
                other => other,
            });
        }
        let put_results = join_all(plan.puts.iter().filter(|(d, _)| !owned(d.table)).map(
            |(d, e)| {
                with_retry(|| {
                    self.store
                        .put(d.table, e.item.clone(), version, &Guard::Version)
                })
            },
        ));
        let delete_results = join_all(plan.stale.iter().filter(|r| !owned(r.table)).map(|r| {
            let key = key_item(&r.key);
            with_retry(move || {
                self.store
                    .delete(r.table, key.clone(), doc_key, version, &Guard::Version)
            })
        }));
        let (put_results, delete_results) = futures::join!(put_results, delete_results);
        for result in put_results.into_iter().chain(delete_results) {
            outcomes.push(result.map_err(store_err)?);
        }
        let mut superseded = 0;
        for outcome in &outcomes {
            match outcome {
                WriteOutcome::Applied => {}
                WriteOutcome::Superseded { stored_version } => {
                    superseded += 1;
                    tracing::info!(doc = %doc_key, version, ?stored_version,
                        "a newer version is already stored; this write was not applied");
                }
                WriteOutcome::Foreign { .. } => {
                    // Only owned writes can meet a foreign item, and `adopt` turned those
                    // into an error above.
                    return Err(ReplicateError::Foreign {
                        doc_key: doc_key.to_string(),
                        item: None,
                    });
                }
            }
        }
        Ok(superseded)
    }
}

/// Documents of one batch whose writes are in flight at once.
const WRITES_IN_FLIGHT: usize = 16;
/// Transactions of one batch in flight at once.
const TRANSACTIONS_IN_FLIGHT: usize = 4;

/// How the procedure's writes reach DynamoDB.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WriteStep<'a> {
    /// Every item with its condition (version, ownership), documents concurrently: the live
    /// path, sync, backfills, repairs, dead-letter replays.
    Conditional,
    /// BatchWriteItem without conditions, under a write lease per document committed with
    /// the item keys (the identity migration job, `migrate_identities::page`). A document
    /// with items to delete is left to the live path ([`ReplicateError::Deferred`]).
    Bulk(&'a BulkSettings),
}

/// A document taken for replication, its lock held by the lock transaction.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub(crate) doc: DocKey,
    pub(crate) doc_key: String,
    /// What the writer last wrote for it.
    pub(crate) state: DocState,
    pub(crate) queued: Queued,
    /// Write every item even when the content equals what was last written.
    pub(crate) force: bool,
}

/// What the bookkeeping records for a document whose plan was carried out.
fn finish_of<'a>(
    job: &Job,
    plan: &'a WritePlan,
    removals: &'a Removals,
    bulk: bool,
) -> documents::Finish<'a> {
    if plan.nothing_to_write {
        return documents::Finish {
            written: None,
            next_projection_at: plan.next_change_at,
            removed: &[],
            forgotten: &[],
            claimed_seq: job.queued.seq,
            again_at: plan.next_change_at,
            release_lease: false,
        };
    }
    documents::Finish {
        written: Some(documents::Written {
            version: plan.version,
            content_hash: plan.content_hash.as_deref(),
            source_time: plan.source_time,
            next_projection_at: plan.next_change_at,
            put_items: !plan.puts.is_empty(),
            first_change_at: job.queued.first_change_at,
        }),
        next_projection_at: plan.next_change_at,
        removed: &removals.removed,
        forgotten: &removals.forgotten,
        claimed_seq: job.queued.seq,
        again_at: removals.again_at,
        // The bulk write step's own lease: every batch was answered.
        release_lease: bulk,
    }
}

/// A failure of a step a batch shares, as each document's result (one document: the error
/// itself).
fn fail_all(jobs: &[Job], err: ReplicateError) -> Vec<Result<Outcome, ReplicateError>> {
    if jobs.len() == 1 {
        return vec![Err(err)];
    }
    let shared = Arc::new(err);
    jobs.iter()
        .map(|j| {
            Err(ReplicateError::Batch {
                doc_key: j.doc_key.clone(),
                source: shared.clone(),
            })
        })
        .collect()
}

/// The document's queue row, as far as a write needs it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Queued {
    /// The row's `seq` when the document was taken (None: not queued).
    pub(crate) seq: Option<i64>,
    /// Capture time of the oldest change the row stands for, when the write replicates queued
    /// changes (the replication lag is measured from it).
    pub(crate) first_change_at: Option<DateTime<Utc>>,
    pub(crate) last_change_at: Option<DateTime<Utc>>,
}

/// A write that met a foreign item, to be tried again under [`Guard::Adopt`].
#[derive(Clone, Copy)]
enum Planned<'a> {
    Put(&'a Item),
    Delete(&'a Item),
}

fn key_item(key: &Value) -> Item {
    serde_dynamo::aws_sdk_dynamodb_1::to_item(key).expect("item keys are JSON objects of strings")
}

/// Retries a DynamoDB call a few times in-process (exponential backoff with jitter) before
/// the failure goes back to the queue's durable backoff.
pub(crate) async fn with_retry<T, F, Fut>(op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    op.retry(
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(1))
            .with_max_times(2)
            .with_jitter(),
    )
    .when(|e: &StoreError| e.retryable)
    .notify(|e: &StoreError, after: Duration| {
        tracing::debug!(error = %e, retry_in_ms = after.as_millis() as u64, "retrying DynamoDB call");
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure_policy::tests::db;

    #[test]
    fn failures_are_classified_for_the_retry_policy() {
        let store = |retryable| ReplicateError::Store {
            doc_key: "environment:1".into(),
            source: StoreError {
                op: "PutItem",
                table: "t".into(),
                message: "m".into(),
                retryable,
            },
        };
        assert_eq!(store(true).kind(), FailureKind::Transient);
        assert_eq!(store(false).kind(), FailureKind::Rejected);
        let invalid = ReplicateError::Projection {
            doc_key: "environment:1".into(),
            source: ProjectionError::invalid("bad operator"),
        };
        assert_eq!(invalid.kind(), FailureKind::InvalidData);
        assert!(error_chain(&invalid).contains("environment:1"));
        assert_eq!(
            classify_sqlx(&sqlx::Error::PoolTimedOut),
            FailureKind::Transient
        );
    }

    #[test]
    fn each_failure_kind_has_the_retry_policy_its_cause_needs() {
        let doc_key = || "identity:7".to_string();
        let too_large = ReplicateError::Item {
            doc_key: doc_key(),
            source: ItemError::TooLarge {
                doc_key: doc_key(),
                size: 500_000,
            },
        };
        let uncompressible = ReplicateError::Item {
            doc_key: doc_key(),
            source: ItemError::TooLargeUncompressible {
                doc_key: doc_key(),
                size: 500_000,
            },
        };
        let not_an_object = ReplicateError::Item {
            doc_key: doc_key(),
            source: ItemError::NotAnObject,
        };
        let cases: Vec<(ReplicateError, FailureKind)> = vec![
            (too_large, FailureKind::TooLarge),
            (uncompressible, FailureKind::TooLarge),
            (not_an_object, FailureKind::InvalidData),
            (
                ReplicateError::State {
                    doc_key: doc_key(),
                    source: db("40P01"),
                },
                FailureKind::Transient,
            ),
            (
                ReplicateError::Commit {
                    source: db("08006"),
                },
                FailureKind::Transient,
            ),
            (
                ReplicateError::Projection {
                    doc_key: doc_key(),
                    source: ProjectionError::Db(db("23505")),
                },
                FailureKind::Other,
            ),
            (
                ReplicateError::Leased {
                    doc_key: doc_key(),
                    until: Utc::now(),
                },
                FailureKind::Transient,
            ),
            (
                ReplicateError::Foreign {
                    doc_key: doc_key(),
                    item: None,
                },
                FailureKind::AwaitingIngestion,
            ),
            (
                ReplicateError::InvalidKey("nonsense".parse::<DocKey>().unwrap_err()),
                FailureKind::InvalidData,
            ),
        ];
        for (err, expected) in cases {
            assert_eq!(err.kind(), expected, "{err}");
        }
    }

    fn job(id: i32) -> Job {
        Job {
            doc: DocKey::Identity(id),
            doc_key: DocKey::Identity(id).to_string(),
            state: DocState::default(),
            queued: Queued {
                seq: Some(1),
                first_change_at: None,
                last_change_at: None,
            },
            force: false,
        }
    }

    #[test]
    fn a_shared_failure_is_every_documents_result_with_its_kind() {
        let refused = || ReplicateError::Store {
            doc_key: "identity:1".into(),
            source: StoreError {
                op: "PutItem",
                table: "t".into(),
                message: "AccessDenied".into(),
                retryable: true,
            },
        };
        // One document: the error itself.
        let one = fail_all(&[job(1)], refused());
        assert!(matches!(
            one.as_slice(),
            [Err(ReplicateError::Store { .. })]
        ));
        // A batch: each document's own result, naming it, classified by the shared cause.
        let many = fail_all(&[job(1), job(2), job(3)], refused());
        assert_eq!(many.len(), 3);
        for (result, id) in many.iter().zip(1..) {
            match result {
                Err(e @ ReplicateError::Batch { doc_key, .. }) => {
                    assert_eq!(doc_key, &format!("identity:{id}"));
                    assert_eq!(e.kind(), FailureKind::Transient);
                    assert!(error_chain(e).contains("AccessDenied"), "{e}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn an_item_key_becomes_the_items_key_attributes() {
        let key = serde_json::json!({"composite_key": "envkey_alice"});
        let item = key_item(&key);
        assert_eq!(
            item.get("composite_key"),
            Some(&aws_sdk_dynamodb::types::AttributeValue::S(
                "envkey_alice".into()
            ))
        );
        assert_eq!(item.len(), 1);
    }
}
