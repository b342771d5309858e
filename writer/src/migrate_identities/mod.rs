//! The identity migration job: copies every identity of a project (or of one environment)
//! into edge storage, while the core API and the live writer keep writing.
//!
//! - **Bounded memory.** Identity ids are listed by keyset pagination (`id > last ORDER BY
//!   id LIMIT page`) into a bounded channel; at most `concurrency` pages are in memory.
//! - **Parallel.** `concurrency` pages at once, each written with BatchWriteItem
//!   (`batch_concurrency` calls in flight, unprocessed items retried).
//! - **Never stale.** Each page is written under the same per-document locks and version
//!   sequence as the live path, with a write lease against its own late batches: see
//!   [`page`].
//! - **Resumable.** A low-water mark (every identity at or below it is done) is saved in
//!   `edge.identity_migration` after each page; a killed job resumes after it. Pages done
//!   above the mark are redone, and find their content unchanged.
//! - **Idempotent.** Re-running a finished job walks every identity again and writes only
//!   those whose content differs from what was last written (`--rewrite` writes all).
//! - **Status.** The project metadata item in DynamoDB says in progress, then complete
//!   (project scope only); `edge.identity_migration` keeps the counters.

pub mod page;
pub mod progress;
pub mod slots;
pub mod status;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use sqlx::PgPool;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinSet;

use crate::replicate::{Replicator, Settings};
use crate::store::{ItemStore, StoreError};
pub use page::{PageSettings, PageStats};
use status::MigrationStatus;

/// Which identities to migrate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    pub project_id: i32,
    /// One environment of the project only.
    pub environment_id: Option<i32>,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Identities per page (one lock transaction and one snapshot each).
    pub page_size: u32,
    /// Pages in flight.
    pub concurrency: usize,
    pub page: PageSettings,
    /// Start from the first identity even if an unfinished run left a checkpoint.
    pub restart: bool,
    /// Attempts per page for transient errors before the job stops (resumable).
    pub page_attempts: usize,
    /// Show a progress bar on a terminal.
    pub progress_bar: bool,
    pub log_every: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            page_size: 500,
            concurrency: 8,
            page: PageSettings {
                lease: Duration::from_secs(60),
                late_writes: Duration::from_secs(120),
                batch_concurrency: 4,
                rewrite_unchanged: false,
            },
            restart: false,
            page_attempts: 8,
            progress_bar: true,
            log_every: Duration::from_secs(5),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    pub project_id: i32,
    pub environment_id: Option<i32>,
    /// The checkpoint the run started after (0: from the start).
    pub resumed_after_id: i32,
    /// Identities in scope when the run started (after the checkpoint).
    pub identities: u64,
    pub migrated: u64,
    pub unchanged: u64,
    pub skipped: u64,
    pub deferred: u64,
    pub items_written: u64,
    pub seconds: f64,
    pub identities_per_second: f64,
    /// Project metadata status after the run.
    pub status: String,
    /// The first skipped identities: (document key, reason).
    pub skipped_examples: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("project {0} does not exist")]
    NoProject(i32),
    #[error("environment {environment} does not exist in project {project}")]
    NoEnvironment { project: i32, environment: i32 },
    #[error("project {0} is not on the edge (enable_dynamo_db is false): its identities would not be kept in step")]
    NotOnEdge(i32),
    #[error("another identity migration of project {0} is running")]
    Busy(i32),
    #[error("Postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("project metadata: {0}")]
    Metadata(#[from] StoreError),
    #[error("page of identities {first}..={last}: {source} (the job can be resumed)")]
    Page {
        first: i32,
        last: i32,
        #[source]
        source: page::PageError,
    },
}

/// One page, retried on transient errors, each attempt in one of the run's page slots.
/// After a timeout or an unanswered request, batches may still land under the page's leases:
/// the retry waits for the leases to end and settle, so that it writes the page itself
/// rather than leave it to the live path, and the run keeps one page fewer in flight
/// ([`slots::PageSlots::shrink`]).
async fn migrate_page_with_retries<S: ItemStore>(
    replicator: &Replicator<S>,
    settings: &PageSettings,
    slots: &slots::PageSlots,
    ids: &[i32],
    attempts: usize,
) -> Result<PageStats, page::PageError> {
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_max_times(attempts)
        .with_jitter()
        .build();
    loop {
        let slot = slots.acquire().await;
        let err = match page::migrate_page(replicator, settings, ids).await {
            Ok(stats) => {
                drop(slot);
                if let Some(in_flight) = slots.succeeded() {
                    tracing::info!(
                        pages_in_flight = in_flight,
                        "DynamoDB keeps up again; one page more in flight"
                    );
                }
                return Ok(stats);
            }
            Err(e) if e.is_transient() => e,
            Err(e) => return Err(e),
        };
        let Some(delay) = backoff.next() else {
            return Err(err);
        };
        let delay = if err.left_leases() {
            let in_flight = slots.shrink(slot);
            tracing::warn!(pages_in_flight = in_flight,
                "DynamoDB did not answer a page's writes in time; fewer pages in flight from now on");
            settings.lease + settings.late_writes + Duration::from_millis(100)
        } else {
            drop(slot);
            delay
        };
        tracing::warn!(first = ids[0], last = ids[ids.len() - 1], error = %err,
            retry_in_ms = delay.as_millis() as u64, "page failed; retrying");
        tokio::time::sleep(delay).await;
    }
}

