//! `edge.write_lease`: bulk-write leases (see the identity capture migration and
//! `migrate_identities::page`). Writers read them through `documents::lock` and
//! `pending::claim_due`.

use std::time::Duration;

use sqlx::PgConnection;

/// Takes (or extends) a lease on each document until `lease` from now.
pub async fn take(
    conn: &mut PgConnection,
    doc_keys: &[String],
    lease: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        r#"INSERT INTO edge.write_lease (doc_key, until)
           SELECT unnest($1::text[]), now() + make_interval(secs => $2)
           ON CONFLICT (doc_key) DO UPDATE SET until = excluded.until"#,
    )
    .bind(doc_keys)
    .bind(lease.as_secs_f64())
    .execute(conn)
    .await?;
    Ok(())
}

/// Releases the documents' leases (nothing of theirs is in flight any more).
pub async fn release(conn: &mut PgConnection, doc_keys: &[String]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM edge.write_lease WHERE doc_key = ANY($1)")
        .bind(doc_keys)
        .execute(conn)
        .await?;
    Ok(())
}
