//! What every item should be: every document of Postgres projected, in one snapshot per
//! batch of documents, batch by batch.

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

/// Every document of Postgres, to project batch by batch ([`Batches`]).
pub async fn all_documents(pool: &PgPool) -> Result<Vec<DocKey>, ExpectedError> {
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
    Ok(envs
        .into_iter()
        .map(DocKey::Environment)
        .chain(keys.into_iter().map(DocKey::ApiKey))
        .chain(ids.into_iter().map(DocKey::Identity))
        .collect())
}

/// One batch of projected documents.
#[derive(Default)]
pub struct Batch {
    /// Expected items by ledger key (a key projected twice: the later document's).
    pub items: Vec<(Box<str>, ExpectedItem)>,
    /// Documents whose projection failed (invalid data: reported, not fatal).
    pub failed: Vec<String>,
    /// Documents projected in this batch.
    pub documents: usize,
}

/// The documents' expected items, 2,000 identities (or all other documents) at a
/// time, each batch in one snapshot.
pub struct Batches<'a> {
    pool: &'a PgPool,
    others: Vec<DocKey>,
    identities: Vec<i32>,
    next_identity: usize,
}

impl<'a> Batches<'a> {
    pub fn new(pool: &'a PgPool, docs: &[DocKey]) -> Self {
        let (identities, others): (Vec<DocKey>, Vec<DocKey>) =
            docs.iter().partition(|d| matches!(d, DocKey::Identity(_)));
        let identities = identities
            .into_iter()
            .filter_map(|d| match d {
                DocKey::Identity(id) => Some(id),
                _ => None,
            })
            .collect();
        Self {
            pool,
            others,
            identities,
            next_identity: 0,
        }
    }

    /// Documents not yet projected.
    pub fn remaining(&self) -> usize {
        self.others.len() + self.identities.len() - self.next_identity
    }

    /// The next batch, or `None` when every document was projected.
    pub async fn next(&mut self) -> Result<Option<Batch>, ExpectedError> {
        let mut batch = Batch::default();
        if !self.others.is_empty() {
            let mut conn = self.pool.acquire().await?;
            for doc in std::mem::take(&mut self.others) {
                batch.documents += 1;
                match projection::project(&mut conn, doc).await {
                    Ok(p) => add(&mut batch.items, &doc.to_string(), &p.items),
                    Err(ProjectionError::Db(e)) => return Err(e.into()),
                    Err(e) => {
                        tracing::warn!(doc = %doc, error = %e, "document cannot be projected");
                        batch.failed.push(format!("{doc}: {e}"));
                    }
                }
            }
            return Ok(Some(batch));
        }
        let end = (self.next_identity + IDENTITY_BATCH).min(self.identities.len());
        if self.next_identity == end {
            return Ok(None);
        }
        let chunk = &self.identities[self.next_identity..end];
        self.next_identity = end;
        let mut conn = self.pool.acquire().await?;
        batch.documents = chunk.len();
        for rows in load::identities(&mut conn, chunk).await? {
            let doc = DocKey::Identity(rows.identity.id).to_string();
            match projection::identity_projected(&rows) {
                Ok(p) => add(&mut batch.items, &doc, &p.items),
                Err(e) => batch.failed.push(format!("{doc}: {e}")),
            }
        }
        Ok(Some(batch))
    }
}

/// The expected items of the given documents, in memory (for a few documents).
pub async fn expected_of(
    pool: &PgPool,
    docs: &[DocKey],
) -> Result<(HashMap<Box<str>, ExpectedItem>, Vec<String>), ExpectedError> {
    let mut out = HashMap::new();
    let mut failed = Vec::new();
    let mut batches = Batches::new(pool, docs);
    while let Some(batch) = batches.next().await? {
        out.extend(batch.items);
        failed.extend(batch.failed);
    }
    Ok((out, failed))
}

fn add(out: &mut Vec<(Box<str>, ExpectedItem)>, doc_key: &str, items: &[projection::DesiredItem]) {
    for item in items {
        if item.table == TableKind::ProjectMetadata {
            continue;
        }
        let Some(key) = acks::item_key_of_json(item.table, &item.key) else {
            continue;
        };
        out.push((
            key.into(),
            ExpectedItem {
                doc_key: doc_key.into(),
                table: item.table,
                hash: digest(&content_hash(&item.body)),
            },
        ));
    }
}
