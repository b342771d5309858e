//! Installing, pausing, resuming and removing capture in the core database
//! (`writer migrate`, `writer capture ...`).
//!
//! Installation swaps one table's triggers at a time, each in its own short transaction with
//! a `lock_timeout`: at most one core table is locked at any moment, and never for longer
//! than the timeout. When the lock is not granted in time the step is retried with backoff,
//! and the sessions holding conflicting locks on the table are named in the log.
//!
//! Pausing and resuming replace the capture functions' bodies (see the capture-safety
//! migration): no lock on any core table. Every pause is recorded as a gap in
//! `edge.capture_gap`; the core changes made during a gap are not in the change log, so a
//! gap stays open until `writer backfill --gap` has replayed every document.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::state::capture;

/// SQLSTATE `lock_not_available` (a `lock_timeout` expired).
const LOCK_NOT_AVAILABLE: &str = "55P03";

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("capture of public.{table}: {source}")]
    Table {
        table: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "capture of public.{table}: no lock on the table within {waited:?} \
         (held by: {holders}); retry when those transactions have ended, \
         or raise --lock-wait-secs"
    )]
    LockWait {
        table: String,
        waited: Duration,
        holders: String,
    },
    #[error("{0}")]
    Sql(#[from] sqlx::Error),
}

impl ControlError {
    /// Whether the error is a lock timeout (retry later) rather than a real failure.
    pub fn is_lock_timeout(e: &sqlx::Error) -> bool {
        e.as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| c == LOCK_NOT_AVAILABLE)
    }
}

/// How long installation may wait for each table's lock.
#[derive(Debug, Clone, Copy)]
pub struct LockPolicy {
    /// `lock_timeout` of each attempt: how long Flagsmith's writes to one table may queue
    /// behind the trigger swap at most.
    pub lock_timeout: Duration,
    /// Total time to keep retrying one table before giving up.
    pub lock_wait: Duration,
}

impl Default for LockPolicy {
    fn default() -> Self {
        LockPolicy {
            lock_timeout: Duration::from_secs(2),
            lock_wait: Duration::from_secs(300),
        }
    }
}

pub use crate::state::capture::{captured_tables, close_gaps, open_gaps, Gap};

/// What installation did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct InstallReport {
    /// Tables whose triggers were (re)created.
    pub installed: Vec<String>,
    /// Tables whose triggers were already as wanted (no lock taken).
    pub unchanged: usize,
    /// Lock timeouts met on the way (each was retried).
    pub lock_retries: u32,
}

/// Installs (or brings up to date) the capture triggers of every captured table, one table
/// per transaction, then removes the older generic capture function once nothing uses it.
pub async fn install_all(pool: &PgPool, policy: LockPolicy) -> Result<InstallReport, ControlError> {
    let mut report = InstallReport::default();
    for table in captured_tables(pool).await? {
        let (changed, retries) =
            with_table_lock(pool, &table, policy, "edge.install_capture_trigger").await?;
        report.lock_retries += retries;
        if changed {
            report.installed.push(table);
        } else {
            report.unchanged += 1;
        }
    }
    // The generic function of the first capture migrations; no trigger uses it any more.
    let in_use: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
                         JOIN pg_namespace n ON n.oid = p.pronamespace
                        WHERE n.nspname = 'edge' AND p.proname = 'capture_change')",
    )
    .fetch_one(pool)
    .await?;
    if !in_use {
        sqlx::query("DROP FUNCTION IF EXISTS edge.capture_change()")
            .execute(pool)
            .await?;
    }
    Ok(report)
}

