//! The writer daemon's liveness, as `/healthz` reports it: which supervised tasks are running
//! or being restarted, and whether the replication workers make progress while due work waits.
//!
//! The daemon's supervisor ([`crate::daemon`]) records task starts and restarts; each worker
//! marks itself busy for one unit of work ([`WorkerSlot::busy`]). [`Health::verdict`] judges
//! them against the age of the oldest due queue row ([`oldest_due_age`]):
//!
//! - a task is down (waiting for its restart), or restarted [`FLAPPING_RESTARTS`] times within
//!   [`FLAPPING_WINDOW`];
//! - due work waited longer than `stuck_after` while a worker has been busy on one unit of work
//!   longer than that (a hung call), or while no worker finished one for that long;
//! - a change waited in `edge.change_log` longer than `stuck_after` while the capture task
//!   finished no pass for that long.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgPool;

/// Restarts of one task within [`FLAPPING_WINDOW`] that make the writer unhealthy.
pub const FLAPPING_RESTARTS: usize = 3;
pub const FLAPPING_WINDOW: Duration = Duration::from_secs(600);

#[derive(Debug, Default)]
struct TaskState {
    running: bool,
    total_restarts: u64,
    recent_restarts: VecDeque<Instant>,
}

/// One replication worker's state: busy since when (milliseconds after the epoch, plus one;
/// zero while idle).
#[derive(Debug, Default)]
pub struct WorkerSlot {
    busy_since: AtomicU64,
}

/// Marks its worker idle when dropped; [`Busy::done`] counts the unit as progress.
pub struct Busy<'a> {
    health: &'a Health,
    slot: &'a WorkerSlot,
}

impl Busy<'_> {
    /// The unit of work ended (whatever its result): the worker made progress.
    pub fn done(self) {
        self.health.progressed();
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.slot.busy_since.store(0, Ordering::SeqCst);
    }
}

#[derive(Debug)]
pub struct Health {
    #[cfg_attr(test, allow(dead_code))]
    epoch: Instant,
    stuck_after: Duration,
    tasks: Mutex<BTreeMap<String, TaskState>>,
    workers: Vec<WorkerSlot>,
    /// When a worker last finished a unit of work (milliseconds after the epoch).
    last_progress: AtomicU64,
    /// When the capture task last finished a pass over the change log.
    capture_progress: AtomicU64,
    /// Milliseconds added to the clock (tests move time forward instead of sleeping).
    #[cfg(test)]
    skew_ms: AtomicU64,
}

/// How long the oldest work has waited: [`oldest_due_age`] and [`oldest_change_age`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Ages {
    pub oldest_due: Duration,
    pub oldest_change: Duration,
}

/// What `/healthz` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub healthy: bool,
    /// Why not, one line each (task and worker names, ages; no internal errors).
    pub problems: Vec<String>,
    /// Restarts since start, per task that was restarted.
    pub restarts: BTreeMap<String, u64>,
    pub oldest_due_age_seconds: f64,
    pub oldest_change_age_seconds: f64,
}

impl Health {
    pub fn new(workers: usize, stuck_after: Duration) -> Health {
        Health {
            epoch: Instant::now(),
            stuck_after,
            tasks: Mutex::new(BTreeMap::new()),
            workers: (0..workers).map(|_| WorkerSlot::default()).collect(),
            last_progress: AtomicU64::new(0),
            capture_progress: AtomicU64::new(0),
            #[cfg(test)]
            skew_ms: AtomicU64::new(0),
        }
    }

    #[cfg(not(test))]
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// In tests the clock stands still but for [`Self::advance`], so a loaded machine cannot
    /// make time pass between two assertions.
    #[cfg(test)]
    fn now_ms(&self) -> u64 {
        self.skew_ms.load(Ordering::SeqCst)
    }

    #[cfg(test)]
    fn advance(&self, by: Duration) {
        self.skew_ms
            .fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }

