//! The conditions of `DynamoStore`'s puts and deletes against real DynamoDB Local: each guard
//! refuses what it must refuse, and a refused write leaves the stored item exactly as it was.
//!
//! The writers' claim lock serialises writes of one document, so the end-to-end suites never
//! send an older version to DynamoDB; these tests send them directly.

use aws_sdk_dynamodb::types::AttributeValue;
use edge_documents::acks;
use edge_documents::item::{encode, Item, ReplicationMeta};
use edge_documents::tables::TableKind;
use edge_tests::dynamo::TestTables;
use edge_writer::store::{
    DynamoStore, Guard, GuardedPut, ItemStore, TransactOutcome, WriteOutcome,
};
use serde_json::{json, Value};

/// An item as the writer encodes it: `body`, version `version`, document `doc_key`.
fn writer_item(body: &Value, doc_key: &str, version: i64) -> Item {
    let meta = ReplicationMeta {
        version,
        source_time: "2026-12-01T00:00:00+00:00".into(),
        doc_key: doc_key.into(),
    };
    encode(body, &meta, None).expect("encodable").item
}

/// A plain item with no replication attributes, as another writer (the edge) puts it.
fn foreign_item(body: &Value) -> Item {
    serde_dynamo::aws_sdk_dynamodb_1::to_item(body.clone()).unwrap()
}

fn key_of(table: TableKind, item: &Item) -> Item {
    table
        .key_attributes()
        .into_iter()
        .map(|k| (k.to_string(), item[k].clone()))
        .collect()
}

async fn stored(store: &DynamoStore, table: TableKind, key: &Item) -> Option<Item> {
    store.get(table, key.clone()).await.expect("GetItem")
}

async fn raw_put(tables: &TestTables, table: TableKind, item: Item) {
    tables
        .client
        .put_item()
        .table_name(tables.names.name(table))
        .set_item(Some(item))
        .send()
        .await
        .expect("PutItem");
}

fn superseded(version: i64) -> WriteOutcome {
    WriteOutcome::Superseded {
        stored_version: Some(version),
    }
}

/// One item kind the writer owns by version: its key, and a body for a given content.
struct Case {
    table: TableKind,
    doc_key: &'static str,
    body: fn(&str) -> Value,
}

const VERSIONED: [Case; 2] = [
    Case {
        table: TableKind::Environments,
        doc_key: "environment:1",
        body: |name| json!({"api_key": "envGuard", "id": 1, "name": name}),
    },
    Case {
        table: TableKind::EnvironmentsV2,
        doc_key: "environment:1",
        body: |name| {
            json!({"environment_id": "1", "document_key": "_META",
                   "environment_api_key": "envGuard", "id": 1, "name": name})
        },
    },
];

/// [`Guard::Version`] (v1 environment items and `_META`): an older or equal version is
/// refused for puts and deletes, and the item is left exactly as it was; a newer one applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_guard_refuses_older_puts_and_deletes_and_leaves_the_item() {
    edge_tests::init_logging();
    let tables = TestTables::new().await;
    let store = tables.store();
    for case in VERSIONED {
        let table = case.table;
        let v5 = writer_item(&(case.body)("five"), case.doc_key, 5);
        let key = key_of(table, &v5);
        let put = |item: Item, version: i64| {
            let store = store.clone();
            async move {
                store
                    .put(table, item, version, &Guard::Version)
                    .await
                    .unwrap()
            }
        };
        let delete = |doc_key: &'static str, version: i64| {
            let (store, key) = (store.clone(), key.clone());
            async move {
                store
                    .delete(table, key, doc_key, version, &Guard::Version)
                    .await
                    .unwrap()
            }
        };

        assert_eq!(put(v5.clone(), 5).await, WriteOutcome::Applied, "{table:?}");
        for older in [4, 5] {
            let other = writer_item(&(case.body)("older"), case.doc_key, older);
            assert_eq!(
                put(other, older).await,
                superseded(5),
                "{table:?} put v{older}"
            );
            assert_eq!(stored(&store, table, &key).await.as_ref(), Some(&v5));
            assert_eq!(
                delete(case.doc_key, older).await,
                superseded(5),
                "{table:?} delete v{older}"
            );
            assert_eq!(stored(&store, table, &key).await.as_ref(), Some(&v5));
        }
        // A newer delete of another document never removes this document's item.
        assert_eq!(delete("environment:2", 9).await, superseded(5), "{table:?}");
        assert_eq!(stored(&store, table, &key).await.as_ref(), Some(&v5));

        // Newer versions apply: the refusals above were the guard's, not a broken write.
        let v6 = writer_item(&(case.body)("six"), case.doc_key, 6);
        assert_eq!(put(v6.clone(), 6).await, WriteOutcome::Applied, "{table:?}");
        assert_eq!(stored(&store, table, &key).await.as_ref(), Some(&v6));
        assert_eq!(delete(case.doc_key, 7).await, WriteOutcome::Applied);
        assert_eq!(stored(&store, table, &key).await, None, "{table:?}");

        // Core owns these items: one without a version (put by hand) is replaced.
        raw_put(&tables, table, foreign_item(&(case.body)("by hand"))).await;
        let v8 = writer_item(&(case.body)("eight"), case.doc_key, 8);
        assert_eq!(put(v8.clone(), 8).await, WriteOutcome::Applied, "{table:?}");
        assert_eq!(stored(&store, table, &key).await.as_ref(), Some(&v8));
    }
}

