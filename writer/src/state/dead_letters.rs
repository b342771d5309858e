//! `edge.dead_letter`: documents that could not be projected or written.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

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

/// Removes a document from dead letters after a successful write.
pub async fn clear(conn: &mut PgConnection, doc_key: &str) -> Result<(), sqlx::Error> {
    clear_many(conn, &[doc_key]).await
}

pub async fn clear_many(conn: &mut PgConnection, doc_keys: &[&str]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM edge.dead_letter WHERE doc_key = ANY($1)")
        .bind(doc_keys)
        .execute(conn)
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
