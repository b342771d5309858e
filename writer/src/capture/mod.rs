//! Capture: from the change log (filled by the row triggers) to the coalesced queue of
//! documents to project.
//!
//! [`drain_once`] claims a batch of change rows (`FOR UPDATE SKIP LOCKED`, so several writers
//! share the work), resolves each to the documents it touches ([`resolve`]), upserts them into
//! `edge.pending` and deletes the change rows, in one transaction: either the changes become
//! pending documents or they stay in the change log. [`listen`] wakes the writer on NOTIFY.

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
}

const CLAIM: &str = r#"
SELECT id, table_name, op, new_keys, old_keys, captured_at
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
    let ids: Vec<i64> = changes.iter().map(|c| c.id).collect();
    sqlx::query("DELETE FROM edge.change_log WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Drained {
        changes: changes.len(),
        documents: docs.len(),
    })
}

/// Drains until the change log has nothing visible left.
pub async fn drain_all(pool: &PgPool, batch: i64) -> Result<Drained, sqlx::Error> {
    let mut total = Drained::default();
    loop {
        let step = drain_once(pool, batch).await?;
        total.changes += step.changes;
        total.documents += step.documents;
        if step.changes < batch as usize {
            return Ok(total);
        }
    }
}