fn identity_body(plan: &str) -> Value {
    json!({"composite_key": "envGuard_alice", "environment_api_key": "envGuard",
           "identifier": "alice", "identity_uuid": "0b2b1a8e-7e0f-4a43-9d5c-2f1f1c3f6b11",
           "identity_traits": [{"trait_key": "plan", "trait_value": plan}]})
}

/// [`Guard::Owned`] (identity items): the writer's own item is replaced or deleted only by a
/// newer version; another document's item and an item someone else wrote are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_guard_refuses_older_versions_and_foreign_items_and_leaves_the_item() {
    edge_tests::init_logging();
    let tables = TestTables::new().await;
    let store = tables.store();
    let table = TableKind::Identities;
    let doc = "identity:1";
    let v5 = writer_item(&identity_body("five"), doc, 5);
    let key = key_of(table, &v5);
    let put = |item: Item, version: i64| {
        let store = store.clone();
        async move {
            store
                .put(table, item, version, &Guard::Owned)
                .await
                .unwrap()
        }
    };
    let delete = |doc_key: &'static str, version: i64| {
        let (store, key) = (store.clone(), key.clone());
        async move {
            store
                .delete(table, key, doc_key, version, &Guard::Owned)
                .await
                .unwrap()
        }
    };

    assert_eq!(put(v5.clone(), 5).await, WriteOutcome::Applied);
    for older in [4, 5] {
        let other = writer_item(&identity_body("older"), doc, older);
        assert_eq!(put(other, older).await, superseded(5), "put v{older}");
        assert_eq!(stored(&store, table, &key).await.as_ref(), Some(&v5));
        assert_eq!(delete(doc, older).await, superseded(5), "delete v{older}");
        assert_eq!(stored(&store, table, &key).await.as_ref(), Some(&v5));
    }
    // Another document's writes (an identity re-created under the same key) never replace
    // or remove this document's item, whatever their version.
    let other_doc = writer_item(&identity_body("other"), "identity:2", 9);
    assert_eq!(put(other_doc, 9).await, superseded(5));
    assert_eq!(delete("identity:2", 9).await, superseded(5));
    assert_eq!(stored(&store, table, &key).await.as_ref(), Some(&v5));

    let v6 = writer_item(&identity_body("six"), doc, 6);
    assert_eq!(put(v6.clone(), 6).await, WriteOutcome::Applied);
    assert_eq!(stored(&store, table, &key).await.as_ref(), Some(&v6));
    assert_eq!(delete(doc, 7).await, WriteOutcome::Applied);
    assert_eq!(stored(&store, table, &key).await, None);

    // An item the edge wrote (no replication attributes): refused as foreign, untouched.
    let edge = foreign_item(&identity_body("edge"));
    raw_put(&tables, table, edge.clone()).await;
    let v8 = writer_item(&identity_body("eight"), doc, 8);
    assert_eq!(
        put(v8, 8).await,
        WriteOutcome::Foreign {
            item: Some(Box::new(edge.clone()))
        }
    );
    assert_eq!(stored(&store, table, &key).await.as_ref(), Some(&edge));
    assert_eq!(
        delete(doc, 9).await,
        WriteOutcome::Foreign {
            item: Some(Box::new(edge.clone()))
        }
    );
    assert_eq!(stored(&store, table, &key).await.as_ref(), Some(&edge));
}

fn identity_named(name: &str, plan: &str) -> Value {
    json!({"composite_key": format!("envGuard_{name}"), "environment_api_key": "envGuard",
           "identifier": name, "identity_uuid": "0b2b1a8e-7e0f-4a43-9d5c-2f1f1c3f6b11",
           "identity_traits": [{"trait_key": "plan", "trait_value": plan}]})
}

