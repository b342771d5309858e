//! `edge.dead_letter`: documents that could not be projected or written.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct DeadLetter {
    pub doc_key: String,
    pub error_kind: String,
    pub error: String,
    pub attempts: i32,
    pub first_failed_at: DateTime<Utc>,
    pub last_failed_at: DateTime<Utc>,
}

pub async fn park(
    pool: &PgPool,
    doc_key: &str,
    error_kind: &str,
    error: &str,
    attempts: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        r#"INSERT INTO edge.dead_letter (doc_key, error_kind, error, attempts)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (doc_key) DO UPDATE SET
               error_kind = excluded.error_kind, error = excluded.error,
               attempts = edge.dead_letter.attempts + excluded.attempts,
               last_failed_at = now()"#,
    )
    .bind(doc_key)
    .bind(error_kind)
    .bind(error)
    .bind(attempts)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn list(pool: &PgPool) -> Result<Vec<DeadLetter>, sqlx::Error> {
    sqlx::query_as(
        r#"SELECT doc_key, error_kind, error, attempts, first_failed_at, last_failed_at
           FROM edge.dead_letter ORDER BY last_failed_at DESC"#,
    )
    .fetch_all(pool)
    .await
}

/// Dead letters of one kind: how many, and the one parked first.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct KindSummary {
    /// `invalid_data`, `too_large`, `rejected`, `persistent`, ...; `ingestion` for edge items
    /// that could not be ingested into core (`edge.ingest_dead_letter`).
    pub kind: String,
    pub count: i64,
    /// The document key (the item key, for ingestion) parked first.
    pub oldest_key: String,
    pub oldest_failed_at: DateTime<Utc>,
    /// Its error.
    pub oldest_error: String,
}

/// Dead letters by kind, the writer's and ingestion's, each with its oldest.
pub async fn by_kind(pool: &PgPool) -> Result<Vec<KindSummary>, sqlx::Error> {
    sqlx::query_as(
        r#"SELECT kind, count, oldest_key, oldest_failed_at, oldest_error FROM (
               SELECT DISTINCT ON (error_kind) error_kind AS kind,
                      count(*) OVER (PARTITION BY error_kind) AS count,
                      doc_key AS oldest_key, first_failed_at AS oldest_failed_at,
                      error AS oldest_error
               FROM edge.dead_letter
               ORDER BY error_kind, first_failed_at, doc_key) w
           UNION ALL
           SELECT * FROM (
               SELECT 'ingestion', count(*) OVER (), item_key, first_failed_at, error
               FROM edge.ingest_dead_letter
               ORDER BY first_failed_at, item_key
               LIMIT 1) i
           ORDER BY kind"#,
    )
    .fetch_all(pool)
    .await
}

/// How many documents are parked.
pub async fn count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM edge.dead_letter")
        .fetch_one(pool)
        .await
}