    fn progressed(&self) {
        self.last_progress.store(self.now_ms(), Ordering::SeqCst);
    }

    /// Worker `index` starts a unit of work.
    pub fn busy(&self, index: usize) -> Busy<'_> {
        let slot = &self.workers[index];
        slot.busy_since.store(self.now_ms() + 1, Ordering::SeqCst);
        Busy { health: self, slot }
    }

    /// Worker `index` found nothing due: idle, and not stuck.
    pub fn idle(&self, index: usize) {
        self.workers[index].busy_since.store(0, Ordering::SeqCst);
        self.progressed();
    }

    /// The capture task finished a pass (whatever its result).
    pub fn capture_progressed(&self) {
        self.capture_progress.store(self.now_ms(), Ordering::SeqCst);
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    fn with_task<T>(&self, name: &str, f: impl FnOnce(&mut TaskState) -> T) -> T {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        f(tasks.entry(name.to_string()).or_default())
    }

    pub fn task_started(&self, name: &str) {
        self.with_task(name, |t| t.running = true);
    }

    /// The task ended unexpectedly and waits for its restart.
    pub fn task_down(&self, name: &str) {
        let now = Instant::now();
        self.with_task(name, |t| {
            t.running = false;
            t.total_restarts += 1;
            t.recent_restarts.push_back(now);
        });
    }

    /// The judgement, given how long the oldest work has waited.
    pub fn verdict(&self, ages: Ages) -> Verdict {
        let oldest_due_age = ages.oldest_due;
        let mut problems = Vec::new();
        let mut restarts = BTreeMap::new();
        {
            let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
            for (name, t) in tasks.iter_mut() {
                while t
                    .recent_restarts
                    .front()
                    .is_some_and(|at| at.elapsed() > FLAPPING_WINDOW)
                {
                    t.recent_restarts.pop_front();
                }
                if !t.running {
                    problems.push(format!("task {name} is down, waiting for its restart"));
                }
                if t.recent_restarts.len() >= FLAPPING_RESTARTS {
                    problems.push(format!(
                        "task {name} restarted {} times in the last {} s",
                        t.recent_restarts.len(),
                        FLAPPING_WINDOW.as_secs()
                    ));
                }
                if t.total_restarts > 0 {
                    restarts.insert(name.clone(), t.total_restarts);
                }
            }
        }
        if oldest_due_age > self.stuck_after {
            let now = self.now_ms();
            let stuck_ms = self.stuck_after.as_millis() as u64;
            for (i, slot) in self.workers.iter().enumerate() {
                let since = slot.busy_since.load(Ordering::SeqCst);
                if since > 0 && now.saturating_sub(since - 1) > stuck_ms {
                    problems.push(format!(
                        "worker {i} has been busy on one document for {} s while due work waits {} s",
                        now.saturating_sub(since - 1) / 1000,
                        oldest_due_age.as_secs()
                    ));
                }
            }
            let quiet = now.saturating_sub(self.last_progress.load(Ordering::SeqCst));
            if quiet > stuck_ms {
                problems.push(format!(
                    "no worker finished a document for {} s while due work waits {} s",
                    quiet / 1000,
                    oldest_due_age.as_secs()
                ));
            }
        }
        let stuck_ms = self.stuck_after.as_millis() as u64;
        let capture_quiet = self
            .now_ms()
            .saturating_sub(self.capture_progress.load(Ordering::SeqCst));
        if ages.oldest_change > self.stuck_after && capture_quiet > stuck_ms {
            problems.push(format!(
                "capture finished no pass for {} s while a change waits {} s",
                capture_quiet / 1000,
                ages.oldest_change.as_secs()
            ));
        }
        Verdict {
            healthy: problems.is_empty(),
            problems,
            restarts,
            oldest_due_age_seconds: oldest_due_age.as_secs_f64(),
            oldest_change_age_seconds: ages.oldest_change.as_secs_f64(),
        }
    }
}

