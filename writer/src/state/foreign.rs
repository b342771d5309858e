//! Identity items written by someone else (the edge): `edge.document.foreign_since` and
//! `foreign_state`, and the digests of edge images ingested into core (`edge.ingested`,
//! written by `edge_ingest`).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// The digest of the last edge image of an identity item that was ingested into core.
pub async fn ingested_digest(
    pool: &PgPool,
    composite_key: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT digest FROM edge.ingested WHERE composite_key = $1")
        .bind(composite_key)
        .fetch_optional(pool)
        .await
}

/// Records that the document's item was found written by someone else (`state`:
/// `awaiting_ingestion` or `edge_owned`); returns since when (the first time it was found).
pub async fn mark(pool: &PgPool, doc_key: &str, state: &str) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar(
        r#"UPDATE edge.document SET foreign_since = COALESCE(foreign_since, now()),
               foreign_state = $2
           WHERE doc_key = $1
           RETURNING foreign_since"#,
    )
    .bind(doc_key)
    .bind(state)
    .fetch_one(pool)
    .await
}

/// Documents whose item waits for ingestion or is left to the edge: `doc_key -> state`.
pub async fn all(pool: &PgPool) -> Result<Vec<(String, String, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        r#"SELECT doc_key, foreign_state, foreign_since FROM edge.document
           WHERE foreign_state IS NOT NULL"#,
    )
    .fetch_all(pool)
    .await
}
