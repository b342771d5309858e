//! Capture's own tables: `edge.capture_table` (what is captured), `edge.capture_state` (the
//! kill switch) and `edge.capture_gap` (pauses whose changes a backfill must replay). The
//! triggers themselves are installed and removed by `crate::capture::control`.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

/// A pause of capture whose changes no backfill has replayed yet.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct Gap {
    pub id: i64,
    pub paused_at: DateTime<Utc>,
    pub resumed_at: Option<DateTime<Utc>>,
    pub reason: Option<String>,
}

/// The kill switch: on or paused, why, since when.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Switch {
    pub enabled: bool,
    pub reason: Option<String>,
    pub changed_at: DateTime<Utc>,
}

/// The captured core tables.
pub async fn captured_tables(conn: impl sqlx::PgExecutor<'_>) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT table_name FROM edge.capture_table ORDER BY table_name")
        .fetch_all(conn)
        .await
}

pub async fn switch(pool: &PgPool) -> Result<Switch, sqlx::Error> {
    sqlx::query_as("SELECT enabled, reason, changed_at FROM edge.capture_state")
        .fetch_one(pool)
        .await
}

/// Captured tables whose capture triggers are missing or not as this build wants them.
pub async fn tables_not_installed(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT c.table_name FROM edge.capture_table c
          WHERE to_regclass(format('public.%I', c.table_name)) IS NULL
             OR edge.wanted_capture_triggers(c.table_name) IS DISTINCT FROM
                (SELECT array_agg(pg_get_triggerdef(t.oid) ORDER BY t.tgname)
                   FROM pg_trigger t
                  WHERE t.tgrelid = to_regclass(format('public.%I', c.table_name))
                    AND t.tgname LIKE 'edge\\_capture%' AND NOT t.tgisinternal)
          ORDER BY 1",
    )
    .fetch_all(pool)
    .await
}

pub async fn open_gaps(pool: &PgPool) -> Result<Vec<Gap>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, paused_at, resumed_at, reason FROM edge.capture_gap
          WHERE backfilled_at IS NULL ORDER BY id",
    )
    .fetch_all(pool)
    .await
}

/// Pauses (`live = false`) or resumes capture. Returns whether the state changed.
pub async fn set(pool: &PgPool, live: bool, reason: Option<&str>) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Replacing a function waits for nothing but that function's catalog row.
    sqlx::query("SET LOCAL lock_timeout = '10s'")
        .execute(&mut *tx)
        .await?;
    let changed: bool = sqlx::query_scalar("SELECT edge.set_capture($1, $2)")
        .bind(live)
        .bind(reason)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(changed)
}

/// Where the resumed gaps stand: whether capture is paused now, how many resumed gaps still
/// have a transaction open that was open at the resume (its changes are not visible yet),
/// and the ids of the others.
pub async fn gap_settlement(pool: &PgPool) -> Result<(bool, i64, Vec<i64>), sqlx::Error> {
    // A transaction of `open_at_resume` that still exists still holds the lock on its own
    // virtual transaction id.
    sqlx::query_as(
        "WITH g AS (
             SELECT id, EXISTS (SELECT 1 FROM pg_locks l
                                 WHERE l.virtualtransaction = ANY(open_at_resume)) AS open
               FROM edge.capture_gap WHERE backfilled_at IS NULL AND resumed_at IS NOT NULL)
         SELECT NOT (SELECT enabled FROM edge.capture_state),
                (SELECT count(*) FROM g WHERE open),
                (SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM g WHERE NOT open)",
    )
    .fetch_one(pool)
    .await
}

/// Marks gaps closed by a backfill that started after they settled.
pub async fn close_gaps(conn: &mut PgConnection, gaps: &[i64]) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE edge.capture_gap SET backfilled_at = now() WHERE id = ANY($1) AND backfilled_at IS NULL",
    )
    .bind(gaps)
    .execute(conn)
    .await?
    .rows_affected())
}
