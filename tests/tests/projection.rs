//! Documents in DynamoDB Local match `flagsmith-documents.md`, built from the rows that
//! count by `flagsmith-core.md` §2.

use std::time::Duration;

use edge_documents::tables::TableKind;
use edge_tests::core::{basic_project, Val};
use edge_tests::dynamo::{document_of, version_of};
use edge_tests::wait;
use edge_tests::writer::InProcessWriter;
use serde_json::{json, Value};

use edge_tests::setup;

fn flag<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["feature_states"]
        .as_array()
        .unwrap()
        .iter()
        .find(|fs| fs["feature"]["name"] == name)
        .unwrap_or_else(|| panic!("no feature state for {name} in {doc:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_document_has_flagsmiths_shape() {
    let (db, tables, core) = setup().await;
    let (_org, project, env) = basic_project(&core, "envKeyShape").await;
    let banner = core
        .create_feature(project, "banner", "STANDARD", true, Val::str("hello"))
        .await;
    let limit = core
        .create_feature(project, "limit", "STANDARD", false, Val::Int(10))
        .await;
    let colour = core
        .create_feature(project, "colour", "MULTIVARIATE", true, Val::str("red"))
        .await;
    core.create_mv_option(colour, Val::str("blue"), "blue", 30.0)
        .await;
    core.create_mv_option(colour, Val::Int(7), "seven", 20.0)
        .await;
    let gold = core
        .create_segment(
            project,
            "gold",
            "ANY",
            &[
                ("EQUAL", Some("plan"), Some("gold")),
                ("IS_SET", Some("vip"), None),
            ],
        )
        .await;
    core.create_segment_override(env, banner, gold, 1, true, Val::str("gold banner"))
        .await;
    // Feature-specific segment without an override here: must not appear.
    let specific = core
        .create_segment(
            project,
            "limit-specific",
            "ALL",
            &[("EQUAL", Some("x"), Some("1"))],
        )
        .await;
    core.exec(&format!(
        "UPDATE segments_segment SET feature_id = {limit} WHERE id = {specific}"
    ))
    .await;
    core.exec(&format!(
        "INSERT INTO amplitude_amplitudeconfiguration (base_url, api_key, environment_id, uuid) VALUES ('https://amp', 'ampkey', {env}, gen_random_uuid());
         UPDATE features_feature SET is_server_key_only = true WHERE id = {limit};"
    ))
    .await;

    let writer = InProcessWriter::start_on(&db.pool, &tables, 2);
    let item = wait::until("environment item", wait::DEFAULT, || async {
        let item = tables.environment("envKeyShape").await?;
        let doc = document_of(&item);
        (doc["project"]["server_key_only_feature_ids"] == json!([limit])).then_some(item)
    })
    .await;
    let doc = document_of(&item);

    assert_eq!(doc["api_key"], "envKeyShape");
    assert_eq!(doc["id"], env);
    assert_eq!(doc["name"], "Production");
    assert!(doc["updated_at"].as_str().unwrap().ends_with("+00:00"));
    assert_eq!(doc["project"]["name"], "Storefront");
    assert_eq!(doc["project"]["organisation"]["name"], "Acme");
    assert_eq!(doc["project"]["organisation"]["persist_trait_data"], true);
    assert_eq!(doc["allow_client_traits"], true);
    assert_eq!(doc["onboarding_pending"], true);
    assert_eq!(doc["hide_disabled_flags"], Value::Null);
    assert_eq!(
        doc["amplitude_config"],
        json!({"api_key": "ampkey", "base_url": "https://amp"})
    );
    assert_eq!(doc["heap_config"], Value::Null);

    assert_eq!(flag(&doc, "banner")["feature_state_value"], "hello");
    assert_eq!(flag(&doc, "banner")["enabled"], true);
    assert_eq!(flag(&doc, "limit")["feature_state_value"], 10);
    assert_eq!(flag(&doc, "limit")["enabled"], false);
    let colour_fs = flag(&doc, "colour");
    assert_eq!(colour_fs["feature"]["type"], "MULTIVARIATE");
    let mv = colour_fs["multivariate_feature_state_values"]
        .as_array()
        .unwrap();
    assert_eq!(mv.len(), 2);
    assert_eq!(mv[0]["multivariate_feature_option"]["value"], "blue");
    assert_eq!(mv[0]["multivariate_feature_option"]["key"], "blue");
    assert_eq!(mv[0]["percentage_allocation"], 30);
    assert_eq!(mv[1]["multivariate_feature_option"]["value"], 7);
    assert!(mv[0]["id"].as_i64().unwrap() < mv[1]["id"].as_i64().unwrap());
    for fs in doc["feature_states"].as_array().unwrap() {
        assert!(fs["django_id"].is_i64(), "{fs}");
        let uuid = uuid::Uuid::parse_str(fs["featurestate_uuid"].as_str().unwrap()).unwrap();
        assert_eq!(uuid.get_version_num(), 4);
        assert!(fs.get("feature_segment").is_none());
    }

    let segments = doc["project"]["segments"].as_array().unwrap();
    assert_eq!(segments.len(), 1);
    let seg = &segments[0];
    assert_eq!(seg["name"], "gold");
    assert_eq!(seg["rules"][0]["type"], "ALL");
    assert_eq!(seg["rules"][0]["conditions"], json!([]));
    let sub = &seg["rules"][0]["rules"][0];
    assert_eq!(sub["type"], "ANY");
    assert_eq!(sub["rules"], json!([]));
    assert_eq!(
        sub["conditions"],
        json!([
            {"operator": "EQUAL", "property_": "plan", "value": "gold"},
            {"operator": "IS_SET", "property_": "vip", "value": null}
        ])
    );
    assert_eq!(
        seg["feature_states"][0]["feature_segment"],
        json!({"priority": 1})
    );
    assert_eq!(
        seg["feature_states"][0]["feature_state_value"],
        "gold banner"
    );

    // The v2 _META item: every field but api_key, plus the v2 keys, same version.
    let meta = tables
        .get(
            TableKind::EnvironmentsV2,
            &[
                ("environment_id", &env.to_string()),
                ("document_key", "_META"),
            ],
        )
        .await
        .expect("_META item");
    let meta_doc = document_of(&meta);
    assert_eq!(meta_doc["environment_api_key"], "envKeyShape");
    assert!(meta_doc.get("api_key").is_none());
    assert_eq!(meta_doc["feature_states"], doc["feature_states"]);
    assert_eq!(version_of(&meta), version_of(&item));

    // The server key document.
    let key = tables
        .get(TableKind::EnvironmentApiKeys, &[("key", "ser.envKeyShape")])
        .await
        .expect("api key item");
    let key_doc = document_of(&key);
    assert_eq!(key_doc["client_api_key"], "envKeyShape");
    assert_eq!(key_doc["active"], true);
    assert_eq!(key_doc["expires_at"], Value::Null);

    // Every item carries its replication metadata, and its content hash verifies.
    for table in [
        TableKind::Environments,
        TableKind::EnvironmentsV2,
        TableKind::EnvironmentApiKeys,
    ] {
        for item in tables.scan(table).await {
            let meta =
                stream_consumer::verify(&item, None).unwrap_or_else(|e| panic!("{table:?}: {e}"));
            assert!(meta.source_time.ends_with("+00:00"));
            assert!(
                meta.doc_key.starts_with("environment:") || meta.doc_key.starts_with("api_key:")
            );
        }
    }

    writer.stop().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_document_is_written_compressed() {
    let (db, tables, core) = setup().await;
    let (_org, project, _env) = basic_project(&core, "envKeyLarge").await;
    for i in 0..30 {
        let big = format!("{i}:{}", "x".repeat(19_990));
        core.create_feature(
            project,
            &format!("big_{i:02}"),
            "STANDARD",
            true,
            Val::Str(big),
        )
        .await;
    }
    let writer = InProcessWriter::start_on(&db.pool, &tables, 2);
    let item = wait::until(
        "compressed environment item",
        Duration::from_secs(60),
        || async {
            let item = tables.environment("envKeyLarge").await?;
            (document_of(&item)["feature_states"].as_array()?.len() == 30).then_some(item)
        },
    )
    .await;
    assert!(matches!(
        item.get("compressed"),
        Some(aws_sdk_dynamodb::types::AttributeValue::Bool(true))
    ));
    assert!(matches!(
        item.get("feature_states"),
        Some(aws_sdk_dynamodb::types::AttributeValue::B(_))
    ));
    let doc = document_of(&item);
    assert_eq!(
        flag(&doc, "big_07")["feature_state_value"]
            .as_str()
            .unwrap()
            .len(),
        19_992
    );
    writer.stop().await;
    db.drop_db().await;
}

/// The `_META` item follows the project's v2 migration status; a deleted API key row
/// removes its item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_status_gates_the_meta_item_and_key_deletes_remove_items() {
    let (db, tables, core) = setup().await;
    let org = core.create_organisation("Acme").await;
    let project = core.create_project(org, "P", true, "NOT_STARTED").await;
    let env = core.create_environment(project, "E", "envGate").await;
    let key = core.create_api_key(env, "ser.envGate").await;
    core.create_feature(project, "f", "STANDARD", true, Val::Int(1))
        .await;
    let meta = || {
        let tables = tables.clone();
        async move {
            tables
                .get(
                    TableKind::EnvironmentsV2,
                    &[
                        ("environment_id", &env.to_string()),
                        ("document_key", "_META"),
                    ],
                )
                .await
        }
    };
    let writer = InProcessWriter::start_on(&db.pool, &tables, 2);
    wait::until("environment item", wait::DEFAULT, || {
        tables.environment("envGate")
    })
    .await;
    wait::until("queue settled", wait::DEFAULT, || async {
        (db.scalar_i64("SELECT count(*) FROM edge.pending").await == 0).then_some(())
    })
    .await;
    assert!(
        meta().await.is_none(),
        "no _META item while the v2 migration has not started"
    );

    core.exec(&format!("UPDATE projects_project SET identity_overrides_v2_migration_status = 'COMPLETE' WHERE id = {project}"))
        .await;
    wait::until("_META item", wait::DEFAULT, meta).await;

    core.exec(&format!(
        "DELETE FROM environments_environmentapikey WHERE id = {key}"
    ))
    .await;
    wait::until("API key item removed", wait::DEFAULT, || async {
        tables
            .get(TableKind::EnvironmentApiKeys, &[("key", "ser.envGate")])
            .await
            .is_none()
            .then_some(())
    })
    .await;
    writer.stop().await;
    db.drop_db().await;
}
