//! An [`ItemStore`] wrapper whose writes wait at a gate: a test holds a writer inside its
//! DynamoDB write (with the document's lock held) until something else has happened.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use edge_documents::item::Item;
use edge_documents::tables::TableKind;
use edge_writer::store::{
    BatchPutError, Guard, GuardedPut, ItemStore, StoreError, TransactOutcome, WriteOutcome,
};
use tokio::sync::watch;

#[derive(Clone)]
pub struct GatedStore<S> {
    inner: S,
    open: watch::Receiver<bool>,
    /// Writes that reached the gate (waiting or through).
    arrived: Arc<AtomicUsize>,
}

/// Opens a [`GatedStore`]'s gate; it stays open.
pub struct Gate(watch::Sender<bool>);

impl Gate {
    pub fn open(&self) {
        let _ = self.0.send(true);
    }
}

impl<S> GatedStore<S> {
    /// A closed gate in front of `inner`.
    pub fn new(inner: S) -> (Self, Gate) {
        let (tx, rx) = watch::channel(false);
        let store = GatedStore {
            inner,
            open: rx,
            arrived: Arc::default(),
        };
        (store, Gate(tx))
    }

    /// Writes that reached the gate so far.
    pub fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }

    async fn pass(&self) {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.clone();
        // The sender lives as long as the test; a dropped one counts as open.
        let _ = open.wait_for(|o| *o).await;
    }
}

impl<S: ItemStore> ItemStore for GatedStore<S> {
    async fn put(
        &self,
        table: TableKind,
        item: Item,
        version: i64,
        guard: &Guard,
    ) -> Result<WriteOutcome, StoreError> {
        self.pass().await;
        self.inner.put(table, item, version, guard).await
    }

    async fn delete(
        &self,
        table: TableKind,
        key: Item,
        doc_key: &str,
        version: i64,
        guard: &Guard,
    ) -> Result<WriteOutcome, StoreError> {
        self.pass().await;
        self.inner.delete(table, key, doc_key, version, guard).await
    }

    async fn batch_put(&self, items: Vec<(TableKind, Item)>) -> Result<(), BatchPutError> {
        self.pass().await;
        self.inner.batch_put(items).await
    }

    async fn put_all(&self, puts: Vec<GuardedPut>) -> Result<TransactOutcome, StoreError> {
        self.pass().await;
        self.inner.put_all(puts).await
    }

    async fn get(&self, table: TableKind, key: Item) -> Result<Option<Item>, StoreError> {
        self.inner.get(table, key).await
    }
}