/// Advisory lock namespace of the job (one job per project): the job holds
/// `pg_advisory_lock(ADVISORY_NAMESPACE, project_id)` while it runs.
pub const ADVISORY_NAMESPACE: i32 = 0x6564_6765; // "edge"

pub async fn run<S: ItemStore>(
    pool: &PgPool,
    store: &S,
    scope: Scope,
    options: &Options,
) -> Result<Summary, MigrateError> {
    let started = Instant::now();
    let project = scope.project_id;
    let env_filter = scope.environment_id.unwrap_or(0);

    let on_edge: Option<bool> = sqlx::query_scalar(
        "SELECT enable_dynamo_db AND deleted_at IS NULL FROM projects_project WHERE id = $1",
    )
    .bind(project)
    .fetch_optional(pool)
    .await?;
    match on_edge {
        None => return Err(MigrateError::NoProject(project)),
        Some(false) => return Err(MigrateError::NotOnEdge(project)),
        Some(true) => {}
    }
    if let Some(env) = scope.environment_id {
        let found: Option<i32> = sqlx::query_scalar(
            "SELECT id FROM environments_environment WHERE id = $1 AND project_id = $2",
        )
        .bind(env)
        .bind(project)
        .fetch_optional(pool)
        .await?;
        if found.is_none() {
            return Err(MigrateError::NoEnvironment {
                project,
                environment: env,
            });
        }
    }

    // One job per project: a session advisory lock, held on this connection for the run.
    let mut guard = pool.acquire().await?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
        .bind(ADVISORY_NAMESPACE)
        .bind(project)
        .fetch_one(&mut *guard)
        .await?;
    if !got {
        return Err(MigrateError::Busy(project));
    }
    let result = run_locked(pool, store, scope, env_filter, options, started).await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1, $2)")
        .bind(ADVISORY_NAMESPACE)
        .bind(project)
        .execute(&mut *guard)
        .await;
    result
}

