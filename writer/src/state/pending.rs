//! `edge.pending`: the coalesced queue of documents to project.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool, Row};

use crate::doc_key::DocKey;
use crate::simple_query;
use crate::state::documents::DocState;

/// Capture times of the oldest and newest change that touched a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeSpan {
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
}

impl ChangeSpan {
    pub(crate) fn add(&mut self, t: DateTime<Utc>) {
        self.first = self.first.min(t);
        self.last = self.last.max(t);
    }
}

/// A document taken from the queue, with its lock held by the claiming transaction.
#[derive(Debug, Clone)]
pub struct Claim {
    pub doc_key: String,
    /// The queue row's `seq` when claimed: the row is removed after success only if no new
    /// change arrived since.
    pub seq: i64,
    pub attempts: i32,
    pub first_change_at: Option<DateTime<Utc>>,
    pub last_change_at: Option<DateTime<Utc>>,
    pub state: DocState,
}

#[derive(sqlx::FromRow)]
struct ClaimRow {
    doc_key: String,
    seq: i64,
    attempts: i32,
    first_change_at: Option<DateTime<Utc>>,
    last_change_at: Option<DateTime<Utc>>,
    version: Option<i64>,
    content_hash: Option<String>,
    deleted: bool,
    leased_until: Option<DateTime<Utc>>,
    lease_settles_at: Option<DateTime<Utc>>,
}