fn age(seconds: Option<f64>) -> Duration {
    Duration::from_secs_f64(seconds.unwrap_or(0.0).max(0.0))
}

/// How long the oldest due document has waited in `edge.pending` (zero when none is due):
/// the writer's heartbeat. A document being replicated stays due until it is done, so a hung
/// worker's document ages here too.
pub async fn oldest_due_age(pool: &PgPool) -> Result<Duration, sqlx::Error> {
    Ok(age(crate::state::pending::oldest_due_secs(pool).await?))
}

/// Both ages.
pub async fn ages(pool: &PgPool) -> Result<Ages, sqlx::Error> {
    Ok(Ages {
        oldest_due: oldest_due_age(pool).await?,
        oldest_change: oldest_change_age(pool).await?,
    })
}

/// How long the oldest row of `edge.change_log` has waited to be resolved into the queue (zero
/// when the log is empty). Rows are looked at in id order, at most the first 1000: ids follow
/// insertion, so the oldest capture time is among them, and a backlog costs no full scan.
pub async fn oldest_change_age(pool: &PgPool) -> Result<Duration, sqlx::Error> {
    Ok(age(crate::state::change_log::oldest_secs(pool).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(oldest_due: Duration) -> Ages {
        Ages {
            oldest_due,
            ..Ages::default()
        }
    }

    #[test]
    fn a_busy_worker_is_stuck_only_while_due_work_waits_past_the_threshold() {
        let health = Health::new(2, Duration::from_millis(20));
        health.task_started("worker-0");
        health.idle(0);
        let busy = health.busy(0);
        health.advance(Duration::from_millis(40));
        assert!(health.verdict(Ages::default()).healthy, "nothing due waits");
        assert!(health.verdict(due(Duration::from_millis(10))).healthy);
        let v = health.verdict(due(Duration::from_secs(1)));
        assert!(!v.healthy);
        assert!(v.problems.iter().any(|p| p.contains("worker 0")), "{v:?}");
        busy.done();
        assert!(health.verdict(due(Duration::from_secs(1))).healthy);
        health.advance(Duration::from_millis(40));
        let v = health.verdict(due(Duration::from_secs(1)));
        assert!(
            v.problems.iter().any(|p| p.contains("no worker finished")),
            "{v:?}"
        );
    }

    #[test]
    fn a_down_or_flapping_task_is_unhealthy() {
        let health = Health::new(1, Duration::from_secs(60));
        health.task_started("capture");
        assert!(health.verdict(Ages::default()).healthy);
        health.task_down("capture");
        let v = health.verdict(Ages::default());
        assert!(!v.healthy);
        assert_eq!(v.restarts["capture"], 1);
        health.task_started("capture");
        assert!(
            health.verdict(Ages::default()).healthy,
            "one restart is fine"
        );
        for _ in 1..FLAPPING_RESTARTS {
            health.task_down("capture");
            health.task_started("capture");
        }
        let v = health.verdict(Ages::default());
        assert!(
            v.problems.iter().any(|p| p.contains("restarted 3 times")),
            "{v:?}"
        );
    }

    #[test]
    fn capture_is_stuck_only_while_a_change_waits_past_the_threshold() {
        let health = Health::new(1, Duration::from_millis(20));
        health.capture_progressed();
        let waiting = Ages {
            oldest_change: Duration::from_secs(1),
            ..Ages::default()
        };
        assert!(health.verdict(waiting).healthy, "capture just passed");
        health.advance(Duration::from_millis(40));
        assert!(health.verdict(Ages::default()).healthy, "no change waits");
        let v = health.verdict(waiting);
        assert!(
            v.problems
                .iter()
                .any(|p| p.contains("capture finished no pass")),
            "{v:?}"
        );
        health.capture_progressed();
        assert!(health.verdict(waiting).healthy);
    }
}
