//! Environment API key document from its row: pure, no I/O.

use edge_documents::model::EnvironmentApiKeyDocument;

use super::environment::iso;
use super::rows::ApiKeyRow;

/// The key's document, or `None` when it must not exist on the edge (environment or project
/// deleted, project not on the edge).
pub fn project_api_key(row: &ApiKeyRow) -> Option<EnvironmentApiKeyDocument> {
    let on_edge = row.environment_deleted_at.is_none()
        && row.project_deleted_at.is_none()
        && row.organisation_deleted_at.is_none()
        && row.project_enable_dynamo_db;
    on_edge.then(|| EnvironmentApiKeyDocument {
        key: row.key.clone(),
        id: i64::from(row.id),
        created_at: iso(row.created_at),
        name: row.name.clone(),
        client_api_key: row.client_api_key.clone(),
        expires_at: row.expires_at.map(iso),
        active: row.active,
    })
}
