//! Capture: from the change log (filled by the row triggers) to the coalesced queue of
//! documents to project.
//!
//! [`drain_once`] claims a batch of change rows (`FOR UPDATE SKIP LOCKED`, so several writers
//! share the work), resolves each to the documents it touches ([`resolve`]), upserts them into
//! `edge.pending` and deletes the change rows, in one transaction: either the changes become
//! pending documents or they stay in the change log. [`listen`] wakes the writer on NOTIFY.

pub mod control;
pub mod fanout;
pub mod listen;
pub mod resolve;

use std::collections::BTreeMap;

use sqlx::PgPool;

use crate::doc_key::DocKey;
use crate::state::{change_log, pending};

pub use crate::state::change_log::ChangeRow;

pub use crate::state::pending::ChangeSpan;

/// Result of one drain step.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    pub changes: usize,
    pub documents: usize,
    /// Of `changes`, those made by edge -> core ingestion.
    pub edge_changes: usize,
    /// Identity documents enqueued by fan-out pages.
    pub fanned_out: usize,
}

/// Moves up to `batch` change rows into the pending queue. Returns what it moved.
pub async fn drain_once(pool: &PgPool, batch: i64) -> Result<Drained, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let changes = change_log::claim(&mut tx, batch).await?;
    if changes.is_empty() {
        return Ok(Drained::default());
    }
    let resolved = resolve::resolve(&mut tx, &changes).await?;
    let docs: BTreeMap<DocKey, ChangeSpan> = resolved.docs;
    pending::enqueue(&mut tx, &docs).await?;
    fanout::record(&mut tx, &resolved.fan_outs).await?;
    record_merge_clocks(&mut tx, &changes).await?;
    let ids: Vec<i64> = changes.iter().map(|c| c.id).collect();
    change_log::delete(&mut tx, &ids).await?;
    tx.commit().await?;
    Ok(Drained {
        changes: changes.len(),
        documents: docs.len(),
        edge_changes: changes.iter().filter(|c| c.origin.is_some()).count(),
        fanned_out: 0,
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

/// Whether there is anything to capture: a visible change row or a fan-out to page.
pub async fn has_work(pool: &PgPool) -> Result<bool, sqlx::Error> {
    change_log::has_work(pool).await
}

/// Drains until the change log has nothing visible left, then pages every recorded identity
/// fan-out into the queue.
pub async fn drain_all(pool: &PgPool, batch: i64) -> Result<Drained, sqlx::Error> {
    let mut total = Drained::default();
    loop {
        let step = drain_once(pool, batch).await?;
        total.changes += step.changes;
        total.documents += step.documents;
        total.edge_changes += step.edge_changes;
        if step.changes < batch as usize {
            break;
        }
    }
    while let Some(enqueued) = fanout::step(pool, fanout::PAGE).await? {
        total.documents += enqueued;
        total.fanned_out += enqueued;
    }
    Ok(total)
}
