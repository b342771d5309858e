//! The conditional batch write step: the puts of many documents of a batch (a fan-out storm's
//! identities) in TransactWriteItems calls, each item under exactly the condition it would
//! carry alone ([`Guard::for_put`]), instead of one PutItem per item.
//!
//! How it keeps the invariants of the design:
//!
//! - **No stale overwrite.** Every put keeps its version condition, evaluated by DynamoDB at
//!   the moment the transaction applies, so a transaction that lands late (after its writer
//!   lost its lock) is refused like a late PutItem. The SDK retries a transaction with the
//!   same idempotency token.
//! - **Never erase someone else's write.** An identity item keeps [`Guard::Owned`]: if any
//!   item of the transaction was written by someone else (or is newer, or is being written
//!   at that moment), DynamoDB cancels the whole transaction and nothing is applied. The
//!   documents it names are then written alone by the caller, through the path that deals
//!   with foreign items (adoption, ingestion); the others are tried once more together.
//! - **A document is never split.** All puts of a document are in one transaction, so its
//!   override items are never written without its identity item (the single-document path
//!   gets the same from writing the identity item first).
//!
//! Documents with items to delete are not written here (deletes record their intent first);
//! nor is a batch of one: a transaction costs twice the write capacity of its puts, which
//! buys fewer requests only when there are several documents to write.

use futures::stream::{self, StreamExt};

use crate::store::{
    Guard, GuardedPut, ItemStore, StoreError, TransactOutcome, TRANSACT_MAX_BYTES,
    TRANSACT_MAX_ITEMS,
};
use crate::write_plan::WritePlan;

/// How one document of the step fared.
#[derive(Debug, Clone)]
pub(crate) enum Written {
    /// Every put of the document was applied.
    Applied,
    /// Nothing of the document was applied: the caller writes it on its own.
    Alone,
    /// Its transaction failed (DynamoDB unreachable, throttled after the retries): nothing of
    /// it was applied, or it was applied at its version, which a later write supersedes.
    Failed(StoreError),
}

