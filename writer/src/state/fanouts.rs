//! `edge.fanout`: changes that touch every identity of a scope (an environment, a feature,
//! a segment...), paged into the queue by `crate::capture::fanout`.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// A fan-out being paged: identities after `cursor` are still to be queued.
#[derive(Debug, sqlx::FromRow)]
pub struct FanOutRow {
    pub id: i64,
    pub scope: String,
    pub scope_id: i32,
    pub first_change_at: DateTime<Utc>,
    pub last_change_at: DateTime<Utc>,
    pub cursor: i32,
}

/// Records fan-outs, one row per (scope, id) given.
pub async fn record(
    conn: &mut PgConnection,
    scopes: &[&str],
    ids: &[i32],
    firsts: &[DateTime<Utc>],
    lasts: &[DateTime<Utc>],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO edge.fanout (scope, scope_id, first_change_at, last_change_at)
         SELECT * FROM unnest($1::text[], $2::int[], $3::timestamptz[], $4::timestamptz[])",
    )
    .bind(scopes)
    .bind(ids)
    .bind(firsts)
    .bind(lasts)
    .execute(conn)
    .await?;
    Ok(())
}

/// The oldest fan-out no other writer is paging, locked until the transaction ends.
pub async fn take_oldest(conn: &mut PgConnection) -> Result<Option<FanOutRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, scope, scope_id, first_change_at, last_change_at, cursor
           FROM edge.fanout ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .fetch_optional(conn)
    .await
}

/// Every identity up to `cursor` is queued.
pub async fn advance(conn: &mut PgConnection, id: i64, cursor: i32) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE edge.fanout SET cursor = $2 WHERE id = $1")
        .bind(id)
        .bind(cursor)
        .execute(conn)
        .await?;
    Ok(())
}

/// The fan-out is done (or cannot be paged).
pub async fn delete(conn: &mut PgConnection, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM edge.fanout WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}