/// A transaction of puts (a storm's batch, `ItemStore::put_all`): every put keeps its own
/// guard's condition, and one refusal applies none of them. An older version, an item written
/// at the edge and an older environment version each cancel the whole transaction and are
/// named; the stored items stay exactly as they were; a transaction sent again after it was
/// applied is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_of_puts_keeps_each_guard_and_applies_all_or_nothing() {
    edge_tests::init_logging();
    let tables = TestTables::new().await;
    let store = tables.store();
    let ident = TableKind::Identities;
    let env = TableKind::Environments;
    let guarded = |table: TableKind, item: &Item, version: i64| GuardedPut {
        table,
        item: item.clone(),
        version,
        guard: Guard::for_put(table),
    };
    let ours = |name: &str, doc: &str, version: i64| {
        writer_item(&identity_named(name, &format!("v{version}")), doc, version)
    };
    let env_item = |version: i64| {
        writer_item(
            &json!({"api_key": "envGuard", "id": 1, "name": format!("v{version}")}),
            "environment:1",
            version,
        )
    };
    let a5 = ours("a", "identity:1", 5);
    let e5 = env_item(5);
    let edge = foreign_item(&identity_named("b", "edge"));
    store
        .put(ident, a5.clone(), 5, &Guard::Owned)
        .await
        .unwrap();
    store
        .put(env, e5.clone(), 5, &Guard::Version)
        .await
        .unwrap();
    raw_put(&tables, ident, edge.clone()).await;
    let c1 = ours("c", "identity:3", 1);
    let c_key = key_of(ident, &c1);

    let cases: Vec<(&str, Vec<GuardedPut>, Vec<usize>)> = vec![
        (
            "an older version of our identity",
            vec![
                guarded(ident, &c1, 1),
                guarded(ident, &ours("a", "identity:1", 4), 4),
            ],
            vec![1],
        ),
        (
            "an identity written at the edge",
            vec![
                guarded(ident, &ours("b", "identity:2", 9), 9),
                guarded(ident, &c1, 1),
            ],
            vec![0],
        ),
        (
            "an older environment",
            vec![guarded(ident, &c1, 1), guarded(env, &env_item(4), 4)],
            vec![1],
        ),
    ];
    for (name, puts, refused) in cases {
        assert_eq!(
            store.put_all(puts).await.unwrap(),
            TransactOutcome::Cancelled { refused },
            "{name}"
        );
        assert_eq!(
            stored(&store, ident, &c_key).await,
            None,
            "{name}: nothing applied"
        );
        assert_eq!(
            stored(&store, ident, &key_of(ident, &a5)).await.as_ref(),
            Some(&a5)
        );
        assert_eq!(
            stored(&store, ident, &key_of(ident, &edge)).await.as_ref(),
            Some(&edge)
        );
        assert_eq!(
            stored(&store, env, &key_of(env, &e5)).await.as_ref(),
            Some(&e5)
        );
    }

    // Newer versions of everything apply together.
    let (a6, e6) = (ours("a", "identity:1", 6), env_item(6));
    let applied = vec![
        guarded(ident, &a6, 6),
        guarded(ident, &c1, 1),
        guarded(env, &e6, 6),
    ];
    assert_eq!(
        store.put_all(applied.clone()).await.unwrap(),
        TransactOutcome::Applied
    );
    assert_eq!(
        stored(&store, ident, &key_of(ident, &a6)).await.as_ref(),
        Some(&a6)
    );
    assert_eq!(stored(&store, ident, &c_key).await.as_ref(), Some(&c1));
    assert_eq!(
        stored(&store, env, &key_of(env, &e6)).await.as_ref(),
        Some(&e6)
    );
    // The same transaction again (a late or repeated request): refused, nothing changes.
    assert!(matches!(
        store.put_all(applied).await.unwrap(),
        TransactOutcome::Cancelled { .. }
    ));
    assert_eq!(
        stored(&store, ident, &key_of(ident, &a6)).await.as_ref(),
        Some(&a6)
    );
    assert_eq!(
        stored(&store, ident, &key_of(ident, &edge)).await.as_ref(),
        Some(&edge)
    );
}

