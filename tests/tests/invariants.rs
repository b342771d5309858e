//! The invariants of DESIGN.md, each with a test that fails when it breaks. Real Postgres,
//! real DynamoDB Local.

use std::time::Duration;

use chrono::Utc;
use edge_documents::tables::TableKind;
use edge_tests::core::{basic_project, Core, Val};
use edge_tests::counting::CountingStore;
use edge_tests::dynamo::{document_of, start_instance, version_of, TestTables};
use edge_tests::gated::GatedStore;
use edge_tests::pg::TestDb;
use edge_tests::proxy::Proxy;
use edge_tests::wait;
use edge_tests::writer::{test_settings, InProcessWriter};
use edge_writer::replicate::Replicator;
use serde_json::Value;

use edge_tests::setup;

/// The value of a flag in the environment's item, if the item exists.
async fn flag_value(
    tables: &TestTables,
    api_key: &str,
    feature: &str,
) -> Option<(Value, bool, i64)> {
    let item = tables.environment(api_key).await?;
    let doc = document_of(&item);
    let fs = doc["feature_states"]
        .as_array()?
        .iter()
        .find(|fs| fs["feature"]["name"] == feature)?
        .clone();
    Some((
        fs["feature_state_value"].clone(),
        fs["enabled"].as_bool()?,
        version_of(&item),
    ))
}

async fn wait_value(tables: &TestTables, api_key: &str, feature: &str, expected: Value) -> i64 {
    wait::until(
        &format!("{api_key}.{feature} == {expected}"),
        wait::DEFAULT,
        || async {
            let (v, _, version) = flag_value(tables, api_key, feature).await?;
            (v == expected).then_some(version)
        },
    )
    .await
}

/// Invariant 1: a change committed while no writer runs arrives once one starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_committed_while_writer_is_down_arrives_after_start() {
    let (db, tables, core) = setup().await;
    let (_, project, env) = basic_project(&core, "envDown").await;
    let feature = core
        .create_feature(project, "checkout", "STANDARD", false, Val::str("v1"))
        .await;
    core.set_flag(env, feature, true, Val::str("v2")).await;
    assert!(db.scalar_i64("SELECT count(*) FROM edge.change_log").await > 0);

    let writer = InProcessWriter::start_on(&db.pool, &tables, 2);
    wait_value(&tables, "envDown", "checkout", Value::from("v2")).await;
    wait::until("change log drained", wait::DEFAULT, || async {
        (db.scalar_i64("SELECT count(*) FROM edge.change_log").await == 0).then_some(())
    })
    .await;
    writer.stop().await;
    db.drop_db().await;
}

