//! Fault points for the crash-recovery and supervision tests.
//!
//! - `EDGE_WRITER_CRASH_AT=<name>` makes the process abort at that point, as `kill -9` would:
//!   no destructors, no rollback, connections cut.
//! - `EDGE_WRITER_PANIC_AT=<name>[:<times>]` panics the first `times` (default 1) times the
//!   point is reached, as a bug would: the task unwinds and its supervisor restarts it.
//! - `EDGE_WRITER_HANG_AT=<name>:<path>` waits at the point while a file exists at `path`, as
//!   a call that never returns would (the test creates the file, and removes it to release).
//!
//! Unset in production, where a point costs one comparison with a value read once.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Between DynamoDB accepting a document's writes and the bookkeeping commit.
pub const AFTER_DYNAMODB_WRITE: &str = "after-dynamodb-write";
/// In a replication worker, when it takes the next document from the queue.
pub const WORKER_TAKES_DOCUMENT: &str = "worker-takes-document";
/// In `POST /v1/sync`, once the request holds its place in the budget.
pub const SYNC_STARTS: &str = "sync-starts";
/// In the identity migration job, after a page's checkpoint was saved.
pub const IDENTITY_PAGE_CHECKPOINTED: &str = "identity-page-checkpointed";

/// A pause between the statements of a snapshot read (zero: none), set by the snapshot
/// isolation test: a snapshot's statements go in one message, so the window in which a
/// commit could land between two of them is otherwise too short for a test to hit.
static SNAPSHOT_PAUSE_MICROS: AtomicU64 = AtomicU64::new(0);

pub fn set_snapshot_pause(pause: Duration) {
    SNAPSHOT_PAUSE_MICROS.store(pause.as_micros() as u64, Ordering::SeqCst);
}

pub fn snapshot_pause() -> Duration {
    Duration::from_micros(SNAPSHOT_PAUSE_MICROS.load(Ordering::Relaxed))
}

pub fn crash_point(name: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("EDGE_WRITER_CRASH_AT").ok());
    if at.as_deref() == Some(name) {
        eprintln!("crash point {name} reached: aborting");
        std::process::abort();
    }
}

/// Panics here the configured number of times (`EDGE_WRITER_PANIC_AT`).
pub fn panic_point(name: &str) {
    static AT: OnceLock<Option<(String, AtomicU32)>> = OnceLock::new();
    let at = AT.get_or_init(|| {
        let value = std::env::var("EDGE_WRITER_PANIC_AT").ok()?;
        let (point, times) = match value.split_once(':') {
            Some((p, t)) => (p.to_string(), t.parse().unwrap_or(1)),
            None => (value, 1),
        };
        Some((point, AtomicU32::new(times)))
    });
    if let Some((point, left)) = at {
        if point == name
            && left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            panic!("panic point {name} reached");
        }
    }
}

/// Waits here while a file exists at the configured path (`EDGE_WRITER_HANG_AT`).
pub async fn hang_point(name: &str) {
    static AT: OnceLock<Option<(String, String)>> = OnceLock::new();
    let at = AT.get_or_init(|| {
        let value = std::env::var("EDGE_WRITER_HANG_AT").ok()?;
        let (point, path) = value.split_once(':')?;
        Some((point.to_string(), path.to_string()))
    });
    let Some((point, path)) = at else { return };
    if point != name || !std::path::Path::new(path).exists() {
        return;
    }
    eprintln!("hang point {name} reached: waiting while {path} exists");
    while std::path::Path::new(path).exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("hang point {name} released");
}
