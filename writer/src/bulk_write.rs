//! The bulk write step: the items of many documents sent with BatchWriteItem, which takes no
//! condition, under a write lease per document that the caller committed first.
//!
//! Why that is safe, and what the leases are for, is the identity migration job's to say
//! (`migrate_identities::page`): while the documents' locks are held nobody else writes them,
//! and the leases cover the one remaining hole, a batch DynamoDB applies after we gave up on
//! it. This module sends the batches and says, when it fails, whether such a batch may still
//! land ([`BulkError::left_leases`]).

use std::time::Duration;

use edge_documents::item::Item;
use edge_documents::tables::TableKind;
use futures::stream::{self, StreamExt};

use crate::store::{BatchPutError, ItemStore, BATCH_MAX_ITEMS};

/// Tuning of the bulk write step.
#[derive(Debug, Clone)]
pub struct BulkSettings {
    /// Bulk-write lease per document; batches are abandoned after half of it.
    pub lease: Duration,
    /// How long after a lease ends a batch abandoned under it may still be applied by
    /// DynamoDB: the lease settles then.
    pub late_writes: Duration,
    /// BatchWriteItem calls in flight.
    pub batch_concurrency: usize,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BulkError {
    #[error(transparent)]
    Store(#[from] BatchPutError),
    #[error(
        "batch writes did not finish within {0:?}; the documents' leases are left to end and settle"
    )]
    TimedOut(Duration),
}

impl BulkError {
    /// Whether trying again may help.
    pub fn is_transient(&self) -> bool {
        match self {
            BulkError::Store(e) => e.error.retryable,
            BulkError::TimedOut(_) => true,
        }
    }

    /// Whether a batch may still land: the leases must be left to end and settle.
    pub fn left_leases(&self) -> bool {
        match self {
            BulkError::Store(e) => e.unanswered,
            BulkError::TimedOut(_) => true,
        }
    }
}

