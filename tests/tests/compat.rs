//! Compatibility: the items the writer actually wrote to DynamoDB Local are validated with
//! Flagsmith's own published packages (flagsmith-common's `flagsmith_schemas.dynamodb`) and
//! evaluated by the `flagsmith` Python SDK in local evaluation mode, served over HTTP as
//! `GET /api/v1/environment-document/` (`tests/compat/check_documents.py`).

use std::path::PathBuf;
use std::time::Duration;

use edge_tests::core::{basic_project, Core, TraitVal, Val};
use edge_tests::dynamo::{document_of, TestTables};
use edge_tests::edge;
use edge_tests::pg::TestDb;
use edge_tests::wait;
use edge_tests::writer::InProcessWriter;
use serde_json::json;
use stream_consumer::ingest::Role;

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("EDGE_COMPAT_PYTHON") {
        return PathBuf::from(p);
    }
    let p = edge_tests::repo_root().join(".local/venv/bin/python");
    assert!(
        p.exists(),
        "{} not found: run infra/local/python.sh (or set EDGE_COMPAT_PYTHON)",
        p.display()
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flagsmith_schema_and_sdk_accept_the_written_documents() {
    edge_tests::init_logging();
    let db = TestDb::new().await;
    let tables = TestTables::new().await;
    let core = Core::new(db.pool.clone());

    let (_, project, env) = basic_project(&core, "compatEnv").await;
    let banner = core
        .create_feature(project, "banner", "STANDARD", true, Val::str("hello"))
        .await;
    let limit = core
        .create_feature(project, "limit", "STANDARD", false, Val::Int(10))
        .await;
    let flag_on = core
        .create_feature(project, "new_checkout", "STANDARD", false, Val::Bool(true))
        .await;
    let colour = core
        .create_feature(project, "colour", "MULTIVARIATE", true, Val::str("red"))
        .await;
    core.create_mv_option(colour, Val::str("blue"), "blue", 100.0)
        .await;
    core.create_mv_option(colour, Val::str("green"), "green", 0.0)
        .await;
    let size = core
        .create_feature(project, "size", "MULTIVARIATE", true, Val::str("l"))
        .await;
    core.create_mv_option(size, Val::str("s"), "s", 50.0).await;
    core.create_mv_option(size, Val::str("m"), "m", 50.0).await;
    let gold = core
        .create_segment(
            project,
            "gold",
            "ANY",
            &[("EQUAL", Some("plan"), Some("gold"))],
        )
        .await;
    let beta = core
        .create_segment(
            project,
            "beta",
            "ALL",
            &[("IN", Some("$.identity.identifier"), Some("alice,bob"))],
        )
        .await;
    let everyone = core
        .create_segment(
            project,
            "everyone",
            "ALL",
            &[("PERCENTAGE_SPLIT", None, Some("100"))],
        )
        .await;
    let grown = core
        .create_segment(
            project,
            "grown-ups",
            "ALL",
            &[
                ("GREATER_THAN_INCLUSIVE", Some("age"), Some("18")),
                ("IS_SET", Some("age"), None),
            ],
        )
        .await;
    core.create_segment_override(env, banner, gold, 1, true, Val::str("gold banner"))
        .await;
    core.create_segment_override(env, banner, beta, 0, true, Val::str("beta banner"))
        .await;
    core.create_segment_override(env, flag_on, everyone, 2, true, Val::Bool(true))
        .await;
    core.create_segment_override(env, colour, grown, 3, true, Val::str("black"))
        .await;
    core.exec(&format!(
        "INSERT INTO segment_segmentconfiguration (api_key, base_url, environment_id, uuid) VALUES ('segkey', NULL, {env}, gen_random_uuid())"
    ))
    .await;

    // Identities: one written by the live path, one that existed before the writer and is
    // copied by the migration job. Identity overrides are served to local evaluation.
    core.exec(&format!(
        "UPDATE environments_environment SET use_identity_overrides_in_local_eval = true WHERE id = {env}"
    ))
    .await;
    let dora = core.create_identity(env, "dora").await;
    core.set_trait(dora, "age", TraitVal::Int(41)).await;
    core.set_trait(dora, "ratio", TraitVal::Float(0.25)).await;
    core.set_trait(dora, "beta", TraitVal::Bool(false)).await;
    core.set_trait(dora, "plan", TraitVal::Str("free".into()))
        .await;
    core.exec(&format!(
        r#"UPDATE environments_identity SET system_traits = '{{"cohort": "early", "visits": 3}}' WHERE id = {dora}"#
    ))
    .await;
    core.create_identity_override(env, dora, limit, true, Val::Int(99))
        .await;
    core.create_identity_override(env, dora, colour, true, Val::str("purple"))
        .await;
    core.generate_identities(env, "legacy-", 20, banner, 4, false)
        .await;

    // A second environment, large enough to be written in the compressed form.
    let org2 = core.create_organisation("Big").await;
    let project2 = core.create_project(org2, "Big", true, "COMPLETE").await;
    let env2 = core.create_environment(project2, "Big", "compatBig").await;
    core.create_api_key(env2, "ser.compatBig").await;
    for i in 0..25 {
        let big = format!("{i}:{}", "y".repeat(19_000));
        core.create_feature(
            project2,
            &format!("big_{i:02}"),
            "STANDARD",
            i % 2 == 0,
            Val::Str(big),
        )
        .await;
    }

    let writer = InProcessWriter::start_on(&db.pool, &tables, 4);
    for (key, n) in [("compatEnv", 5), ("compatBig", 25)] {
        wait::until(
            &format!("{key} written"),
            Duration::from_secs(60),
            || async {
                let item = tables.environment(key).await?;
                (document_of(&item)["feature_states"].as_array()?.len() == n).then_some(())
            },
        )
        .await;
    }
    wait::until("queue empty", wait::DEFAULT, || async {
        (db.scalar_i64("SELECT count(*) FROM edge.pending WHERE not_before <= now()")
            .await
            == 0)
            .then_some(())
    })
    .await;
    let migrated = edge_writer::migrate_identities::run(
        &db.pool,
        &tables.store(),
        edge_writer::migrate_identities::Scope {
            project_id: project,
            environment_id: None,
        },
        &edge_writer::migrate_identities::Options {
            progress_bar: false,
            ..Default::default()
        },
    )
    .await
    .expect("identity migration");
    assert_eq!(migrated.migrated, 20, "{migrated:?}");
    wait::until("dora written", wait::DEFAULT, || async {
        tables
            .get(
                edge_documents::tables::TableKind::Identities,
                &[("composite_key", "compatEnv_dora")],
            )
            .await
    })
    .await;
    // Identities written at the edge, merged: dora edited on the dashboard (a trait and an
    // override added beside core's overrides), erin created by the Edge API with an override.
    // The project's identity migration is complete, so ingestion is on by default.
    edge::edit_identity(&tables, "compatEnv_dora", |doc| {
        edge::set_trait(doc, "edge_seen", Some(json!(true)));
        edge::set_override(doc, banner.into(), "banner", true, json!("edge banner"));
    })
    .await;
    let mut erin = edge::new_identity("compatEnv", "erin", &[("plan", json!("free"))]);
    edge::set_override(&mut erin, limit.into(), "limit", true, json!(7));
    edge::put_identity(&tables, &erin).await;
    let consumer = edge::spawn_consumer(
        &tables,
        &tables,
        "a",
        Some((db.pool.clone(), Role::Home)),
        |_, _| {},
    );
    for key in ["compatEnv_dora", "compatEnv_erin"] {
        wait::until(&format!("{key} merged"), edge::MERGE_DEADLINE, || async {
            let item = tables
                .get(
                    edge_documents::tables::TableKind::Identities,
                    &[("composite_key", key)],
                )
                .await?;
            let doc = document_of(&item);
            (item.contains_key(edge_documents::item::ATTR_VERSION)
                && doc["identity_features"].as_array().is_some_and(|f| {
                    f.iter().any(|f| {
                        f["enabled"] == true
                            && f["feature_state_value"]
                                == if key.ends_with("erin") {
                                    json!(7)
                                } else {
                                    json!("edge banner")
                                }
                    })
                }))
            .then_some(())
        })
        .await;
    }
    consumer.abort();
    writer.stop().await;
    assert!(tables
        .environment("compatBig")
        .await
        .unwrap()
        .contains_key("compressed"));

    let big_00 = format!("0:{}", "y".repeat(19_000));
    let big_01 = format!("1:{}", "y".repeat(19_000));
    let expect = json!({"cases": [
        {"server_key": "ser.compatEnv", "identifier": null, "traits": {}, "flags": {
            "banner": {"enabled": true, "value": "hello"},
            "limit": {"enabled": false, "value": 10},
            "new_checkout": {"enabled": false, "value": true},
            "colour": {"enabled": true, "value": "red"},
            "size": {"enabled": true, "value": "l"}}},
        {"server_key": "ser.compatEnv", "identifier": "user-gold", "traits": {"plan": "gold"}, "flags": {
            "banner": {"enabled": true, "value": "gold banner"},
            "new_checkout": {"enabled": true, "value": true},
            "colour": {"enabled": true, "value": "blue"},
            "size": {"enabled": true, "value_in": ["s", "m"]}}},
        {"server_key": "ser.compatEnv", "identifier": "alice", "traits": {"plan": "gold"}, "flags": {
            "banner": {"enabled": true, "value": "beta banner"}}},
        {"server_key": "ser.compatEnv", "identifier": "carol", "traits": {"age": 30}, "flags": {
            "banner": {"enabled": true, "value": "hello"},
            "colour": {"enabled": true, "value": "black"},
            "limit": {"enabled": false, "value": 10}}},
        {"server_key": "ser.compatEnv", "identifier": "dora", "traits": {"plan": "free"}, "flags": {
            "limit": {"enabled": true, "value": 99},
            "colour": {"enabled": true, "value": "purple"},
            "banner": {"enabled": true, "value": "edge banner"}}},
        {"server_key": "ser.compatEnv", "identifier": "erin", "traits": {"plan": "free"}, "flags": {
            "limit": {"enabled": true, "value": 7},
            "banner": {"enabled": true, "value": "hello"}}},
        {"server_key": "ser.compatBig", "identifier": "someone", "traits": {}, "flags": {
            "big_00": {"enabled": true, "value": big_00},
            "big_01": {"enabled": false, "value": big_01}}}
    ]});
    let expect_path = std::env::temp_dir().join(format!(
        "compat-expect-{}.json",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&expect_path, serde_json::to_vec_pretty(&expect).unwrap()).unwrap();

    let script = edge_tests::repo_root().join("tests/compat/check_documents.py");
    let out = tokio::process::Command::new(python())
        .arg(script)
        .arg("--endpoint")
        .arg(&tables.endpoint)
        .args(["--region", "eu-west-2"])
        .args(["--environments-table", &tables.names.environments])
        .args(["--environments-v2-table", &tables.names.environments_v2])
        .args(["--api-keys-table", &tables.names.environment_api_keys])
        .args(["--identities-table", &tables.names.identities])
        .arg("--expect")
        .arg(&expect_path)
        .env("AWS_ACCESS_KEY_ID", "local")
        .env("AWS_SECRET_ACCESS_KEY", "local")
        .env("AWS_DEFAULT_REGION", "eu-west-2")
        .output()
        .await
        .expect("run the compatibility check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "compatibility check failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(", 0 failed"), "{stdout}");
    let _ = std::fs::remove_file(expect_path);
    db.drop_db().await;
}
