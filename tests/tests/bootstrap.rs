//! `writer bootstrap` against real Postgres and DynamoDB Local: a core database that has
//! never had the writer (no schema `edge`, no capture, no tables) with two edge projects and
//! one non-edge project is adopted in one command; a re-run writes nothing; a run killed
//! during the identity migration is completed by the next one.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use edge_documents::tables::{TableKind, TableNames};
use edge_tests::core::{Core, Val};
use edge_tests::dynamo::{patient_client_for, shared, TestTables};
use edge_tests::identities::{assert_same_items, expected_identity_items, stored_identity_items};
use edge_tests::pg::TestDb;
use edge_tests::wait;
use edge_tests::writer::writer_command;
use edge_writer::migrate_identities::status;
use serde_json::Value;

/// The core's seed: what the edge must hold and what it must not.
struct Seed {
    edge_projects: [i32; 2],
    edge_envs: Vec<i32>,
    non_edge_project: i32,
    identities: u64,
}

/// Two edge projects (identities, one in ten with an identity override) and a non-edge
/// project, written before the writer existed: schema `edge` is dropped afterwards, so the
/// database has no capture and no writer state at all.
async fn seed(db: &TestDb, tag: &str) -> Seed {
    let core = Core::new(db.pool.clone());
    let org = core.create_organisation("Adopted").await;
    let mut edge_projects = Vec::new();
    let mut edge_envs = Vec::new();
    let mut identities = 0u64;
    for (p, envs) in [(1, &[240, 160][..]), (2, &[200][..])] {
        let project = core
            .create_project(org, &format!("Edge {p}"), true, "COMPLETE")
            .await;
        let flag = core
            .create_feature(project, "flag", "STANDARD", false, Val::None)
            .await;
        for (e, count) in envs.iter().enumerate() {
            let key = format!("{tag}P{p}E{e}");
            let env = core.create_environment(project, "Env", &key).await;
            core.create_api_key(env, &format!("ser.{key}")).await;
            core.generate_identities(env, "user-", *count, flag, 10, false)
                .await;
            identities += *count as u64;
            edge_envs.push(env);
        }
        edge_projects.push(project);
    }
    let non_edge_project = core
        .create_project(org, "Core only", false, "COMPLETE")
        .await;
    let flag = core
        .create_feature(non_edge_project, "flag", "STANDARD", true, Val::None)
        .await;
    let env = core
        .create_environment(non_edge_project, "Env", &format!("{tag}Core"))
        .await;
    core.create_api_key(env, &format!("ser.{tag}Core")).await;
    core.generate_identities(env, "user-", 50, flag, 10, false)
        .await;
    sqlx::raw_sql("DROP SCHEMA edge CASCADE")
        .execute(&db.pool)
        .await
        .expect("drop the writer's schema and triggers");
    Seed {
        edge_projects: [edge_projects[0], edge_projects[1]],
        edge_envs,
        non_edge_project,
        identities,
    }
}

