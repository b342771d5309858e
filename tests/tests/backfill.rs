//! Backfill replays and dead-letter replays, through the `writer` binary, against real
//! Postgres and DynamoDB Local.

use std::process::Output;

use edge_documents::tables::TableKind;
use edge_tests::core::{basic_project, TraitVal, Val};
use edge_tests::dynamo::{document_of, version_of, TestTables};
use edge_tests::pg::TestDb;
use edge_tests::wait;
use edge_tests::writer::{writer_command, InProcessWriter};
use serde_json::Value;

async fn writer(db: &TestDb, tables: &TestTables, args: &[&str]) -> Output {
    writer_command(&db.url, tables)
        .args(args)
        .output()
        .await
        .expect("run the writer")
}

fn summary(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON summary ({e}): stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_finds_drift_and_a_backfill_repairs_it_and_resumes() {
    let (db, tables, core) = edge_tests::setup().await;
    let (_, project, env) = basic_project(&core, "bfEnv1").await;
    core.create_feature(project, "flag", "STANDARD", true, Val::Int(1))
        .await;
    let env2 = core.create_environment(project, "Two", "bfEnv2").await;
    let writer_task = InProcessWriter::start_on(&db.pool, &tables, 2);
    for key in ["bfEnv1", "bfEnv2"] {
        wait::until(key, wait::DEFAULT, || async {
            tables.environment(key).await
        })
        .await;
    }
    wait::writer_idle(&db.pool, wait::DEFAULT).await;
    writer_task.stop().await;
    let before = version_of(&tables.environment("bfEnv2").await.unwrap());

    // Drift behind the writer's back: one item deleted, one changed.
    tables
        .client
        .delete_item()
        .table_name(&tables.names.environments)
        .key(
            "api_key",
            aws_sdk_dynamodb::types::AttributeValue::S("bfEnv1".into()),
        )
        .send()
        .await
        .unwrap();
    tables
        .client
        .update_item()
        .table_name(&tables.names.environments)
        .key(
            "api_key",
            aws_sdk_dynamodb::types::AttributeValue::S("bfEnv2".into()),
        )
        .update_expression("SET #n = :n")
        .expression_attribute_names("#n", "name")
        .expression_attribute_values(":n", aws_sdk_dynamodb::types::AttributeValue::S("x".into()))
        .send()
        .await
        .unwrap();

    let out = writer(&db, &tables, &["backfill", "--all", "--dry-run"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = summary(&out);
    assert_eq!(s["items_missing"], 1, "{s}");
    assert!(s["items_differing"].as_u64().unwrap() >= 1, "{s}");
    assert!(
        tables.environment("bfEnv1").await.is_none(),
        "a dry run writes nothing"
    );

    // A stopped run of the project scope, after the first environment: resumes after it.
    sqlx::query("INSERT INTO edge.backfill_run (scope, cursor) VALUES ($1, $2)")
        .bind(format!("project:{project}"))
        .bind(format!("environment:{env}"))
        .execute(&db.pool)
        .await
        .unwrap();
    let out = writer(
        &db,
        &tables,
        &["backfill", &format!("--project={project}"), "--rate=50"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = summary(&out);
    assert_eq!(s["resumed_after"], format!("environment:{env}"), "{s}");
    assert_eq!(s["documents"], 1, "only environment:{env2} is left: {s}");
    let repaired = tables.environment("bfEnv2").await.unwrap();
    assert_eq!(document_of(&repaired)["name"], "Two");
    assert!(version_of(&repaired) > before);
    assert!(
        tables.environment("bfEnv1").await.is_none(),
        "before the cursor: not replayed"
    );

    // The finished scope starts again from the first document.
    let out = writer(&db, &tables, &["backfill", &format!("--project={project}")]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        summary(&out)["documents"],
        3,
        "two environments and one API key"
    );
    assert!(tables.environment("bfEnv1").await.is_some());

    // Bad arguments are refused with a clear message.
    let out = writer(&db, &tables, &["backfill", "--since", "yesterday"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("RFC 3339"));
    let out = writer(&db, &tables, &["backfill", "--environment", "nope"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_beside_the_live_writer_never_leaves_an_older_document() {
    let (db, tables, core) = edge_tests::setup().await;
    let (_, project, env) = basic_project(&core, "bfLive").await;
    let flag = core
        .create_feature(project, "counter", "STANDARD", true, Val::Int(0))
        .await;
    let fs = core.default_state(env, flag).await;
    let writer_task = InProcessWriter::start_on(&db.pool, &tables, 2);
    let backfills = {
        let (db_url, tables) = (db.url.clone(), tables.clone());
        tokio::spawn(async move {
            for _ in 0..5 {
                let out = writer_command(&db_url, &tables)
                    .args(["backfill", "--all", "--restart"])
                    .output()
                    .await
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        })
    };
    for i in 1..=40 {
        let mut conn = db.pool.acquire().await.unwrap();
        edge_tests::core::update_state(&mut conn, fs, true, &Val::Int(i)).await;
    }
    backfills.await.unwrap();
    wait::until("the last value", wait::DEFAULT, || async {
        let doc = document_of(&tables.environment("bfLive").await?);
        let value = doc["feature_states"]
            .as_array()?
            .iter()
            .find(|f| f["feature"]["name"] == "counter")?["feature_state_value"]
            .as_i64()?;
        (value == 40).then_some(())
    })
    .await;
    writer_task.stop().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_replay_after_the_data_is_fixed() {
    let (db, tables, core) = edge_tests::setup().await;
    let (_, _, env) = basic_project(&core, "dlEnv").await;
    let eve = core.create_identity(env, "eve").await;
    core.set_trait(eve, "n", TraitVal::Int(1)).await;
    core.exec(&format!(
        "UPDATE environments_trait SET integer_value = NULL WHERE identity_id = {eve}"
    ))
    .await;
    let writer_task = InProcessWriter::start_on(&db.pool, &tables, 2);
    wait::until("eve parked", wait::DEFAULT, || async {
        (db.scalar_i64("SELECT count(*) FROM edge.dead_letter").await == 1).then_some(())
    })
    .await;
    writer_task.stop().await;

    // Still broken: the replay says so and exits non-zero.
    let out = writer(&db, &tables, &["dead-letters", "replay", "--all"]).await;
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("identity:{eve}\tfailed")),
        "{stdout}"
    );
    assert!(stdout.contains("dlEnv_eve"), "{stdout}");

    // Fixed behind the capture (no change recorded), then replayed by hand.
    core.exec(&format!(
        "SET session_replication_role = replica;
         UPDATE environments_trait SET integer_value = 7 WHERE identity_id = {eve};
         SET session_replication_role = DEFAULT;"
    ))
    .await;
    let out = writer(
        &db,
        &tables,
        &[
            "dead-letters",
            "replay",
            "--doc",
            &format!("identity:{eve}"),
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("replayed"));
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM edge.dead_letter").await,
        0
    );
    let item = tables
        .get(TableKind::Identities, &[("composite_key", "dlEnv_eve")])
        .await
        .expect("eve written");
    assert_eq!(document_of(&item)["identity_traits"][0]["trait_value"], 7);
    let out = writer(
        &db,
        &tables,
        &["dead-letters", "replay", "--doc", "identity:999"],
    )
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in dead letters"));
    db.drop_db().await;
}