/// [`Guard::Adopt`]: exactly the foreign item that was ingested is replaced; one that changed
/// meanwhile, or that is the writer's own by now, is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopt_guard_replaces_only_the_ingested_foreign_item() {
    edge_tests::init_logging();
    let tables = TestTables::new().await;
    let store = tables.store();
    let table = TableKind::Identities;
    let doc = "identity:1";
    let ingested = foreign_item(&identity_body("ingested"));
    let key = key_of(table, &ingested);
    let changed = foreign_item(&identity_body("changed at the edge meanwhile"));
    raw_put(&tables, table, changed.clone()).await;
    let put = |version: i64, found: &Item| {
        let (store, guard) = (store.clone(), Guard::Adopt(Box::new(found.clone())));
        async move {
            let item = writer_item(&identity_body("merged"), doc, version);
            store.put(table, item, version, &guard).await.unwrap()
        }
    };

    assert_eq!(
        put(3, &ingested).await,
        WriteOutcome::Foreign {
            item: Some(Box::new(changed.clone()))
        }
    );
    assert_eq!(stored(&store, table, &key).await.as_ref(), Some(&changed));

    assert_eq!(put(3, &changed).await, WriteOutcome::Applied);
    let merged = stored(&store, table, &key).await.expect("the merged item");
    assert_eq!(merged, writer_item(&identity_body("merged"), doc, 3));
    // Adopting the same foreign item again (a retry, a second writer) finds the writer's
    // item and leaves it, whatever the version.
    for version in [2, 4] {
        assert_eq!(put(version, &changed).await, superseded(3), "v{version}");
        assert_eq!(stored(&store, table, &key).await.as_ref(), Some(&merged));
    }
}

/// An applied delete is preceded by the writer's delete intent in the ledger, at its version
/// (how the stream consumers tell it from a removal behind the writer's back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applied_delete_records_its_intent_first() {
    edge_tests::init_logging();
    let tables = TestTables::new().await;
    let store = tables.store();
    let table = TableKind::Environments;
    let item = writer_item(
        &json!({"api_key": "envIntent", "id": 3}),
        "environment:3",
        5,
    );
    let key = key_of(table, &item);
    store.put(table, item, 5, &Guard::Version).await.unwrap();
    let outcome = store
        .delete(table, key.clone(), "environment:3", 6, &Guard::Version)
        .await
        .unwrap();
    assert_eq!(outcome, WriteOutcome::Applied);
    let intent = tables
        .client
        .get_item()
        .table_name(&tables.names.acks)
        .key(
            "item_key",
            AttributeValue::S("environments|envIntent".into()),
        )
        .key("region", AttributeValue::S(acks::DELETE_INTENT.into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .and_then(|i| acks::Ack::from_item(&i))
        .expect("the delete intent");
    assert_eq!((intent.version, intent.removed), (6, true));
    assert_eq!(intent.doc_key, "environment:3");
}

/// DynamoDB's refusals that are not a failed condition come back as errors, classified:
/// a missing table (an operator may still create it) is retried, a request DynamoDB will
/// never accept is not; neither is mistaken for a superseded write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_refusals_are_classified_errors_not_outcomes() {
    edge_tests::init_logging();
    let tables = TestTables::new().await;
    let item = writer_item(&json!({"api_key": "envErr", "id": 4}), "environment:4", 5);
    let key = key_of(TableKind::Environments, &item);

    let mut missing = tables.names.clone();
    missing.environments = format!("{}_missing", tables.names.environments);
    let store = DynamoStore::new(tables.client.clone(), missing.clone());
    let err = store
        .put(TableKind::Environments, item.clone(), 5, &Guard::Version)
        .await
        .unwrap_err();
    assert!(
        err.retryable && err.message.contains("ResourceNotFound"),
        "{err}"
    );
    let err = store
        .delete(
            TableKind::Environments,
            key.clone(),
            "environment:4",
            6,
            &Guard::Version,
        )
        .await
        .unwrap_err();
    assert!(
        err.retryable && err.message.contains("ResourceNotFound"),
        "{err}"
    );
    // The ledger missing: the delete intent cannot be recorded, so nothing is deleted.
    missing.environments = tables.names.environments.clone();
    missing.acks = format!("{}_missing", tables.names.acks);
    let store = DynamoStore::new(tables.client.clone(), missing);
    let err = store
        .delete(
            TableKind::Environments,
            key,
            "environment:4",
            6,
            &Guard::Version,
        )
        .await
        .unwrap_err();
    assert!(err.retryable && err.table.ends_with("_missing"), "{err}");

    // An empty key string: DynamoDB refuses the request itself, for good.
    let mut bad = item;
    bad.insert("api_key".into(), AttributeValue::S(String::new()));
    let err = tables
        .store()
        .put(TableKind::Environments, bad, 5, &Guard::Version)
        .await
        .unwrap_err();
    assert!(
        !err.retryable && err.message.contains("ValidationException"),
        "{err}"
    );
}
