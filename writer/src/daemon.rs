//! `writer run`: the long-running replication loop.
//!
//! Tasks: a listener (LISTEN, wake-up hints), a capture task (change log -> queue), `workers`
//! replication tasks (queue -> DynamoDB), and a gauge task. Shutdown is a watch channel;
//! tasks look at it only between units of work, never between a DynamoDB write and its
//! bookkeeping, and `run` returns once all of them have stopped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use crate::capture;
use crate::metrics as m;
use crate::replicate::{error_chain, Replicator};
use crate::state::pending;
use crate::store::ItemStore;

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Documents replicated concurrently.
    pub workers: usize,
    /// Polling interval: the fallback when notifications are lost.
    pub poll_interval: Duration,
    /// Change rows claimed per capture transaction.
    pub capture_batch: i64,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            workers: 8,
            poll_interval: Duration::from_secs(1),
            capture_batch: 1000,
        }
    }
}

/// Runs until `shutdown` becomes true.
pub async fn run<S: ItemStore>(
    replicator: Replicator<S>,
    config: DaemonConfig,
    shutdown: watch::Receiver<bool>,
) {
    let pool = replicator.pool().clone();
    let wake_workers = Arc::new(Notify::new());
    let mut tasks = JoinSet::new();

    tasks.spawn(capture_loop(
        pool.clone(),
        config.clone(),
        wake_workers.clone(),
        shutdown.clone(),
    ));
    for _ in 0..config.workers.max(1) {
        tasks.spawn(worker_loop(
            replicator.clone(),
            config.poll_interval,
            wake_workers.clone(),
            shutdown.clone(),
        ));
    }
    tasks.spawn(gauge_loop(pool, shutdown));
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "writer task ended abnormally");
        }
    }
    tracing::info!("writer stopped");
}

/// Drains the change log into the queue; when it is empty, sleeps until a capture trigger
/// notifies (see [`capture::listen`] for the wake-lock handshake) or the poll interval.
async fn capture_loop(
    pool: sqlx::PgPool,
    config: DaemonConfig,
    wake_workers: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    const LOCK_BACKOFF_START: Duration = Duration::from_millis(50);
    const LOCK_BACKOFF_CAP: Duration = Duration::from_secs(2);
    /// How long after its last work the capture task keeps probing instead of sleeping.
    const LINGER: Duration = Duration::from_secs(1);
    const LINGER_POLL: Duration = Duration::from_millis(5);
    let mut listener = capture::listen::ChangeListener::new(pool.clone());
    let mut lock_backoff = LOCK_BACKOFF_START;
    let mut busy_at = Instant::now();
    loop {
        if *shutdown.borrow() {
            listener.release().await;
            return;
        }
        match capture::drain_all(&pool, config.capture_batch).await {
            Ok(drained) if drained.changes > 0 || drained.fanned_out > 0 => {
                busy_at = Instant::now();
                listener.release().await;
                m::record_captured(drained.changes - drained.edge_changes, drained.edge_changes);
                tracing::debug!(
                    changes = drained.changes,
                    edge_changes = drained.edge_changes,
                    documents = drained.documents,
                    fanned_out = drained.fanned_out,
                    "captured"
                );
                wake_workers.notify_waiters();
                continue;
            }
            Ok(_) => {
                // Empty. Right after work, linger: look again every few milliseconds with a
                // one-row probe. Under steady load the writer so never sleeps, and no core
                // transaction pays for a NOTIFY (which serialises commits).
                if !listener.holds_wake_lock() && busy_at.elapsed() < LINGER {
                    tokio::select! {
                        _ = shutdown.changed() => {}
                        _ = tokio::time::sleep(LINGER_POLL) => {}
                    }
                    while busy_at.elapsed() < LINGER && !*shutdown.borrow() {
                        match capture::has_work(&pool).await {
                            Ok(true) => break,
                            Ok(false) => tokio::time::sleep(LINGER_POLL).await,
                            Err(_) => break,
                        }
                    }
                    if busy_at.elapsed() < LINGER {
                        continue;
                    }
                }
                // Then take the wake lock, and drain once more before sleeping (the
                // transactions that did not notify have ended by then).
                if !listener.holds_wake_lock() {
                    if listener.go_idle().await {
                        lock_backoff = LOCK_BACKOFF_START;
                        continue;
                    }
                    // A core transaction that did not notify is still open: look again soon
                    // rather than after the poll interval (its changes are not visible yet).
                    let wait = lock_backoff.min(config.poll_interval);
                    lock_backoff = (lock_backoff * 2).min(LOCK_BACKOFF_CAP);
                    listener.sleep(wait, &mut shutdown).await;
                    continue;
                }
            }
            Err(e) => tracing::warn!(error = %error_chain(&e), "capture failed; retrying"),
        }
        listener.sleep(config.poll_interval, &mut shutdown).await;
    }
}

async fn worker_loop<S: ItemStore>(
    replicator: Replicator<S>,
    poll_interval: Duration,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        // Registered before looking at the queue, so a wake-up sent meanwhile is not lost.
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match replicator.replicate_next().await {
            Ok(Some(Ok(outcome))) => {
                tracing::debug!(doc = %outcome.doc_key, version = ?outcome.version,
                    written = outcome.written, deleted = outcome.deleted,
                    unchanged = outcome.unchanged, "replicated");
                continue;
            }
            // Failures were logged and rescheduled or parked by the replicator.
            Ok(Some(Err(_))) => continue,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "cannot reach the writer's state in Postgres; retrying");
            }
        }
        let wait = match pending::next_due(replicator.pool()).await {
            Ok(Some(due)) => (due - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .clamp(Duration::from_millis(50), poll_interval),
            _ => poll_interval,
        };
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = &mut notified => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The queue gauges, every 5 s; and every minute old edge merge state pruned and a log line
/// `writer queue` with the same figures, from which the deployment's log metric filter publishes
/// `FlagsmithEdge/DeadLetters` (ECS log drivers do not carry embedded metrics).
async fn gauge_loop(pool: sqlx::PgPool, mut shutdown: watch::Receiver<bool>) {
    let mut last_log: Option<std::time::Instant> = None;
    loop {
        // Histogram samples wait in the recorder until a scrape or an upkeep drains them; where
        // nothing scrapes /metrics (the ECS service), only this keeps memory flat.
        m::upkeep();
        if let Ok((depth, due)) = pending::depth(&pool).await {
            let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM edge.dead_letter")
                .fetch_one(&pool)
                .await
                .unwrap_or(0);
            m::record_queue(depth, due, dead);
            if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                last_log = Some(std::time::Instant::now());
                capture::control::report(&pool).await;
                match crate::state::prune::gone_identities(&pool, 10_000).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(rows = n, "pruned the document rows of deleted identities")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "pruning the document rows of deleted identities failed")
                    }
                }
                // The merge rule's state of edge writes that can no longer arrive.
                match edge_ingest::clock::prune(&pool, 10_000).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(rows = n, "pruned old edge merge state"),
                    Err(e) => tracing::warn!(error = %e, "pruning old edge merge state failed"),
                }
                tracing::info!(
                    queue_depth = depth,
                    queue_due = due,
                    dead_letters = dead,
                    "writer queue"
                );
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
