//! Identities have two writers: the edge (the Edge API, Flagsmith's edge identity endpoints)
//! and core through the writer. Real Postgres and DynamoDB Local; edge writes are made as
//! Flagsmith's `EdgeIdentity.save` makes them (`edge_tests::edge`).

use std::time::Duration;

use edge_documents::item::{Item, ATTR_VERSION};
use edge_documents::tables::TableKind;
use edge_tests::core::{basic_project, TraitVal, Val};
use edge_tests::dynamo::{document_of, TestTables};
use edge_tests::edge::{self, MERGE_DEADLINE};
use edge_tests::pg::TestDb;
use edge_tests::wait;
use edge_tests::writer::{test_settings, writer_command, InProcessWriter};
use edge_writer::replicate::{Replicator, Settings};
use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{json, Value};
use stream_consumer::ingest::{Ingestion, Role};
use stream_consumer::invalidate::Invalidation;
use stream_consumer::ledger::DynamoLedger;
use stream_consumer::record::{ChangeRecord, Malformed};
use stream_consumer::Consumer;

async fn identity_item(tables: &TestTables, composite_key: &str) -> Option<Item> {
    tables
        .get(TableKind::Identities, &[("composite_key", composite_key)])
        .await
}

/// A writer that never ingests an edge item itself (no consumer in these tests does it
/// before the test says so).
fn patient_writer(db: &TestDb, tables: &TestTables) -> InProcessWriter {
    let settings = Settings {
        ingest_grace: Duration::from_secs(3600),
        ..test_settings()
    };
    InProcessWriter::start(
        Replicator::new(db.pool.clone(), tables.store(), settings),
        2,
    )
}

/// `writer verify` of one region; returns (exit code, stdout).
async fn verify(db: &TestDb, tables: &TestTables, extra: &[&str]) -> (i32, String) {
    let out = writer_command(&db.url, tables)
        .arg("verify")
        .arg(format!("--region=a={}", tables.endpoint))
        .arg("--recheck-after-secs=1")
        .arg("--ack-deadline-secs=3600")
        .args(extra)
        .output()
        .await
        .expect("run writer verify");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code != 1,
        "verify failed to run:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (code, stdout)
}