/// Invariant 2: two writers on the same change stream never leave an older version in
/// DynamoDB. Both writers provably work: the first holds its first write (and that
/// document's lock) until the second has had a write applied; the second holds its writes
/// until the first has reached its gate. Every observation of one environment item is at
/// least as new as the previous one, and in the end every item of every table carries the
/// version `edge.document` recorded for its document, and the last committed values.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_writers_never_leave_an_older_version() {
    const ENVS: usize = 6;
    const COMMITS: i64 = 300;
    let (db, tables, core) = setup().await;
    let org = core.create_organisation("Acme").await;
    let project = core.create_project(org, "P", true, "COMPLETE").await;
    let mut envs = Vec::new();
    for i in 0..ENVS {
        let api_key = format!("envTwo{i}");
        let env = core.create_environment(project, "E", &api_key).await;
        core.create_api_key(env, &format!("ser.{api_key}")).await;
        envs.push(env);
    }
    let feature = core
        .create_feature(project, "counter", "STANDARD", true, Val::Int(0))
        .await;
    let pool_b = db.another_pool(20).await;
    let (gated_a, gate_a) = GatedStore::new(tables.store());
    let (gated_b, gate_b) = GatedStore::new(tables.store());
    let (store_a, store_b) = (
        CountingStore::new(gated_a.clone()),
        CountingStore::new(gated_b),
    );
    let a = InProcessWriter::start(
        Replicator::new(db.pool.clone(), store_a.clone(), test_settings()),
        2,
    );
    let b = InProcessWriter::start(
        Replicator::new(pool_b.clone(), store_b.clone(), test_settings()),
        2,
    );
    // Twelve documents are due; the first writer can hold at most two of them.
    wait::until("the first writer inside a write", wait::DEFAULT, || async {
        (gated_a.arrived() >= 1).then_some(())
    })
    .await;
    gate_b.open();
    wait::until(
        "the second writer's write applied while the first holds its document",
        wait::DEFAULT,
        || async { (store_b.applied() >= 1).then_some(()) },
    )
    .await;
    gate_a.open();

    let observer = {
        let tables = tables.clone();
        tokio::spawn(async move {
            let mut seen: Vec<(i64, i64)> = Vec::new();
            loop {
                if let Some((v, _, version)) = flag_value(&tables, "envTwo0", "counter").await {
                    let v = v.as_i64().unwrap();
                    seen.push((version, v));
                    if v == COMMITS - COMMITS % ENVS as i64 {
                        return seen;
                    }
                }
                tokio::task::yield_now().await;
            }
        })
    };
    for i in 1..=COMMITS {
        core.set_flag(envs[i as usize % ENVS], feature, true, Val::Int(i as i32))
            .await;
    }
    let seen = tokio::time::timeout(Duration::from_secs(60), observer)
        .await
        .expect("the last value arrives")
        .unwrap();
    for pair in seen.windows(2) {
        let ((v0, c0), (v1, c1)) = (pair[0], pair[1]);
        assert!(v1 >= v0, "version went backwards: {v0} -> {v1}");
        assert!(
            c1 >= c0,
            "value went backwards: {c0} (v{v0}) -> {c1} (v{v1})"
        );
    }
    for (i, _) in envs.iter().enumerate() {
        let last = (1..=COMMITS)
            .filter(|c| *c as usize % ENVS == i)
            .max()
            .unwrap();
        wait_value(&tables, &format!("envTwo{i}"), "counter", Value::from(last)).await;
    }
    wait::writer_idle(&db.pool, wait::DEFAULT).await;
    a.stop().await;
    b.stop().await;
    let (applied_a, applied_b) = (store_a.applied(), store_b.applied());
    println!("writes applied: first writer {applied_a}, second writer {applied_b}");
    assert!(
        applied_a >= 1 && applied_b >= 1,
        "{applied_a} / {applied_b}"
    );

    // Every item of every table holds the version recorded for its document.
    let recorded: std::collections::HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT doc_key, version FROM edge.document WHERE version IS NOT NULL AND NOT deleted",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(recorded.len(), 2 * ENVS, "{recorded:?}");
    let mut items = 0;
    for table in TableKind::ALL {
        for item in tables.scan(table).await {
            let meta = edge_documents::item::stored_meta(&item).expect("a writer's item");
            assert_eq!(
                Some(&meta.version),
                recorded.get(&meta.doc_key),
                "{table:?} item of {} holds v{}",
                meta.doc_key,
                meta.version
            );
            items += 1;
        }
    }
    // Per environment: the v1 item, `_META`, and the key's item.
    assert!(items >= 3 * ENVS, "{items} items");
    pool_b.close().await;
    db.drop_db().await;
}