/// Groups documents, given as (puts, bytes) in order, into transactions of at most
/// [`TRANSACT_MAX_ITEMS`] puts and [`TRANSACT_MAX_BYTES`]: consecutive documents, never
/// split. A document over a limit on its own is a group of one.
pub(crate) fn transactions(docs: &[(usize, usize)]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let (mut items, mut bytes) = (0usize, 0usize);
    for (i, &(n, size)) in docs.iter().enumerate() {
        if !current.is_empty()
            && (items + n > TRANSACT_MAX_ITEMS || bytes + size > TRANSACT_MAX_BYTES)
        {
            groups.push(std::mem::take(&mut current));
            (items, bytes) = (0, 0);
        }
        current.push(i);
        items += n;
        bytes += size;
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

/// Writes `docs` (doc key, plan) in transactions, `in_flight` at a time. Returns, in the
/// order of `docs`, how each fared.
pub(crate) async fn put_documents<S: ItemStore>(
    store: &S,
    docs: &[(&str, &WritePlan)],
    in_flight: usize,
) -> Vec<Written> {
    let sizes: Vec<(usize, usize)> = docs
        .iter()
        .map(|(_, plan)| {
            let bytes = plan.puts.iter().map(|(_, e)| e.size).sum();
            (plan.puts.len(), bytes)
        })
        .collect();
    let groups = transactions(&sizes);
    let mut out: Vec<Written> = vec![Written::Alone; docs.len()];
    let done: Vec<Vec<(usize, Written)>> = stream::iter(groups)
        .map(|group| put_group(store, docs, group))
        .buffer_unordered(in_flight.max(1))
        .collect()
        .await;
    for (i, written) in done.into_iter().flatten() {
        out[i] = written;
    }
    out
}

/// One group: a transaction, and when DynamoDB names the documents that refused it, one more
/// without them.
async fn put_group<S: ItemStore>(
    store: &S,
    docs: &[(&str, &WritePlan)],
    group: Vec<usize>,
) -> Vec<(usize, Written)> {
    let alone = |g: &[usize]| g.iter().map(|&i| (i, Written::Alone)).collect::<Vec<_>>();
    if group.len() < 2 {
        return alone(&group);
    }
    let refused = match transact(store, docs, &group).await {
        Ok(None) => return group.into_iter().map(|i| (i, Written::Applied)).collect(),
        Ok(Some(refused)) => refused,
        Err(e) => {
            return group
                .into_iter()
                .map(|i| (i, Written::Failed(e.clone())))
                .collect()
        }
    };
    let rest: Vec<usize> = group
        .iter()
        .copied()
        .filter(|i| !refused.contains(i))
        .collect();
    if refused.is_empty() || rest.len() < 2 {
        return alone(&group);
    }
    let mut out = alone(&refused);
    match transact(store, docs, &rest).await {
        Ok(None) => out.extend(rest.into_iter().map(|i| (i, Written::Applied))),
        Ok(Some(_)) => out.extend(alone(&rest)),
        Err(e) => out.extend(rest.into_iter().map(|i| (i, Written::Failed(e.clone())))),
    }
    out
}

/// One transaction of the documents `group`. `Ok(None)`: applied; `Ok(Some(docs))`:
/// cancelled, and `docs` are the documents whose puts DynamoDB named (empty: it did not say).
async fn transact<S: ItemStore>(
    store: &S,
    docs: &[(&str, &WritePlan)],
    group: &[usize],
) -> Result<Option<Vec<usize>>, StoreError> {
    let mut owner: Vec<usize> = Vec::new();
    let mut puts: Vec<GuardedPut> = Vec::new();
    for &i in group {
        let plan = docs[i].1;
        for (d, e) in &plan.puts {
            owner.push(i);
            puts.push(GuardedPut {
                table: d.table,
                item: e.item.clone(),
                version: plan.version,
                guard: Guard::for_put(d.table),
            });
        }
    }
    let outcome = crate::replicate::with_retry(|| store.put_all(puts.clone())).await;
    crate::metrics::record_transaction(match &outcome {
        Ok(TransactOutcome::Applied) => "applied",
        Ok(TransactOutcome::Cancelled { .. }) => "cancelled",
        Err(_) => "failed",
    });
    match outcome? {
        TransactOutcome::Applied => Ok(None),
        TransactOutcome::Cancelled { refused } => {
            let mut named: Vec<usize> = refused
                .iter()
                .filter_map(|&p| owner.get(p).copied())
                .collect();
            named.dedup();
            tracing::debug!(
                documents = group.len(),
                refused = named.len(),
                "transaction cancelled"
            );
            Ok(Some(named))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::{DesiredItem, Projected};
    use crate::store::{BatchPutError, WriteOutcome};
    use edge_documents::item::{Item, ATTR_DOC};
    use edge_documents::tables::TableKind;
    use serde_json::{json, Map};
    use std::sync::{Arc, Mutex};

    /// Answers transactions as DynamoDB would for items someone else wrote: cancelled,
    /// naming the puts of the documents in `foreign` (or naming none, when `silent`);
    /// fails every one when `failing`. Records the documents of each transaction.
    #[derive(Clone, Default)]
    struct FakeStore {
        foreign: Arc<Vec<String>>,
        silent: bool,
        failing: bool,
        calls: Arc<Mutex<Vec<Vec<String>>>>,
    }

    fn doc_of(item: &Item) -> String {
        match item.get(ATTR_DOC) {
            Some(aws_sdk_dynamodb::types::AttributeValue::S(d)) => d.clone(),
            _ => panic!("an item without its document"),
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
            unreachable!("the step sends transactions only")
        }
        async fn delete(
            &self,
            _: TableKind,
            _: Item,
            _: &str,
            _: i64,
            _: &Guard,
        ) -> Result<WriteOutcome, StoreError> {
            unreachable!("the step deletes nothing")
        }
        async fn batch_put(&self, _: Vec<(TableKind, Item)>) -> Result<(), BatchPutError> {
            unreachable!("the step sends no batch")
        }
        async fn put_all(&self, puts: Vec<GuardedPut>) -> Result<TransactOutcome, StoreError> {
            let docs: Vec<String> = puts.iter().map(|p| doc_of(&p.item)).collect();
            self.calls.lock().unwrap().push(docs.clone());
            if self.failing {
                return Err(StoreError {
                    op: "TransactWriteItems",
                    table: "t".into(),
                    message: "refused for good".into(),
                    retryable: false,
                });
            }
            let refused: Vec<usize> = (0..docs.len())
                .filter(|&i| self.foreign.contains(&docs[i]))
                .collect();
            Ok(match (refused.is_empty(), self.silent) {
                (true, _) => TransactOutcome::Applied,
                (false, true) => TransactOutcome::Cancelled { refused: vec![] },
                (false, false) => TransactOutcome::Cancelled { refused },
            })
        }
        async fn get(&self, _: TableKind, _: Item) -> Result<Option<Item>, StoreError> {
            unreachable!()
        }
    }

    /// The plan of identity document `n`: its identity item and `overrides` override items.
    fn plan_of(n: usize, overrides: usize) -> (String, WritePlan) {
        let doc_key = format!("identity:{n}");
        let item = |table: TableKind, key: &str| {
            let mut k = Map::new();
            k.insert("composite_key".into(), json!(key));
            DesiredItem {
                table,
                key: k,
                body: json!({"composite_key": key}),
                compressible: false,
            }
        };
        let mut items = vec![item(TableKind::Identities, &format!("e_{n}"))];
        for o in 0..overrides {
            items.push(item(TableKind::EnvironmentsV2, &format!("e_{n}_{o}")));
        }
        let plan = crate::write_plan::plan(crate::write_plan::Inputs {
            doc_key: &doc_key,
            projected: Projected {
                items,
                next_change_at: None,
                snapshot_time: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            },
            recorded: vec![],
            version: 7,
            last_hash: None,
            last_change_at: None,
            force: false,
            compress_above: usize::MAX,
        })
        .expect("a plan");
        (doc_key, plan)
    }

    fn outcome_names(written: &[Written]) -> Vec<&'static str> {
        written
            .iter()
            .map(|w| match w {
                Written::Applied => "applied",
                Written::Alone => "alone",
                Written::Failed(_) => "failed",
            })
            .collect()
    }

    /// Each case: the documents (overrides of each), how the store answers, how each document
    /// fares, and the transactions sent (documents of each, in order).
    #[tokio::test]
    async fn refused_documents_are_left_to_be_written_alone_and_the_rest_go_together() {
        struct Case {
            name: &'static str,
            overrides: Vec<usize>,
            store: FakeStore,
            want: Vec<&'static str>,
            transactions: Vec<Vec<&'static str>>,
        }
        let foreign = |docs: &[&str]| Arc::new(docs.iter().map(|d| d.to_string()).collect());
        let cases = vec![
            Case {
                name: "every condition holds: one transaction, all applied",
                overrides: vec![0, 1, 0],
                store: FakeStore::default(),
                want: vec!["applied"; 3],
                transactions: vec![vec!["identity:0", "identity:1", "identity:1", "identity:2"]],
            },
            Case {
                name: "one document refused: alone; the others again, together",
                overrides: vec![0, 0, 0],
                store: FakeStore {
                    foreign: foreign(&["identity:1"]),
                    ..FakeStore::default()
                },
                want: vec!["applied", "alone", "applied"],
                transactions: vec![
                    vec!["identity:0", "identity:1", "identity:2"],
                    vec!["identity:0", "identity:2"],
                ],
            },
            Case {
                name: "refused without saying which: every document alone",
                overrides: vec![0, 0, 0],
                store: FakeStore {
                    foreign: foreign(&["identity:2"]),
                    silent: true,
                    ..FakeStore::default()
                },
                want: vec!["alone"; 3],
                transactions: vec![vec!["identity:0", "identity:1", "identity:2"]],
            },
            Case {
                name: "one left after the refusals: alone, no transaction of one",
                overrides: vec![0, 0],
                store: FakeStore {
                    foreign: foreign(&["identity:0"]),
                    ..FakeStore::default()
                },
                want: vec!["alone"; 2],
                transactions: vec![vec!["identity:0", "identity:1"]],
            },
            Case {
                name: "the transaction fails: every document of it failed",
                overrides: vec![0, 0],
                store: FakeStore {
                    failing: true,
                    ..FakeStore::default()
                },
                want: vec!["failed"; 2],
                transactions: vec![vec!["identity:0", "identity:1"]],
            },
            Case {
                name: "a single document: alone, no transaction",
                overrides: vec![2],
                store: FakeStore::default(),
                want: vec!["alone"],
                transactions: vec![],
            },
        ];
        for case in cases {
            let plans: Vec<(String, WritePlan)> = case
                .overrides
                .iter()
                .enumerate()
                .map(|(n, o)| plan_of(n, *o))
                .collect();
            let docs: Vec<(&str, &WritePlan)> =
                plans.iter().map(|(k, p)| (k.as_str(), p)).collect();
            let written = put_documents(&case.store, &docs, 4).await;
            assert_eq!(outcome_names(&written), case.want, "{}", case.name);
            let calls = case.store.calls.lock().unwrap().clone();
            assert_eq!(calls, case.transactions, "{}", case.name);
        }
    }

    #[test]
    fn documents_are_grouped_up_to_the_limits_and_never_split() {
        let mb = 1_000_000;
        // (case, documents as (puts, bytes), transactions as document indexes)
        type Case = (&'static str, Vec<(usize, usize)>, Vec<Vec<usize>>);
        let cases: &[Case] = &[
            ("nothing", vec![], vec![]),
            ("one document", vec![(1, 100)], vec![vec![0]]),
            (
                "small documents fill one transaction",
                vec![(1, 100); 25],
                vec![(0..25).collect()],
            ),
            (
                "the 101st put starts a new transaction",
                vec![(2, 100); 51],
                vec![(0..50).collect(), vec![50]],
            ),
            (
                "a document is not split across the item limit",
                vec![(60, 100), (60, 100)],
                vec![vec![0], vec![1]],
            ),
            (
                "the size limit starts a new transaction",
                vec![(1, 2 * mb), (1, mb), (1, mb)],
                vec![vec![0, 1], vec![2]],
            ),
            (
                "a document over a limit alone is a group of one",
                vec![(1, 100), (150, 100), (1, 100), (1, 100)],
                vec![vec![0], vec![1], vec![2, 3]],
            ),
        ];
        for (name, docs, want) in cases {
            assert_eq!(&transactions(docs), want, "{name}");
        }
    }
}
