//! Every fan-out row of `flagsmith-core.md` §4 reaches every document it touches, and no
//! other.

use edge_documents::tables::TableKind;
use edge_tests::core::{Core, Val};
use edge_tests::dynamo::{document_of, version_of, TestTables};
use edge_tests::pg::TestDb;
use edge_tests::wait;
use edge_tests::writer::InProcessWriter;
use serde_json::Value;

async fn doc(tables: &TestTables, api_key: &str) -> Option<Value> {
    tables.environment(api_key).await.map(|i| document_of(&i))
}

/// Applies `sql`, then waits until `check` holds for the documents of every key in `keys`.
async fn change_reaches(
    core: &Core,
    tables: &TestTables,
    what: &str,
    sql: &str,
    keys: &[&str],
    check: impl Fn(&Value) -> bool,
) {
    core.exec(sql).await;
    for key in keys {
        wait::until(&format!("{what} reaches {key}"), wait::DEFAULT, || async {
            let d = doc(tables, key).await?;
            check(&d).then_some(())
        })
        .await;
    }
}

fn fs<'a>(d: &'a Value, name: &str) -> Option<&'a Value> {
    d["feature_states"]
        .as_array()?
        .iter()
        .find(|f| f["feature"]["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fan_out_row_reaches_every_document_it_touches() {
    edge_tests::init_logging();
    let db = TestDb::new().await;
    let tables = TestTables::new().await;
    let core = Core::new(db.pool.clone());

    let org = core.create_organisation("Acme").await;
    let project = core.create_project(org, "P", true, "COMPLETE").await;
    let e1 = core.create_environment(project, "E1", "fanE1").await;
    let e2 = core.create_environment(project, "E2", "fanE2").await;
    let k1 = core.create_api_key(e1, "ser.fanE1").await;
    let flag = core
        .create_feature(project, "flag", "MULTIVARIATE", true, Val::str("control"))
        .await;
    let option = core
        .create_mv_option(flag, Val::str("variant"), "v", 40.0)
        .await;
    let seg = core
        .create_segment(
            project,
            "seg",
            "ANY",
            &[("EQUAL", Some("plan"), Some("gold"))],
        )
        .await;
    let fseg = core
        .create_segment_override(e1, flag, seg, 3, true, Val::str("seg value"))
        .await;
    // A control: another organisation's environment must not be rewritten.
    let other_org = core.create_organisation("Other").await;
    let other_project = core.create_project(other_org, "Q", true, "COMPLETE").await;
    core.create_environment(other_project, "E3", "fanE3").await;
    core.create_feature(other_project, "q", "STANDARD", true, Val::Int(1))
        .await;

    let writer = InProcessWriter::start_on(&db.pool, &tables, 4);
    for key in ["fanE1", "fanE2", "fanE3"] {
        wait::until(&format!("{key} written"), wait::DEFAULT, || async {
            let d = doc(&tables, key).await?;
            fs(&d, if key == "fanE3" { "q" } else { "flag" }).map(|_| ())
        })
        .await;
    }
    wait::until("queue settled", wait::DEFAULT, || async {
        (db.scalar_i64("SELECT count(*) FROM edge.pending").await == 0).then_some(())
    })
    .await;
    // Every document queued from here on is logged: an unchanged projection writes
    // nothing, so the control's item alone cannot show that it was wrongly re-projected.
    core.exec(
        "CREATE TABLE public.test_queued (doc_key text NOT NULL);
         CREATE FUNCTION public.test_log_queued() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN INSERT INTO public.test_queued VALUES (NEW.doc_key); RETURN NEW; END $$;
         CREATE TRIGGER test_log_queued AFTER INSERT OR UPDATE ON edge.pending
             FOR EACH ROW EXECUTE FUNCTION public.test_log_queued();",
    )
    .await;
    let control_version = version_of(&tables.environment("fanE3").await.unwrap());
    let both = ["fanE1", "fanE2"];

    change_reaches(
        &core,
        &tables,
        "organisation",
        &format!("UPDATE organisations_organisation SET name = 'Acme 2' WHERE id = {org}"),
        &both,
        |d| d["project"]["organisation"]["name"] == "Acme 2",
    )
    .await;
    change_reaches(&core, &tables, "project", &format!("UPDATE projects_project SET name = 'P2', hide_disabled_flags = true WHERE id = {project}"), &both,
        |d| d["project"]["name"] == "P2" && d["project"]["hide_disabled_flags"] == true).await;
    change_reaches(
        &core,
        &tables,
        "feature",
        &format!("UPDATE features_feature SET name = 'flag2' WHERE id = {flag}"),
        &both,
        |d| fs(d, "flag2").is_some(),
    )
    .await;
    change_reaches(&core, &tables, "multivariate option", &format!("UPDATE multivariate_multivariatefeatureoption SET string_value = 'variant2' WHERE id = {option}"), &both,
        |d| fs(d, "flag2").is_some_and(|f| f["multivariate_feature_state_values"][0]["multivariate_feature_option"]["value"] == "variant2")).await;
    change_reaches(
        &core,
        &tables,
        "segment",
        &format!("UPDATE segments_segment SET name = 'seg2' WHERE id = {seg}"),
        &both,
        |d| d["project"]["segments"][0]["name"] == "seg2",
    )
    .await;
    change_reaches(&core, &tables, "nested segment rule",
        &format!("UPDATE segments_segmentrule SET type = 'NONE' WHERE rule_id = (SELECT id FROM segments_segmentrule WHERE segment_id = {seg})"), &both,
        |d| d["project"]["segments"][0]["rules"][0]["rules"][0]["type"] == "NONE").await;
    let cond = core.first_condition(seg).await;
    change_reaches(
        &core,
        &tables,
        "segment condition",
        &format!("UPDATE segments_condition SET value = 'platinum' WHERE id = {cond}"),
        &both,
        |d| {
            d["project"]["segments"][0]["rules"][0]["rules"][0]["conditions"][0]["value"]
                == "platinum"
        },
    )
    .await;
    change_reaches(
        &core,
        &tables,
        "feature segment",
        &format!("UPDATE features_featuresegment SET priority = 0 WHERE id = {fseg}"),
        &["fanE1"],
        |d| d["project"]["segments"][0]["feature_states"][0]["feature_segment"]["priority"] == 0,
    )
    .await;
    let fs_e1 = core.default_state(e1, flag).await;
    change_reaches(&core, &tables, "feature state value", &format!("UPDATE features_featurestatevalue SET string_value = 'control2' WHERE feature_state_id = {fs_e1}"), &["fanE1"],
        |d| fs(d, "flag2").is_some_and(|f| f["feature_state_value"] == "control2")).await;
    let fs_e2 = core.default_state(e2, flag).await;
    change_reaches(&core, &tables, "multivariate value", &format!("UPDATE multivariate_multivariatefeaturestatevalue SET percentage_allocation = 55 WHERE feature_state_id = {fs_e2}"), &["fanE2"],
        |d| fs(d, "flag2").is_some_and(|f| f["multivariate_feature_state_values"][0]["percentage_allocation"] == 55)).await;
    change_reaches(
        &core,
        &tables,
        "feature state",
        &format!("UPDATE features_featurestate SET enabled = false WHERE id = {fs_e2}"),
        &["fanE2"],
        |d| fs(d, "flag2").is_some_and(|f| f["enabled"] == false),
    )
    .await;
    change_reaches(&core, &tables, "integration", &format!("INSERT INTO heap_heapconfiguration (api_key, environment_id, uuid) VALUES ('heapkey', {e1}, gen_random_uuid())"), &["fanE1"],
        |d| d["heap_config"]["api_key"] == "heapkey").await;
    change_reaches(&core, &tables, "webhook", &format!("INSERT INTO webhook_webhookconfiguration (url, secret, environment_id, uuid) VALUES ('https://hook', 's3cret', {e2}, gen_random_uuid())"), &["fanE2"],
        |d| d["webhook_config"]["url"] == "https://hook" && d["webhook_config"]["secret"] == "s3cret").await;
    change_reaches(
        &core,
        &tables,
        "integration soft delete",
        &format!(
            "UPDATE heap_heapconfiguration SET deleted_at = now() WHERE environment_id = {e1}"
        ),
        &["fanE1"],
        |d| d["heap_config"].is_null(),
    )
    .await;
    change_reaches(&core, &tables, "environment", &format!("UPDATE environments_environment SET name = 'E1 renamed', first_evaluated_at = now() WHERE id = {e1}"), &["fanE1"],
        |d| d["name"] == "E1 renamed" && d["onboarding_pending"] == false).await;
    change_reaches(
        &core,
        &tables,
        "condition hard delete",
        &format!("DELETE FROM segments_condition WHERE id = {cond}"),
        &both,
        |d| {
            d["project"]["segments"][0]["rules"][0]["rules"][0]["conditions"]
                == serde_json::json!([])
        },
    )
    .await;

    // An API key row reaches its key document.
    core.exec(&format!(
        "UPDATE environments_environmentapikey SET active = false WHERE id = {k1}"
    ))
    .await;
    wait::until("api key deactivated", wait::DEFAULT, || async {
        let item = tables
            .get(TableKind::EnvironmentApiKeys, &[("key", "ser.fanE1")])
            .await?;
        (document_of(&item)["active"] == false).then_some(())
    })
    .await;

    // A new api_key moves the environment item and updates the key document; the old item
    // is deleted.
    core.exec(&format!(
        "UPDATE environments_environment SET api_key = 'fanE1new' WHERE id = {e1}"
    ))
    .await;
    wait::until(
        "environment item moved to its new key",
        wait::DEFAULT,
        || async {
            let moved =
                doc(&tables, "fanE1new").await.is_some() && doc(&tables, "fanE1").await.is_none();
            let key_doc = tables
                .get(TableKind::EnvironmentApiKeys, &[("key", "ser.fanE1")])
                .await?;
            (moved && document_of(&key_doc)["client_api_key"] == "fanE1new").then_some(())
        },
    )
    .await;
    let meta = tables
        .get(
            TableKind::EnvironmentsV2,
            &[
                ("environment_id", &e1.to_string()),
                ("document_key", "_META"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(document_of(&meta)["environment_api_key"], "fanE1new");

    assert_eq!(
        version_of(&tables.environment("fanE3").await.unwrap()),
        control_version,
        "another organisation's environment was rewritten"
    );
    wait::writer_idle(&db.pool, wait::DEFAULT).await;
    let queued: std::collections::BTreeSet<String> =
        sqlx::query_scalar("SELECT DISTINCT doc_key FROM public.test_queued")
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let expected: std::collections::BTreeSet<String> = [
        format!("environment:{e1}"),
        format!("environment:{e2}"),
        format!("api_key:{k1}"),
    ]
    .into();
    assert_eq!(
        queued, expected,
        "the changes queued exactly the documents they touch"
    );
    writer.stop().await;
    db.drop_db().await;
}

/// An api_key change of an environment with more identities than a fan-out page: the
/// capture transaction records one fan-out row instead of expanding it, and the pages then
/// enqueue every identity, each page in a transaction of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_wide_change_fans_out_to_its_identities_in_pages() {
    use edge_writer::capture::{drain_once, fanout};
    let db = TestDb::new().await;
    let core = Core::new(db.pool.clone());
    let org = core.create_organisation("paged").await;
    let project = core.create_project(org, "paged", true, "COMPLETE").await;
    let env = core.create_environment(project, "paged", "envPaged").await;
    let feature = core
        .create_feature(project, "f", "STANDARD", true, Val::str("v"))
        .await;
    let total = (fanout::PAGE * 2 + 7) as i32;
    // Inserted without capture: only the fan-out below brings them to the queue.
    core.generate_identities(env, "paged", total, feature, total * 10, false)
        .await;
    edge_writer::capture::drain_all(&db.pool, 1000)
        .await
        .unwrap();
    sqlx::query("DELETE FROM edge.pending")
        .execute(&db.pool)
        .await
        .unwrap();

    core.exec(&format!(
        "UPDATE environments_environment SET api_key = 'envPaged2' WHERE id = {env}"
    ))
    .await;
    let drained = drain_once(&db.pool, 1000).await.unwrap();
    assert_eq!(drained.changes, 1);
    let queued_identities = || async {
        db.scalar_i64("SELECT count(*) FROM edge.pending WHERE doc_key LIKE 'identity:%'")
            .await
    };
    assert_eq!(
        queued_identities().await,
        0,
        "nothing expanded in the capture transaction"
    );
    assert_eq!(db.scalar_i64("SELECT count(*) FROM edge.fanout").await, 1);

    let mut pages = Vec::new();
    while let Some(n) = fanout::step(&db.pool, fanout::PAGE).await.unwrap() {
        pages.push(n);
        assert_eq!(
            queued_identities().await as usize,
            pages.iter().sum::<usize>()
        );
    }
    assert_eq!(pages, vec![fanout::PAGE as usize, fanout::PAGE as usize, 7]);
    assert_eq!(db.scalar_i64("SELECT count(*) FROM edge.fanout").await, 0);
    assert_eq!(queued_identities().await, i64::from(total));
    db.drop_db().await;
}

/// Corrupt segment rules that form a cycle neither hang the capture (walking up from a
/// rule) nor the projection (walking down from a segment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_of_segment_rules_hangs_neither_capture_nor_projection() {
    let db = TestDb::new().await;
    let tables = TestTables::new().await;
    let core = Core::new(db.pool.clone());
    let org = core.create_organisation("cycle").await;
    let project = core.create_project(org, "cycle", true, "COMPLETE").await;
    core.create_environment(project, "cycle", "envCycle").await;
    let segment = core
        .create_segment(
            project,
            "loop",
            "ANY",
            &[("EQUAL", Some("plan"), Some("a"))],
        )
        .await;
    let writer = InProcessWriter::start_on(&db.pool, &tables, 2);
    wait::until("the segment to reach the edge", wait::DEFAULT, || async {
        let d = doc(&tables, "envCycle").await?;
        (d["project"]["segments"].as_array()?.len() == 1).then_some(())
    })
    .await;

    // The segment's top rule made a child of its own sub-rule, and two free rules pointing
    // at each other; then a condition change to walk up from.
    core.exec(&format!(
        "UPDATE segments_segmentrule top SET rule_id = sub.id
           FROM segments_segmentrule sub
          WHERE top.segment_id = {segment} AND sub.rule_id = top.id"
    ))
    .await;
    core.exec(&format!(
        "UPDATE segments_condition SET value = 'b'
          WHERE rule_id IN (SELECT id FROM segments_segmentrule WHERE rule_id IN
                            (SELECT id FROM segments_segmentrule WHERE segment_id = {segment}))"
    ))
    .await;
    // Two free rules that are each other's parent, and a condition on one of them: the
    // capture walks up from it (and finds no segment).
    let x: i32 = sqlx::query_scalar(
        "INSERT INTO segments_segmentrule (type, uuid, created_at, updated_at)
         VALUES ('ALL', gen_random_uuid(), now(), now()) RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    core.exec(&format!(
        "INSERT INTO segments_segmentrule (type, rule_id, uuid, created_at, updated_at)
         VALUES ('ALL', {x}, gen_random_uuid(), now(), now())"
    ))
    .await;
    core.exec(&format!(
        "UPDATE segments_segmentrule SET rule_id = (SELECT max(id) FROM segments_segmentrule) WHERE id = {x}"
    ))
    .await;
    core.exec(
        "INSERT INTO segments_condition (operator, property, value, rule_id, uuid, created_with_segment)
         SELECT 'EQUAL', 'p', 'q', max(id), gen_random_uuid(), false FROM segments_segmentrule",
    )
    .await;
    wait::until(
        "the condition change to reach the edge",
        wait::DEFAULT,
        || async {
            let d = doc(&tables, "envCycle").await?;
            d.to_string().contains(r#""value":"b""#).then_some(())
        },
    )
    .await;
    wait::writer_idle(&db.pool, wait::DEFAULT).await;
    writer.stop().await;
    db.drop_db().await;
}
