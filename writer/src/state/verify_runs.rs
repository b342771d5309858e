//! `edge.verify_run`: what each `writer verify` found, for `writer status`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::PgPool;

/// One run of `writer verify`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize)]
pub struct VerifyRun {
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// `clean`, `drift`, `repaired` or `failed`.
    pub outcome: String,
    pub regions: Vec<String>,
    pub repair: bool,
    pub expected_items: i64,
    /// Persisting drift by kind (`missing`, `stale`, `unconfirmed`, ...).
    #[sqlx(json)]
    pub drift_counts: BTreeMap<String, i64>,
    pub unprojectable: i64,
    pub repair_failures: i64,
    /// Why a failed run failed.
    pub error: Option<String>,
}

/// Records a run (its finish time is now), keeping the last 100.
pub async fn record(pool: &PgPool, run: &VerifyRun) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        r#"INSERT INTO edge.verify_run (started_at, outcome, regions, repair, expected_items,
                                        drift_counts, unprojectable, repair_failures, error)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"#,
    )
    .bind(run.started_at)
    .bind(&run.outcome)
    .bind(&run.regions)
    .bind(run.repair)
    .bind(run.expected_items)
    .bind(Json(&run.drift_counts))
    .bind(run.unprojectable)
    .bind(run.repair_failures)
    .bind(&run.error)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "DELETE FROM edge.verify_run WHERE id <= (SELECT max(id) - 100 FROM edge.verify_run)",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// The newest run, if verify ever ran.
pub async fn last(pool: &PgPool) -> Result<Option<VerifyRun>, sqlx::Error> {
    sqlx::query_as(
        r#"SELECT started_at, finished_at, outcome, regions, repair, expected_items,
                  drift_counts, unprojectable, repair_failures, error
           FROM edge.verify_run ORDER BY id DESC LIMIT 1"#,
    )
    .fetch_optional(pool)
    .await
}