/// Sends `items` in batches of 25, `batch_concurrency` at a time, and waits for every batch
/// (or half the lease, whichever comes first). Nothing is in flight when this returns unless
/// it returns [`BulkError::TimedOut`]. On failure the error returned is one whose request
/// went unanswered if any did, so that [`BulkError::left_leases`] is true whenever a batch
/// may still land.
pub async fn write_all<S: ItemStore>(
    store: &S,
    items: Vec<(TableKind, Item)>,
    settings: &BulkSettings,
) -> Result<(), BulkError> {
    let mut batches: Vec<Vec<(TableKind, Item)>> = Vec::new();
    let mut batch = Vec::with_capacity(BATCH_MAX_ITEMS);
    for item in items {
        batch.push(item);
        if batch.len() == BATCH_MAX_ITEMS {
            batches.push(std::mem::replace(
                &mut batch,
                Vec::with_capacity(BATCH_MAX_ITEMS),
            ));
        }
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    let deadline = settings.lease / 2;
    let results = tokio::time::timeout(
        deadline,
        stream::iter(batches)
            .map(|b| store.batch_put(b))
            .buffer_unordered(settings.batch_concurrency.max(1))
            .collect::<Vec<_>>(),
    )
    .await
    .map_err(|_| BulkError::TimedOut(deadline))?;
    let errors: Vec<BatchPutError> = results.into_iter().filter_map(Result::err).collect();
    match errors.iter().find(|e| e.unanswered).or(errors.first()) {
        Some(e) => Err(e.clone().into()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Guard, StoreError, WriteOutcome};
    use std::sync::{Arc, Mutex};

    /// Records the size of every batch; answers batches whose first item's `n` is listed in
    /// `fail` with that error, and never answers those in `hang`.
    #[derive(Clone, Default)]
    struct FakeStore {
        batches: Arc<Mutex<Vec<usize>>>,
        fail: Arc<Vec<(u64, bool)>>,
        hang: Arc<Vec<u64>>,
    }

    fn n_of(item: &Item) -> u64 {
        match item.get("n") {
            Some(aws_sdk_dynamodb::types::AttributeValue::N(n)) => n.parse().unwrap(),
            _ => panic!("an item without n"),
        }
    }

    impl ItemStore for FakeStore {
        async fn put(
            &self,
            _: TableKind,
            _: Item,
            _: i64,
            _: &Guard,
        ) -> Result<WriteOutcome, StoreError> {
            unreachable!("the bulk step sends no single put")
        }
        async fn delete(
            &self,
            _: TableKind,
            _: Item,
            _: &str,
            _: i64,
            _: &Guard,
        ) -> Result<WriteOutcome, StoreError> {
            unreachable!("the bulk step deletes nothing")
        }
        async fn batch_put(&self, items: Vec<(TableKind, Item)>) -> Result<(), BatchPutError> {
            let first = n_of(&items[0].1);
            self.batches.lock().unwrap().push(items.len());
            if self.hang.contains(&first) {
                std::future::pending::<()>().await;
            }
            match self.fail.iter().find(|(n, _)| *n == first) {
                Some((_, unanswered)) => Err(BatchPutError {
                    error: StoreError {
                        op: "BatchWriteItem",
                        table: "t".into(),
                        message: format!("batch {first}"),
                        retryable: true,
                    },
                    unanswered: *unanswered,
                }),
                None => Ok(()),
            }
        }
        async fn put_all(
            &self,
            _: Vec<crate::store::GuardedPut>,
        ) -> Result<crate::store::TransactOutcome, StoreError> {
            unreachable!("the bulk step sends no transaction")
        }
        async fn get(&self, _: TableKind, _: Item) -> Result<Option<Item>, StoreError> {
            unreachable!()
        }
    }

    fn items(count: u64) -> Vec<(TableKind, Item)> {
        (0..count)
            .map(|n| {
                let item: Item = [(
                    "n".to_string(),
                    aws_sdk_dynamodb::types::AttributeValue::N(n.to_string()),
                )]
                .into();
                (TableKind::Identities, item)
            })
            .collect()
    }

    fn settings() -> BulkSettings {
        BulkSettings {
            lease: Duration::from_secs(2),
            late_writes: Duration::from_secs(1),
            batch_concurrency: 4,
        }
    }

    #[tokio::test]
    async fn items_go_in_batches_of_25() {
        let store = FakeStore::default();
        write_all(&store, items(60), &settings()).await.unwrap();
        let mut sizes = store.batches.lock().unwrap().clone();
        sizes.sort();
        assert_eq!(sizes, vec![10, 25, 25]);
        write_all(&store, items(0), &settings()).await.unwrap();
        assert_eq!(
            store.batches.lock().unwrap().len(),
            3,
            "nothing sent for no items"
        );
    }

    #[tokio::test]
    async fn an_unanswered_batch_is_the_error_returned_and_leaves_the_leases() {
        // Batch 0 is refused (answered), batch 50 goes unanswered: whichever finishes first,
        // the error says a batch may still land.
        let store = FakeStore {
            fail: Arc::new(vec![(0, false), (50, true)]),
            ..FakeStore::default()
        };
        let err = write_all(&store, items(75), &settings()).await.unwrap_err();
        assert!(err.left_leases(), "{err}");
        assert!(err.to_string().contains("batch 50"), "{err}");
        // Every batch was sent and answered before it returned.
        assert_eq!(store.batches.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn answered_failures_release_the_leases() {
        let store = FakeStore {
            fail: Arc::new(vec![(25, false)]),
            ..FakeStore::default()
        };
        let err = write_all(&store, items(75), &settings()).await.unwrap_err();
        assert!(!err.left_leases(), "{err}");
        assert!(err.is_transient());
    }

    #[tokio::test]
    async fn batches_are_abandoned_at_half_the_lease() {
        let store = FakeStore {
            hang: Arc::new(vec![25]),
            ..FakeStore::default()
        };
        let settings = BulkSettings {
            lease: Duration::from_millis(200),
            ..settings()
        };
        let err = write_all(&store, items(50), &settings).await.unwrap_err();
        assert!(
            matches!(err, BulkError::TimedOut(d) if d == Duration::from_millis(100)),
            "{err}"
        );
        assert!(err.left_leases());
    }
}
