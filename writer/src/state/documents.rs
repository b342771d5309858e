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

/// version, content_hash, deleted, leased_until.
type StateRow = (Option<i64>, Option<String>, bool, Option<DateTime<Utc>>);

/// Takes a document's lock in the caller's transaction, waiting for it (bounded by the
/// transaction's `lock_timeout`), and returns its state.
pub async fn lock(conn: &mut PgConnection, doc_key: &str) -> Result<DocState, sqlx::Error> {
    // The row can be removed between the insert and the lock by pruning (a deleted
    // identity's row, `state::prune`); it is then simply created again.
    for _ in 0..3 {
        sqlx::query("INSERT INTO edge.document (doc_key) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(doc_key)
            .execute(&mut *conn)
            .await?;
        let row: Option<StateRow> = sqlx::query_as(
            r#"SELECT d.version, d.content_hash, d.deleted,
                          (SELECT l.until FROM edge.write_lease l
                           WHERE l.doc_key = d.doc_key AND l.until > now()) AS leased_until
                   FROM edge.document d WHERE d.doc_key = $1 FOR NO KEY UPDATE OF d"#,
        )
        .bind(doc_key)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some((version, content_hash, deleted, leased_until)) = row {
            return Ok(DocState {
                version,
                content_hash,
                deleted,
                leased_until,
            });
        }
    }
    Err(sqlx::Error::RowNotFound)
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
    let rows: Vec<(&str, TableKind, &Value)> =
        items.iter().map(|(t, k)| (doc_key, *t, k)).collect();
    record_items_of_many(conn, &rows).await
}

/// [`record_items`] for many documents in one statement: `(doc_key, table, item key)`.
pub async fn record_items_of_many(
    conn: &mut PgConnection,
    rows: &[(&str, TableKind, &Value)],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let docs: Vec<&str> = rows.iter().map(|(d, _, _)| *d).collect();
    let kinds: Vec<&str> = rows.iter().map(|(_, t, _)| t.as_str()).collect();
    let keys: Vec<&Value> = rows.iter().map(|(_, _, k)| *k).collect();
    sqlx::query(
        r#"INSERT INTO edge.document_item (doc_key, table_kind, item_key)
           SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[])
           ON CONFLICT (doc_key, table_kind, item_key) DO UPDATE SET removed_at = NULL"#,
    )
    .bind(&docs)
    .bind(&kinds)
    .bind(&keys)
    .execute(conn)
    .await?;
    Ok(())
}

/// The items of many documents not yet removed, as `doc_key -> [(table, key JSON text)]`.
pub async fn live_items_of_many(
    conn: &mut PgConnection,
    doc_keys: &[&str],
) -> Result<std::collections::HashMap<String, Vec<(TableKind, String)>>, sqlx::Error> {
    let rows: Vec<(String, String, Value)> = sqlx::query_as(
        r#"SELECT doc_key, table_kind, item_key FROM edge.document_item
           WHERE doc_key = ANY($1) AND removed_at IS NULL"#,
    )
    .bind(doc_keys)
    .fetch_all(conn)
    .await?;
    let mut out: std::collections::HashMap<String, Vec<(TableKind, String)>> = Default::default();
    for (doc, table, key) in rows {
        if let Some(t) = TableKind::parse(&table) {
            out.entry(doc).or_default().push((t, key.to_string()));
        }
    }
    Ok(out)
}

/// Makes sure the documents' rows (their locks) exist.
pub async fn ensure_many(conn: &mut PgConnection, doc_keys: &[String]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO edge.document (doc_key) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(doc_keys)
    .execute(conn)
    .await?;
    Ok(())
}

/// A document locked by [`lock_many_skip_locked`].
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LockedDoc {
    pub doc_key: String,
    pub content_hash: Option<String>,
    /// The queue row's `seq` at lock time, if the document is queued.
    pub pending_seq: Option<i64>,
    /// An unexpired bulk-write lease holds it.
    pub leased: bool,
}

/// Locks, in the caller's transaction, those of the documents whose lock is free (in key
/// order), without waiting for the others.
pub async fn lock_many_skip_locked(
    conn: &mut PgConnection,
    doc_keys: &[String],
) -> Result<Vec<LockedDoc>, sqlx::Error> {
    sqlx::query_as(
        r#"SELECT d.doc_key, d.content_hash, p.seq AS pending_seq,
                  EXISTS (SELECT 1 FROM edge.write_lease l
                          WHERE l.doc_key = d.doc_key AND l.until > now()) AS leased
           FROM edge.document d LEFT JOIN edge.pending p ON p.doc_key = d.doc_key
           WHERE d.doc_key = ANY($1)
           ORDER BY d.doc_key
           FOR NO KEY UPDATE OF d SKIP LOCKED"#,
    )
    .bind(doc_keys)
    .fetch_all(conn)
    .await
}

/// [`record_write`] for many documents written with one version from one snapshot.
pub async fn record_writes(
    conn: &mut PgConnection,
    doc_keys: &[String],
    content_hashes: &[Option<&str>],
    next_projection_at: &[Option<DateTime<Utc>>],
    version: i64,
    source_time: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        r#"UPDATE edge.document d
           SET version = $2, content_hash = x.h, deleted = (x.h IS NULL), written_at = now(),
               source_time = $3, next_projection_at = x.n, foreign_since = NULL,
               foreign_state = NULL
           FROM unnest($1::text[], $4::text[], $5::timestamptz[]) AS x(k, h, n)
           WHERE d.doc_key = x.k"#,
    )
    .bind(doc_keys)
    .bind(version)
    .bind(source_time)
    .bind(content_hashes)
    .bind(next_projection_at)
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

/// A completed write, as [`record_write`] records it.
#[derive(Debug, Clone, Copy)]
pub struct Written<'a> {
    pub version: i64,
    /// None: the document's items were deleted.
    pub content_hash: Option<&'a str>,
    pub source_time: DateTime<Utc>,
    pub next_projection_at: Option<DateTime<Utc>>,
    /// The write put the document's items at `version` (false: it only deleted items).
    pub put_items: bool,
    /// Capture time of the oldest queued change the write covered (None: not a queued
    /// change), for the replication lag in `edge.write_log`.
    pub first_change_at: Option<DateTime<Utc>>,
}

/// Records a completed write (in the lock's transaction), and appends it to
/// `edge.write_log` in the same statement.
pub async fn record_write(
    conn: &mut PgConnection,
    doc_key: &str,
    written: &Written<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        r#"WITH w AS (
               UPDATE edge.document
               SET version = $2, content_hash = $3, deleted = ($3 IS NULL), written_at = now(),
                   source_time = $4, next_projection_at = $5, foreign_since = NULL,
                   foreign_state = NULL
               WHERE doc_key = $1
               RETURNING doc_key)
           INSERT INTO edge.write_log (doc_key, version, put_items, first_change_at)
           SELECT doc_key, $2, $6, $7 FROM w"#,
    )
    .bind(doc_key)
    .bind(written.version)
    .bind(written.content_hash)
    .bind(written.source_time)
    .bind(written.next_projection_at)
    .bind(written.put_items)
    .bind(written.first_change_at)
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
