//! `edge.write_log`: the writes of the last hour (appended by
//! [`crate::state::documents::finish`]), for `writer status`: the replication lag over
//! the last minutes, and the recent writes whose acknowledgements it checks.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;

/// How long rows are kept: the longest window `writer status` looks at.
pub const RETENTION: Duration = Duration::from_secs(3600);

/// Replication lag (commit to DynamoDB) of the writes recorded within a window.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct Lag {
    /// Writes recorded in the window (replications of queued changes, and the others).
    pub writes: i64,
    /// Writes of queued changes, whose lag is measured.
    pub measured: i64,
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
    pub max_seconds: Option<f64>,
}

pub async fn lag(pool: &PgPool, window: Duration) -> Result<Lag, sqlx::Error> {
    sqlx::query_as(
        r#"WITH w AS (
               SELECT extract(epoch FROM written_at - first_change_at)::float8 AS lag
               FROM edge.write_log
               WHERE written_at > now() - make_interval(secs => $1))
           SELECT count(*) AS writes,
                  count(lag) AS measured,
                  percentile_cont(0.5) WITHIN GROUP (ORDER BY lag) AS p50_seconds,
                  percentile_cont(0.99) WITHIN GROUP (ORDER BY lag) AS p99_seconds,
                  max(lag) AS max_seconds
           FROM w"#,
    )
    .bind(window.as_secs_f64())
    .fetch_one(pool)
    .await
}

/// A recent write of a document (its newest), with the items it has in DynamoDB.
#[derive(Debug, Clone, PartialEq)]
pub struct RecentWrite {
    pub doc_key: String,
    pub version: i64,
    pub written_at: DateTime<Utc>,
    pub put_items: bool,
    /// (table kind, item key as JSON, removed: a delete of it was applied and awaits its
    /// re-check).
    pub items: Vec<(String, Value, bool)>,
}

/// The newest write of each of the `limit` most recently written documents, newest first,
/// with their recorded items.
pub async fn recent(pool: &PgPool, limit: i64) -> Result<Vec<RecentWrite>, sqlx::Error> {
    type Row = (
        String,
        i64,
        DateTime<Utc>,
        bool,
        Option<String>,
        Option<Value>,
        Option<bool>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        r#"WITH newest AS (
               SELECT DISTINCT ON (doc_key) doc_key, version, written_at, put_items
               FROM (SELECT doc_key, version, written_at, put_items FROM edge.write_log
                     ORDER BY written_at DESC LIMIT $1 * 4) r
               ORDER BY doc_key, written_at DESC),
           picked AS (SELECT * FROM newest ORDER BY written_at DESC LIMIT $1)
           SELECT p.doc_key, p.version, p.written_at, p.put_items,
                  i.table_kind, i.item_key, i.removed_at IS NOT NULL
           FROM picked p LEFT JOIN edge.document_item i ON i.doc_key = p.doc_key
           ORDER BY p.written_at DESC, p.doc_key, i.table_kind, i.item_key"#,
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut out: Vec<RecentWrite> = Vec::new();
    for (doc_key, version, written_at, put_items, table, key, removed) in rows {
        if out.last().is_none_or(|w| w.doc_key != doc_key) {
            out.push(RecentWrite {
                doc_key,
                version,
                written_at,
                put_items,
                items: Vec::new(),
            });
        }
        if let (Some(table), Some(key), Some(removed), Some(last)) =
            (table, key, removed, out.last_mut())
        {
            last.items.push((table, key, removed));
        }
    }
    Ok(out)
}

/// Removes up to `limit` rows older than [`RETENTION`]. Returns how many.
pub async fn prune(pool: &PgPool, limit: i64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        r#"DELETE FROM edge.write_log WHERE ctid IN (
               SELECT ctid FROM edge.write_log
               WHERE written_at < now() - make_interval(secs => $1)
               LIMIT $2)"#,
    )
    .bind(RETENTION.as_secs_f64())
    .bind(limit)
    .execute(pool)
    .await?
    .rows_affected())
}