async fn run_locked<S: ItemStore>(
    pool: &PgPool,
    store: &S,
    scope: Scope,
    env_filter: i32,
    options: &Options,
    started: Instant,
) -> Result<Summary, MigrateError> {
    let project = scope.project_id;
    let job = {
        let mut conn = pool.acquire().await?;
        status::start_job(&mut conn, project, env_filter, options.restart).await?
    };
    let resumed_after = job.checkpoint_id;
    let total: i64 = sqlx::query_scalar(
        r#"SELECT count(*) FROM environments_identity i
           JOIN environments_environment e ON e.id = i.environment_id
           WHERE e.project_id = $1 AND ($2 = 0 OR i.environment_id = $2) AND i.id > $3"#,
    )
    .bind(project)
    .bind(env_filter)
    .bind(resumed_after)
    .fetch_one(pool)
    .await?;

    // The project's metadata says "in progress" unless it is complete already (a re-run
    // does not take a migrated project back).
    let mut meta = status::read_metadata(store, project).await?;
    if scope.environment_id.is_none() && meta.status() != MigrationStatus::Completed {
        let now = status::now_iso();
        meta.migration_start_time.get_or_insert(now.clone());
        meta.triggered_at.get_or_insert(now);
        meta.migration_end_time = None;
        status::write_metadata(store, project, &meta).await?;
    }
    tracing::info!(
        project,
        environment = scope.environment_id,
        resumed_after_id = resumed_after,
        identities = total,
        "identity migration started"
    );

    // Producer: keyset pages into a bounded channel.
    let (page_tx, page_rx) = mpsc::channel::<(u64, Vec<i32>)>(options.concurrency.max(1));
    let producer = {
        let pool = pool.clone();
        let page_size = i64::from(options.page_size.max(1));
        tokio::spawn(async move {
            let mut after = resumed_after;
            let mut seq = 0u64;
            loop {
                let ids: Vec<i32> = sqlx::query_scalar(
                    r#"SELECT i.id FROM environments_identity i
                       JOIN environments_environment e ON e.id = i.environment_id
                       WHERE e.project_id = $1 AND ($2 = 0 OR i.environment_id = $2) AND i.id > $3
                       ORDER BY i.id LIMIT $4"#,
                )
                .bind(project)
                .bind(env_filter)
                .bind(after)
                .bind(page_size)
                .fetch_all(&pool)
                .await?;
                let Some(&last) = ids.last() else {
                    return Ok::<u64, sqlx::Error>(seq);
                };
                after = last;
                if page_tx.send((seq, ids)).await.is_err() {
                    return Ok(seq);
                }
                seq += 1;
            }
        })
    };

    // Workers.
    let page_rx = Arc::new(Mutex::new(page_rx));
    let (done_tx, mut done_rx) = mpsc::channel::<Result<(u64, i32, PageStats), MigrateError>>(
        options.concurrency.max(1) * 2,
    );
    let mut workers = JoinSet::new();
    let slots = Arc::new(slots::PageSlots::new(options.concurrency));
    for _ in 0..options.concurrency.max(1) {
        // The write procedure's settings that concern identity items are its defaults (they
        // are never compressed, and the bulk step deletes nothing).
        let replicator = Replicator::new(pool.clone(), store.clone(), Settings::default());
        let (rx, tx, slots) = (page_rx.clone(), done_tx.clone(), slots.clone());
        let settings = options.page.clone();
        let attempts = options.page_attempts;
        workers.spawn(async move {
            loop {
                let Some((seq, ids)) = rx.lock().await.recv().await else {
                    return;
                };
                let (first, last) = (ids[0], ids[ids.len() - 1]);
                let result =
                    migrate_page_with_retries(&replicator, &settings, &slots, &ids, attempts)
                        .await
                        .map(|stats| (seq, last, stats))
                        .map_err(|source| MigrateError::Page {
                            first,
                            last,
                            source,
                        });
                let failed = result.is_err();
                if tx.send(result).await.is_err() || failed {
                    return;
                }
            }
        });
    }
    drop(done_tx);

    // Coordinator: counters, progress, and the checkpoint (low-water mark).
    let mut summary = Summary {
        project_id: project,
        environment_id: scope.environment_id,
        resumed_after_id: resumed_after,
        identities: total.max(0) as u64,
        ..Summary::default()
    };
    let (mut migrated, mut unchanged, mut skipped, mut deferred) = (
        job.migrated.max(0) as u64,
        job.unchanged.max(0) as u64,
        job.skipped.max(0) as u64,
        job.deferred.max(0) as u64,
    );
    let mut progress = progress::Progress::new(
        "identity migration",
        summary.identities,
        options.progress_bar,
        options.log_every,
    );
    let mut finished: BTreeMap<u64, i32> = BTreeMap::new();
    let mut next_seq = 0u64;
    let mut watermark = resumed_after;
    let mut conn = pool.acquire().await?;
    let mut failure = None;
    while let Some(result) = done_rx.recv().await {
        let (seq, last, stats) = match result {
            Ok(r) => r,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        let n = stats.migrated + stats.unchanged + stats.skipped.len() as u64 + stats.deferred;
        summary.migrated += stats.migrated;
        summary.unchanged += stats.unchanged;
        summary.skipped += stats.skipped.len() as u64;
        summary.deferred += stats.deferred;
        summary.items_written += stats.items;
        migrated += stats.migrated;
        unchanged += stats.unchanged;
        skipped += stats.skipped.len() as u64;
        deferred += stats.deferred;
        for s in stats.skipped {
            if summary.skipped_examples.len() < 20 {
                summary.skipped_examples.push(s);
            }
        }
        progress.advance(n);
        finished.insert(seq, last);
        while let Some(last) = finished.remove(&next_seq) {
            watermark = last;
            next_seq += 1;
        }
        status::checkpoint(
            &mut conn, project, env_filter, watermark, migrated, unchanged, skipped, deferred,
            false,
        )
        .await?;
        crate::failpoint::hang_point(crate::failpoint::IDENTITY_PAGE_CHECKPOINTED).await;
    }
    progress.finish();
    if let Some(e) = failure {
        workers.abort_all();
        producer.abort();
        return Err(e);
    }
    while workers.join_next().await.is_some() {}
    let pages = producer
        .await
        .map_err(|e| MigrateError::Db(sqlx::Error::Protocol(format!("page producer: {e}"))))??;
    debug_assert_eq!(pages, next_seq);

    status::checkpoint(
        &mut conn, project, env_filter, watermark, migrated, unchanged, skipped, deferred, true,
    )
    .await?;
    if scope.environment_id.is_none() && meta.status() != MigrationStatus::Completed {
        meta.migration_end_time = Some(status::now_iso());
        status::write_metadata(store, project, &meta).await?;
    }
    summary.status = if scope.environment_id.is_none() {
        meta.status().as_str().to_string()
    } else {
        status::read_metadata(store, project)
            .await?
            .status()
            .as_str()
            .to_string()
    };
    summary.seconds = started.elapsed().as_secs_f64();
    summary.identities_per_second =
        (summary.migrated + summary.unchanged) as f64 / summary.seconds.max(1e-9);
    tracing::info!(
        project,
        migrated = summary.migrated,
        unchanged = summary.unchanged,
        skipped = summary.skipped,
        deferred = summary.deferred,
        seconds = summary.seconds,
        status = %summary.status,
        "identity migration finished"
    );
    Ok(summary)
}