/// Removes the capture triggers from every captured table (and the capture functions), one
/// table per transaction. The `edge` schema and its data stay.
pub async fn uninstall_all(pool: &PgPool, policy: LockPolicy) -> Result<Vec<String>, ControlError> {
    let mut removed = Vec::new();
    for table in captured_tables(pool).await? {
        let (changed, _) =
            with_table_lock(pool, &table, policy, "edge.uninstall_capture_trigger").await?;
        if changed {
            removed.push(table.clone());
        }
        let name: String = sqlx::query_scalar("SELECT edge.capture_function_name($1)")
            .bind(&table)
            .fetch_one(pool)
            .await?;
        sqlx::query(&format!("DROP FUNCTION IF EXISTS edge.\"{name}\"()"))
            .execute(pool)
            .await?;
    }
    Ok(removed)
}

/// Runs `function(table)` (which returns whether it changed anything) in a short
/// transaction with the policy's lock timeout, retrying lock timeouts with backoff.
async fn with_table_lock(
    pool: &PgPool,
    table: &str,
    policy: LockPolicy,
    function: &str,
) -> Result<(bool, u32), ControlError> {
    let started = Instant::now();
    let mut retries = 0u32;
    let mut backoff = Duration::from_millis(200);
    loop {
        match try_with_lock(pool, table, policy.lock_timeout, function).await {
            Ok(changed) => return Ok((changed, retries)),
            Err(e) if ControlError::is_lock_timeout(&e) => {
                let holders = lock_holders(pool, table)
                    .await
                    .unwrap_or_else(|e| format!("unknown: cannot read pg_locks ({e})"));
                if started.elapsed() + backoff >= policy.lock_wait {
                    return Err(ControlError::LockWait {
                        table: table.to_string(),
                        waited: started.elapsed(),
                        holders,
                    });
                }
                retries += 1;
                tracing::warn!(
                    table = %format!("public.{table}"),
                    lock_timeout_ms = policy.lock_timeout.as_millis() as u64,
                    holders = %holders,
                    retry_in_ms = backoff.as_millis() as u64,
                    "waiting for a lock on a core table to swap its capture triggers; \
                     Flagsmith's writes to it were not held longer than the lock timeout"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(source) => {
                return Err(ControlError::Table {
                    table: table.to_string(),
                    source,
                })
            }
        }
    }
}

async fn try_with_lock(
    pool: &PgPool,
    table: &str,
    lock_timeout: Duration,
    function: &str,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(&format!(
        "SET LOCAL lock_timeout = '{}ms'",
        lock_timeout.as_millis().max(1)
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query("SET LOCAL client_min_messages = warning")
        .execute(&mut *tx)
        .await?;
    let changed: bool = sqlx::query_scalar(&format!("SELECT {function}($1)"))
        .bind(table)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(changed)
}

/// pid, state, seconds the transaction has been open, its query.
type LockHolder = (i32, Option<String>, Option<f64>, Option<String>);

/// The sessions holding a lock on `public.<table>` that conflicts with the trigger swap's
/// SHARE ROW EXCLUSIVE, described for the log.
async fn lock_holders(pool: &PgPool, table: &str) -> Result<String, sqlx::Error> {
    let rows: Vec<LockHolder> = sqlx::query_as(
        "SELECT a.pid, a.state,
                extract(epoch FROM now() - a.xact_start)::float8,
                left(regexp_replace(a.query, '\\s+', ' ', 'g'), 120)
           FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.relation = to_regclass(format('public.%I', $1::text)) AND l.granted
            AND l.pid <> pg_backend_pid()
            AND l.mode IN ('RowExclusiveLock', 'ShareUpdateExclusiveLock', 'ShareLock',
                           'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')
          ORDER BY a.xact_start
          LIMIT 5",
    )
    .bind(table)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Ok("no session now (the lock was released meanwhile)".into());
    }
    Ok(rows
        .into_iter()
        .map(|(pid, state, secs, query)| {
            format!(
                "pid {pid} ({}, transaction open {:.0} s: {})",
                state.unwrap_or_else(|| "?".into()),
                secs.unwrap_or(0.0),
                query.unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("; "))
}

/// Capture's state, for `writer capture status` and the writer's own reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaptureStatus {
    pub enabled: bool,
    pub reason: Option<String>,
    pub changed_at: DateTime<Utc>,
    /// Captured tables whose triggers are missing or not as wanted.
    pub tables_not_installed: Vec<String>,
    /// Pauses whose changes no backfill has replayed yet.
    pub open_gaps: Vec<Gap>,
    /// Change rows waiting to be resolved, and the oldest one's capture time.
    pub change_log_rows: i64,
    pub oldest_change_at: Option<DateTime<Utc>>,
}

impl CaptureStatus {
    /// Whether an operator must act: capture paused, triggers missing, or a gap to backfill.
    pub fn needs_operator(&self) -> bool {
        !self.enabled || !self.tables_not_installed.is_empty() || !self.open_gaps.is_empty()
    }
}

pub async fn status(pool: &PgPool) -> Result<CaptureStatus, sqlx::Error> {
    let switch = capture::switch(pool).await?;
    let tables_not_installed = capture::tables_not_installed(pool).await?;
    let open_gaps = open_gaps(pool).await?;
    let (change_log_rows, oldest_change_at) = crate::state::change_log::size(pool).await?;
    Ok(CaptureStatus {
        enabled: switch.enabled,
        reason: switch.reason,
        changed_at: switch.changed_at,
        tables_not_installed,
        open_gaps,
        change_log_rows,
        oldest_change_at,
    })
}

/// Pauses (`live = false`) or resumes capture. Returns whether the state changed.
pub async fn set_capture(
    pool: &PgPool,
    live: bool,
    reason: Option<&str>,
) -> Result<bool, sqlx::Error> {
    capture::set(pool, live, reason).await
}

/// Waits until every transaction that was running when the open gaps were resumed has
/// ended (its uncaptured changes are then visible to any snapshot taken afterwards), and
/// returns the gaps a backfill starting now closes. Fails if capture is still paused.
pub async fn settle_gaps(pool: &PgPool, patience: Duration) -> Result<Vec<i64>, GapError> {
    let started = Instant::now();
    loop {
        let (paused, unsettled, settled) = capture::gap_settlement(pool).await?;
        if paused {
            return Err(GapError::StillPaused);
        }
        if unsettled == 0 {
            return Ok(settled);
        }
        if started.elapsed() > patience {
            return Err(GapError::Unsettled(started.elapsed()));
        }
        tracing::info!(
            gaps = unsettled,
            "waiting for the transactions that were open when capture resumed to end"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GapError {
    #[error("capture is paused: resume it first (writer capture resume); a backfill now would miss what is changed after it")]
    StillPaused,
    #[error("transactions that were open when capture resumed are still open after {0:?}; retry when they have ended")]
    Unsettled(Duration),
    #[error("{0}")]
    Sql(#[from] sqlx::Error),
}

/// Logs a warning while capture is paused, its triggers are missing or a gap waits for a
/// backfill (the writer calls it at start and once a minute), and sets the gauges.
pub async fn report(pool: &PgPool) {
    let status = match status(pool).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the capture state");
            return;
        }
    };
    crate::metrics::record_capture(status.enabled, status.open_gaps.len());
    if !status.enabled {
        tracing::warn!(
            since = %status.changed_at.to_rfc3339(),
            reason = status.reason.as_deref().unwrap_or(""),
            "capture is PAUSED: core changes are not replicated; `writer capture resume`, then `writer backfill --gap`"
        );
    }
    if !status.tables_not_installed.is_empty() {
        tracing::warn!(
            tables = %status.tables_not_installed.join(","),
            "capture triggers are missing or outdated: changes to these tables are not captured; run `writer capture install`"
        );
    }
    if status.enabled && !status.open_gaps.is_empty() {
        tracing::warn!(
            gaps = status.open_gaps.len(),
            first_paused_at = %status.open_gaps[0].paused_at.to_rfc3339(),
            "changes made while capture was paused are not replicated yet; run `writer backfill --gap`"
        );
    }
}
