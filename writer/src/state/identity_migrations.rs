//! `edge.identity_migration` as `writer status` reports it: each job's progress, and whether
//! it is running now (its session holds the job's advisory lock).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

/// One identity migration job (a project, or one environment of it).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize)]
pub struct Progress {
    pub project_id: i32,
    /// None: the whole project.
    pub environment_id: Option<i32>,
    /// `IN_PROGRESS` or `COMPLETE`.
    pub status: String,
    /// Identities done so far: migrated, unchanged, skipped into dead letters, deferred to the
    /// live writer (counted since the run started, a resumed run included).
    pub processed: i64,
    pub skipped: i64,
    /// Identities in scope at or below the checkpoint (every one of them is done), and in
    /// scope in all; counted for unfinished jobs only (None for complete ones).
    pub done: Option<i64>,
    pub total: Option<i64>,
    pub started_at: DateTime<Utc>,
    /// The last checkpoint (after every page).
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// A session holds the job's lock: the job is running now.
    pub running: bool,
}

/// Every job, by project. Counting a project's identities costs an index scan of them, so
/// it is done for unfinished jobs only.
pub async fn progress(pool: &PgPool) -> Result<Vec<Progress>, sqlx::Error> {
    sqlx::query_as(
        r#"SELECT m.project_id, NULLIF(m.environment_id, 0) AS environment_id, m.status,
                  m.migrated + m.unchanged + m.skipped + m.deferred AS processed, m.skipped,
                  c.done, c.total, m.started_at, m.updated_at, m.finished_at,
                  EXISTS (SELECT 1 FROM pg_locks l
                           WHERE l.locktype = 'advisory' AND l.granted
                             AND l.database = (SELECT oid FROM pg_database
                                                WHERE datname = current_database())
                             AND l.classid = $1::int8::oid AND l.objid = m.project_id::int8::oid
                             AND l.objsubid = 2) AS running
           FROM edge.identity_migration m
           LEFT JOIN LATERAL (
               SELECT count(*) FILTER (WHERE i.id <= m.checkpoint_id) AS done, count(*) AS total
               FROM public.environments_identity i
               JOIN public.environments_environment e ON e.id = i.environment_id
               WHERE e.project_id = m.project_id
                 AND (m.environment_id = 0 OR i.environment_id = m.environment_id)
                 AND m.status <> 'COMPLETE') c ON m.status <> 'COMPLETE'
           ORDER BY m.project_id, m.environment_id"#,
    )
    .bind(i64::from(crate::migrate_identities::ADVISORY_NAMESPACE))
    .fetch_all(pool)
    .await
}

/// The job's row in `edge.identity_migration`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    pub status: String,
    pub checkpoint_id: i32,
    pub migrated: i64,
    pub unchanged: i64,
    pub skipped: i64,
    pub deferred: i64,
    pub started_at: DateTime<Utc>,
}

/// Starts or resumes the job row. A finished job, or `restart`, starts again from the first
/// identity; an unfinished one resumes after its checkpoint.
pub async fn start_job(
    conn: &mut PgConnection,
    project_id: i32,
    environment_id: i32,
    restart: bool,
) -> Result<JobRow, sqlx::Error> {
    sqlx::query_as(
        r#"INSERT INTO edge.identity_migration (project_id, environment_id, status)
           VALUES ($1, $2, 'IN_PROGRESS')
           ON CONFLICT (project_id, environment_id) DO UPDATE SET
               status = 'IN_PROGRESS',
               checkpoint_id = CASE WHEN $3 OR edge.identity_migration.status = 'COMPLETE'
                                    THEN 0 ELSE edge.identity_migration.checkpoint_id END,
               migrated = CASE WHEN $3 OR edge.identity_migration.status = 'COMPLETE'
                               THEN 0 ELSE edge.identity_migration.migrated END,
               unchanged = CASE WHEN $3 OR edge.identity_migration.status = 'COMPLETE'
                                THEN 0 ELSE edge.identity_migration.unchanged END,
               skipped = CASE WHEN $3 OR edge.identity_migration.status = 'COMPLETE'
                              THEN 0 ELSE edge.identity_migration.skipped END,
               deferred = CASE WHEN $3 OR edge.identity_migration.status = 'COMPLETE'
                               THEN 0 ELSE edge.identity_migration.deferred END,
               started_at = CASE WHEN $3 OR edge.identity_migration.status = 'COMPLETE'
                                 THEN now() ELSE edge.identity_migration.started_at END,
               finished_at = NULL,
               updated_at = now()
           RETURNING status, checkpoint_id, migrated, unchanged, skipped, deferred, started_at"#,
    )
    .bind(project_id)
    .bind(environment_id)
    .bind(restart)
    .fetch_one(conn)
    .await
}

/// Records progress: the checkpoint (a low-water mark) and counters.
#[allow(clippy::too_many_arguments)]
pub async fn checkpoint(
    conn: &mut PgConnection,
    project_id: i32,
    environment_id: i32,
    checkpoint_id: i32,
    migrated: u64,
    unchanged: u64,
    skipped: u64,
    deferred: u64,
    complete: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        r#"UPDATE edge.identity_migration
           SET checkpoint_id = $3, migrated = $4, unchanged = $5, skipped = $6, deferred = $7,
               status = CASE WHEN $8 THEN 'COMPLETE' ELSE status END,
               finished_at = CASE WHEN $8 THEN now() END,
               updated_at = now()
           WHERE project_id = $1 AND environment_id = $2"#,
    )
    .bind(project_id)
    .bind(environment_id)
    .bind(checkpoint_id)
    .bind(migrated as i64)
    .bind(unchanged as i64)
    .bind(skipped as i64)
    .bind(deferred as i64)
    .bind(complete)
    .execute(conn)
    .await?;
    Ok(())
}