/// Invariant 1 and 2: a change whose outbox id is lower but that commits after a higher one
/// is not lost (there is no high-water mark to skip it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lower_outbox_id_committing_later_is_not_lost() {
    let (db, tables, core) = setup().await;
    let (_, project, env) = basic_project(&core, "envOrder").await;
    let x = core
        .create_feature(project, "x", "STANDARD", false, Val::str("x0"))
        .await;
    let y = core
        .create_feature(project, "y", "STANDARD", false, Val::str("y0"))
        .await;
    let writer = InProcessWriter::start_on(&db.pool, &tables, 2);
    wait_value(&tables, "envOrder", "y", Value::from("y0")).await;

    let fs_x = core.default_state(env, x).await;
    let mut slow = db.pool.begin().await.unwrap();
    edge_tests::core::update_state(&mut slow, fs_x, true, &Val::str("x1")).await;
    let slow_id: i64 = sqlx::query_scalar("SELECT max(id) FROM edge.change_log")
        .fetch_one(&mut *slow)
        .await
        .unwrap();

    // The fast change's id is read inside its own transaction: once committed, the writer
    // may consume its change row at once.
    let fs_y = core.default_state(env, y).await;
    let mut fast = db.pool.begin().await.unwrap();
    edge_tests::core::update_state(&mut fast, fs_y, true, &Val::str("y1")).await;
    let fast_id: i64 = sqlx::query_scalar("SELECT max(id) FROM edge.change_log")
        .fetch_one(&mut *fast)
        .await
        .unwrap();
    fast.commit().await.unwrap();
    assert!(fast_id > slow_id, "the later commit has the higher id");
    wait_value(&tables, "envOrder", "y", Value::from("y1")).await;

    slow.commit().await.unwrap();
    wait_value(&tables, "envOrder", "x", Value::from("x1")).await;
    writer.stop().await;
    db.drop_db().await;
}

/// Invariant 1: DynamoDB unreachable for a while (connections cut and refused); the
/// backlog drains once it is back, nothing is parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_drains_after_dynamodb_returns() {
    edge_tests::init_logging();
    let db = TestDb::new().await;
    let ddb = start_instance();
    let tables = TestTables::on(&ddb.endpoint).await;
    let proxy = Proxy::start(ddb.endpoint.trim_start_matches("http://")).await;
    let through_proxy = edge_writer::store::DynamoStore::new(
        edge_tests::dynamo::client_for(&proxy.endpoint).await,
        tables.names.clone(),
    );
    let core = Core::new(db.pool.clone());
    let org = core.create_organisation("Acme").await;
    let project = core.create_project(org, "P", true, "COMPLETE").await;
    let mut envs = Vec::new();
    for i in 0..5 {
        envs.push(
            core.create_environment(project, &format!("E{i}"), &format!("envOut{i}"))
                .await,
        );
    }
    let feature = core
        .create_feature(project, "f", "STANDARD", false, Val::str("before"))
        .await;
    let writer = InProcessWriter::start(
        Replicator::new(db.pool.clone(), through_proxy, test_settings()),
        2,
    );
    for i in 0..5 {
        wait_value(&tables, &format!("envOut{i}"), "f", Value::from("before")).await;
    }

    proxy.down();
    for env in &envs {
        core.set_flag(
            *env,
            feature,
            true,
            Value::from("after").as_str().map(Val::str).unwrap(),
        )
        .await;
    }
    // DynamoDB stays away until every document has failed more often than an unclassified
    // error may before it is parked: an outage misread as bad data would be parked by then.
    let beyond_parking = test_settings().max_attempts + 1;
    wait::until_ok(
        "failed attempts beyond the parking limit while DynamoDB is away",
        Duration::from_secs(90),
        || async {
            let failing = db
                .scalar_i64(&format!(
                    "SELECT count(*) FROM edge.pending WHERE attempts >= {beyond_parking}"
                ))
                .await;
            let parked = db.scalar_i64("SELECT count(*) FROM edge.dead_letter").await;
            assert_eq!(parked, 0, "an outage parked documents");
            (failing >= 5).then_some(()).ok_or(format!(
                "{failing} of 5 documents failed {beyond_parking} times"
            ))
        },
    )
    .await;

    proxy.up();
    for i in 0..5 {
        wait_value(&tables, &format!("envOut{i}"), "f", Value::from("after")).await;
    }
    wait::until("queue empty", wait::DEFAULT, || async {
        (db.scalar_i64("SELECT count(*) FROM edge.pending").await == 0).then_some(())
    })
    .await;
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM edge.dead_letter").await,
        0
    );
    writer.stop().await;
    db.drop_db().await;
}

