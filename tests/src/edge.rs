//! The edge as a second writer of identities. Puts are made as Flagsmith's own edge writers
//! make them (`EdgeIdentity.save` in Flagsmith's `api/edge_api/identities/models.py`, and the
//! Edge API): the whole identity item, read, changed and put back without a condition, with
//! only the fields of Flagsmith's identity model, so the writer's replication attributes are
//! dropped. Plus a stream consumer that ingests edge writes into core.

use std::time::Duration;

use edge_documents::tables::TableKind;
use serde_json::{json, Value};
use sqlx::PgPool;
use stream_consumer::ingest::{Ingestion, Role};
use stream_consumer::invalidate::Invalidation;
use stream_consumer::ledger::DynamoLedger;
use stream_consumer::{BatchReport, Consumer};
use tokio::task::JoinHandle;

use crate::dynamo::{document_of, TestTables};

/// The fields of Flagsmith's identity document (`IdentityModel` as `EdgeIdentity` dumps it);
/// anything else on the item is lost by an edge put.
const IDENTITY_FIELDS: [&str; 9] = [
    "composite_key",
    "environment_api_key",
    "identifier",
    "identity_uuid",
    "created_date",
    "django_id",
    "identity_traits",
    "identity_features",
    "system_traits",
];

/// Puts an identity document as a plain item (numbers as DynamoDB numbers, as boto3 writes
/// Python `Decimal`s), unconditionally.
pub async fn put_identity(tables: &TestTables, doc: &Value) {
    let item: edge_documents::item::Item =
        serde_dynamo::aws_sdk_dynamodb_1::to_item(doc.clone()).expect("an identity document");
    tables
        .client
        .put_item()
        .table_name(tables.names.name(TableKind::Identities))
        .set_item(Some(item))
        .send()
        .await
        .expect("edge PutItem");
}

/// `EdgeIdentity.save`: reads the item, applies `edit` to Flagsmith's view of it, puts it
/// back whole. Returns the document put.
pub async fn edit_identity(
    tables: &TestTables,
    composite_key: &str,
    edit: impl FnOnce(&mut Value),
) -> Value {
    let item = tables
        .get(TableKind::Identities, &[("composite_key", composite_key)])
        .await
        .unwrap_or_else(|| panic!("identity {composite_key} to edit at the edge"));
    let mut doc = flagsmith_view(&document_of(&item));
    edit(&mut doc);
    put_identity(tables, &doc).await;
    doc
}

/// Only the fields Flagsmith's identity model knows.
pub fn flagsmith_view(doc: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for f in IDENTITY_FIELDS {
        if let Some(v) = doc.get(f) {
            out.insert(f.to_string(), v.clone());
        }
    }
    Value::Object(out)
}

/// An identity created at the edge (an SDK identify call on the Edge API).
pub fn new_identity(api_key: &str, identifier: &str, traits: &[(&str, Value)]) -> Value {
    json!({
        "composite_key": format!("{api_key}_{identifier}"),
        "environment_api_key": api_key,
        "identifier": identifier,
        "identity_uuid": uuid::Uuid::new_v4().to_string(),
        "created_date": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string(),
        "django_id": null,
        "identity_traits": traits.iter().map(|(k, v)| json!({"trait_key": k, "trait_value": v})).collect::<Vec<_>>(),
        "identity_features": [],
    })
}

/// Sets a trait in an identity document (`None`: removes it), as `update_traits` does.
pub fn set_trait(doc: &mut Value, key: &str, value: Option<Value>) {
    let traits = doc["identity_traits"]
        .as_array_mut()
        .expect("identity_traits");
    traits.retain(|t| t["trait_key"] != key);
    if let Some(v) = value {
        traits.push(json!({"trait_key": key, "trait_value": v}));
    }
}

/// Sets an identity override (a feature state without a django_id, as the dashboard's edge
/// endpoints add one).
pub fn set_override(doc: &mut Value, feature: i64, name: &str, enabled: bool, value: Value) {
    let features = doc["identity_features"]
        .as_array_mut()
        .expect("identity_features");
    features.retain(|f| f["feature"]["id"] != feature);
    features.push(json!({
        "featurestate_uuid": uuid::Uuid::new_v4().to_string(),
        "feature": {"id": feature, "name": name, "type": "STANDARD"},
        "enabled": enabled,
        "feature_state_value": value,
        "django_id": null,
        "feature_segment": null,
        "multivariate_feature_state_values": [],
    }));
}

/// The value of a trait in an identity document.
pub fn trait_of<'a>(doc: &'a Value, key: &str) -> Option<&'a Value> {
    doc["identity_traits"]
        .as_array()?
        .iter()
        .find(|t| t["trait_key"] == key)
        .map(|t| &t["trait_value"])
}

/// A consumer (the local poller) on one region's streams, acknowledging in `ledger`'s
/// ledger, ingesting edge writes into `ingest` (with its role) when given.
pub fn spawn_consumer(
    tables: &TestTables,
    ledger: &TestTables,
    region: &str,
    ingest: Option<(PgPool, Role)>,
    on_batch: impl Fn(TableKind, &BatchReport) + Send + Sync + 'static,
) -> JoinHandle<()> {
    let ledger = DynamoLedger::new(ledger.client.clone(), ledger.names.acks.clone());
    let mut consumer = Consumer::new(region, ledger, Invalidation::none());
    if let Some((pool, role)) = ingest {
        consumer = consumer.with_ingestion(
            Ingestion::from_pool(pool, role).with_time_precision(LOCAL_TIME_PRECISION),
        );
    }
    crate::regions::spawn_poller(consumer, tables, 0, on_batch)
}

/// DynamoDB Local rounds stream records' creation times down to the minute.
pub const LOCAL_TIME_PRECISION: Duration = Duration::from_secs(60);

/// How long ingestion and the writer's merge may take on a loaded machine.
pub const MERGE_DEADLINE: Duration = Duration::from_secs(120);
