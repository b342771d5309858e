//! The per-project switch of edge -> core ingestion (`edge.ingest_setting`).
//!
//! Without a setting, ingestion runs for a project once its identity migration is complete
//! (`edge.identity_migration`, whole project): from then on the edge holds every identity,
//! and what the edge writes must reach core. `on` and `off` override that.

use serde::Serialize;
use sqlx::{PgConnection, PgPool};

/// The environment an edge item names, and whether its project ingests.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EdgeEnvironment {
    pub environment_id: i32,
    pub project_id: i32,
    pub ingestion: bool,
}

const ENABLED: &str = r#"COALESCE(
    (SELECT s.enabled FROM edge.ingest_setting s WHERE s.project_id = p.id),
    EXISTS (SELECT 1 FROM edge.identity_migration m
            WHERE m.project_id = p.id AND m.environment_id = 0 AND m.status = 'COMPLETE'))"#;

/// The live environment with this client API key, if any.
pub async fn environment(
    conn: &mut PgConnection,
    api_key: &str,
) -> Result<Option<EdgeEnvironment>, sqlx::Error> {
    sqlx::query_as(&format!(
        r#"SELECT e.id AS environment_id, p.id AS project_id, {ENABLED} AS ingestion
           FROM environments_environment e JOIN projects_project p ON p.id = e.project_id
           WHERE e.api_key = $1 AND e.deleted_at IS NULL"#
    ))
    .bind(api_key)
    .fetch_optional(conn)
    .await
}

/// Whether ingestion runs for the project of a core identity.
pub async fn enabled_for_identity(
    conn: &mut PgConnection,
    identity_id: i32,
) -> Result<bool, sqlx::Error> {
    let enabled: Option<bool> = sqlx::query_scalar(&format!(
        r#"SELECT {ENABLED} FROM environments_identity i
           JOIN environments_environment e ON e.id = i.environment_id
           JOIN projects_project p ON p.id = e.project_id
           WHERE i.id = $1"#
    ))
    .bind(identity_id)
    .fetch_optional(conn)
    .await?;
    Ok(enabled.unwrap_or(false))
}

/// `Some(true)`/`Some(false)`: on or off; `None`: back to the default.
pub async fn set(pool: &PgPool, project_id: i32, enabled: Option<bool>) -> Result<(), sqlx::Error> {
    match enabled {
        Some(on) => {
            sqlx::query(
                r#"INSERT INTO edge.ingest_setting (project_id, enabled) VALUES ($1, $2)
                   ON CONFLICT (project_id) DO UPDATE SET enabled = $2, updated_at = now()"#,
            )
            .bind(project_id)
            .bind(on)
            .execute(pool)
            .await?;
        }
        None => {
            sqlx::query("DELETE FROM edge.ingest_setting WHERE project_id = $1")
                .bind(project_id)
                .execute(pool)
                .await?;
        }
    }
    Ok(())
}

/// One edge project's ingestion state.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ProjectIngestion {
    pub project_id: i32,
    pub name: String,
    /// `on`, `off` or `default`.
    pub setting: String,
    pub ingestion: bool,
    pub migration_complete: bool,
}

/// Every edge project (`enable_dynamo_db`) with its ingestion state.
pub async fn list(pool: &PgPool) -> Result<Vec<ProjectIngestion>, sqlx::Error> {
    sqlx::query_as(&format!(
        r#"SELECT p.id AS project_id, p.name,
                  CASE (SELECT s.enabled FROM edge.ingest_setting s WHERE s.project_id = p.id)
                       WHEN true THEN 'on' WHEN false THEN 'off' ELSE 'default' END AS setting,
                  {ENABLED} AS ingestion,
                  EXISTS (SELECT 1 FROM edge.identity_migration m WHERE m.project_id = p.id
                          AND m.environment_id = 0 AND m.status = 'COMPLETE') AS migration_complete
           FROM projects_project p
           WHERE p.enable_dynamo_db AND p.deleted_at IS NULL
           ORDER BY p.id"#
    ))
    .fetch_all(pool)
    .await
}

/// Client API keys of live environments whose project does not ingest edge writes.
pub async fn api_keys_without_ingestion(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(&format!(
        r#"SELECT e.api_key FROM environments_environment e
           JOIN projects_project p ON p.id = e.project_id
           WHERE e.deleted_at IS NULL AND NOT {ENABLED}"#
    ))
    .fetch_all(pool)
    .await
}