/// Changes that arrive by the clock: a feature state with a future live_from shows once it
/// goes live, with no further row change, across a writer restart (versioning v1), and the
/// same for a published environment feature version (versioning v2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_changes_go_live_across_a_restart() {
    let (db, tables, core) = setup().await;
    let (_, project, env) = basic_project(&core, "envClock").await;
    let feature = core
        .create_feature(project, "sale", "STANDARD", false, Val::str("off"))
        .await;
    // Far enough ahead for the first writer to write, schedule and stop even on a loaded
    // machine (checked below), near enough to keep the test short.
    let live_from = Utc::now() + chrono::Duration::seconds(10);
    core.schedule_flag(env, feature, true, Val::str("on"), live_from)
        .await;

    // v2 environment in the same project: two published versions, the second in the future.
    let env2 = core.create_environment(project, "V2", "envClockV2").await;
    core.exec(&format!(
        "UPDATE environments_environment SET use_v2_feature_versioning = true WHERE id = {env2}"
    ))
    .await;
    let mut tx = db.pool.begin().await.unwrap();
    for (value, live) in [
        ("old", Utc::now() - chrono::Duration::seconds(60)),
        ("new", live_from),
    ] {
        let version = uuid::Uuid::new_v4();
        sqlx::query(
            "INSERT INTO feature_versioning_environmentfeatureversion (uuid, created_at, updated_at, published_at, live_from, environment_id, feature_id) VALUES ($1, now(), now(), now(), $2, $3, $4)",
        )
        .bind(version)
        .bind(live)
        .bind(env2)
        .bind(feature)
        .execute(&mut *tx)
        .await
        .unwrap();
        let fs = edge_tests::core::insert_feature_state(
            &mut tx,
            env2,
            feature,
            true,
            &Val::str(value),
            None,
            None,
        )
        .await;
        sqlx::query(
            "UPDATE features_featurestate SET environment_feature_version_id = $2 WHERE id = $1",
        )
        .bind(fs)
        .bind(version)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();

    let first = InProcessWriter::start_on(&db.pool, &tables, 2);
    wait_value(&tables, "envClock", "sale", Value::from("off")).await;
    wait_value(&tables, "envClockV2", "sale", Value::from("old")).await;
    wait::until("both documents written and their re-projection scheduled", wait::DEFAULT, || async {
        let scheduled = db
            .scalar_i64("SELECT count(*) FROM edge.pending WHERE doc_key LIKE 'environment:%' AND not_before > now()")
            .await;
        let queued_changes = db.scalar_i64("SELECT count(*) FROM edge.change_log").await;
        (scheduled == 2 && queued_changes == 0).then_some(())
    })
    .await;
    first.stop().await;
    assert!(
        Utc::now() < live_from,
        "the restart happens before the change goes live"
    );

    let second = InProcessWriter::start_on(&db.pool, &tables, 2);
    wait_value(&tables, "envClock", "sale", Value::from("on")).await;
    wait_value(&tables, "envClockV2", "sale", Value::from("new")).await;
    assert!(Utc::now() >= live_from);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM edge.change_log").await,
        0,
        "no row changed"
    );
    second.stop().await;
    db.drop_db().await;
}

