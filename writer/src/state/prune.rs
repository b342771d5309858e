//! Growth: the document rows of identities that are gone.
//!
//! An identity deleted in core leaves its `edge.document` row (the document's lock and
//! version) after its items were deleted and the deletes re-checked. [`gone_identities`]
//! removes such rows once nothing refers to them any more: no item recorded (so the delete
//! re-check has run), nothing queued, parked, leased or awaiting the edge, and no such
//! identity in core.
//!
//! Removing a lock row must not race a transaction that is about to queue the document (it
//! inserts the row if missing, then queues it: a row removed in between would leave a queue
//! row without its lock, which no writer claims). Such transactions hold the *prune lock*
//! shared ([`hold_off`]); pruning takes it exclusively when it is free, so it runs only
//! between them and sees everything they queued. Taking a document's lock
//! (`documents::lock_many`) needs no such care: a row pruned under it is created again, and a
//! locked row is never pruned.

use sqlx::{PgConnection, PgPool};

/// The prune lock's two-int advisory lock key: 'edge', 'prun'.
pub const PRUNE_LOCK: (i32, i32) = (1701078885, 1886549358);

/// Holds pruning off until the caller's transaction ends (call before inserting document
/// rows that the transaction then relies on).
pub async fn hold_off(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1, $2)")
        .bind(PRUNE_LOCK.0)
        .bind(PRUNE_LOCK.1)
        .execute(conn)
        .await?;
    Ok(())
}

/// Removes up to `limit` document rows of identities that are gone. Returns how many.
pub async fn gone_identities(pool: &PgPool, limit: i64) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Only between the transactions queueing documents, never waiting for them (a waiting
    // exclusive request would queue every new one behind it): when they keep it busy, this
    // round is skipped.
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, $2)")
        .bind(PRUNE_LOCK.0)
        .bind(PRUNE_LOCK.1)
        .fetch_one(&mut *tx)
        .await?;
    if !free {
        return Ok(0);
    }
    let removed = sqlx::query(
        r#"DELETE FROM edge.document
           WHERE doc_key IN (
               SELECT d.doc_key FROM edge.document d
                WHERE d.doc_key LIKE 'identity:%'
                  AND (d.deleted OR d.version IS NULL)
                  AND d.foreign_since IS NULL
                  AND d.next_projection_at IS NULL
                  AND NOT EXISTS (SELECT 1 FROM edge.document_item i WHERE i.doc_key = d.doc_key)
                  AND NOT EXISTS (SELECT 1 FROM edge.pending p WHERE p.doc_key = d.doc_key)
                  AND NOT EXISTS (SELECT 1 FROM edge.dead_letter x WHERE x.doc_key = d.doc_key)
                  AND NOT EXISTS (SELECT 1 FROM edge.write_lease l WHERE l.doc_key = d.doc_key)
                  AND NOT EXISTS (SELECT 1 FROM public.environments_identity ci
                                   WHERE ci.id = substr(d.doc_key, 10)::int)
                LIMIT $1
                FOR UPDATE SKIP LOCKED)"#,
    )
    .bind(limit)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(removed)
}
