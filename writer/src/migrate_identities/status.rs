//! Where a migration's status lives: `edge.identity_migration` (the job's own progress and
//! checkpoint) and the project metadata item in DynamoDB, which Flagsmith's core reads.
//!
//! The metadata item has exactly Flagsmith's fields, `id`, `migration_start_time`,
//! `migration_end_time` and `triggered_at`, and no replication attributes: core loads it
//! with `DynamoProjectMetadata(**item)`, which refuses unknown keys. Core derives the status
//! from it: no start time = not started, a start time only = in progress, both = complete.

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use edge_documents::item::Item;
use edge_documents::tables::TableKind;
use sqlx::PgConnection;

use crate::projection::environment::iso;
use crate::store::{ItemStore, StoreError};

/// The project's identity migration status as Flagsmith's core names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationStatus {
    NotStarted,
    InProgress,
    Completed,
}

impl MigrationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationStatus::NotStarted => "MIGRATION_NOT_STARTED",
            MigrationStatus::InProgress => "MIGRATION_IN_PROGRESS",
            MigrationStatus::Completed => "MIGRATION_COMPLETED",
        }
    }
}

/// The project metadata item's fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectMetadata {
    pub migration_start_time: Option<String>,
    pub migration_end_time: Option<String>,
    pub triggered_at: Option<String>,
}

impl ProjectMetadata {
    pub fn status(&self) -> MigrationStatus {
        match (&self.migration_start_time, &self.migration_end_time) {
            (None, _) => MigrationStatus::NotStarted,
            (Some(_), None) => MigrationStatus::InProgress,
            (Some(_), Some(_)) => MigrationStatus::Completed,
        }
    }
}

fn key(project_id: i32) -> Item {
    [("id".to_string(), AttributeValue::N(project_id.to_string()))]
        .into_iter()
        .collect()
}

pub async fn read_metadata<S: ItemStore>(
    store: &S,
    project_id: i32,
) -> Result<ProjectMetadata, StoreError> {
    let item = store
        .get(TableKind::ProjectMetadata, key(project_id))
        .await?;
    let text = |name: &str| match item.as_ref().and_then(|i| i.get(name)) {
        Some(AttributeValue::S(s)) => Some(s.clone()),
        _ => None,
    };
    Ok(ProjectMetadata {
        migration_start_time: text("migration_start_time"),
        migration_end_time: text("migration_end_time"),
        triggered_at: text("triggered_at"),
    })
}

pub async fn write_metadata<S: ItemStore>(
    store: &S,
    project_id: i32,
    meta: &ProjectMetadata,
) -> Result<(), StoreError> {
    let mut item = key(project_id);
    for (name, value) in [
        ("migration_start_time", &meta.migration_start_time),
        ("migration_end_time", &meta.migration_end_time),
        ("triggered_at", &meta.triggered_at),
    ] {
        let v = match value {
            Some(s) => AttributeValue::S(s.clone()),
            None => AttributeValue::Null(true),
        };
        item.insert(name.to_string(), v);
    }
    // The item carries no version, so the put's version condition always holds: the job
    // (one per project, under an advisory lock) is the only writer of this item.
    store
        .put(
            TableKind::ProjectMetadata,
            item,
            0,
            &crate::store::Guard::Version,
        )
        .await?;
    Ok(())
}

pub fn now_iso() -> String {
    iso(Utc::now())
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