/// Soft-deleting an environment removes its items; turning `enable_dynamo_db` off and on
/// removes and re-creates them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_delete_and_edge_toggle_remove_and_recreate_items() {
    let (db, tables, core) = setup().await;
    let (_, project, env) = basic_project(&core, "envGone").await;
    core.create_feature(project, "f", "STANDARD", true, Val::Int(1))
        .await;
    let org2 = core.create_organisation("Other").await;
    let project2 = core.create_project(org2, "Toggled", true, "COMPLETE").await;
    let env2 = core.create_environment(project2, "E", "envToggle").await;
    core.create_api_key(env2, "ser.envToggle").await;
    core.create_feature(project2, "g", "STANDARD", true, Val::Int(1))
        .await;

    let writer = InProcessWriter::start_on(&db.pool, &tables, 2);
    let present = |api_key: &'static str, env_id: i32| {
        let tables = tables.clone();
        async move {
            let env_item = tables.environment(api_key).await.is_some();
            let meta = tables
                .get(
                    TableKind::EnvironmentsV2,
                    &[
                        ("environment_id", &env_id.to_string()),
                        ("document_key", "_META"),
                    ],
                )
                .await
                .is_some();
            let key = tables
                .get(
                    TableKind::EnvironmentApiKeys,
                    &[("key", &format!("ser.{api_key}"))],
                )
                .await
                .is_some();
            (env_item, meta, key)
        }
    };
    wait::until("items present", wait::DEFAULT, || async {
        (present("envGone", env).await == (true, true, true)
            && present("envToggle", env2).await == (true, true, true))
            .then_some(())
    })
    .await;

    core.soft_delete_environment(env).await;
    wait::until(
        "soft-deleted environment's items removed",
        wait::DEFAULT,
        || async { (present("envGone", env).await == (false, false, false)).then_some(()) },
    )
    .await;

    core.set_enable_dynamo_db(project2, false).await;
    wait::until(
        "items removed when the project leaves the edge",
        wait::DEFAULT,
        || async { (present("envToggle", env2).await == (false, false, false)).then_some(()) },
    )
    .await;
    core.set_enable_dynamo_db(project2, true).await;
    wait::until(
        "items re-created when the project is back on the edge",
        wait::DEFAULT,
        || async { (present("envToggle", env2).await == (true, true, true)).then_some(()) },
    )
    .await;
    writer.stop().await;
    db.drop_db().await;
}

/// A delete cannot carry a version forward, so a late put from a writer that lost its lock
/// could resurrect the document: every applied delete is checked again later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_put_after_a_delete_is_removed_by_the_recheck() {
    let (db, tables, core) = setup().await;
    let (_, project, env) = basic_project(&core, "envZombie").await;
    core.create_feature(project, "f", "STANDARD", true, Val::Int(1))
        .await;
    // The late put below must land before the re-check runs, as it would in production
    // (re-check after 120 s; a write is in flight for at most about 80 s).
    let settings = edge_writer::Settings {
        delete_recheck_after: Duration::from_secs(5),
        ..test_settings()
    };
    let writer = InProcessWriter::start(
        Replicator::new(db.pool.clone(), tables.store(), settings),
        2,
    );
    let old_item = wait::until("item", wait::DEFAULT, || tables.environment("envZombie")).await;

    core.soft_delete_environment(env).await;
    wait::until("deleted", wait::DEFAULT, || async {
        tables
            .environment("envZombie")
            .await
            .is_none()
            .then_some(())
    })
    .await;

    // The late put of the older version lands after the delete.
    tables
        .client
        .put_item()
        .table_name(&tables.names.environments)
        .set_item(Some(old_item))
        .send()
        .await
        .unwrap();
    assert!(tables.environment("envZombie").await.is_some());
    wait::until("resurrected item removed again", wait::DEFAULT, || async {
        tables
            .environment("envZombie")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    wait::until(
        "re-check done and the record forgotten",
        wait::DEFAULT,
        || async {
            let left = db
                .scalar_i64(&format!(
                    "SELECT count(*) FROM edge.document_item WHERE doc_key = 'environment:{env}'"
                ))
                .await;
            (left == 0).then_some(())
        },
    )
    .await;
    writer.stop().await;
    db.drop_db().await;
}

/// Invariant 4: a burst of 1,000 committed changes to one environment becomes a handful of
/// DynamoDB writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_changes_coalesce_into_a_handful_of_writes() {
    let (db, tables, core) = setup().await;
    let (_, project, env) = basic_project(&core, "envBurst").await;
    let feature = core
        .create_feature(project, "n", "STANDARD", true, Val::Int(0))
        .await;
    for i in 1..=1000 {
        core.set_flag(env, feature, true, Val::Int(i)).await;
    }
    assert!(db.scalar_i64("SELECT count(*) FROM edge.change_log").await >= 1000);
    let store = CountingStore::new(tables.store());
    let writer = InProcessWriter::start(
        Replicator::new(db.pool.clone(), store.clone(), test_settings()),
        4,
    );
    wait_value(&tables, "envBurst", "n", Value::from(1000)).await;
    wait::until("queue empty", wait::DEFAULT, || async {
        (db.scalar_i64("SELECT count(*) FROM edge.pending").await == 0).then_some(())
    })
    .await;
    writer.stop().await;
    let writes = store.environment_puts();
    assert!(
        (1..=3).contains(&writes),
        "1,000 changes took {writes} environment writes"
    );
    db.drop_db().await;
}

