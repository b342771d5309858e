//! Edge -> core ingestion in the consumer: identity items written at the edge (no
//! replication attributes) are applied to Flagsmith's core database by `edge_ingest`.
//!
//! It runs in every region's consumer, not only the home region's: with global tables, an
//! edge write in one region that loses a last-writer-wins race against the writer's newer
//! write never reaches the other regions' streams, so only the region where it was made sees
//! it. Ingestion is idempotent (the last ingested image per item, and per-trait clocks), so the
//! same write ingested from two regions' streams, or redelivered, changes core once.

use chrono::Utc;
use edge_documents::item::{stored_meta, Item};
use edge_ingest::{EdgeWrite, IngestError, Ingested};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::record::ChangeRecord;

/// How recent a delete intent of the writer must be for the removal of an item without the
/// writer's attributes to be the writer's (its adoption of an ingested edge item).
const INTENT_WINDOW_MS: i64 = 10 * 60 * 1000;

/// The core database connection of ingestion.
#[derive(Clone)]
pub struct Ingestion {
    pool: PgPool,
}

/// What ingestion did with one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ingested(Ingested),
    /// The item cannot be ingested: parked in `edge.ingest_dead_letter` with the reason.
    Parked(String),
}

impl Ingestion {
    /// A lazily connecting pool (a Lambda cold start does not wait for Postgres).
    pub fn connect_lazy(database_url: &str) -> Result<Ingestion, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_lazy(database_url)?;
        Ok(Ingestion { pool })
    }

    pub fn from_pool(pool: PgPool) -> Ingestion {
        Ingestion { pool }
    }

    /// Applies an edge write of an identity item to core. `Err` only for a failure worth a
    /// retry (Postgres unreachable); an item core cannot hold is parked.
    pub async fn apply(
        &self,
        record: &ChangeRecord,
        composite_key: &str,
    ) -> Result<Outcome, String> {
        let write = EdgeWrite {
            composite_key,
            new: record.new.as_ref(),
            old: record.old.as_ref(),
            at: record.created_at.unwrap_or_else(Utc::now),
        };
        match edge_ingest::ingest(&self.pool, &write).await {
            Ok(result) => {
                if matches!(result, Ingested::Applied(_)) {
                    let _ = edge_ingest::dead_letters::clear(&self.pool, composite_key).await;
                }
                Ok(Outcome::Ingested(result))
            }
            Err(e @ IngestError::Invalid { .. }) => {
                let reason = e.to_string();
                let image = record.new.as_ref().and_then(|i| {
                    serde_dynamo::aws_sdk_dynamodb_1::from_item::<serde_json::Value>(i.clone()).ok()
                });
                edge_ingest::dead_letters::park(&self.pool, composite_key, &reason, image.as_ref())
                    .await
                    .map_err(|db| format!("{reason}; parking it failed: {db}"))?;
                tracing::error!(item = composite_key, error = %reason,
                    "edge identity item cannot be ingested; parked, later writes carry on");
                Ok(Outcome::Parked(reason))
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Whether a removal is an edge delete: the old image lacks the writer's attributes and no
/// recent delete intent of the writer exists, or it is the writer's item and no newer intent
/// exists.
pub fn is_edge_delete(old: &Item, intent: Option<(i64, i64)>, created_at_ms: i64) -> bool {
    match stored_meta(old) {
        Ok(meta) => intent.is_none_or(|(version, _)| version <= meta.version),
        Err(_) => intent
            .is_none_or(|(_, recorded_at_ms)| created_at_ms - recorded_at_ms > INTENT_WINDOW_MS),
    }
}
