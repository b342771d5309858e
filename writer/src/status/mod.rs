//! `writer status`: the operator's one view of the pipeline, and a check for cron and
//! readiness probes.
//!
//! - [`gather`] reads the figures (I/O): capture's state and the change log, the queue, dead
//!   letters by kind, the replication lag of the last minutes (`edge.write_log`), identity
//!   migrations, the last `writer verify` (`edge.verify_run`), and per region the
//!   acknowledgements of a sample of recent writes from the replication ledger (one Query per
//!   item: bounded, never a Scan).
//! - [`report`] judges them against [`Thresholds`] and renders text or JSON (no I/O).
//! - [`regions`] summarises the sampled acknowledgements per region (no I/O).
//!
//! Everything it reads is durable, so it runs as its own process, beside or without the
//! daemon.

pub mod gather;
pub mod regions;
pub mod report;

use std::time::Duration;

pub use gather::{gather, Figures, LedgerSource};
pub use report::{assess, Problem, Report};

/// When something needs an operator.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Thresholds {
    /// The oldest due document, or the oldest unresolved change, has waited longer than this.
    #[serde(rename = "max_due_age_seconds", serialize_with = "secs")]
    pub max_due_age: Duration,
    /// More dead letters than this (the writer's, and separately ingestion's).
    pub max_dead_letters: i64,
    /// A region has not acknowledged a write made longer ago than this.
    #[serde(rename = "unconfirmed_after_seconds", serialize_with = "secs")]
    pub unconfirmed_after: Duration,
    /// A running identity migration made no progress for this long.
    #[serde(rename = "migration_stall_seconds", serialize_with = "secs")]
    pub migration_stall: Duration,
    /// The last verify finished longer ago than this, or never ran (None: not judged).
    #[serde(rename = "verify_max_age_seconds", serialize_with = "opt_secs")]
    pub verify_max_age: Option<Duration>,
    /// The writer's p99 replication lag over the window is above this (None: not judged).
    #[serde(rename = "max_lag_p99_seconds", serialize_with = "opt_secs")]
    pub max_lag_p99: Option<Duration>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_due_age: Duration::from_secs(300),
            max_dead_letters: 0,
            unconfirmed_after: Duration::from_secs(300),
            migration_stall: Duration::from_secs(600),
            verify_max_age: None,
            max_lag_p99: None,
        }
    }
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// What to look at.
#[derive(Debug, Clone)]
pub struct Options {
    /// The window of the replication lag figures (at most `state::write_log::RETENTION`).
    pub lag_window: Duration,
    /// Regions whose consumers should acknowledge (regions found acknowledging are reported
    /// too).
    pub regions: Vec<String>,
    /// How many recent writes' acknowledgements to check (0: none, no ledger reads).
    pub ack_sample: usize,
    pub thresholds: Thresholds,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            lag_window: Duration::from_secs(300),
            regions: Vec::new(),
            ack_sample: 50,
            thresholds: Thresholds::default(),
        }
    }
}

/// Why the status could not be read (not a judgement: that is [`Report`]).
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("Postgres: reading {what}: {source}")]
    Postgres {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("DynamoDB: reading the replication ledger {ledger}: {message}")]
    Ledger { ledger: String, message: String },
}
