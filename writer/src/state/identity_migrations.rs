//! `edge.identity_migration` as `writer status` reports it: each job's progress, and whether
//! it is running now (its session holds the job's advisory lock).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

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
