//! Edge -> core ingestion in the consumer: identity items written at the edge (no
//! replication attributes) are applied to Flagsmith's core database by `edge_ingest`.
//!
//! Two roles ([`Role`]):
//!
//! - **home**: the consumer of the home region's streams ingests every edge write it sees.
//!   Global tables bring every region's writes there, in order per item, so one place applies
//!   edge writes in one order. (A write made in another region is timed when it reached the
//!   home region.)
//! - **replica**: the other regions' consumers ingest only what the home region can never see:
//!   an edge write made in their region that lost global tables' last-writer-wins race against
//!   a newer write of the writer, which replaced it before it replicated. They recognise it
//!   when the writer's item replaces an edge image that was never ingested, and ingest that
//!   image (without a base: its traits and overrides are sets, nothing is deleted).
//!
//! Ingestion is idempotent (each ingested image is recorded with its time), so a redelivered
//! record changes nothing.

use chrono::Utc;
use edge_documents::item::{stored_meta, Item};
use edge_ingest::{EdgeWrite, IngestError, Ingested};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::record::ChangeRecord;

/// How recent a delete intent of the writer must be for the removal of an item without the
/// writer's attributes to be the writer's (its adoption of an ingested edge item).
const INTENT_WINDOW_MS: i64 = 10 * 60 * 1000;

/// Which edge writes a consumer ingests (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Home,
    Replica,
}

/// The core database connection of ingestion, and the consumer's role.
#[derive(Clone)]
pub struct Ingestion {
    pool: PgPool,
    role: Role,
    precision: chrono::Duration,
}

/// DynamoDB Streams round a record's creation time down to the second.
pub const AWS_TIME_PRECISION: std::time::Duration = std::time::Duration::from_secs(1);

/// What ingestion did with one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ingested(Ingested),
    /// The item cannot be ingested: parked in `edge.ingest_dead_letter` with the reason.
    Parked(String),
}

impl Ingestion {
    /// A lazily connecting pool (a Lambda cold start does not wait for Postgres).
    pub fn connect_lazy(database_url: &str, role: Role) -> Result<Ingestion, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_lazy(database_url)?;
        Ok(Ingestion::from_pool(pool, role))
    }

    pub fn from_pool(pool: PgPool, role: Role) -> Ingestion {
        Ingestion {
            pool,
            role,
            precision: chrono::Duration::from_std(AWS_TIME_PRECISION).unwrap_or_default(),
        }
    }

    /// How much the streams round creation times down (DynamoDB Local: a minute).
    pub fn with_time_precision(mut self, precision: std::time::Duration) -> Ingestion {
        self.precision = chrono::Duration::from_std(precision).unwrap_or_default();
        self
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Replica role: the writer's item replaced `old`, an edge image. If that image was never
    /// ingested, it lost the last-writer-wins race here and nowhere else saw it: ingest it.
    pub async fn ingest_lost(
        &self,
        record: &ChangeRecord,
        composite_key: &str,
        old: &Item,
    ) -> Result<Option<Outcome>, String> {
        let Ok(digest) = edge_ingest::edge_item::digest(old) else {
            return Ok(None);
        };
        let db = |e: sqlx::Error| format!("edge item {composite_key}: core database: {e}");
        if edge_ingest::was_ingested(&self.pool, composite_key, &digest)
            .await
            .map_err(db)?
        {
            return Ok(None);
        }
        // An edge write of the item ingested at or after the writer's replacing write here
        // is later than the lost image: applying the lost image now would go back in time.
        let replaced_at = record.created_at.unwrap_or_else(Utc::now);
        let last = edge_ingest::last_ingested_at(&self.pool, composite_key)
            .await
            .map_err(db)?;
        if last.is_some_and(|t| t >= replaced_at) {
            return Ok(None);
        }
        tracing::warn!(item = composite_key,
            "an edge write lost last-writer-wins against the writer before it replicated; ingesting it");
        let lost = ChangeRecord {
            new: Some(old.clone()),
            old: None,
            ..record.clone()
        };
        self.apply(&lost, composite_key).await.map(Some)
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
            precision: self.precision,
        };
        tracing::debug!(item = composite_key, at = %write.at, created_at = ?record.created_at,
            "ingesting an edge write");
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
