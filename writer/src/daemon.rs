//! `writer run`: the long-running replication loop.
//!
//! Tasks: a capture task (change log -> queue; LISTEN wakes it), `workers` replication tasks
//! (queue -> DynamoDB), and a gauge task. Each runs under a supervisor that
//! restarts it, with backoff, when it panics or ends while no shutdown was asked for, logs it
//! and counts it (`writer_task_restarts_total`); [`Health`] keeps what `/healthz` reports.
//! Shutdown is a watch channel; tasks look at it only between units of work, never between a
//! DynamoDB write and its bookkeeping, and `run` returns once all of them have stopped.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use crate::capture;
use crate::failpoint;
use crate::failure_policy::error_chain;
use crate::health::{self, Health};
use crate::metrics as m;
use crate::replicate::Replicator;
use crate::state::pending;
use crate::store::ItemStore;

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Documents replicated concurrently.
    pub workers: usize,
    /// Identity documents a worker takes together when many are due
    /// ([`Replicator::replicate_due`]).
    pub batch: usize,
    /// Polling interval: the fallback when notifications are lost.
    pub poll_interval: Duration,
    /// Change rows claimed per capture transaction.
    pub capture_batch: i64,
    /// A worker busy on one document this long, or no worker finishing one this long, while
    /// due work waits this long, makes the writer unhealthy.
    pub stuck_after: Duration,
    /// First wait before a failed task is restarted; doubled per restart up to
    /// `restart_backoff_cap`, and back to this once a task has run for a minute.
    pub restart_backoff: Duration,
    pub restart_backoff_cap: Duration,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            workers: 8,
            batch: 25,
            poll_interval: Duration::from_secs(1),
            capture_batch: 1000,
            stuck_after: Duration::from_secs(300),
            restart_backoff: Duration::from_secs(1),
            restart_backoff_cap: Duration::from_secs(60),
        }
    }
}

/// A task that ran this long before failing restarts after the first backoff again.
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// Runs until `shutdown` becomes true.
pub async fn run<S: ItemStore>(
    replicator: Replicator<S>,
    config: DaemonConfig,
    shutdown: watch::Receiver<bool>,
) {
    let health = Arc::new(Health::new(config.workers.max(1), config.stuck_after));
    run_with_health(replicator, config, health, shutdown).await;
}

/// [`run`], recording the tasks' liveness in `health` (shared with `/healthz`; made with
/// `config.workers` workers).
pub async fn run_with_health<S: ItemStore>(
    replicator: Replicator<S>,
    config: DaemonConfig,
    health: Arc<Health>,
    shutdown: watch::Receiver<bool>,
) {
    let pool = replicator.pool().clone();
    let wake_workers = Arc::new(Notify::new());
    let mut tasks = JoinSet::new();
    let supervisor = Supervisor {
        health: health.clone(),
        shutdown: shutdown.clone(),
        backoff: config.restart_backoff,
        backoff_cap: config.restart_backoff_cap,
    };

    tasks.spawn(supervisor.clone().run("capture".into(), {
        let (pool, config, shutdown) = (pool.clone(), config.clone(), shutdown.clone());
        let (wake_workers, health) = (wake_workers.clone(), health.clone());
        move || {
            capture_loop(
                pool.clone(),
                config.clone(),
                health.clone(),
                wake_workers.clone(),
                shutdown.clone(),
            )
        }
    }));
    for index in 0..health.workers() {
        tasks.spawn(supervisor.clone().run(format!("worker-{index}"), {
            let (replicator, wake, shutdown) =
                (replicator.clone(), wake_workers.clone(), shutdown.clone());
            let (health, poll_interval) = (health.clone(), config.poll_interval);
            let batch = config.batch;
            move || {
                worker_loop(
                    replicator.clone(),
                    index,
                    batch,
                    health.clone(),
                    poll_interval,
                    wake.clone(),
                    shutdown.clone(),
                )
            }
        }));
    }
    tasks.spawn(supervisor.run("gauges".into(), {
        let (pool, shutdown) = (pool, shutdown);
        move || gauge_loop(pool.clone(), shutdown.clone())
    }));
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "writer supervisor ended abnormally");
        }
    }
    tracing::info!("writer stopped");
}

#[derive(Clone)]
struct Supervisor {
    health: Arc<Health>,
    shutdown: watch::Receiver<bool>,
    backoff: Duration,
    backoff_cap: Duration,
}

impl Supervisor {
    /// Runs the task `start` makes, and a new one after each panic or unexpected end, until
    /// shutdown.
    async fn run<F, Fut>(mut self, name: String, mut start: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut backoff = self.backoff;
        loop {
            let started = Instant::now();
            self.health.task_started(&name);
            let ended = tokio::spawn(start()).await;
            // Shutdown asked for, or its sender gone (the owner of the daemon dropped it).
            if *self.shutdown.borrow() || self.shutdown.has_changed().is_err() {
                return;
            }
            if started.elapsed() >= STABLE_AFTER {
                backoff = self.backoff;
            }
            self.health.task_down(&name);
            m::record_task_restart(&name);
            match ended {
                Ok(()) => tracing::error!(
                    task = %name,
                    restart_in_ms = backoff.as_millis() as u64,
                    "writer task ended unexpectedly; restarting it"
                ),
                Err(e) => tracing::error!(
                    task = %name,
                    restart_in_ms = backoff.as_millis() as u64,
                    panic = %panic_message(e),
                    "writer task panicked; restarting it"
                ),
            }
            tokio::select! {
                _ = self.shutdown.changed() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.backoff_cap);
        }
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let payload = e.into_panic();
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_string()
    }
}

