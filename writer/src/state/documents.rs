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

/// The lease columns of a document's state (`d`): an unexpired lease's end, and when an
/// ended, unreleased one settles.
pub(crate) const LEASE_COLUMNS: &str = "(SELECT l.until FROM edge.write_lease l
        WHERE l.doc_key = d.doc_key AND l.until > now()) AS leased_until,
       (SELECT COALESCE(l.settled_at, l.until) FROM edge.write_lease l
        WHERE l.doc_key = d.doc_key AND l.until <= now()) AS lease_settles_at";

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
    pub version: Option<i64>,
    pub content_hash: Option<String>,
    pub deleted: bool,
    /// The queue row at lock time, if the document is queued: its `seq` and the capture
    /// times of the changes it stands for.
    pub pending_seq: Option<i64>,
    pub first_change_at: Option<DateTime<Utc>>,
    pub last_change_at: Option<DateTime<Utc>>,
    /// A bulk-write lease holds it, or one that ended has not settled yet: left to the
    /// live path.
    pub leased: bool,
    /// When a lease that ended unreleased settled (None: no such lease, or it has not
    /// settled yet, see `leased`): what DynamoDB holds may be an abandoned batch's, so the
    /// document is written whatever its recorded content (and the lease removed with the
    /// write's bookkeeping).
    pub lease_settled_at: Option<DateTime<Utc>>,
}

impl LockedDoc {
    /// The state the write procedure starts from.
    pub fn state(&self) -> DocState {
        DocState {
            version: self.version,
            content_hash: self.content_hash.clone(),
            deleted: self.deleted,
            leased_until: None,
            lease_settles_at: self.lease_settled_at,
        }
    }
}

/// Locks, in the caller's transaction, those of the documents whose lock is free (in key
/// order), without waiting for the others. The transaction's statements are planned at every
/// execution from here on, with the tables' sizes of the moment (see `pending::claim_due`).
pub async fn lock_many_skip_locked(
    conn: &mut PgConnection,
    doc_keys: &[String],
) -> Result<Vec<LockedDoc>, sqlx::Error> {
    sqlx::query("SET LOCAL plan_cache_mode = force_custom_plan")
        .execute(&mut *conn)
        .await?;
    sqlx::query_as(
        r#"SELECT d.doc_key, d.version, d.content_hash, d.deleted,
                  p.seq AS pending_seq, p.first_change_at, p.last_change_at,
                  EXISTS (SELECT 1 FROM edge.write_lease l WHERE l.doc_key = d.doc_key
                          AND COALESCE(l.settled_at, l.until) > now()) AS leased,
                  (SELECT COALESCE(l.settled_at, l.until) FROM edge.write_lease l
                   WHERE l.doc_key = d.doc_key
                     AND COALESCE(l.settled_at, l.until) <= now()) AS lease_settled_at
           FROM edge.document d LEFT JOIN edge.pending p ON p.doc_key = d.doc_key
           WHERE d.doc_key = ANY($1)
           ORDER BY d.doc_key
           FOR NO KEY UPDATE OF d SKIP LOCKED"#,
    )
    .bind(doc_keys)
    .fetch_all(conn)
    .await
}

/// A document locked by [`lock_many`]: its state, as [`lock`] returns it, and its queue row
/// at lock time (`seq`, capture time of the newest change), if it is queued.
#[derive(Debug, Clone)]
pub struct Locked {
    pub doc_key: String,
    pub state: DocState,
    pub pending: Option<(i64, Option<DateTime<Utc>>)>,
}

type LockedRow = (
    String,
    Option<i64>,
    Option<String>,
    bool,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<i64>,
    Option<DateTime<Utc>>,
);

