//! Prometheus metrics: names in one place, recorded through the `metrics` facade and
//! rendered by `/metrics`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::failure_policy::FailureKind;

pub const DOCUMENTS_TOTAL: &str = "writer_documents_total";
pub const ITEMS_WRITTEN_TOTAL: &str = "writer_items_written_total";
pub const ITEMS_DELETED_TOTAL: &str = "writer_items_deleted_total";
pub const WRITES_SUPERSEDED_TOTAL: &str = "writer_writes_superseded_total";
pub const FAILURES_TOTAL: &str = "writer_failures_total";
pub const CHANGES_CAPTURED_TOTAL: &str = "writer_changes_captured_total";
pub const REPLICATION_SECONDS: &str = "writer_replication_seconds";
pub const LAG_SECONDS: &str = "writer_lag_seconds";
pub const QUEUE_DEPTH: &str = "writer_queue_depth";
pub const QUEUE_DUE: &str = "writer_queue_due";
pub const DEAD_LETTERS: &str = "writer_dead_letters";
pub const FOREIGN_ITEMS_TOTAL: &str = "writer_foreign_items_total";
pub const TASK_RESTARTS_TOTAL: &str = "writer_task_restarts_total";
pub const OLDEST_DUE_AGE_SECONDS: &str = "writer_oldest_due_age_seconds";
pub const OLDEST_CHANGE_AGE_SECONDS: &str = "writer_oldest_change_age_seconds";
pub const SYNC_REQUESTS_TOTAL: &str = "writer_sync_requests_total";
pub const TRANSACTIONS_TOTAL: &str = "writer_transactions_total";

/// Installs the global recorder (once per process) and returns the handle that renders it.
pub fn install() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ])
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests); ours then stays unused.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Drains recorded histogram samples into their buckets (a scrape does the same).
pub fn upkeep() {
    install().run_upkeep();
}

/// What one document's replication did.
#[derive(Debug, Clone, Copy)]
pub struct DocumentWrite {
    pub unchanged: bool,
    pub written: usize,
    pub deleted: usize,
    pub superseded: usize,
}

pub fn record_outcome(outcome: DocumentWrite, took: Duration) {
    let result = if outcome.unchanged {
        "unchanged"
    } else {
        "written"
    };
    metrics::counter!(DOCUMENTS_TOTAL, "result" => result).increment(1);
    metrics::counter!(ITEMS_WRITTEN_TOTAL).increment(outcome.written as u64);
    metrics::counter!(ITEMS_DELETED_TOTAL).increment(outcome.deleted as u64);
    metrics::counter!(WRITES_SUPERSEDED_TOTAL).increment(outcome.superseded as u64);
    metrics::histogram!(REPLICATION_SECONDS).record(took.as_secs_f64());
}

/// Time from the oldest change a write covered to the write.
pub fn record_lag(first_change_at: DateTime<Utc>) {
    let lag = (Utc::now() - first_change_at)
        .num_microseconds()
        .unwrap_or(0) as f64
        / 1e6;
    metrics::histogram!(LAG_SECONDS).record(lag.max(0.0));
    crate::lag_window::record(lag);
}

pub fn record_failure(kind: FailureKind) {
    metrics::counter!(FAILURES_TOTAL, "kind" => kind.as_str()).increment(1);
}

/// Captured changes by origin: `core` (Flagsmith's own writes) or `edge` (made by edge ->
/// core ingestion, re-projected but not new core changes).
pub fn record_captured(core: usize, edge: usize) {
    metrics::counter!(CHANGES_CAPTURED_TOTAL, "origin" => "core").increment(core as u64);
    metrics::counter!(CHANGES_CAPTURED_TOTAL, "origin" => "edge").increment(edge as u64);
}

/// Identity writes that found an item someone else wrote, by what happened: `adopted` (its
/// content was ingested; replaced by the merged document), `awaiting_ingestion`,
/// `ingested_by_writer` (no consumer ingested it in time), `edge_owned` (ingestion off).
pub fn record_foreign(what: &'static str) {
    metrics::counter!(FOREIGN_ITEMS_TOTAL, "result" => what).increment(1);
}

pub fn record_queue(depth: i64, due: i64, dead_letters: i64) {
    metrics::gauge!(QUEUE_DEPTH).set(depth as f64);
    metrics::gauge!(QUEUE_DUE).set(due as f64);
    metrics::gauge!(DEAD_LETTERS).set(dead_letters as f64);
}

/// The heartbeat: how long the oldest due document and the oldest unresolved change have waited.
pub fn record_ages(oldest_due: Duration, oldest_change: Duration) {
    metrics::gauge!(OLDEST_DUE_AGE_SECONDS).set(oldest_due.as_secs_f64());
    metrics::gauge!(OLDEST_CHANGE_AGE_SECONDS).set(oldest_change.as_secs_f64());
}

/// A supervised daemon task (`capture`, `worker-N`, `gauges`) panicked or ended
/// unexpectedly and is being restarted.
pub fn record_task_restart(task: &str) {
    metrics::counter!(TASK_RESTARTS_TOTAL, "task" => task.to_string()).increment(1);
}

/// `POST /v1/sync` answers by result: `ok`, `unconfirmed` (written, a region waited for did not
/// acknowledge in time), `unauthorized`, `disabled`, `bad_request`, `busy`, `timeout`,
/// `not_found`, `failed`.
pub fn record_sync(result: &'static str) {
    metrics::counter!(SYNC_REQUESTS_TOTAL, "result" => result).increment(1);
}

/// 1 while capture is paused; capture gaps not yet backfilled.
pub fn record_capture(enabled: bool, open_gaps: usize) {
    metrics::gauge!("writer_capture_paused").set(if enabled { 0.0 } else { 1.0 });
    metrics::gauge!("writer_capture_gaps_open").set(open_gaps as f64);
}

/// TransactWriteItems calls of batches, by result: `applied`, `cancelled` (a condition failed
/// or another write met one of its items: nothing applied, its documents written again) or
/// `failed` (DynamoDB unreachable or throttled after the retries).
pub fn record_transaction(result: &'static str) {
    metrics::counter!(TRANSACTIONS_TOTAL, "result" => result).increment(1);
}
