//! `edge.ingest_dead_letter`: edge items that cannot be ingested, with their key and reason.

use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

/// Parks an edge item (or counts one more attempt of an item parked already).
pub async fn park(
    pool: &PgPool,
    item_key: &str,
    error: &str,
    item: Option<&Value>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        r#"INSERT INTO edge.ingest_dead_letter (item_key, error, item) VALUES ($1, $2, $3)
           ON CONFLICT (item_key) DO UPDATE SET error = $2, item = $3,
               attempts = edge.ingest_dead_letter.attempts + 1, last_failed_at = now()"#,
    )
    .bind(item_key)
    .bind(error)
    .bind(item)
    .execute(pool)
    .await?;
    Ok(())
}

/// Removes the dead letter of an item that was ingested after all.
pub async fn clear(pool: &PgPool, item_key: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM edge.ingest_dead_letter WHERE item_key = $1")
        .bind(item_key)
        .execute(pool)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct IngestDeadLetter {
    pub item_key: String,
    pub error: String,
    pub attempts: i32,
    pub first_failed_at: chrono::DateTime<chrono::Utc>,
    pub last_failed_at: chrono::DateTime<chrono::Utc>,
}

pub async fn list(pool: &PgPool) -> Result<Vec<IngestDeadLetter>, sqlx::Error> {
    sqlx::query_as(
        r#"SELECT item_key, error, attempts, first_failed_at, last_failed_at
           FROM edge.ingest_dead_letter ORDER BY first_failed_at"#,
    )
    .fetch_all(pool)
    .await
}
