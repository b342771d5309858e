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
use serde_json::{json, Value};
use stream_consumer::ingest::Role;

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
