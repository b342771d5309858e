//! `edge.write_lease`: bulk-write leases (see the identity capture migration and
//! `migrate_identities::page`). Writers read them through `documents::lock_many`,
//! `documents::lock_many_skip_locked` and `pending::claim_due`.
//!
//! A lease has two times. Until `until` no other writer writes the document. Between `until`
//! and `settled_at` a batch the job abandoned may still land (DynamoDB applies a request it
//! received even after the client gave up on it), so a writer writes every item and writes
//! the document again at `settled_at`; the lease is removed by that later write
//! (`documents::finish`) or, when every request of the page was answered, by the job itself.

use std::time::Duration;

use sqlx::PgConnection;

/// Takes (or extends) a lease on each document until `lease` from now, settling
/// `late_writes` after that.
pub async fn take(
    conn: &mut PgConnection,
    doc_keys: &[String],
    lease: Duration,
    late_writes: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        r#"INSERT INTO edge.write_lease (doc_key, until, settled_at)
           SELECT k, now() + make_interval(secs => $2),
                  now() + make_interval(secs => $2) + make_interval(secs => $3)
           FROM unnest($1::text[]) AS k
           ON CONFLICT (doc_key) DO UPDATE
               SET until = excluded.until, settled_at = excluded.settled_at"#,
    )
    .bind(doc_keys)
    .bind(lease.as_secs_f64())
    .bind(late_writes.as_secs_f64())
    .execute(conn)
    .await?;
    Ok(())
}

/// Releases the documents' leases: every request of their writes was answered, so nothing
/// of theirs can land later.
pub async fn release(conn: &mut PgConnection, doc_keys: &[String]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM edge.write_lease WHERE doc_key = ANY($1)")
        .bind(doc_keys)
        .execute(conn)
        .await?;
    Ok(())
}