/// Inserts or refreshes queue rows (and their document rows, which are the locks) for the
/// documents of a batch of changes. Keys are sorted, so concurrent callers lock in one order.
pub async fn enqueue(
    conn: &mut PgConnection,
    docs: &BTreeMap<DocKey, ChangeSpan>,
) -> Result<(), sqlx::Error> {
    if docs.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = docs.keys().map(ToString::to_string).collect();
    crate::state::prune::hold_off(&mut *conn).await?;
    let firsts: Vec<DateTime<Utc>> = docs.values().map(|s| s.first).collect();
    let lasts: Vec<DateTime<Utc>> = docs.values().map(|s| s.last).collect();
    sqlx::query(
        "INSERT INTO edge.document (doc_key) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(&keys)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        r#"INSERT INTO edge.pending (doc_key, seq, not_before, first_change_at, last_change_at)
           SELECT k, nextval('edge.pending_seq'), now(), f, l
           FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS t(k, f, l)
           ORDER BY k
           ON CONFLICT (doc_key) DO UPDATE SET
               seq = excluded.seq,
               not_before = LEAST(edge.pending.not_before, excluded.not_before),
               first_change_at = LEAST(edge.pending.first_change_at, excluded.first_change_at),
               last_change_at = GREATEST(edge.pending.last_change_at, excluded.last_change_at)"#,
    )
    .bind(&keys)
    .bind(&firsts)
    .bind(&lasts)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Planner settings for the claims, set for the statement and restored after it in the same
/// message. The claims' plan is pinned to the one that stays cheap at any depth: the due-time
/// index walked in order, each document's row by its key. The queue's statistics are usually
/// those of an empty queue (it is one, most of the time), and from them the planner chose
/// nested loops of sequential scans (147 s for one claim over 20,000 queued identities) or, for
/// a batch, to fetch and sort every due row (118 ms a claim over 11,000, against 0.4 ms in
/// order). `plan_cache_mode` stays set for the rest of the lock transaction, so that its
/// bookkeeping (prepared statements, by document key) is planned with the tables' sizes of
/// the moment too: on plans cached over empty tables each of its statements scanned every row
/// of the queue and of the documents (1.5 ms each at 20,000).
const PIN_PLAN: &str = "SET LOCAL plan_cache_mode = force_custom_plan; \
    SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; \
    SET LOCAL enable_sort = off; SET LOCAL enable_hashjoin = off; \
    SET LOCAL enable_mergejoin = off;";
const UNPIN_PLAN: &str = "RESET enable_seqscan; RESET enable_bitmapscan; RESET enable_sort; \
    RESET enable_hashjoin; RESET enable_mergejoin;";

/// What a claim reads of a queued document (`p`) and its state (`d`): a [`ClaimRow`].
fn claim_columns() -> String {
    format!(
        "p.doc_key, p.seq, p.attempts, p.first_change_at, p.last_change_at,
       d.version, d.content_hash, d.deleted, {}",
        crate::state::documents::LEASE_COLUMNS
    )
}

/// The first due document whose lock is free, and whether it is an identity document with
/// other identity documents due. Locks are `FOR NO KEY UPDATE` on the `edge.document` row,
/// in the caller's transaction; locked documents are skipped, not waited for.
const CLAIM_FIRST: &str = r#"
SELECT {columns},
       (p.doc_key LIKE 'identity:%' AND EXISTS (
            SELECT 1 FROM edge.pending o
            WHERE o.not_before <= now() AND o.doc_key LIKE 'identity:%'
              AND o.doc_key <> p.doc_key)) AS more_due
FROM edge.pending p
JOIN edge.document d ON d.doc_key = p.doc_key
WHERE p.not_before <= now()
ORDER BY p.not_before
LIMIT 1
FOR NO KEY UPDATE OF d SKIP LOCKED;
"#;

/// Up to `{more}` more due identity documents whose locks are free, other than `{first}`.
const CLAIM_MORE: &str = r#"
SELECT {columns}, false AS more_due
FROM edge.pending p
JOIN edge.document d ON d.doc_key = p.doc_key
WHERE p.not_before <= now() AND p.doc_key LIKE 'identity:%' AND p.doc_key <> {first}
ORDER BY p.not_before
LIMIT {more}
FOR NO KEY UPDATE OF d SKIP LOCKED;
"#;

/// Claims the next due document whose lock is free, taking its lock in the caller's
/// transaction; when it is an identity document and other identity documents are due, up to
/// `max - 1` of those with it (a fan-out storm drains in batches; environment and API key
/// documents are taken one at a time, so a batch never holds them back). Empty when nothing
/// is due. One round trip, two when a batch is taken.
///
/// Sent with the simple query protocol, so Postgres plans the claims at every execution: a
/// prepared statement keeps its plan for the life of the connection (see [`PIN_PLAN`]).
pub async fn claim_due(conn: &mut PgConnection, max: usize) -> Result<Vec<Claim>, sqlx::Error> {
    let columns = claim_columns();
    let first = CLAIM_FIRST.replace("{columns}", &columns);
    let sql = format!("{PIN_PLAN}{first}{UNPIN_PLAN}");
    let rows = simple_query::sets(&mut *conn, &sql).await?.into_rows();
    let mut claims = rows.iter().map(claim_of).collect::<Result<Vec<_>, _>>()?;
    let more_due = match rows.first() {
        Some(row) => row.try_get::<Option<bool>, _>("more_due")?.unwrap_or(false),
        None => false,
    };
    if more_due && max > 1 {
        let first = claims[0].doc_key.replace('\'', "''");
        let more = CLAIM_MORE
            .replace("{columns}", &columns)
            .replace("{first}", &format!("'{first}'"))
            .replace("{more}", &(max - 1).to_string());
        let sql = format!("{PIN_PLAN}{more}{UNPIN_PLAN}");
        let rows = simple_query::sets(&mut *conn, &sql).await?.into_rows();
        for row in &rows {
            claims.push(claim_of(row)?);
        }
    }
    Ok(claims)
}

fn claim_of(row: &sqlx::postgres::PgRow) -> Result<Claim, sqlx::Error> {
    let r = ClaimRow::from_row(row)?;
    Ok(Claim {
        doc_key: r.doc_key,
        seq: r.seq,
        attempts: r.attempts,
        first_change_at: r.first_change_at,
        last_change_at: r.last_change_at,
        state: DocState {
            version: r.version,
            content_hash: r.content_hash,
            deleted: r.deleted,
            leased_until: r.leased_until,
            lease_settles_at: r.lease_settles_at,
        },
    })
}

/// Makes sure the document is projected again at `at` (or earlier, if it already is due
/// earlier). Durable: a restarted writer finds it.
pub async fn schedule(
    conn: &mut PgConnection,
    doc_key: &str,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    schedule_many(conn, &[doc_key.to_string()], at).await
}

/// [`schedule`] for many documents in two statements.
pub async fn schedule_many(
    conn: &mut PgConnection,
    doc_keys: &[String],
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if doc_keys.is_empty() {
        return Ok(());
    }
    crate::state::documents::ensure_many(&mut *conn, doc_keys).await?;
    sqlx::query(
        r#"INSERT INTO edge.pending (doc_key, seq, not_before)
           SELECT k, nextval('edge.pending_seq'), $2 FROM unnest($1::text[]) AS k ORDER BY k
           ON CONFLICT (doc_key) DO UPDATE SET
               not_before = LEAST(edge.pending.not_before, excluded.not_before)"#,
    )
    .bind(doc_keys)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a failed attempt and pushes the document back by `delay`. Returns the number of
/// failed attempts so far.
pub async fn record_failure(
    pool: &PgPool,
    doc_key: &str,
    error: &str,
    delay: Duration,
) -> Result<i32, sqlx::Error> {
    let attempts: Option<i32> = sqlx::query_scalar(
        r#"UPDATE edge.pending
           SET attempts = attempts + 1, last_error = $2,
               not_before = now() + make_interval(secs => $3)
           WHERE doc_key = $1
           RETURNING attempts"#,
    )
    .bind(doc_key)
    .bind(error)
    .bind(delay.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    Ok(attempts.unwrap_or(1))
}

/// Removes the queue row of a document parked in dead letters (unless a new change arrived).
pub async fn drop_parked(pool: &PgPool, doc_key: &str, seq: i64) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM edge.pending WHERE doc_key = $1 AND seq = $2")
        .bind(doc_key)
        .bind(seq)
        .execute(pool)
        .await?;
    Ok(())
}

/// When the next queued document is due (None: the queue is empty).
pub async fn next_due(pool: &PgPool) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar("SELECT min(not_before) FROM edge.pending")
        .fetch_one(pool)
        .await
}

/// Documents in the queue, and how many of them are due now.
pub async fn depth(pool: &PgPool) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE not_before <= now()) FROM edge.pending")
        .fetch_one(pool)
        .await
}

/// Seconds the oldest due document has waited (None when nothing is due).
pub async fn oldest_due_secs(pool: &PgPool) -> Result<Option<f64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT extract(epoch FROM now() - min(not_before))::float8
         FROM edge.pending WHERE not_before <= now()",
    )
    .fetch_one(pool)
    .await
}

/// Every queued document.
pub async fn all_keys(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT doc_key FROM edge.pending")
        .fetch_all(pool)
        .await
}

/// The queued identity documents of projects on the edge, in key order.
pub async fn queued_edge_identities(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT q.doc_key FROM edge.pending q
           JOIN environments_identity i ON q.doc_key = 'identity:' || i.id
           JOIN environments_environment e ON e.id = i.environment_id
           JOIN projects_project p ON p.id = e.project_id
          WHERE p.enable_dynamo_db
          ORDER BY q.doc_key",
    )
    .fetch_all(pool)
    .await
}
