//! Capture: from the change log (filled by the row triggers) to the coalesced queue of
//! documents to project.
//!
//! [`drain_once`] claims a batch of change rows (`FOR UPDATE SKIP LOCKED`, so several writers
//! share the work), resolves each to the documents it touches ([`resolve`]), upserts them into
//! `edge.pending` and deletes the change rows, in one transaction: either the changes become
//! pending documents or they stay in the change log. [`listen`] wakes the writer on NOTIFY.

pub mod control;
pub mod listen;
pub mod resolve;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::doc_key::DocKey;
use crate::state::pending;

/// One row of `edge.change_log`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChangeRow {
    pub id: i64,
    pub table_name: String,
    pub op: String,
    pub new_keys: Option<serde_json::Value>,
    pub old_keys: Option<serde_json::Value>,
    pub captured_at: DateTime<Utc>,
    /// `None` for a core change; `Some("edge")` for a change made by edge -> core ingestion
    /// (`edge_ingest`), which is re-projected but is not a new core change.
    pub origin: Option<String>,
}

/// Capture times of the oldest and newest change that touched a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeSpan {
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
}

impl ChangeSpan {
    fn add(&mut self, t: DateTime<Utc>) {
        self.first = self.first.min(t);
        self.last = self.last.max(t);
    }
}

/// Result of one drain step.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    pub changes: usize,
    pub documents: usize,
    /// Of `changes`, those made by edge -> core ingestion.
    pub edge_changes: usize,
}

const CLAIM: &str = r#"
SELECT id, table_name, op, new_keys, old_keys, captured_at, origin
FROM edge.change_log
ORDER BY id
LIMIT $1
FOR UPDATE SKIP LOCKED
"#;

/// Moves up to `batch` change rows into the pending queue. Returns what it moved.
pub async fn drain_once(pool: &PgPool, batch: i64) -> Result<Drained, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let changes: Vec<ChangeRow> = sqlx::query_as(CLAIM)
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
    if changes.is_empty() {
        return Ok(Drained::default());
    }
    let docs: BTreeMap<DocKey, ChangeSpan> = resolve::resolve(&mut tx, &changes).await?;
    pending::enqueue(&mut tx, &docs).await?;
    record_merge_clocks(&mut tx, &changes).await?;
    let ids: Vec<i64> = changes.iter().map(|c| c.id).collect();
    sqlx::query("DELETE FROM edge.change_log WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Drained {
        changes: changes.len(),
        documents: docs.len(),
        edge_changes: changes.iter().filter(|c| c.origin.is_some()).count(),
    })
}

/// The merge rule's clocks (`edge_ingest::clock`): core changes of traits, with the value
/// before, and core deletes of identities. Ingestion's own changes record their clocks
/// themselves, with the edge write's time.
async fn record_merge_clocks(
    conn: &mut sqlx::PgConnection,
    changes: &[ChangeRow],
) -> Result<(), sqlx::Error> {
    use edge_ingest::clock;
    let core = changes.iter().filter(|c| c.origin.is_none());
    let mut traits = Vec::new();
    let mut deletes = Vec::new();
    for c in core {
        match c.table_name.as_str() {
            "environments_trait" => traits.extend(clock::trait_changes(
                &c.op,
                c.new_keys.as_ref(),
                c.old_keys.as_ref(),
                c.captured_at,
            )),
            "environments_identity" => deletes.extend(clock::identity_delete(
                &c.op,
                c.old_keys.as_ref(),
                c.captured_at,
            )),
            _ => {}
        }
    }
    clock::record_core_changes(conn, &traits).await?;
    clock::record_identity_deletes(conn, &deletes).await
}

/// Drains until the change log has nothing visible left.
pub async fn drain_all(pool: &PgPool, batch: i64) -> Result<Drained, sqlx::Error> {
    let mut total = Drained::default();
    loop {
        let step = drain_once(pool, batch).await?;
        total.changes += step.changes;
        total.documents += step.documents;
        total.edge_changes += step.edge_changes;
        if step.changes < batch as usize {
            return Ok(total);
        }
    }
}
