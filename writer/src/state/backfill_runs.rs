//! `edge.backfill_run`: how far each backfill scope has got, so a stopped run resumes.

use sqlx::PgPool;

/// Starts (or resumes) the run of `scope`; returns the last document key done, `None` to
/// start from the beginning (`restart`, or the previous run finished).
pub async fn start(
    pool: &PgPool,
    scope: &str,
    restart: bool,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        r#"INSERT INTO edge.backfill_run (scope) VALUES ($1)
           ON CONFLICT (scope) DO UPDATE SET
               cursor = CASE WHEN $2 OR edge.backfill_run.finished_at IS NOT NULL
                             THEN NULL ELSE edge.backfill_run.cursor END,
               finished_at = NULL, updated_at = now()
           RETURNING cursor"#,
    )
    .bind(scope)
    .bind(restart)
    .fetch_one(pool)
    .await
}

/// Records progress: every key up to `cursor` is done, `written` more of them.
pub async fn advance(
    pool: &PgPool,
    scope: &str,
    cursor: &str,
    written: i64,
    failed: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        r#"UPDATE edge.backfill_run SET cursor = $2, written = written + $3,
               failed = $4, updated_at = now() WHERE scope = $1"#,
    )
    .bind(scope)
    .bind(cursor)
    .bind(written)
    .bind(failed)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn finish(pool: &PgPool, scope: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE edge.backfill_run SET finished_at = now() WHERE scope = $1")
        .bind(scope)
        .execute(pool)
        .await?;
    Ok(())
}