/// Invariant 5: a document that cannot be projected is parked with a readable reason and
/// nothing waits behind it; fixing the data brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprojectable_document_is_parked_and_others_carry_on() {
    let (db, tables, core) = setup().await;
    let (_, bad_project, bad_env) = basic_project(&core, "envBad").await;
    core.create_feature(bad_project, "f", "STANDARD", true, Val::Int(1))
        .await;
    let seg = core
        .create_segment(
            bad_project,
            "broken",
            "ALL",
            &[("BOGUS_OPERATOR", Some("k"), Some("v"))],
        )
        .await;
    let cond = core.first_condition(seg).await;
    let (_, good_project, _) = basic_project(&core, "envGood").await;
    core.create_feature(good_project, "g", "STANDARD", true, Val::Int(2))
        .await;

    let writer = InProcessWriter::start_on(&db.pool, &tables, 2);
    wait_value(&tables, "envGood", "g", Value::from(2)).await;
    let (kind, error): (String, String) = wait::until("dead letter", wait::DEFAULT, || async {
        sqlx::query_as("SELECT error_kind, error FROM edge.dead_letter WHERE doc_key = $1")
            .bind(format!("environment:{bad_env}"))
            .fetch_optional(&db.pool)
            .await
            .unwrap()
    })
    .await;
    assert_eq!(kind, "invalid_data");
    assert!(error.contains(&format!("environment:{bad_env}")), "{error}");
    assert!(error.contains(&format!("condition {cond}")), "{error}");
    assert!(error.contains("BOGUS_OPERATOR"), "{error}");
    assert!(tables.environment("envBad").await.is_none());
    // Parked means off the queue: it is not tried again until its data changes.
    let queued =
        format!("SELECT count(*) FROM edge.pending WHERE doc_key = 'environment:{bad_env}'");
    wait::until(
        "the parked document off the queue",
        wait::DEFAULT,
        || async { (db.scalar_i64(&queued).await == 0).then_some(()) },
    )
    .await;

    core.exec(&format!(
        "UPDATE segments_condition SET operator = 'EQUAL' WHERE id = {cond}"
    ))
    .await;
    wait_value(&tables, "envBad", "f", Value::from(1)).await;
    wait::until("dead letter cleared", wait::DEFAULT, || async {
        (db.scalar_i64("SELECT count(*) FROM edge.dead_letter").await == 0).then_some(())
    })
    .await;
    writer.stop().await;
    db.drop_db().await;
}