async fn core_trait(db: &TestDb, identity: i32, key: &str) -> Option<(String, Value)> {
    sqlx::query_as::<_, (Option<String>, Value)>(
        r#"SELECT value_type, to_jsonb(COALESCE(to_jsonb(integer_value), to_jsonb(float_value),
                  to_jsonb(boolean_value), to_jsonb(string_value)))
           FROM environments_trait WHERE identity_id = $1 AND trait_key = $2"#,
    )
    .bind(identity)
    .bind(key)
    .fetch_optional(&db.pool)
    .await
    .unwrap()
    .map(|(t, v)| (t.unwrap_or_default(), v))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edge_edit_is_never_clobbered_by_core_or_repair_and_is_merged_after_ingestion() {
    let (db, tables, core) = edge_tests::setup().await;
    let (_, project, env) = basic_project(&core, "edgeEnv").await;
    let flag = core
        .create_feature(project, "flag", "STANDARD", false, Val::str("default"))
        .await;
    let alice = core.create_identity(env, "alice").await;
    core.set_trait(alice, "age", TraitVal::Int(30)).await;
    core.set_trait(alice, "plan", TraitVal::Str("gold".into()))
        .await;
    edge_ingest::switch::set(&db.pool, project, Some(true))
        .await
        .unwrap();
    let writer = patient_writer(&db, &tables);
    wait::until("alice written", wait::DEFAULT, || async {
        identity_item(&tables, "edgeEnv_alice")
            .await
            .filter(|i| edge::trait_of(&document_of(i), "plan").is_some())
    })
    .await;

    // The dashboard edits alice at the edge: a trait changed, one added, an override set.
    let put = edge::edit_identity(&tables, "edgeEnv_alice", |doc| {
        edge::set_trait(doc, "plan", Some(json!("platinum")));
        edge::set_trait(doc, "edge_only", Some(json!(7)));
        edge::set_override(doc, flag.into(), "flag", true, json!("edge value"));
    })
    .await;
    // Then core changes alice. Without ingestion running, the writer must leave the edge's
    // item alone: it waits.
    core.set_trait(alice, "age", TraitVal::Int(31)).await;
    wait::until(
        "the writer to find the edge's item and wait for its ingestion",
        wait::DEFAULT,
        || async {
            let state: Option<String> =
                sqlx::query_scalar("SELECT foreign_state FROM edge.document WHERE doc_key = $1")
                    .bind(format!("identity:{alice}"))
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            (state.as_deref() == Some("awaiting_ingestion")).then_some(())
        },
    )
    .await;
    let item = identity_item(&tables, "edgeEnv_alice").await.unwrap();
    assert!(
        !item.contains_key(ATTR_VERSION),
        "the edge's item was replaced"
    );
    assert_eq!(
        document_of(&item),
        put,
        "the edge's item is exactly what the edge wrote"
    );
    let parked: i64 = db.scalar_i64("SELECT count(*) FROM edge.dead_letter").await;
    assert_eq!(parked, 0, "waiting for ingestion is not a failure");

    // verify: pending ingestion, not stale; --repair writes nothing over it.
    let (code, out) = verify(&db, &tables, &["--repair"]).await;
    assert!(
        out.lines()
            .any(|l| l.contains("pending ingestion") && l.contains("identities|edgeEnv_alice")),
        "{out}"
    );
    assert!(
        !out.lines()
            .any(|l| l.contains("identities|edgeEnv_alice") && !l.contains("pending ingestion")),
        "the edge's item is reported only as pending ingestion:\n{out}"
    );
    assert!(code == 0 || code == 3, "{code}: {out}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let item = identity_item(&tables, "edgeEnv_alice").await.unwrap();
    assert_eq!(document_of(&item), put, "repair wrote over the edge's item");

    // Ingestion (the home region's consumer): core gets the edge's changes, the writer
    // replaces the item with the merged document.
    let consumer = edge::spawn_consumer(
        &tables,
        &tables,
        "a",
        Some((db.pool.clone(), Role::Home)),
        |_, _| {},
    );
    let merged = wait::until("the merged document", MERGE_DEADLINE, || async {
        let item = identity_item(&tables, "edgeEnv_alice").await?;
        item.contains_key(ATTR_VERSION).then(|| document_of(&item))
    })
    .await;
    assert_eq!(
        edge::trait_of(&merged, "age"),
        Some(&json!(31)),
        "core's change"
    );
    assert_eq!(
        edge::trait_of(&merged, "plan"),
        Some(&json!("platinum")),
        "the edge's change"
    );
    assert_eq!(edge::trait_of(&merged, "edge_only"), Some(&json!(7)));
    let fs = merged["identity_features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["feature"]["id"] == json!(flag))
        .expect("the edge's override");
    assert_eq!(fs["enabled"], true);
    assert_eq!(fs["feature_state_value"], "edge value");
    assert_eq!(merged["identity_uuid"], put["identity_uuid"]);
    // Core holds the same.
    assert_eq!(
        core_trait(&db, alice, "plan").await,
        Some(("unicode".into(), json!("platinum")))
    );
    assert_eq!(
        core_trait(&db, alice, "edge_only").await,
        Some(("int".into(), json!(7)))
    );
    assert_eq!(
        core_trait(&db, alice, "age").await,
        Some(("int".into(), json!(31)))
    );
    let overrides: i64 = db
        .scalar_i64(&format!(
            "SELECT count(*) FROM features_featurestate WHERE identity_id = {alice} AND feature_id = {flag}"
        ))
        .await;
    assert_eq!(overrides, 1);

    // The edge's writes were re-projected, not counted as core changes, and nothing loops:
    // the queue drains and verify is clean.
    wait::writer_idle(&db.pool, MERGE_DEADLINE).await;
    let (code, out) = verify(&db, &tables, &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 pending ingestion"), "{out}");
    consumer.abort();
    writer.stop().await;
}

fn record(
    seq: &str,
    new: Option<&Value>,
    old: Option<&Value>,
    composite_key: &str,
) -> Result<ChangeRecord, Malformed> {
    let item = |v: &Value| -> Item { serde_dynamo::aws_sdk_dynamodb_1::to_item(v.clone()).unwrap() };
    Ok(ChangeRecord {
        sequence: seq.into(),
        table: TableKind::Identities,
        keys: [(
            "composite_key".to_string(),
            AttributeValue::S(composite_key.to_string()),
        )]
        .into(),
        new: new.map(item),
        old: old.map(item),
        created_at: Some(chrono::Utc::now()),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_identities_reach_core_typed_once_and_poison_items_are_parked() {
    let (db, tables, core) = edge_tests::setup().await;
    let (_, project, _) = basic_project(&core, "ingEnv").await;
    let flag = core
        .create_feature(project, "flag", "STANDARD", false, Val::str("default"))
        .await;
    let (_, off_project, _) = basic_project(&core, "offEnv").await;
    edge_ingest::switch::set(&db.pool, project, Some(true))
        .await
        .unwrap();
    edge_ingest::switch::set(&db.pool, off_project, Some(false))
        .await
        .unwrap();
    let consumer = Consumer::new(
        "a",
        DynamoLedger::new(tables.client.clone(), tables.names.acks.clone()),
        Invalidation::none(),
    )
    .with_ingestion(Ingestion::from_pool(db.pool.clone(), Role::Home));

    let mut carol = edge::new_identity(
        "ingEnv",
        "carol",
        &[
            ("age", json!(41)),
            ("score", json!(2.5)),
            ("beta", json!(true)),
            ("plan", json!("gold")),
            ("big", json!(3_000_000_000i64)),
        ],
    );
    edge::set_override(&mut carol, flag.into(), "flag", true, json!("edge"));
    let dave = edge::new_identity("ingEnv", "dave", &[("bad", json!([1, 2]))]);
    let long = "l".repeat(1025);
    let too_long = edge::new_identity("ingEnv", &long, &[]);
    let erin = edge::new_identity("ingEnv", "erin", &[("x", json!(1))]);
    let frank = edge::new_identity("offEnv", "frank", &[("x", json!(1))]);
    let batch = || {
        vec![
            record("1", Some(&carol), None, "ingEnv_carol"),
            record("2", Some(&dave), None, "ingEnv_dave"),
            record("3", Some(&too_long), None, &format!("ingEnv_{long}")),
            record("4", Some(&erin), None, "ingEnv_erin"),
            record("5", Some(&frank), None, "offEnv_frank"),
        ]
    };
    let report = consumer.handle(batch()).await;
    assert!(report.failure.is_none(), "{:?}", report.failure);
    assert_eq!(report.ingest_parked, 2, "{report:?}");

    // carol and erin exist in core, with the edge's identity_uuid; frank's project does not
    // ingest.
    let id_of = |identifier: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i32>(
                "SELECT id FROM environments_identity WHERE identifier = $1",
            )
            .bind(identifier)
            .fetch_optional(&pool)
            .await
            .unwrap()
        }
    };
    let carol_id = id_of("carol").await.expect("carol created in core");
    assert!(id_of("erin").await.is_some());
    assert!(id_of("frank").await.is_none(), "ingestion is off for frank's project");
    let uuid: uuid::Uuid =
        sqlx::query_scalar("SELECT identity_uuid FROM edge.identity_uuid WHERE identity_id = $1")
            .bind(carol_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(uuid.to_string(), carol["identity_uuid"].as_str().unwrap());
    // Traits with core's types.
    for (key, t, v) in [
        ("age", "int", json!(41)),
        ("score", "float", json!(2.5)),
        ("beta", "bool", json!(true)),
        ("plan", "unicode", json!("gold")),
        ("big", "float", json!(3_000_000_000i64)),
    ] {
        assert_eq!(
            core_trait(&db, carol_id, key).await,
            Some((t.to_string(), v)),
            "trait {key}"
        );
    }
    let value: Option<String> = sqlx::query_scalar(
        r#"SELECT v.string_value FROM features_featurestate fs
           JOIN features_featurestatevalue v ON v.feature_state_id = fs.id
           WHERE fs.identity_id = $1 AND fs.feature_id = $2 AND fs.enabled"#,
    )
    .bind(carol_id)
    .bind(flag)
    .fetch_optional(&db.pool)
    .await
    .unwrap();
    assert_eq!(value.as_deref(), Some("edge"), "carol's override");
    // The poison items are parked with their key and reason.
    let parked: Vec<(String, String)> =
        sqlx::query_as("SELECT item_key, error FROM edge.ingest_dead_letter ORDER BY item_key")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(parked.len(), 2, "{parked:?}");
    assert!(parked.iter().any(|(k, e)| k == "ingEnv_dave" && e.contains("a list")), "{parked:?}");
    assert!(
        parked.iter().any(|(k, e)| k.starts_with("ingEnv_lll") && e.contains("1025 bytes")),
        "{parked:?}"
    );

    // A redelivered batch changes nothing in core.
    let state = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, String>(
            r#"SELECT (SELECT count(*) FROM edge.change_log)::text || '/' ||
                      (SELECT string_agg(t.id::text || t.trait_key || COALESCE(t.string_value, '')
                              || COALESCE(t.integer_value::text, ''), ',' ORDER BY t.id)
                       FROM environments_trait t) || '/' ||
                      (SELECT count(*) FROM features_featurestate)::text"#,
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let before = state(db.pool.clone()).await;
    let again = consumer.handle(batch()).await;
    assert!(again.failure.is_none(), "{:?}", again.failure);
    assert_eq!(state(db.pool.clone()).await, before, "redelivery changed core");

    // An edge delete deletes in core.
    let report = consumer
        .handle(vec![record("6", None, Some(&carol), "ingEnv_carol")])
        .await;
    assert!(report.failure.is_none(), "{:?}", report.failure);
    assert!(id_of("carol").await.is_none(), "the edge delete reached core");
    let left: i64 = db
        .scalar_i64(&format!(
            "SELECT (SELECT count(*) FROM environments_trait WHERE identity_id = {carol_id})
                  + (SELECT count(*) FROM features_featurestate WHERE identity_id = {carol_id})"
        ))
        .await;
    assert_eq!(left, 0);

    // The writer writes erin, whom only the edge knew, under the edge's identity_uuid.
    let writer = patient_writer(&db, &tables);
    let erin_item = wait::until("erin written", MERGE_DEADLINE, || async {
        identity_item(&tables, "ingEnv_erin").await
    })
    .await;
    assert!(erin_item.contains_key(ATTR_VERSION));
    assert_eq!(document_of(&erin_item)["identity_uuid"], erin["identity_uuid"]);
    writer.stop().await;
}