/// Table names in the shared DynamoDB Local that do not exist yet: bootstrap creates them.
async fn uncreated_tables() -> TestTables {
    let endpoint = shared().endpoint.clone();
    let prefix = format!("t{}_", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    TestTables {
        client: patient_client_for(&endpoint).await,
        names: TableNames::with_prefix(&prefix),
        endpoint,
    }
}

fn bootstrap(db: &TestDb, tables: &TestTables) -> tokio::process::Command {
    bootstrap_with(db, tables, 2)
}

/// `writer bootstrap` with this many identity pages migrated at once.
fn bootstrap_with(
    db: &TestDb,
    tables: &TestTables,
    identity_concurrency: u16,
) -> tokio::process::Command {
    let mut cmd = writer_command(&db.url, tables);
    cmd.arg("bootstrap")
        .arg("--json")
        .arg("--no-progress")
        .arg("--page-size=40")
        .arg(format!("--identity-concurrency={identity_concurrency}"))
        .arg("--lease-secs=4")
        .arg("--recheck-after-secs=1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs bootstrap to its end; its exit code must be 0 (done, no drift). The JSON summary.
async fn run_to_end(mut cmd: tokio::process::Command) -> Value {
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("bootstrap finishes within 5 minutes")
        .expect("run writer bootstrap");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON summary ({e}); exit {:?}; stdout {}; stderr {stderr}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(
        out.status.code(),
        Some(0),
        "bootstrap did not succeed: {summary:#}\nstderr: {stderr}"
    );
    summary
}

/// Every item of the five tables: (table, key) -> replication version (0 for an item
/// without the writer's attributes: the project metadata).
async fn versions(tables: &TestTables) -> BTreeMap<(TableKind, String), i64> {
    let mut out = BTreeMap::new();
    for kind in TableKind::ALL {
        for item in tables.scan(kind).await {
            let key: BTreeMap<&str, String> = kind
                .key_attributes()
                .into_iter()
                .map(|a| (a, format!("{:?}", item.get(a))))
                .collect();
            let version = edge_documents::item::stored_meta(&item)
                .map(|m| m.version)
                .unwrap_or(0);
            out.insert((kind, format!("{key:?}")), version);
        }
    }
    out
}

/// Nothing of the non-edge project is in any table.
async fn assert_nothing_of(tables: &TestTables, tag: &str, project: i32) {
    for kind in TableKind::ALL {
        for item in tables.scan(kind).await {
            let text = format!("{item:?}");
            assert!(
                !text.contains(&format!("{tag}Core")),
                "an item of the non-edge project in {kind:?}: {text}"
            );
        }
    }
    let meta = status::read_metadata(&tables.store(), project)
        .await
        .unwrap();
    assert_eq!(meta.status(), status::MigrationStatus::NotStarted);
}

/// The edge holds exactly the edge projects' environments, API keys and identities.
async fn assert_edge_complete(db: &TestDb, tables: &TestTables, seed: &Seed, tag: &str) {
    for p in 1..=2 {
        for e in 0..2 {
            let key = format!("{tag}P{p}E{e}");
            if p == 2 && e == 1 {
                continue;
            }
            assert!(
                tables.environment(&key).await.is_some(),
                "environment {key}"
            );
            assert!(
                tables
                    .get(
                        TableKind::EnvironmentApiKeys,
                        &[("key", &format!("ser.{key}"))]
                    )
                    .await
                    .is_some(),
                "API key of {key}"
            );
        }
    }
    let expected = expected_identity_items(&db.pool, &seed.edge_envs).await;
    assert_eq!(
        expected.len() as u64,
        seed.identities + seed.identities / 10,
        "identities plus one override item per tenth identity"
    );
    assert_same_items(&stored_identity_items(tables).await, &expected);
    for project in seed.edge_projects {
        let meta = status::read_metadata(&tables.store(), project)
            .await
            .unwrap();
        assert_eq!(meta.status(), status::MigrationStatus::Completed);
    }
}

fn sum(summary: &Value, field: &str) -> u64 {
    summary["identities"]
        .as_array()
        .expect("identities per project")
        .iter()
        .map(|p| p[field].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_adopts_a_core_database_and_a_rerun_writes_nothing() {
    edge_tests::init_logging();
    let db = TestDb::new().await;
    let seed = seed(&db, "bsA").await;
    let tables = uncreated_tables().await;

    // One page at a time: the checkpoint only moves past pages that all finished, so with
    // two in flight the first page to finish may be the second one, and the run would stop
    // at a checkpoint that has not moved.
    let mut first = bootstrap_with(&db, &tables, 1);
    first.arg("--create-tables");
    let summary = run_to_end(first).await;
    eprintln!("first run: {summary}");
    assert_eq!(summary["migrations"]["already_current"], false);
    assert_eq!(
        summary["migrations"]["capture_installed_on"]
            .as_array()
            .unwrap()
            .len(),
        22,
        "capture installed on every captured table"
    );
    assert_eq!(summary["tables"]["mode"], "create");
    assert_eq!(summary["tables"]["created"].as_array().unwrap().len(), 6);
    // Three edge environments: each one's document and its server-side key's.
    assert_eq!(summary["documents"]["documents"], 6, "{summary}");
    assert_eq!(summary["documents"]["written"], 6);
    assert_eq!(summary["documents"]["failed"], 0);
    assert_eq!(summary["identities"].as_array().unwrap().len(), 2);
    assert_eq!(sum(&summary, "migrated"), seed.identities);
    assert_eq!(sum(&summary, "skipped"), 0);
    assert_eq!(summary["verify"]["clean"], true);
    assert_eq!(summary["verify"]["regions"], serde_json::json!(["home"]));
    assert_eq!(summary["verify"]["report"]["drifts"], serde_json::json!([]));
    assert!(
        summary["verify"]["report"]["expected_items"]
            .as_u64()
            .unwrap()
            >= seed.identities + seed.identities / 10 + 6
    );
    assert_edge_complete(&db, &tables, &seed, "bsA").await;
    assert_nothing_of(&tables, "bsA", seed.non_edge_project).await;
    let before = versions(&tables).await;

    // Again, as the writer's own role would after the migrate task: checks, writes nothing.
    let summary = run_to_end(bootstrap(&db, &tables)).await;
    eprintln!("second run: {summary}");
    assert_eq!(summary["migrations"]["already_current"], true);
    assert_eq!(summary["tables"]["mode"], "check");
    assert_eq!(summary["tables"]["checked"].as_array().unwrap().len(), 5);
    assert_eq!(summary["documents"]["written"], 0, "{summary}");
    assert_eq!(summary["documents"]["unchanged"], 6);
    assert_eq!(sum(&summary, "migrated"), 0);
    assert_eq!(sum(&summary, "unchanged"), seed.identities);
    assert_eq!(summary["queued"]["written"], 0);
    assert_eq!(summary["documents_written"], 0);
    assert_eq!(summary["identities_written"], 0);
    assert_eq!(summary["verify"]["clean"], true);
    assert_eq!(
        versions(&tables).await,
        before,
        "a re-run moved no item's version"
    );
    assert_nothing_of(&tables, "bsA", seed.non_edge_project).await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_killed_during_the_identity_migration_is_completed_by_a_rerun() {
    edge_tests::init_logging();
    let db = TestDb::new().await;
    let seed = seed(&db, "bsK").await;
    let tables = uncreated_tables().await;

    // The first run stops for good after the identity migration's first checkpoint, where
    // it is killed.
    let hang = std::env::temp_dir().join(format!("bootstrap-hang-{}", uuid::Uuid::new_v4()));
    std::fs::write(&hang, b"").unwrap();
    // One page at a time: the checkpoint only moves past pages that all finished, so with
    // two in flight the first page to finish may be the second one, and the run would stop
    // at a checkpoint that has not moved.
    let mut first = bootstrap_with(&db, &tables, 1);
    first.arg("--create-tables").env(
        "EDGE_WRITER_HANG_AT",
        format!("identity-page-checkpointed:{}", hang.display()),
    );
    // Its output goes to a file: a pipe nobody reads while we wait would fill up and block
    // the process before it reaches the checkpoint.
    let log = std::env::temp_dir().join(format!("bootstrap-killed-{}.log", uuid::Uuid::new_v4()));
    first
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("create the log file"));
    let child = std::sync::Mutex::new(first.spawn().expect("start writer bootstrap"));
    let checkpoint: i32 = wait::until(
        "the identity migration's first checkpoint",
        Duration::from_secs(240),
        || async {
            let exited = child.lock().unwrap().try_wait().expect("poll bootstrap");
            if let Some(status) = exited {
                panic!(
                    "bootstrap ended ({status}) before its first checkpoint:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            sqlx::query_scalar(
                "SELECT checkpoint_id FROM edge.identity_migration
                  WHERE project_id = $1 AND environment_id = 0 AND checkpoint_id > 0",
            )
            .bind(seed.edge_projects[0])
            .fetch_optional(&db.pool)
            .await
            .ok()
            .flatten()
        },
    )
    .await;
    let mut child = child.into_inner().unwrap();
    child.kill().await.expect("kill -9 bootstrap");
    std::fs::remove_file(&hang).unwrap();
    std::fs::remove_file(&log).ok();
    let (state, migrated): (String, i64) = sqlx::query_as(
        "SELECT status, migrated FROM edge.identity_migration WHERE project_id = $1 AND environment_id = 0",
    )
    .bind(seed.edge_projects[0])
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(state, "IN_PROGRESS");
    assert!((migrated as u64) < seed.identities, "killed midway");
    let meta = status::read_metadata(&tables.store(), seed.edge_projects[0])
        .await
        .unwrap();
    assert_eq!(meta.status(), status::MigrationStatus::InProgress);

    // The re-run resumes: the environments are done, the first project's identities go on
    // after the checkpoint.
    let summary = run_to_end(bootstrap(&db, &tables)).await;
    eprintln!("resumed run: {summary}");
    assert_eq!(summary["migrations"]["already_current"], true);
    assert_eq!(summary["documents"]["written"], 0, "{summary}");
    let first_project = &summary["identities"][0];
    assert_eq!(first_project["project_id"], seed.edge_projects[0]);
    assert!(
        first_project["resumed_after_id"].as_i64().unwrap() >= i64::from(checkpoint),
        "{first_project}"
    );
    assert_eq!(first_project["status"], "MIGRATION_COMPLETED");
    assert_eq!(summary["verify"]["clean"], true);
    assert_edge_complete(&db, &tables, &seed, "bsK").await;
    assert_nothing_of(&tables, "bsK", seed.non_edge_project).await;
    db.drop_db().await;
}
