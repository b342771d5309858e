//! Checking identity items in DynamoDB against their projection from Postgres.

use std::collections::BTreeMap;

use edge_documents::tables::TableKind;
use edge_writer::projection::{identity_projected, load};
use serde_json::Value;
use sqlx::PgPool;

use crate::dynamo::{document_of, TestTables};

/// (table, primary key as JSON) -> logical item.
pub type Items = BTreeMap<(TableKind, String), Value>;

/// What the identities of `environments` should be in DynamoDB, projected from one snapshot.
pub async fn expected_identity_items(pool: &PgPool, environments: &[i32]) -> Items {
    let mut conn = pool.acquire().await.unwrap();
    let mut tx = edge_writer::projection::snapshot::begin(&mut conn)
        .await
        .unwrap();
    let ids: Vec<i32> = sqlx::query_scalar(
        "SELECT id FROM environments_identity WHERE environment_id = ANY($1) ORDER BY id",
    )
    .bind(environments)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let mut out = Items::new();
    for page in ids.chunks(2000) {
        for rows in load::identities(&mut tx, page).await.unwrap() {
            let projected = identity_projected(&rows)
                .unwrap_or_else(|e| panic!("identity {}: {e}", rows.identity.id));
            for item in projected.items {
                out.insert((item.table, Value::Object(item.key).to_string()), item.body);
            }
        }
    }
    out
}

/// Every identity item and identity-override item in the tables.
pub async fn stored_identity_items(tables: &TestTables) -> Items {
    let mut out = Items::new();
    for item in tables.scan(TableKind::Identities).await {
        let doc = document_of(&item);
        let key = serde_json::json!({"composite_key": doc["composite_key"]}).to_string();
        let previous = out.insert((TableKind::Identities, key.clone()), doc);
        assert!(previous.is_none(), "duplicate identity item {key}");
    }
    for item in tables.scan(TableKind::EnvironmentsV2).await {
        let doc = document_of(&item);
        if !doc["document_key"]
            .as_str()
            .is_some_and(|k| k.starts_with("identity_override:"))
        {
            continue;
        }
        let key = serde_json::json!({
            "document_key": doc["document_key"],
            "environment_id": doc["environment_id"],
        })
        .to_string();
        out.insert((TableKind::EnvironmentsV2, key), doc);
    }
    out
}

/// Panics with the first few differences between what is stored and what is expected.
pub fn assert_same_items(stored: &Items, expected: &Items) {
    let mut problems = Vec::new();
    for (k, v) in expected {
        match stored.get(k) {
            None => problems.push(format!("missing {k:?}")),
            Some(s) if s != v => problems.push(format!("differs {k:?}: stored {s} expected {v}")),
            _ => {}
        }
    }
    for k in stored.keys() {
        if !expected.contains_key(k) {
            problems.push(format!("extra {k:?}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} items wrong (stored {}); first: {:#?}",
        problems.len(),
        expected.len(),
        stored.len(),
        &problems[..problems.len().min(5)]
    );
}
