//! Crash points for the crash-recovery tests.
//!
//! `EDGE_WRITER_CRASH_AT=<name>` makes the process abort at that point, as `kill -9` would:
//! no destructors, no rollback, connections cut. Unset in production, where a crash point
//! costs one comparison with a value read once.

use std::sync::OnceLock;

/// Between DynamoDB accepting a document's writes and the bookkeeping commit.
pub const AFTER_DYNAMODB_WRITE: &str = "after-dynamodb-write";

pub fn crash_point(name: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("EDGE_WRITER_CRASH_AT").ok());
    if at.as_deref() == Some(name) {
        eprintln!("crash point {name} reached: aborting");
        std::process::abort();
    }
}
