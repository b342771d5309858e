//! `edge.document` (per-document state and lock) and `edge.document_item` (the items a
//! document may have in DynamoDB).

use chrono::{DateTime, Utc};
use edge_documents::tables::TableKind;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};

/// What the writer last wrote for a document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocState {
    pub version: Option<i64>,
    pub content_hash: Option<String>,
    pub deleted: bool,
    /// An unexpired bulk-write lease: no write before this time (see `edge.write_lease`).
    pub leased_until: Option<DateTime<Utc>>,
    /// A bulk-write lease that ended without being released: batches its job abandoned may
    /// land until this time (past or future). The document is written in full, and again
    /// at this time if it is still ahead (see [`crate::state::leases`]).
    pub lease_settles_at: Option<DateTime<Utc>>,
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

/// version, content_hash, deleted, leased_until, lease_settles_at.
type StateRow = (
    Option<i64>,
    Option<String>,
    bool,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

/// The lease columns of a document's state (`d`): an unexpired lease's end, and when an
/// ended, unreleased one settles.
pub(crate) const LEASE_COLUMNS: &str = "(SELECT l.until FROM edge.write_lease l
        WHERE l.doc_key = d.doc_key AND l.until > now()) AS leased_until,
       (SELECT COALESCE(l.settled_at, l.until) FROM edge.write_lease l
        WHERE l.doc_key = d.doc_key AND l.until <= now()) AS lease_settles_at";

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
        let row: Option<StateRow> = sqlx::query_as(&format!(
            "SELECT d.version, d.content_hash, d.deleted, {LEASE_COLUMNS}
             FROM edge.document d WHERE d.doc_key = $1 FOR NO KEY UPDATE OF d"
        ))
        .bind(doc_key)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some((version, content_hash, deleted, leased_until, lease_settles_at)) = row {
            return Ok(DocState {
                version,
                content_hash,
                deleted,
                leased_until,
                lease_settles_at,
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
    let docs: Vec<String> = rows.iter().map(|(d, _, _)| d.to_string()).collect();
    let tables: Vec<TableKind> = rows.iter().map(|(_, t, _)| *t).collect();
    let keys: Vec<Value> = rows.iter().map(|(_, _, k)| (*k).clone()).collect();
    record_item_keys(conn, docs, tables, keys).await
}

/// [`record_items_of_many`] from owned columns: `docs[i]`, `tables[i]`, `keys[i]` is a row.
pub async fn record_item_keys(
    conn: &mut PgConnection,
    docs: Vec<String>,
    tables: Vec<TableKind>,
    keys: Vec<Value>,
) -> Result<(), sqlx::Error> {
    if docs.is_empty() {
        return Ok(());
    }
    let kinds: Vec<&'static str> = tables.iter().map(|t| t.as_str()).collect();
    sqlx::query(
        r#"INSERT INTO edge.document_item (doc_key, table_kind, item_key)
           SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[])
           ON CONFLICT (doc_key, table_kind, item_key) DO UPDATE SET removed_at = NULL"#,
    )
    .bind(docs)
    .bind(kinds)
    .bind(keys)
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
    /// A bulk-write lease holds it, or one that ended has not settled yet: left to the
    /// live path.
    pub leased: bool,
    /// A lease that ended unreleased has settled: what DynamoDB holds may be an abandoned
    /// batch's, so the document is written whatever its recorded content (and the lease
    /// removed with the write's bookkeeping).
    pub lease_settled: bool,
}

/// Locks, in the caller's transaction, those of the documents whose lock is free (in key
/// order), without waiting for the others.
pub async fn lock_many_skip_locked(
    conn: &mut PgConnection,
    doc_keys: &[String],
) -> Result<Vec<LockedDoc>, sqlx::Error> {
    sqlx::query_as(
        r#"SELECT d.doc_key, d.content_hash, p.seq AS pending_seq,
                  EXISTS (SELECT 1 FROM edge.write_lease l WHERE l.doc_key = d.doc_key
                          AND COALESCE(l.settled_at, l.until) > now()) AS leased,
                  EXISTS (SELECT 1 FROM edge.write_lease l WHERE l.doc_key = d.doc_key
                          AND COALESCE(l.settled_at, l.until) <= now()) AS lease_settled
           FROM edge.document d LEFT JOIN edge.pending p ON p.doc_key = d.doc_key
           WHERE d.doc_key = ANY($1)
           ORDER BY d.doc_key
           FOR NO KEY UPDATE OF d SKIP LOCKED"#,
    )
    .bind(doc_keys)
    .fetch_all(conn)
    .await
}

/// The state of many documents written with one version from one snapshot (the
/// migration page; [`finish`] records one document).
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

/// A completed write, as [`finish`] records it.
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

/// Everything a replication records under the lock once DynamoDB accepted its writes (or
/// once it found nothing to write), for [`finish`].
#[derive(Debug, Clone)]
pub struct Finish<'a> {
    /// The write (None: nothing was written; only the re-projection time is recorded).
    pub written: Option<Written<'a>>,
    pub next_projection_at: Option<DateTime<Utc>>,
    /// Items whose delete was applied: marked removed (the first removal time is kept).
    pub removed: &'a [(TableKind, Value)],
    /// Items whose removal has been re-checked: forgotten.
    pub forgotten: &'a [(TableKind, Value)],
    /// The queue row's `seq` when the document was taken: the row is done unless a new change
    /// arrived since.
    pub claimed_seq: Option<i64>,
    /// Project the document again at this time (or earlier if it already is due earlier,
    /// or an ended bulk-write lease of the document settles earlier: see
    /// [`crate::state::leases`]).
    pub again_at: Option<DateTime<Utc>>,
}

