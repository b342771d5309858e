//! `edge.document` (per-document state and lock) and `edge.document_item` (the items a
//! document may have in DynamoDB).

use chrono::{DateTime, Utc};
use edge_documents::tables::TableKind;
use serde_json::Value;
use sqlx::PgConnection;

/// What the writer last wrote for a document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocState {
    pub version: Option<i64>,
    pub content_hash: Option<String>,
    pub deleted: bool,
    /// An unexpired bulk-write lease: no write before this time (see `edge.write_lease`).
    pub leased_until: Option<DateTime<Utc>>,
}

/// An item recorded for a document.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedItem {
    pub table: TableKind,
    pub key: Value,
    /// Set once a delete of the item was applied; the record is kept until the delete
    /// re-check has run (a late put from a writer that lost its lock could resurrect it).
    pub removed_at: Option<DateTime<Utc>>,
}

/// Takes a document's lock in the caller's transaction, waiting for it (bounded by the
/// transaction's `lock_timeout`), and returns its state.
pub async fn lock(conn: &mut PgConnection, doc_key: &str) -> Result<DocState, sqlx::Error> {
    sqlx::query("INSERT INTO edge.document (doc_key) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(doc_key)
        .execute(&mut *conn)
        .await?;
    let (version, content_hash, deleted, leased_until): (
        Option<i64>,
        Option<String>,
        bool,
        Option<DateTime<Utc>>,
    ) = sqlx::query_as(
        r#"SELECT d.version, d.content_hash, d.deleted,
                  (SELECT l.until FROM edge.write_lease l
                   WHERE l.doc_key = d.doc_key AND l.until > now()) AS leased_until
           FROM edge.document d WHERE d.doc_key = $1 FOR NO KEY UPDATE OF d"#,
    )
    .bind(doc_key)
    .fetch_one(conn)
    .await?;
    Ok(DocState {
        version,
        content_hash,
        deleted,
        leased_until,
    })
}

/// A new version from the global sequence. Called after the snapshot, under the lock.
pub async fn next_version(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT nextval('edge.document_version_seq')")
        .fetch_one(conn)
        .await
}

/// Records the items about to be written, before writing them (committed at once, on a
/// connection other than the lock's), so an item is known even if the writer dies right
/// after DynamoDB accepted it.
pub async fn record_items(
    conn: &mut PgConnection,
    doc_key: &str,
    items: &[(TableKind, Value)],
) -> Result<(), sqlx::Error> {
    if items.is_empty() {
        return Ok(());
    }
    let kinds: Vec<&str> = items.iter().map(|(t, _)| t.as_str()).collect();
    let keys: Vec<Value> = items.iter().map(|(_, k)| k.clone()).collect();
    sqlx::query(
        r#"INSERT INTO edge.document_item (doc_key, table_kind, item_key)
           SELECT $1, t, k FROM unnest($2::text[], $3::jsonb[]) AS x(t, k)
           ON CONFLICT (doc_key, table_kind, item_key) DO UPDATE SET removed_at = NULL"#,
    )
    .bind(doc_key)
    .bind(&kinds)
    .bind(&keys)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn recorded_items(
    conn: &mut PgConnection,
    doc_key: &str,
) -> Result<Vec<RecordedItem>, sqlx::Error> {
    let rows: Vec<(String, Value, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT table_kind, item_key, removed_at FROM edge.document_item WHERE doc_key = $1",
    )
    .bind(doc_key)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(t, key, removed_at)| {
            Some(RecordedItem {
                table: TableKind::parse(&t)?,
                key,
                removed_at,
            })
        })
        .collect())
}

/// Marks an item as removed (keeps the first removal time).
pub async fn mark_removed(
    conn: &mut PgConnection,
    doc_key: &str,
    table: TableKind,
    key: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        r#"UPDATE edge.document_item SET removed_at = COALESCE(removed_at, now())
           WHERE doc_key = $1 AND table_kind = $2 AND item_key = $3"#,
    )
    .bind(doc_key)
    .bind(table.as_str())
    .bind(key)
    .execute(conn)
    .await?;
    Ok(())
}

/// Forgets an item whose removal has been re-checked.
pub async fn forget_item(
    conn: &mut PgConnection,
    doc_key: &str,
    table: TableKind,
    key: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM edge.document_item WHERE doc_key = $1 AND table_kind = $2 AND item_key = $3",
    )
    .bind(doc_key)
    .bind(table.as_str())
    .bind(key)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a completed write (in the lock's transaction).
pub async fn record_write(
    conn: &mut PgConnection,
    doc_key: &str,
    version: i64,
    content_hash: Option<&str>,
    source_time: DateTime<Utc>,
    next_projection_at: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        r#"UPDATE edge.document
           SET version = $2, content_hash = $3, deleted = ($3 IS NULL), written_at = now(),
               source_time = $4, next_projection_at = $5
           WHERE doc_key = $1"#,
    )
    .bind(doc_key)
    .bind(version)
    .bind(content_hash)
    .bind(source_time)
    .bind(next_projection_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Updates only the scheduled re-projection time (nothing was written).
pub async fn record_next_projection(
    conn: &mut PgConnection,
    doc_key: &str,
    next_projection_at: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE edge.document SET next_projection_at = $2 WHERE doc_key = $1")
        .bind(doc_key)
        .bind(next_projection_at)
        .execute(conn)
        .await?;
    Ok(())
}
