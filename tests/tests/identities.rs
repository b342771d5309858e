//! Identity documents on the live path: core identities, traits and identity overrides reach
//! the edge continuously, rewrite only their identity, and deletes and key moves propagate.

use edge_documents::tables::TableKind;
use edge_tests::core::{basic_project, TraitVal, Val};
use edge_tests::dynamo::{document_of, version_of, TestTables};
use edge_tests::wait;
use edge_tests::writer::InProcessWriter;
use serde_json::{json, Value};

async fn identity(tables: &TestTables, composite_key: &str) -> Option<Value> {
    tables
        .get(TableKind::Identities, &[("composite_key", composite_key)])
        .await
        .map(|i| document_of(&i))
}

async fn identity_until(
    tables: &TestTables,
    composite_key: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    wait::until(what, wait::DEFAULT, || async {
        let d = identity(tables, composite_key).await?;
        check(&d).then_some(d)
    })
    .await
}

fn trait_of<'a>(d: &'a Value, key: &str) -> Option<&'a Value> {
    d["identity_traits"]
        .as_array()?
        .iter()
        .find(|t| t["trait_key"] == key)
        .map(|t| &t["trait_value"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_traits_and_overrides_replicate_and_rewrite_only_their_identity() {
    let (db, tables, core) = edge_tests::setup().await;
    let (_, project, env) = basic_project(&core, "idEnv1").await;
    let flag = core
        .create_feature(project, "flag", "STANDARD", false, Val::str("default"))
        .await;
    let other = core
        .create_feature(project, "other", "STANDARD", true, Val::Int(1))
        .await;
    let alice = core.create_identity(env, "alice").await;
    core.set_trait(alice, "age", TraitVal::Int(30)).await;
    core.set_trait(alice, "score", TraitVal::Float(1.5)).await;
    core.set_trait(alice, "beta", TraitVal::Bool(true)).await;
    core.set_trait(alice, "plan", TraitVal::Str("gold".into()))
        .await;
    core.create_identity_override(env, alice, flag, true, Val::str("alice's"))
        .await;
    let bob = core.create_identity(env, "bob").await;

    let writer = InProcessWriter::start_on(&db.pool, &tables, 4);
    let doc = identity_until(&tables, "idEnv1_alice", "alice written", |d| {
        d["identity_features"]
            .as_array()
            .is_some_and(|a| a.len() == 1)
    })
    .await;
    assert_eq!(doc["identifier"], "alice");
    assert_eq!(doc["environment_api_key"], "idEnv1");
    assert_eq!(doc["django_id"], json!(alice));
    assert_eq!(trait_of(&doc, "age"), Some(&json!(30)));
    assert_eq!(trait_of(&doc, "score"), Some(&json!(1.5)));
    assert_eq!(trait_of(&doc, "beta"), Some(&json!(true)));
    assert_eq!(trait_of(&doc, "plan"), Some(&json!("gold")));
    let fs = &doc["identity_features"][0];
    assert_eq!(fs["feature"]["name"], "flag");
    assert_eq!(fs["enabled"], true);
    assert_eq!(fs["feature_state_value"], "alice's");
    let uuid = doc["identity_uuid"].as_str().unwrap().to_string();
    // The v2 override item (the project's v2 status is COMPLETE).
    let override_key = format!("identity_override:{flag}:{uuid}");
    let env_id = env.to_string();
    // Written once the identity item is the writer's (it goes first: the edge writes it too).
    let item = wait::until("the identity-override item", wait::DEFAULT, || async {
        tables
            .get(
                TableKind::EnvironmentsV2,
                &[("environment_id", &env_id), ("document_key", &override_key)],
            )
            .await
    })
    .await;
    let item = document_of(&item);
    assert_eq!(item["identifier"], "alice");
    assert_eq!(item["feature_state"]["feature_state_value"], "alice's");
    identity_until(&tables, "idEnv1_bob", "bob written", |_| true).await;

    // A trait change rewrites alice only: not bob, not the environment.
    let env_version = version_of(&tables.environment("idEnv1").await.unwrap());
    let bob_version = version_of(
        &tables
            .get(TableKind::Identities, &[("composite_key", "idEnv1_bob")])
            .await
            .unwrap(),
    );
    core.set_trait(alice, "age", TraitVal::Int(31)).await;
    identity_until(&tables, "idEnv1_alice", "trait update", |d| {
        trait_of(d, "age") == Some(&json!(31))
    })
    .await;
    // Deleting a trait propagates.
    core.delete_trait(alice, "plan").await;
    identity_until(&tables, "idEnv1_alice", "trait delete", |d| {
        trait_of(d, "plan").is_none()
    })
    .await;
    // A new override, then one removed: the override items follow.
    let other_fs = core
        .create_identity_override(env, alice, other, false, Val::Int(9))
        .await;
    identity_until(&tables, "idEnv1_alice", "second override", |d| {
        d["identity_features"]
            .as_array()
            .is_some_and(|a| a.len() == 2)
    })
    .await;
    core.exec(&format!(
        "DELETE FROM features_featurestatevalue WHERE feature_state_id = {other_fs};
         DELETE FROM features_featurestate WHERE id = {other_fs};"
    ))
    .await;
    identity_until(&tables, "idEnv1_alice", "override removed", |d| {
        d["identity_features"]
            .as_array()
            .is_some_and(|a| a.len() == 1)
    })
    .await;
    let other_key = format!("identity_override:{other}:{uuid}");
    wait::until(
        "the removed override's item deleted",
        wait::DEFAULT,
        || async {
            tables
                .get(
                    TableKind::EnvironmentsV2,
                    &[("environment_id", &env_id), ("document_key", &other_key)],
                )
                .await
                .is_none()
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        version_of(&tables.environment("idEnv1").await.unwrap()),
        env_version,
        "identity changes must not rewrite the environment document"
    );
    assert_eq!(
        version_of(
            &tables
                .get(TableKind::Identities, &[("composite_key", "idEnv1_bob")])
                .await
                .unwrap()
        ),
        bob_version,
        "alice's changes must not rewrite bob"
    );

    // A feature rename reaches the identities overriding it.
    core.exec(&format!(
        "UPDATE features_feature SET name = 'flag2' WHERE id = {flag}"
    ))
    .await;
    identity_until(&tables, "idEnv1_alice", "feature rename", |d| {
        d["identity_features"][0]["feature"]["name"] == "flag2"
    })
    .await;

    // Deleting an identity deletes its items.
    core.delete_identity(bob).await;
    wait::until("bob deleted", wait::DEFAULT, || async {
        identity(&tables, "idEnv1_bob")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    writer.stop().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_change_moves_identities_to_their_new_composite_keys() {
    let (db, tables, core) = edge_tests::setup().await;
    let (_, project, env) = basic_project(&core, "idEnvOld").await;
    let flag = core
        .create_feature(project, "flag", "STANDARD", false, Val::None)
        .await;
    let carol = core.create_identity(env, "carol").await;
    core.set_trait(carol, "k", TraitVal::Str("v".into())).await;
    core.create_identity_override(env, carol, flag, true, Val::Bool(true))
        .await;
    let writer = InProcessWriter::start_on(&db.pool, &tables, 4);
    let before = identity_until(&tables, "idEnvOld_carol", "carol written", |_| true).await;

    core.exec(&format!(
        "UPDATE environments_environment SET api_key = 'idEnvNew' WHERE id = {env}"
    ))
    .await;
    let after = identity_until(&tables, "idEnvNew_carol", "carol moved", |_| true).await;
    assert_eq!(after["environment_api_key"], "idEnvNew");
    assert_eq!(
        after["identity_uuid"], before["identity_uuid"],
        "identity_uuid is stable across re-writes and key moves"
    );
    wait::until("old composite key deleted", wait::DEFAULT, || async {
        identity(&tables, "idEnvOld_carol")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    // The override item keeps its key and carries the new api_key.
    let key = format!(
        "identity_override:{flag}:{}",
        after["identity_uuid"].as_str().unwrap()
    );
    let env_id = env.to_string();
    wait::until(
        "override item follows the api_key",
        wait::DEFAULT,
        || async {
            let item = tables
                .get(
                    TableKind::EnvironmentsV2,
                    &[("environment_id", &env_id), ("document_key", &key)],
                )
                .await?;
            (document_of(&item)["environment_api_key"] == "idEnvNew").then_some(())
        },
    )
    .await;
    writer.stop().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_identities_are_parked_with_their_key_and_others_carry_on() {
    let (db, tables, core) = edge_tests::setup().await;
    let (_, _, env) = basic_project(&core, "idEnvBad").await;
    let long = "x".repeat(1500);
    let oversized = core.create_identity(env, &long).await;
    let broken = core.create_identity(env, "broken").await;
    core.set_trait(broken, "n", TraitVal::Int(1)).await;
    core.exec(&format!(
        "UPDATE environments_trait SET integer_value = NULL WHERE identity_id = {broken}"
    ))
    .await;
    core.create_identity(env, "fine").await;

    let writer = InProcessWriter::start_on(&db.pool, &tables, 2);
    identity_until(&tables, "idEnvBad_fine", "the good identity", |_| true).await;
    let letters = wait::until("both parked", wait::DEFAULT, || async {
        let l = edge_writer::state::dead_letters::list(&db.pool)
            .await
            .ok()?;
        (l.len() == 2).then_some(l)
    })
    .await;
    let of = |id: i32| {
        letters
            .iter()
            .find(|l| l.doc_key == format!("identity:{id}"))
            .unwrap_or_else(|| panic!("identity {id} not parked: {letters:?}"))
    };
    assert!(
        of(oversized).error.contains("1500 bytes"),
        "{:?}",
        of(oversized)
    );
    let broken_letter = of(broken);
    assert!(
        broken_letter.error.contains("idEnvBad_broken") && broken_letter.error.contains("\"n\""),
        "{broken_letter:?}"
    );
    assert_eq!(broken_letter.error_kind, "invalid_data");
    writer.stop().await;
    db.drop_db().await;
}
