//! `edge.change_log`: the rows the capture triggers insert, claimed and deleted by the
//! capture task once resolved into the queue (`crate::capture`).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

/// One row of `edge.change_log`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChangeRow {
    pub id: i64,
    pub table_name: String,
    pub op: String,
    pub new_keys: Option<serde_json::Value>,
    pub old_keys: Option<serde_json::Value>,
    pub captured_at: DateTime<Utc>,
    /// `None` for a core change; `Some("edge")` for a change made by edge -> core ingestion
    /// (`edge_ingest`), which is re-projected but is not a new core change.
    pub origin: Option<String>,
}

/// The oldest `limit` rows no other session holds, locked until the transaction ends.
pub async fn claim(conn: &mut PgConnection, limit: i64) -> Result<Vec<ChangeRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, table_name, op, new_keys, old_keys, captured_at, origin
           FROM edge.change_log
          ORDER BY id
          LIMIT $1
            FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Deletes resolved rows.
pub async fn delete(conn: &mut PgConnection, ids: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM edge.change_log WHERE id = ANY($1)")
        .bind(ids)
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether there is anything to capture: a visible change row or a fan-out to page. One
/// cheap statement, for probing often.
pub async fn has_work(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM edge.change_log) OR EXISTS (SELECT 1 FROM edge.fanout)",
    )
    .fetch_one(pool)
    .await
}

/// Seconds the oldest row has waited (None when the log is empty). Rows are looked at in id
/// order, at most the first 1000: ids follow insertion, so the oldest capture time is among
/// them, and a backlog costs no full scan.
pub async fn oldest_secs(pool: &PgPool) -> Result<Option<f64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT extract(epoch FROM now() - min(captured_at))::float8
         FROM (SELECT captured_at FROM edge.change_log ORDER BY id LIMIT 1000) oldest",
    )
    .fetch_one(pool)
    .await
}

/// Rows of `edge.change_log` and the oldest one's capture time.
pub async fn size(pool: &PgPool) -> Result<(i64, Option<DateTime<Utc>>), sqlx::Error> {
    sqlx::query_as("SELECT count(*), min(captured_at) FROM edge.change_log")
        .fetch_one(pool)
        .await
}
