//! The sink: DynamoDB items, written conditionally on their version.
//!
//! Delivery contract of [`ItemStore`]: at least once, idempotent by version. A put or delete
//! carries the document version; DynamoDB applies it only if the stored item is older (or
//! absent, or not ours), so a retried, duplicated or late write can never replace a newer
//! one. Nothing is ordered across items: each item converges on its own.

pub mod client;
pub mod dynamo;
pub mod tables;

use std::future::Future;

use edge_documents::item::Item;
use edge_documents::tables::TableKind;

pub use dynamo::DynamoStore;

/// BatchWriteItem's limit on the number of requests in one call.
pub const BATCH_MAX_ITEMS: usize = 25;

/// TransactWriteItems' limit on the number of actions in one call.
pub const TRANSACT_MAX_ITEMS: usize = 100;
/// TransactWriteItems' limit on the aggregate size of its items is 4 MB; this leaves room for
/// the request's own attributes (table names, conditions).
pub const TRANSACT_MAX_BYTES: usize = 3_500_000;

/// Result of one conditional write.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOutcome {
    /// DynamoDB applied the write.
    Applied,
    /// The stored item has a version at least as new: ours is obsolete and was not applied.
    Superseded { stored_version: Option<i64> },
    /// Under [`Guard::Owned`] or [`Guard::Adopt`]: the stored item was written by someone
    /// else (it lacks the writer's attributes) and was left alone. `None`: it changed or
    /// vanished between the read and the write.
    Foreign { item: Option<Box<Item>> },
}

/// What a write may replace.
#[derive(Debug, Clone, PartialEq)]
pub enum Guard {
    /// Core owns the item (environments, `_META`, API keys, v2 override items): a put
    /// replaces anything older than its version, including an item without a version.
    Version,
    /// Identities have other writers too (the Edge API, Flagsmith's edge identity
    /// endpoints), whose whole-item puts drop the writer's attributes: the write applies only
    /// to nothing, or to the writer's own item (`_replication_doc` is this document) older
    /// than its version. An item written by someone else is never replaced.
    Owned,
    /// Replace exactly this foreign item (every attribute equal, still without the writer's
    /// attributes): its content was ingested into core, so the merged document may take
    /// its place. Anything else written meanwhile is left alone.
    Adopt(Box<Item>),
}

impl Guard {
    /// The guard of a put into `table`: [`Guard::Owned`] for identity items (the edge writes
    /// them too), [`Guard::Version`] for everything core owns.
    pub fn for_put(table: TableKind) -> Guard {
        match table {
            TableKind::Identities => Guard::Owned,
            _ => Guard::Version,
        }
    }
}

/// One put of a conditional transaction ([`ItemStore::put_all`]).
#[derive(Debug, Clone)]
pub struct GuardedPut {
    pub table: TableKind,
    /// Carries `_replication_doc`.
    pub item: Item,
    pub version: i64,
    /// [`Guard::Version`] or [`Guard::Owned`].
    pub guard: Guard,
}

/// What a conditional transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransactOutcome {
    /// Every put was applied.
    Applied,
    /// Nothing was applied: DynamoDB cancelled the transaction. `refused` holds the indexes
    /// of the puts whose condition failed or that met another write of the same item at the
    /// same time; empty when it did not say which.
    Cancelled { refused: Vec<usize> },
}

/// A failed DynamoDB call, classified for the retry policy.
#[derive(Debug, Clone, thiserror::Error)]
#[error("DynamoDB {op} on table {table}: {message}")]
pub struct StoreError {
    pub op: &'static str,
    pub table: String,
    pub message: String,
    /// Worth retrying (network, throttling, a server error, a missing table that an
    /// operator may still create); `false` for a request DynamoDB will never accept.
    pub retryable: bool,
}

/// A failed BatchWriteItem call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{error}{}", if *unanswered {
    " (unanswered: DynamoDB may still apply it)"
} else {
    ""
})]
pub struct BatchPutError {
    #[source]
    pub error: StoreError,
    /// A request went unanswered (it timed out, or the connection was lost after it was
    /// sent): DynamoDB may apply it later, after the caller has given up on it. `false` when
    /// every request sent was answered (refused, or throttled until the retries ran out) or
    /// none could be sent (connection refused).
    pub unanswered: bool,
}

/// Where items go. Implemented by [`DynamoStore`]; tests add failing or slow ones.
pub trait ItemStore: Clone + Send + Sync + 'static {
    /// Puts `item` unless the stored item has a version `>= version` or `guard` refuses it
    /// (`item` must carry `_replication_doc`).
    fn put(
        &self,
        table: TableKind,
        item: Item,
        version: i64,
        guard: &Guard,
    ) -> impl Future<Output = Result<WriteOutcome, StoreError>> + Send;

    /// Deletes the item at `key` if it belongs to `doc_key` and is older than `version`
    /// (under [`Guard::Version`], also an item that carries no version at all).
    fn delete(
        &self,
        table: TableKind,
        key: Item,
        doc_key: &str,
        version: i64,
        guard: &Guard,
    ) -> impl Future<Output = Result<WriteOutcome, StoreError>> + Send;

    /// Puts up to [`BATCH_MAX_ITEMS`] items unconditionally (BatchWriteItem), retrying the
    /// items DynamoDB returns as unprocessed until all are written. Only for callers that
    /// made a stale write impossible before writing (see `migrate_identities`): a batch
    /// carries no condition. A request that goes unanswered is not sent again: the error
    /// says so ([`BatchPutError::unanswered`]), since DynamoDB may still apply it.
    fn batch_put(
        &self,
        items: Vec<(TableKind, Item)>,
    ) -> impl Future<Output = Result<(), BatchPutError>> + Send;

    /// Puts up to [`TRANSACT_MAX_ITEMS`] items (at most [`TRANSACT_MAX_BYTES`] in all) in one
    /// TransactWriteItems, each under its own guard's condition, exactly as [`Self::put`]
    /// would write it alone: all of them are applied, or none. No two puts may be of the
    /// same item.
    fn put_all(
        &self,
        puts: Vec<GuardedPut>,
    ) -> impl Future<Output = Result<TransactOutcome, StoreError>> + Send;

    /// Reads one item (consistent read).
    fn get(
        &self,
        table: TableKind,
        key: Item,
    ) -> impl Future<Output = Result<Option<Item>, StoreError>> + Send;
}
