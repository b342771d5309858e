//! Projection: core rows to the DynamoDB items of one document.
//!
//! [`load`] reads the rows of a document from one snapshot in one round trip ([`snapshot`]); [`environment`] and
//! [`api_key`] turn them into documents without I/O; this module lays the documents out as
//! the items they become (the environments item, the environments_v2 `_META` item, the API
//! key item), each with its table and key.

pub mod api_key;
pub mod environment;
pub mod identity;
pub mod load;
pub mod rows;
pub mod snapshot;

use chrono::{DateTime, Utc};
use edge_documents::tables::TableKind;
use serde_json::{json, Map, Value};
use sqlx::PgConnection;

use crate::doc_key::DocKey;
use environment::EnvironmentProjection;

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// Data in Postgres that cannot become a valid document.
    #[error("invalid core data: {0}")]
    InvalidData(String),
    #[error("reading core rows: {0}")]
    Db(#[from] sqlx::Error),
}

impl ProjectionError {
    pub fn invalid(reason: impl Into<String>) -> Self {
        ProjectionError::InvalidData(reason.into())
    }
}

/// One item a document should have in DynamoDB.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredItem {
    pub table: TableKind,
    /// The item's primary key attributes.
    pub key: Map<String, Value>,
    /// The whole logical item (key attributes included).
    pub body: Value,
    /// Whether Flagsmith has a compressed form for this item.
    pub compressible: bool,
}

/// What a document projects to at one snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Projected {
    /// Every item the document should have; empty when the document should not exist.
    pub items: Vec<DesiredItem>,
    /// Earliest future time at which the projection changes without a row change.
    pub next_change_at: Option<DateTime<Utc>>,
    pub snapshot_time: DateTime<Utc>,
}

/// Projects one document from one snapshot of the core rows (its own, or the caller's
/// transaction begun with [`snapshot::begin`]).
pub async fn project(conn: &mut PgConnection, doc: DocKey) -> Result<Projected, ProjectionError> {
    match doc {
        DocKey::Environment(id) => {
            let (snapshot_time, rows) = load::environment(conn, id).await?;
            let Some(rows) = rows else {
                return Ok(Projected {
                    items: vec![],
                    next_change_at: None,
                    snapshot_time,
                });
            };
            Ok(match environment::project_environment(&rows)? {
                EnvironmentProjection::Absent => Projected {
                    items: vec![],
                    next_change_at: None,
                    snapshot_time,
                },
                EnvironmentProjection::Present {
                    document,
                    write_v2_meta,
                    next_change_at,
                } => Projected {
                    items: environment_items(&document, write_v2_meta),
                    next_change_at,
                    snapshot_time,
                },
            })
        }
        DocKey::Identity(id) => {
            let (snapshot_time, rows) = load::identities_at(conn, &[id]).await?;
            let Some(rows) = rows.first() else {
                return Ok(Projected {
                    items: vec![],
                    next_change_at: None,
                    snapshot_time,
                });
            };
            Ok(identity_projected(rows)?)
        }
        DocKey::ApiKey(id) => {
            let (snapshot_time, row) = load::api_key(conn, id).await?;
            let items = row
                .and_then(|r| api_key::project_api_key(&r))
                .map(|doc| {
                    let body = serde_json::to_value(&doc).expect("documents serialise");
                    vec![DesiredItem {
                        table: TableKind::EnvironmentApiKeys,
                        key: key_of(&body, TableKind::EnvironmentApiKeys),
                        body,
                        compressible: false,
                    }]
                })
                .unwrap_or_default();
            Ok(Projected {
                items,
                next_change_at: None,
                snapshot_time,
            })
        }
    }
}

/// Projects many documents: the identity documents from one snapshot (one round trip for
/// all of them), the others one at a time, each from its own. A Postgres error fails them
/// all (the outer error); data that cannot become a document fails only its document.
pub async fn project_many(
    conn: &mut PgConnection,
    docs: &[DocKey],
) -> Result<Vec<Result<Projected, ProjectionError>>, ProjectionError> {
    let ids: Vec<i32> = docs
        .iter()
        .filter_map(|d| match d {
            DocKey::Identity(id) => Some(*id),
            _ => None,
        })
        .collect();
    let mut identities = std::collections::HashMap::new();
    let mut identity_snapshot = None;
    if !ids.is_empty() {
        let (snapshot_time, rows) = load::identities_at(conn, &ids).await?;
        identity_snapshot = Some(snapshot_time);
        identities.extend(rows.into_iter().map(|r| (r.identity.id, r)));
    }
    let mut out = Vec::with_capacity(docs.len());
    for doc in docs {
        out.push(match (doc, identity_snapshot) {
            (DocKey::Identity(id), Some(snapshot_time)) => match identities.remove(id) {
                Some(rows) => identity_projected(&rows),
                // The identity is gone: its document has no items.
                None => Ok(Projected {
                    items: vec![],
                    next_change_at: None,
                    snapshot_time,
                }),
            },
            _ => match project(conn, *doc).await {
                Err(ProjectionError::Db(e)) => return Err(ProjectionError::Db(e)),
                other => other,
            },
        });
    }
    Ok(out)
}

/// The items of one identity's projection.
pub fn identity_projected(rows: &rows::IdentityRows) -> Result<Projected, ProjectionError> {
    Ok(match identity::project_identity(rows)? {
        identity::IdentityProjection::Absent => Projected {
            items: vec![],
            next_change_at: None,
            snapshot_time: rows.snapshot_time,
        },
        identity::IdentityProjection::Present {
            document,
            overrides,
            next_change_at,
        } => {
            let mut items = Vec::with_capacity(1 + overrides.len());
            let body = serde_json::to_value(&*document).expect("documents serialise");
            items.push(DesiredItem {
                table: TableKind::Identities,
                key: key_of(&body, TableKind::Identities),
                body,
                compressible: false,
            });
            for o in overrides {
                let body = serde_json::to_value(&o).expect("documents serialise");
                items.push(DesiredItem {
                    table: TableKind::EnvironmentsV2,
                    key: key_of(&body, TableKind::EnvironmentsV2),
                    body,
                    compressible: false,
                });
            }
            Projected {
                items,
                next_change_at,
                snapshot_time: rows.snapshot_time,
            }
        }
    })
}

/// The environments item and, when the project's v2 migration status asks for it, the
/// environments_v2 `_META` item: every environment field except `api_key`, plus
/// `environment_id` (a string), `environment_api_key` and `document_key`.
pub fn environment_items(
    document: &edge_documents::model::EnvironmentDocument,
    write_v2_meta: bool,
) -> Vec<DesiredItem> {
    let body = serde_json::to_value(document).expect("documents serialise");
    let mut items = vec![DesiredItem {
        table: TableKind::Environments,
        key: key_of(&body, TableKind::Environments),
        body: body.clone(),
        compressible: true,
    }];
    if write_v2_meta {
        let mut meta = body.as_object().cloned().expect("an object");
        meta.remove("api_key");
        meta.insert("environment_id".into(), json!(document.id.to_string()));
        meta.insert("environment_api_key".into(), json!(document.api_key));
        meta.insert("document_key".into(), json!("_META"));
        let meta = Value::Object(meta);
        items.push(DesiredItem {
            table: TableKind::EnvironmentsV2,
            key: key_of(&meta, TableKind::EnvironmentsV2),
            body: meta,
            compressible: true,
        });
    }
    items
}

fn key_of(body: &Value, table: TableKind) -> Map<String, Value> {
    table
        .key_attributes()
        .into_iter()
        .map(|k| (k.to_string(), body[k].clone()))
        .collect()
}