/// Drains the change log into the queue; when it is empty, sleeps until a capture trigger
/// notifies (see [`capture::listen`] for the wake-lock handshake) or the poll interval.
async fn capture_loop(
    pool: sqlx::PgPool,
    config: DaemonConfig,
    health: Arc<Health>,
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
        let drained = capture::drain_all(&pool, config.capture_batch).await;
        health.capture_progressed();
        match drained {
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
    index: usize,
    batch: usize,
    health: Arc<Health>,
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
        let busy = health.busy(index);
        failpoint::hang_point(failpoint::WORKER_TAKES_DOCUMENT).await;
        failpoint::panic_point(failpoint::WORKER_TAKES_DOCUMENT);
        let next = replicator.replicate_due(batch).await;
        busy.done();
        match next {
            Ok(done) if !done.is_empty() => {
                for outcome in done.iter().flatten() {
                    tracing::debug!(doc = %outcome.doc_key, version = ?outcome.version,
                        written = outcome.written, deleted = outcome.deleted,
                        unchanged = outcome.unchanged, "replicated");
                }
                // Failures were logged and rescheduled or parked by the replicator.
                continue;
            }
            Ok(_) => health.idle(index),
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

/// The queue gauges, every 5 s; and every minute old edge merge state and write log rows
/// pruned and a log line `writer queue` with the same figures and the replication lag of the
/// minute ([`crate::lag_window`]), from which the deployment's log metric filters publish
/// `FlagsmithEdge/DeadLetters`, `QueueDepth`, `QueueDue`, `WriterLagP50Seconds`,
/// `WriterLagP99Seconds`, the heartbeat `FlagsmithEdge/OldestDueAgeSeconds` and
/// `FlagsmithEdge/OldestChangeAgeSeconds` (ECS log drivers do not carry embedded metrics). The
/// line is written only when the queue could be read: a writer that cannot is silent, and
/// the heartbeat's alarm treats silence as breaching.
async fn gauge_loop(pool: sqlx::PgPool, mut shutdown: watch::Receiver<bool>) {
    let mut last_log: Option<std::time::Instant> = None;
    loop {
        // Histogram samples wait in the recorder until a scrape or an upkeep drains them; where
        // nothing scrapes /metrics (the ECS service), only this keeps memory flat.
        m::upkeep();
        match queue_figures(&pool).await {
            Ok(q) => {
                m::record_queue(q.depth, q.due, q.dead_letters);
                m::record_ages(q.oldest_due_age, q.oldest_change_age);
                if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    last_log = Some(std::time::Instant::now());
                    capture::control::report(&pool).await;
                    match crate::state::prune::gone_identities(&pool, 10_000).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(
                            rows = n,
                            "pruned the document rows of deleted identities"
                        ),
                        Err(e) => tracing::warn!(
                            error = %e,
                            "pruning the document rows of deleted identities failed"
                        ),
                    }
                    // The write log beyond the longest window `writer status` looks at.
                    // In batches until nothing older is left, so a busy minute cannot make
                    // the log outgrow its hour.
                    const BATCH: i64 = 100_000;
                    loop {
                        match crate::state::write_log::prune(&pool, BATCH).await {
                            Ok(n) if n < BATCH as u64 => break,
                            Ok(_) => continue,
                            Err(e) => {
                                tracing::warn!(error = %e, "pruning the write log failed");
                                break;
                            }
                        }
                    }
                    // The merge rule's state of edge writes that can no longer arrive.
                    match edge_ingest::clock::prune(&pool, 10_000).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(rows = n, "pruned old edge merge state"),
                        Err(e) => tracing::warn!(error = %e, "pruning old edge merge state failed"),
                    }
                    // The lag of the writes since the last line (absent when none).
                    let lag = crate::lag_window::take();
                    tracing::info!(
                        queue_depth = q.depth,
                        queue_due = q.due,
                        dead_letters = q.dead_letters,
                        oldest_due_age_seconds = q.oldest_due_age.as_secs(),
                        oldest_change_age_seconds = q.oldest_change_age.as_secs(),
                        lag_samples = lag.map(|l| l.count),
                        lag_p50_seconds = lag.map(|l| l.p50),
                        lag_p99_seconds = lag.map(|l| l.p99),
                        lag_max_seconds = lag.map(|l| l.max),
                        "writer queue"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the queue figures failed"),
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

struct QueueFigures {
    depth: i64,
    due: i64,
    dead_letters: i64,
    oldest_due_age: Duration,
    oldest_change_age: Duration,
}

async fn queue_figures(pool: &sqlx::PgPool) -> Result<QueueFigures, sqlx::Error> {
    let (depth, due) = pending::depth(pool).await?;
    let dead_letters = crate::state::dead_letters::count(pool).await?;
    Ok(QueueFigures {
        depth,
        due,
        dead_letters,
        oldest_due_age: health::oldest_due_age(pool).await?,
        oldest_change_age: health::oldest_change_age(pool).await?,
    })
}
