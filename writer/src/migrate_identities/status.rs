//! Where a migration's status lives: `edge.identity_migration` (the job's own progress and
//! checkpoint) and the project metadata item in DynamoDB, which Flagsmith's core reads.
//!
//! The metadata item has exactly Flagsmith's fields, `id`, `migration_start_time`,
//! `migration_end_time` and `triggered_at`, and no replication attributes: core loads it
//! with `DynamoProjectMetadata(**item)`, which refuses unknown keys. Core derives the status
//! from it: no start time = not started, a start time only = in progress, both = complete.

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::Utc;
use edge_documents::item::Item;
use edge_documents::tables::TableKind;

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

pub use crate::state::identity_migrations::{checkpoint, start_job, JobRow};
