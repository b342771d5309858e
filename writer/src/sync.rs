//! Write-through on save: replicate one environment's documents now, for callers that need
//! read-your-writes (`writer sync`, `POST /v1/sync`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::doc_key::DocKey;
use crate::replicate::{Outcome, ReplicateError, Replicator};
use crate::store::{ItemStore, StoreError};
use crate::sync_wait::WaitReport;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("no environment with id or api_key {0:?} in the core database")]
    NotFound(String),
    #[error("looking up environment {0:?}: {1}")]
    Lookup(String, #[source] sqlx::Error),
    #[error(transparent)]
    Replicate(#[from] ReplicateError),
    /// Reading back what the sync wrote, to wait for its acknowledgements.
    #[error("reading the items written back: {0}")]
    ReadBack(#[from] StoreError),
}

/// What a sync wrote: the environment document and its API key documents; with a wait, what
/// the regions acknowledged.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SyncResult {
    pub environment_id: i32,
    pub environment: Outcome,
    pub api_keys: Vec<Outcome>,
    /// Present when the caller asked to wait for the regions' acknowledgements.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitReport>,
    /// When the sync began writing each document (by document key): the start of the lag of
    /// its acknowledgements.
    #[serde(skip)]
    pub write_started: HashMap<String, DateTime<Utc>>,
}

/// Finds an environment by numeric id or by its client-side api_key.
pub async fn find_environment(pool: &PgPool, ident: &str) -> Result<i32, SyncError> {
    let ident = ident.trim();
    let found: Option<i32> = if let Ok(id) = ident.parse::<i32>() {
        sqlx::query_scalar("SELECT id FROM environments_environment WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await
    } else {
        sqlx::query_scalar("SELECT id FROM environments_environment WHERE api_key = $1")
            .bind(ident)
            .fetch_optional(pool)
            .await
    }
    .map_err(|e| SyncError::Lookup(ident.to_string(), e))?;
    found.ok_or_else(|| SyncError::NotFound(ident.to_string()))
}

/// Replicates the environment document and its API key documents now.
pub async fn sync_environment<S: ItemStore>(
    replicator: &Replicator<S>,
    ident: &str,
) -> Result<SyncResult, SyncError> {
    let id = find_environment(replicator.pool(), ident).await?;
    let mut write_started = HashMap::new();
    write_started.insert(DocKey::Environment(id).to_string(), Utc::now());
    let environment = replicator.replicate_now(DocKey::Environment(id)).await?;
    let keys: Vec<i32> = sqlx::query_scalar(
        "SELECT id FROM environments_environmentapikey WHERE environment_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(replicator.pool())
    .await
    .map_err(|e| SyncError::Lookup(ident.to_string(), e))?;
    let mut api_keys = Vec::with_capacity(keys.len());
    for key in keys {
        write_started.insert(DocKey::ApiKey(key).to_string(), Utc::now());
        api_keys.push(replicator.replicate_now(DocKey::ApiKey(key)).await?);
    }
    Ok(SyncResult {
        environment_id: id,
        environment,
        api_keys,
        wait: None,
        write_started,
    })
}