/// [`lock`] for many documents in one statement (and one to create the rows of those that
/// have none): in the caller's transaction, in key order, waiting for each (up to the
/// transaction's `lock_timeout`). Every waiting locker of many documents takes them in the
/// same order, and the live path never waits while it holds documents, so lockers never wait
/// for each other in a circle. A row pruned between the two statements (a deleted
/// identity's, `state::prune`) is created again, as [`lock`] does.
pub async fn lock_many(
    conn: &mut PgConnection,
    doc_keys: &[String],
) -> Result<Vec<Locked>, sqlx::Error> {
    let mut rows: Vec<LockedRow> = Vec::with_capacity(doc_keys.len());
    let mut missing: Vec<String> = doc_keys.to_vec();
    for _ in 0..3 {
        ensure_many(conn, &missing).await?;
        let found: Vec<LockedRow> = sqlx::query_as(&format!(
            "SELECT d.doc_key, d.version, d.content_hash, d.deleted, {LEASE_COLUMNS},
                    p.seq, p.last_change_at
             FROM edge.document d LEFT JOIN edge.pending p ON p.doc_key = d.doc_key
             WHERE d.doc_key = ANY($1)
             ORDER BY d.doc_key
             FOR NO KEY UPDATE OF d"
        ))
        .bind(&missing)
        .fetch_all(&mut *conn)
        .await?;
        missing.retain(|k| !found.iter().any(|r| &r.0 == k));
        rows.extend(found);
        if missing.is_empty() {
            break;
        }
    }
    Ok(rows
        .into_iter()
        .map(
            |(
                doc_key,
                version,
                content_hash,
                deleted,
                leased_until,
                lease_settles_at,
                seq,
                last,
            )| {
                Locked {
                    doc_key,
                    state: DocState {
                        version,
                        content_hash,
                        deleted,
                        leased_until,
                        lease_settles_at,
                    },
                    pending: seq.map(|s| (s, last)),
                }
            },
        )
        .collect())
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
    /// The caller's own bulk-write lease on the document is released (every write it covered
    /// was answered).
    pub release_lease: bool,
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
    finish_many(conn, &[(doc_key, f.clone())]).await
}

