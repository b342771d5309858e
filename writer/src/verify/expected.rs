//! What every item should be: every document of Postgres projected, in one snapshot per
//! batch of documents.

use std::collections::HashMap;

use edge_documents::acks;
use edge_documents::hash::content_hash;
use edge_documents::tables::TableKind;
use sqlx::PgPool;

use super::scan::{digest, Digest};
use crate::doc_key::DocKey;
use crate::projection::{self, load, ProjectionError};

/// Identities projected per snapshot.
const IDENTITY_BATCH: usize = 2000;

/// One item Postgres says should exist.
#[derive(Debug, Clone)]
pub struct ExpectedItem {
    pub doc_key: Box<str>,
    pub table: TableKind,
    /// Content hash of the projected logical item.
    pub hash: Digest,
}

#[derive(Debug, thiserror::Error)]
pub enum ExpectedError {
    #[error("Postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("projecting {doc_key}: {source}")]
    Projection {
        doc_key: String,
        #[source]
        source: ProjectionError,
    },
}

/// Every expected item by ledger key, and the documents whose projection failed (invalid
/// data: reported, not fatal).
pub async fn expected_items(
    pool: &PgPool,
) -> Result<(HashMap<Box<str>, ExpectedItem>, Vec<String>), ExpectedError> {
    let mut conn = pool.acquire().await?;
    let envs: Vec<i32> = sqlx::query_scalar("SELECT id FROM environments_environment ORDER BY id")
        .fetch_all(&mut *conn)
        .await?;
    let keys: Vec<i32> =
        sqlx::query_scalar("SELECT id FROM environments_environmentapikey ORDER BY id")
            .fetch_all(&mut *conn)
            .await?;
    let ids: Vec<i32> = sqlx::query_scalar("SELECT id FROM environments_identity ORDER BY id")
        .fetch_all(&mut *conn)
        .await?;
    drop(conn);
    let docs: Vec<DocKey> = envs
        .into_iter()
        .map(DocKey::Environment)
        .chain(keys.into_iter().map(DocKey::ApiKey))
        .chain(ids.into_iter().map(DocKey::Identity))
        .collect();
    expected_of(pool, &docs).await
}

/// The expected items of the given documents.
pub async fn expected_of(
    pool: &PgPool,
    docs: &[DocKey],
) -> Result<(HashMap<Box<str>, ExpectedItem>, Vec<String>), ExpectedError> {
    let mut out = HashMap::new();
    let mut failed = Vec::new();
    let mut conn = pool.acquire().await?;
    let mut identities = Vec::new();
    for doc in docs {
        if let DocKey::Identity(id) = doc {
            identities.push(*id);
            continue;
        }
        let projected = projection::project(&mut conn, *doc).await;
        match projected {
            Ok(p) => add(&mut out, &doc.to_string(), &p.items),
            Err(ProjectionError::Db(e)) => return Err(e.into()),
            Err(e) => {
                tracing::warn!(doc = %doc, error = %e, "document cannot be projected");
                failed.push(format!("{doc}: {e}"));
            }
        }
    }
    for chunk in identities.chunks(IDENTITY_BATCH) {
        for rows in load::identities(&mut conn, chunk).await? {
            let doc = DocKey::Identity(rows.identity.id).to_string();
            match projection::identity_projected(&rows) {
                Ok(p) => add(&mut out, &doc, &p.items),
                Err(e) => failed.push(format!("{doc}: {e}")),
            }
        }
    }
    Ok((out, failed))
}

fn add(
    out: &mut HashMap<Box<str>, ExpectedItem>,
    doc_key: &str,
    items: &[projection::DesiredItem],
) {
    for item in items {
        if item.table == TableKind::ProjectMetadata {
            continue;
        }
        let Some(key) = acks::item_key_of_json(item.table, &item.key) else {
            continue;
        };
        out.insert(
            key.into(),
            ExpectedItem {
                doc_key: doc_key.into(),
                table: item.table,
                hash: digest(&content_hash(&item.body)),
            },
        );
    }
}
