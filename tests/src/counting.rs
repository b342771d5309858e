//! An [`ItemStore`] wrapper that counts what reaches DynamoDB.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use edge_documents::item::Item;
use edge_documents::tables::TableKind;
use edge_writer::store::{
    BatchPutError, Guard, GuardedPut, ItemStore, StoreError, TransactOutcome, WriteOutcome,
};

#[derive(Clone)]
pub struct CountingStore<S> {
    inner: S,
    pub puts: Arc<AtomicUsize>,
    pub environment_puts: Arc<AtomicUsize>,
    pub deletes: Arc<AtomicUsize>,
    /// Conditional puts and deletes DynamoDB applied.
    pub applied: Arc<AtomicUsize>,
    /// TransactWriteItems calls.
    pub transactions: Arc<AtomicUsize>,
}

impl<S> CountingStore<S> {
    pub fn new(inner: S) -> Self {
        CountingStore {
            inner,
            puts: Arc::default(),
            environment_puts: Arc::default(),
            deletes: Arc::default(),
            applied: Arc::default(),
            transactions: Arc::default(),
        }
    }
    pub fn puts(&self) -> usize {
        self.puts.load(Ordering::SeqCst)
    }
    pub fn environment_puts(&self) -> usize {
        self.environment_puts.load(Ordering::SeqCst)
    }
    pub fn applied(&self) -> usize {
        self.applied.load(Ordering::SeqCst)
    }
    pub fn transactions(&self) -> usize {
        self.transactions.load(Ordering::SeqCst)
    }

    fn count_applied(
        &self,
        outcome: Result<WriteOutcome, StoreError>,
    ) -> Result<WriteOutcome, StoreError> {
        if let Ok(WriteOutcome::Applied) = outcome {
            self.applied.fetch_add(1, Ordering::SeqCst);
        }
        outcome
    }
}

impl<S: ItemStore> ItemStore for CountingStore<S> {
    async fn put(
        &self,
        table: TableKind,
        item: Item,
        version: i64,
        guard: &Guard,
    ) -> Result<WriteOutcome, StoreError> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        if table == TableKind::Environments {
            self.environment_puts.fetch_add(1, Ordering::SeqCst);
        }
        let outcome = self.inner.put(table, item, version, guard).await;
        self.count_applied(outcome)
    }

    async fn delete(
        &self,
        table: TableKind,
        key: Item,
        doc_key: &str,
        version: i64,
        guard: &Guard,
    ) -> Result<WriteOutcome, StoreError> {
        self.deletes.fetch_add(1, Ordering::SeqCst);
        let outcome = self.inner.delete(table, key, doc_key, version, guard).await;
        self.count_applied(outcome)
    }

    async fn batch_put(&self, items: Vec<(TableKind, Item)>) -> Result<(), BatchPutError> {
        self.puts.fetch_add(items.len(), Ordering::SeqCst);
        let envs = items
            .iter()
            .filter(|(t, _)| *t == TableKind::Environments)
            .count();
        self.environment_puts.fetch_add(envs, Ordering::SeqCst);
        self.inner.batch_put(items).await
    }

    async fn put_all(&self, puts: Vec<GuardedPut>) -> Result<TransactOutcome, StoreError> {
        let n = puts.len();
        self.transactions.fetch_add(1, Ordering::SeqCst);
        self.puts.fetch_add(n, Ordering::SeqCst);
        let envs = puts
            .iter()
            .filter(|p| p.table == TableKind::Environments)
            .count();
        self.environment_puts.fetch_add(envs, Ordering::SeqCst);
        let outcome = self.inner.put_all(puts).await;
        if let Ok(TransactOutcome::Applied) = outcome {
            self.applied.fetch_add(n, Ordering::SeqCst);
        }
        outcome
    }

    async fn get(&self, table: TableKind, key: Item) -> Result<Option<Item>, StoreError> {
        self.inner.get(table, key).await
    }
}