/// [`finish`] for many documents, in one statement (each document appears once).
pub async fn finish_many(
    conn: &mut PgConnection,
    docs: &[(&str, Finish<'_>)],
) -> Result<(), sqlx::Error> {
    if docs.is_empty() {
        return Ok(());
    }
    let n = docs.len();
    let mut keys = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut hashes = Vec::with_capacity(n);
    let mut source_times = Vec::with_capacity(n);
    let mut next_at = Vec::with_capacity(n);
    let mut put_items = Vec::with_capacity(n);
    let mut first_change_at = Vec::with_capacity(n);
    let mut claimed = Vec::with_capacity(n);
    let mut again_at = Vec::with_capacity(n);
    let mut release = Vec::with_capacity(n);
    let (mut removed_docs, mut removed_kinds, mut removed_keys) = (vec![], vec![], vec![]);
    let (mut forgotten_docs, mut forgotten_kinds, mut forgotten_keys) = (vec![], vec![], vec![]);
    for (doc_key, f) in docs {
        let w = f.written.as_ref();
        keys.push(*doc_key);
        versions.push(w.map(|w| w.version));
        hashes.push(w.and_then(|w| w.content_hash));
        source_times.push(w.map(|w| w.source_time));
        next_at.push(f.next_projection_at);
        put_items.push(w.map(|w| w.put_items));
        first_change_at.push(w.and_then(|w| w.first_change_at));
        claimed.push(f.claimed_seq);
        again_at.push(f.again_at);
        release.push(f.release_lease);
        for (t, k) in f.removed {
            removed_docs.push(*doc_key);
            removed_kinds.push(t.as_str());
            removed_keys.push(k);
        }
        for (t, k) in f.forgotten {
            forgotten_docs.push(*doc_key);
            forgotten_kinds.push(t.as_str());
            forgotten_keys.push(k);
        }
    }
    sqlx::query(
        r#"WITH x AS MATERIALIZED (
               SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::timestamptz[],
                                    $5::timestamptz[], $6::bool[], $7::timestamptz[],
                                    $8::bigint[], $9::timestamptz[], $10::bool[])
                   AS x(k, version, hash, source_time, next_at, put_items, first_change_at,
                        seq, again_at, release)),
           lease AS (
               -- A bulk write's lease that ended unreleased: the document is due again when
               -- it settles; once settled, this (full) write removes it.
               SELECT l.doc_key, COALESCE(l.settled_at, l.until) AS settles
               FROM edge.write_lease l JOIN x ON x.k = l.doc_key
               WHERE l.until <= now()),
           due AS (
               SELECT x.k, x.seq,
                      LEAST(x.again_at, (SELECT settles FROM lease
                                         WHERE lease.doc_key = x.k AND settles > now())) AS at
               FROM x),
           settled AS (
               -- Settled leases; and the caller's own bulk-write leases, now that their
               -- writes were all answered.
               DELETE FROM edge.write_lease l USING x
               WHERE l.doc_key = x.k
                 AND (x.release
                      OR (l.until <= now() AND COALESCE(l.settled_at, l.until) <= now()))),
           w AS (
               UPDATE edge.document d
               SET version = x.version, content_hash = x.hash, deleted = (x.hash IS NULL),
                   written_at = now(), source_time = x.source_time,
                   next_projection_at = x.next_at, foreign_since = NULL, foreign_state = NULL
               FROM x WHERE d.doc_key = x.k AND x.version IS NOT NULL
               RETURNING d.doc_key, x.version, x.put_items, x.first_change_at),
           logged AS (
               INSERT INTO edge.write_log (doc_key, version, put_items, first_change_at)
               SELECT doc_key, version, put_items, first_change_at FROM w),
           unwritten AS (
               UPDATE edge.document d SET next_projection_at = x.next_at
               FROM x WHERE d.doc_key = x.k AND x.version IS NULL),
           removed AS (
               UPDATE edge.document_item i SET removed_at = COALESCE(i.removed_at, now())
               FROM unnest($11::text[], $12::text[], $13::jsonb[]) AS r(d, t, k)
               WHERE i.doc_key = r.d AND i.table_kind = r.t AND i.item_key = r.k),
           forgotten AS (
               DELETE FROM edge.document_item i
               USING unnest($14::text[], $15::text[], $16::jsonb[]) AS f(d, t, k)
               WHERE i.doc_key = f.d AND i.table_kind = f.t AND i.item_key = f.k),
           done AS (
               DELETE FROM edge.pending p USING due
               WHERE p.doc_key = due.k AND p.seq = due.seq AND due.at IS NULL),
           again AS (
               INSERT INTO edge.pending (doc_key, seq, not_before)
               SELECT due.k, nextval('edge.pending_seq'), due.at FROM due
               WHERE due.at IS NOT NULL
               ON CONFLICT (doc_key) DO UPDATE SET
                   -- the row taken is done: it becomes a fresh row, due again
                   seq = CASE WHEN edge.pending.seq = (SELECT seq FROM x WHERE x.k = excluded.doc_key)
                              THEN excluded.seq ELSE edge.pending.seq END,
                   not_before = CASE WHEN edge.pending.seq = (SELECT seq FROM x WHERE x.k = excluded.doc_key)
                                     THEN excluded.not_before
                                     ELSE LEAST(edge.pending.not_before, excluded.not_before) END,
                   first_change_at = CASE WHEN edge.pending.seq = (SELECT seq FROM x WHERE x.k = excluded.doc_key)
                                          THEN NULL ELSE edge.pending.first_change_at END,
                   last_change_at = CASE WHEN edge.pending.seq = (SELECT seq FROM x WHERE x.k = excluded.doc_key)
                                         THEN NULL ELSE edge.pending.last_change_at END,
                   attempts = CASE WHEN edge.pending.seq = (SELECT seq FROM x WHERE x.k = excluded.doc_key)
                                   THEN 0 ELSE edge.pending.attempts END,
                   last_error = CASE WHEN edge.pending.seq = (SELECT seq FROM x WHERE x.k = excluded.doc_key)
                                     THEN NULL ELSE edge.pending.last_error END)
           DELETE FROM edge.dead_letter dl USING x WHERE dl.doc_key = x.k"#,
    )
    .bind(&keys)
    .bind(&versions)
    .bind(&hashes)
    .bind(&source_times)
    .bind(&next_at)
    .bind(&put_items)
    .bind(&first_change_at)
    .bind(&claimed)
    .bind(&again_at)
    .bind(&release)
    .bind(&removed_docs)
    .bind(&removed_kinds)
    .bind(&removed_keys)
    .bind(&forgotten_docs)
    .bind(&forgotten_kinds)
    .bind(&forgotten_keys)
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