/// Records the end of a replication in one statement, in the lock's transaction: the
/// document's state and its write log entry, its items' removals, its queue row (done, or
/// due again), its dead letter (cleared) and an ended bulk-write lease (removed once it has
/// settled; the caller wrote every item, [`DocState::lease_settles_at`]).
pub async fn finish(
    conn: &mut PgConnection,
    doc_key: &str,
    f: &Finish<'_>,
) -> Result<(), sqlx::Error> {
    let (removed_kinds, removed_keys): (Vec<&str>, Vec<&Value>) =
        f.removed.iter().map(|(t, k)| (t.as_str(), k)).unzip();
    let (forgotten_kinds, forgotten_keys): (Vec<&str>, Vec<&Value>) =
        f.forgotten.iter().map(|(t, k)| (t.as_str(), k)).unzip();
    let w = f.written.as_ref();
    sqlx::query(
        r#"WITH lease AS (
               -- A bulk write's lease that ended unreleased: the document is due again when
               -- it settles; once settled, this (full) write removes it.
               SELECT COALESCE(settled_at, until) AS settles FROM edge.write_lease
               WHERE doc_key = $1 AND until <= now()),
           due AS (
               SELECT LEAST($13::timestamptz,
                            (SELECT settles FROM lease WHERE settles > now())) AS at),
           settled AS (
               DELETE FROM edge.write_lease
               WHERE doc_key = $1 AND until <= now() AND COALESCE(settled_at, until) <= now()),
           w AS (
               UPDATE edge.document
               SET version = $2, content_hash = $3, deleted = ($3 IS NULL), written_at = now(),
                   source_time = $4, next_projection_at = $5, foreign_since = NULL,
                   foreign_state = NULL
               WHERE doc_key = $1 AND $2::bigint IS NOT NULL
               RETURNING doc_key),
           logged AS (
               INSERT INTO edge.write_log (doc_key, version, put_items, first_change_at)
               SELECT doc_key, $2, $6, $7 FROM w),
           unwritten AS (
               UPDATE edge.document SET next_projection_at = $5
               WHERE doc_key = $1 AND $2::bigint IS NULL),
           removed AS (
               UPDATE edge.document_item i SET removed_at = COALESCE(i.removed_at, now())
               FROM unnest($8::text[], $9::jsonb[]) AS x(t, k)
               WHERE i.doc_key = $1 AND i.table_kind = x.t AND i.item_key = x.k),
           forgotten AS (
               DELETE FROM edge.document_item i
               USING unnest($10::text[], $11::jsonb[]) AS x(t, k)
               WHERE i.doc_key = $1 AND i.table_kind = x.t AND i.item_key = x.k),
           done AS (
               DELETE FROM edge.pending
               WHERE doc_key = $1 AND seq = $12 AND (SELECT at FROM due) IS NULL),
           again AS (
               INSERT INTO edge.pending (doc_key, seq, not_before)
               SELECT $1, nextval('edge.pending_seq'), at FROM due WHERE at IS NOT NULL
               ON CONFLICT (doc_key) DO UPDATE SET
                   -- the row taken is done: it becomes a fresh row, due again
                   seq = CASE WHEN edge.pending.seq = $12 THEN excluded.seq
                              ELSE edge.pending.seq END,
                   not_before = CASE WHEN edge.pending.seq = $12 THEN excluded.not_before
                                     ELSE LEAST(edge.pending.not_before, excluded.not_before) END,
                   first_change_at = CASE WHEN edge.pending.seq = $12 THEN NULL
                                          ELSE edge.pending.first_change_at END,
                   last_change_at = CASE WHEN edge.pending.seq = $12 THEN NULL
                                         ELSE edge.pending.last_change_at END,
                   attempts = CASE WHEN edge.pending.seq = $12 THEN 0
                                   ELSE edge.pending.attempts END,
                   last_error = CASE WHEN edge.pending.seq = $12 THEN NULL
                                     ELSE edge.pending.last_error END)
           DELETE FROM edge.dead_letter WHERE doc_key = $1"#,
    )
    .bind(doc_key)
    .bind(w.map(|w| w.version))
    .bind(w.and_then(|w| w.content_hash))
    .bind(w.map(|w| w.source_time))
    .bind(f.next_projection_at)
    .bind(w.map(|w| w.put_items))
    .bind(w.and_then(|w| w.first_change_at))
    .bind(&removed_kinds)
    .bind(&removed_keys)
    .bind(&forgotten_kinds)
    .bind(&forgotten_keys)
    .bind(f.claimed_seq)
    .bind(f.again_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// version, doc_key, table_kind, item_key, removed_at (the item columns are NULL when none
/// is recorded).
type VersionAndItemRow = (
    i64,
    Option<String>,
    Option<String>,
    Option<Value>,
    Option<DateTime<Utc>>,
);

/// A new version from the global sequence and the items recorded for each of the documents,
/// in one statement. Called after the snapshot, under the documents' locks; the documents of
/// one batch share the version (versions need only grow per document).
pub async fn next_version_and_items(
    conn: &mut PgConnection,
    doc_keys: &[String],
) -> Result<(i64, std::collections::HashMap<String, Vec<RecordedItem>>), sqlx::Error> {
    let rows: Vec<VersionAndItemRow> = sqlx::query_as(
        r#"WITH v AS MATERIALIZED (SELECT nextval('edge.document_version_seq') AS version)
           SELECT v.version, i.doc_key, i.table_kind, i.item_key, i.removed_at
           FROM v LEFT JOIN edge.document_item i ON i.doc_key = ANY($1)"#,
    )
    .bind(doc_keys)
    .fetch_all(conn)
    .await?;
    let version = rows.first().map(|r| r.0).ok_or(sqlx::Error::RowNotFound)?;
    let mut items: std::collections::HashMap<String, Vec<RecordedItem>> = Default::default();
    for (_, doc_key, table, key, removed_at) in rows {
        let (Some(doc_key), Some(table), Some(key)) = (doc_key, table, key) else {
            continue;
        };
        if let Some(table) = TableKind::parse(&table) {
            items.entry(doc_key).or_default().push(RecordedItem {
                table,
                key,
                removed_at,
            });
        }
    }
    Ok((version, items))
}

/// When each of the given documents was last written (those written at all).
pub async fn written_at_of(
    pool: &PgPool,
    docs: &[String],
) -> Result<Vec<(String, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT doc_key, written_at FROM edge.document
          WHERE doc_key = ANY($1) AND written_at IS NOT NULL",
    )
    .bind(docs)
    .fetch_all(pool)
    .await
}

/// Documents written from a snapshot at or after `since`.
pub async fn written_since(
    pool: &PgPool,
    since: DateTime<Utc>,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT doc_key FROM edge.document WHERE source_time >= $1")
        .bind(since)
        .fetch_all(pool)
        .await
}

/// Every document the writer knows.
pub async fn all_keys(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT doc_key FROM edge.document")
        .fetch_all(pool)
        .await
}