/// Invariant 3: a document is one consistent snapshot. Each commit renames a feature and sets
/// its value to the same number in one transaction; the name and the value come from
/// different statements of the snapshot read, so any mix of two commits shows as a mismatch.
/// The statements go to Postgres in one message, so a pause between them (a test hook)
/// gives commits a window to land in: without REPEATABLE READ they would.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_document_is_never_a_mix_of_two_commits() {
    edge_writer::failpoint::set_snapshot_pause(Duration::from_millis(2));
    let (db, tables, core) = setup().await;
    let (_, project, env) = basic_project(&core, "envSnap").await;
    let feature = core
        .create_feature(project, "n0", "STANDARD", true, Val::Int(0))
        .await;
    let fs = core.default_state(env, feature).await;
    let writer = InProcessWriter::start_on(&db.pool, &tables, 4);

    let observer = {
        let tables = tables.clone();
        tokio::spawn(async move {
            let mut observed = 0;
            loop {
                if let Some(item) = tables.environment("envSnap").await {
                    let doc = document_of(&item);
                    let state = &doc["feature_states"][0];
                    let name = state["feature"]["name"].as_str().unwrap().to_string();
                    let value = state["feature_state_value"].as_i64().unwrap();
                    assert_eq!(name, format!("n{value}"), "a document mixed two commits");
                    observed += 1;
                    if value == 300 {
                        return observed;
                    }
                }
                tokio::task::yield_now().await;
            }
        })
    };
    for i in 1..=300 {
        let mut tx = db.pool.begin().await.unwrap();
        sqlx::query("UPDATE features_feature SET name = $2 WHERE id = $1")
            .bind(feature)
            .bind(format!("n{i}"))
            .execute(&mut *tx)
            .await
            .unwrap();
        edge_tests::core::update_state(&mut tx, fs, true, &Val::Int(i)).await;
        tx.commit().await.unwrap();
    }
    let observed = tokio::time::timeout(Duration::from_secs(60), observer)
        .await
        .expect("the last commit arrives")
        .unwrap();
    assert!(observed > 1);
    writer.stop().await;
    edge_writer::failpoint::set_snapshot_pause(Duration::ZERO);
    db.drop_db().await;
}

/// A put DynamoDB refuses because a newer version of the item is stored leaves that item, and
/// the write says so: superseded counts the refused puts, and only those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_over_a_newer_stored_version_is_refused_and_counted() {
    let (db, tables, core) = setup().await;
    let (_, project, env) = basic_project(&core, "envNewer").await;
    let feature = core
        .create_feature(project, "f", "STANDARD", false, Val::str("v1"))
        .await;
    let replicator = Replicator::new(db.pool.clone(), tables.store(), test_settings());
    let doc = edge_writer::DocKey::Environment(env);
    let first = replicator.replicate_now(doc).await.expect("first write");
    assert!(first.written >= 2, "{first:?}");
    assert_eq!(first.superseded, 0, "{first:?}");

    // A writer with a far higher version has put the environment item meanwhile.
    let key = [("api_key", "envNewer")];
    let mut item = tables
        .get(TableKind::Environments, &key)
        .await
        .expect("environment item written");
    let newer = first.version.expect("a version") + 1_000_000;
    item.insert(
        edge_documents::item::ATTR_VERSION.to_string(),
        aws_sdk_dynamodb::types::AttributeValue::N(newer.to_string()),
    );
    tables
        .client
        .put_item()
        .table_name(tables.names.name(TableKind::Environments))
        .set_item(Some(item))
        .send()
        .await
        .expect("PutItem");

    core.set_flag(env, feature, true, Val::str("v2")).await;
    let second = replicator.replicate_now(doc).await.expect("second write");
    // The environment item is refused; the environments_v2 `_META` item is written.
    assert_eq!(second.superseded, 1, "{second:?}");
    assert_eq!(second.written, first.written, "{second:?}");
    let stored = tables
        .get(TableKind::Environments, &key)
        .await
        .expect("environment item");
    assert_eq!(version_of(&stored), newer, "the newer item was replaced");
    db.drop_db().await;
}
