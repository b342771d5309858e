//! The identity migration job against real Postgres and DynamoDB Local: a project of 100k
//! identities migrated while the core API keeps writing, killed midway and resumed; a
//! crash between the batch writes and the bookkeeping; re-runs; bulk-write leases.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edge_documents::tables::TableKind;
use edge_tests::core::{Core, TraitVal, Val};
use edge_tests::dynamo::{version_of, TestTables};
use edge_tests::identities::{assert_same_items, expected_identity_items, stored_identity_items};
use edge_tests::pg::TestDb;
use edge_tests::wait;
use edge_tests::writer::{writer_command, InProcessWriter};
use edge_writer::migrate_identities::{self, status, Options, Scope};
use edge_writer::store::ItemStore;
use rand::Rng;
use serde_json::Value;

const IDENTITIES_PER_ENV: i32 = 50_000;

fn migrate_command(db: &TestDb, tables: &TestTables, project: i32) -> tokio::process::Command {
    let mut cmd = migrate_command_with_product_leases(db, tables, project);
    cmd.arg("--lease-secs=20").arg("--late-write-secs=20");
    cmd
}

/// The job with the product's leases (60 s, batches abandoned after 30 s) and the time it
/// gives an abandoned batch to land (120 s): on a loaded machine a page of 500 identities
/// may need longer than the short leases of the other tests allow.
fn migrate_command_with_product_leases(
    db: &TestDb,
    tables: &TestTables,
    project: i32,
) -> tokio::process::Command {
    let mut cmd = writer_command(&db.url, tables);
    cmd.arg("migrate-identities")
        .arg(format!("--project={project}"))
        .arg("--no-progress")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn job_row(db: &TestDb, project: i32) -> Option<(String, i32, i64)> {
    sqlx::query_as(
        "SELECT status, checkpoint_id, migrated FROM edge.identity_migration WHERE project_id = $1 AND environment_id = 0",
    )
    .bind(project)
    .fetch_optional(&db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_project_of_100k_identities_migrates_while_core_writes_and_resumes_after_kill_9() {
    edge_tests::init_logging();
    let db = TestDb::new().await;
    let tables = TestTables::without_streams().await;
    let core = Core::new(db.pool.clone());
    let org = core.create_organisation("Big").await;
    let project = core.create_project(org, "Many", true, "COMPLETE").await;
    let e1 = core.create_environment(project, "E1", "migE1").await;
    let e2 = core.create_environment(project, "E2", "migE2").await;
    let flag = core
        .create_feature(project, "flag", "STANDARD", false, Val::None)
        .await;
    // Identities that exist before the writer: no change was captured for them.
    let mut ids = core
        .generate_identities(e1, "user-", IDENTITIES_PER_ENV, flag, 10, false)
        .await;
    ids.extend(
        core.generate_identities(e2, "user-", IDENTITIES_PER_ENV, flag, 10, false)
            .await,
    );
    let total = ids.len();
    let ids = Arc::new(ids);

    // The live writer, and the core API updating traits all along.
    let writer = InProcessWriter::start_on(&db.pool, &tables, 4);
    let stop = Arc::new(AtomicBool::new(false));
    let updates = Arc::new(AtomicU64::new(0));
    let updater = {
        let (core, ids, stop, updates) = (core.clone(), ids.clone(), stop.clone(), updates.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                let id = ids[rand::rng().random_range(0..ids.len())];
                let n = updates.fetch_add(1, Ordering::SeqCst) as i32;
                core.set_trait(id, "age", TraitVal::Int(1_000_000 + n))
                    .await;
                if n % 7 == 0 {
                    core.set_trait(id, "seen", TraitVal::Str(format!("update {n}")))
                        .await;
                }
            }
        })
    };

    // First run, killed with SIGKILL midway, one page in flight. With eight, pages finish out
    // of order, and a page whose batch went unanswered (seen on a cold DynamoDB Local) is
    // retried only once its leases have settled, 180 s later: meanwhile the other pages can
    // finish the whole project, the checkpoint (a low-water mark) jumps from 0 to the end,
    // and the job completes before it could be killed midway. One page at a time, the
    // checkpoint moves with every page. The second run resumes with the default eight.
    let started = std::time::Instant::now();
    let mut first = migrate_command_with_product_leases(&db, &tables, project)
        .arg("--concurrency=1")
        .spawn()
        .expect("start migrate-identities");
    // Kill once a third is migrated and the checkpoint has moved.
    wait::until(
        "a third migrated, past a checkpoint",
        Duration::from_secs(600),
        || async {
            let (_, checkpoint, migrated) = job_row(&db, project).await?;
            (migrated >= total as i64 / 3 && checkpoint > 0).then_some(())
        },
    )
    .await;
    first.kill().await.expect("kill -9 the job");
    let (status_after_kill, checkpoint, _) = job_row(&db, project).await.unwrap();
    eprintln!("killed after {:?}", started.elapsed());
    assert_eq!(status_after_kill, "IN_PROGRESS");
    assert!(checkpoint > 0, "a checkpoint was saved");
    let meta = status::read_metadata(&tables.store(), project)
        .await
        .unwrap();
    assert_eq!(meta.status(), status::MigrationStatus::InProgress);

    // Second run resumes after the checkpoint and finishes.
    let out = tokio::time::timeout(
        Duration::from_secs(600),
        migrate_command_with_product_leases(&db, &tables, project).output(),
    )
    .await
    .expect("the resumed job finishes")
    .expect("run migrate-identities");
    assert!(
        out.status.success(),
        "resumed job failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).expect("a JSON summary");
    eprintln!("resumed run: {summary}");
    assert!(summary["resumed_after_id"].as_i64().unwrap() >= checkpoint as i64);
    assert_eq!(summary["skipped"], 0);
    assert_eq!(summary["status"], "MIGRATION_COMPLETED");

    stop.store(true, Ordering::SeqCst);
    updater.await.unwrap();
    assert!(
        updates.load(Ordering::SeqCst) > 100,
        "the core API kept writing during the migration"
    );
    // Leases the killed run (or a timed-out page) left end and settle (60 + 120 s after
    // they were taken), and the live path writes those identities again when they do.
    wait::until(
        "every lease settled and removed",
        Duration::from_secs(400),
        || async {
            (db.scalar_i64("SELECT count(*) FROM edge.write_lease").await == 0).then_some(())
        },
    )
    .await;
    wait::writer_idle(&db.pool, Duration::from_secs(120)).await;
    // A document the live path found under a lease was put back in the queue, due when the
    // lease ends: wait for those too, not only for what is due now.
    wait::until("the queue empty", Duration::from_secs(300), || async {
        (db.scalar_i64("SELECT count(*) FROM edge.pending").await == 0).then_some(())
    })
    .await;
    writer.stop().await;
    eprintln!("drained after {:?}", started.elapsed());

    // Every identity at its latest state, no duplicates, nothing extra.
    let expected = expected_identity_items(&db.pool, &[e1, e2]).await;
    assert_eq!(
        expected.len(),
        total + total / 10,
        "identities plus one override item per tenth identity"
    );
    eprintln!("projected after {:?}", started.elapsed());
    let stored = stored_identity_items(&tables).await;
    assert_same_items(&stored, &expected);
    eprintln!("compared after {:?}", started.elapsed());
    let (status_done, _, _) = job_row(&db, project).await.unwrap();
    assert_eq!(status_done, "COMPLETE");
    let meta = status::read_metadata(&tables.store(), project)
        .await
        .unwrap();
    assert_eq!(meta.status(), status::MigrationStatus::Completed);

    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_batch_writes_and_the_bookkeeping_loses_nothing() {
    edge_tests::init_logging();
    let db = TestDb::new().await;
    let tables = TestTables::without_streams().await;
    let core = Core::new(db.pool.clone());
    let org = core.create_organisation("Crash").await;
    let project = core.create_project(org, "P", true, "COMPLETE").await;
    let env = core.create_environment(project, "E", "crashMig").await;
    let flag = core
        .create_feature(project, "flag", "STANDARD", false, Val::None)
        .await;
    core.generate_identities(env, "c-", 2_000, flag, 3, false)
        .await;

    let mut cmd = writer_command(&db.url, &tables);
    let status = cmd
        .arg("migrate-identities")
        .arg(format!("--project={project}"))
        .arg("--lease-secs=8")
        .arg("--late-write-secs=2")
        .env("EDGE_WRITER_CRASH_AT", "after-dynamodb-write")
        .status()
        .await
        .unwrap();
    assert!(!status.success(), "the job aborted at the crash point");
    // Items of the crashed page are in DynamoDB, but the writer never recorded them.
    assert!(!tables.scan(TableKind::Identities).await.is_empty());
    let recorded: i64 = db
        .scalar_i64("SELECT count(*) FROM edge.document WHERE version IS NOT NULL")
        .await;
    assert_eq!(recorded, 0);
    // Its leases outlive it (taken before the writes); wait for them to end and settle, then
    // resume: the resumed run writes those identities in full.
    assert!(
        db.scalar_i64("SELECT count(*) FROM edge.write_lease").await > 0,
        "the crashed job left its leases"
    );
    wait::until("leases settled", Duration::from_secs(30), || async {
        (db.scalar_i64("SELECT count(*) FROM edge.write_lease WHERE settled_at > now()")
            .await
            == 0)
            .then_some(())
    })
    .await;
    let out = migrate_command(&db, &tables, project)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["migrated"], 2_000, "{summary}");

    let expected = expected_identity_items(&db.pool, &[env]).await;
    assert_same_items(&stored_identity_items(&tables).await, &expected);
    // The writer's records match what DynamoDB holds.
    for item in tables.scan(TableKind::Identities).await {
        let meta = edge_documents::item::stored_meta(&item).unwrap();
        let recorded: i64 =
            sqlx::query_scalar("SELECT version FROM edge.document WHERE doc_key = $1")
                .bind(&meta.doc_key)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        assert_eq!(recorded, meta.version, "{}", meta.doc_key);
    }
    // A re-run is idempotent: nothing to write.
    let before = tables.scan(TableKind::Identities).await;
    let summary = migrate_identities::run(
        &db.pool,
        &tables.store(),
        Scope {
            project_id: project,
            environment_id: None,
        },
        &Options {
            progress_bar: false,
            ..Options::default()
        },
    )
    .await
    .expect("re-run");
    assert_eq!(summary.migrated, 0, "{summary:?}");
    assert_eq!(summary.unchanged, 2_000, "{summary:?}");
    let after = tables.scan(TableKind::Identities).await;
    let versions = |items: &[edge_documents::item::Item]| {
        let mut v: Vec<i64> = items.iter().map(version_of).collect();
        v.sort_unstable();
        v
    };
    assert_eq!(versions(&before), versions(&after));
    db.drop_db().await;
}

/// A dead job's lease holds the live path back: the writer meets the lease, leaves the item
/// alone and schedules the document for the lease's end, however long it took to get there.
/// The lease's end is then brought forward (as time passing would), and the change arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_jobs_lease_holds_the_live_path_until_it_expires() {
    let (db, tables, core) = edge_tests::setup().await;
    let (_, _, env) = edge_tests::core::basic_project(&core, "leaseEnv").await;
    let dave = core.create_identity(env, "dave").await;
    let writer = InProcessWriter::start_on(&db.pool, &tables, 2);
    let dave_item = || async {
        tables
            .get(TableKind::Identities, &[("composite_key", "leaseEnv_dave")])
            .await
    };
    wait::until("dave written", wait::DEFAULT, dave_item).await;
    // As a job that died with a batch in flight would leave it: the lease is committed
    // while the job holds the document's lock, then the job's connection goes away. The
    // lease outlasts the test: only the writer's own handling of it can let the test on.
    let doc_key = format!("identity:{dave}");
    let mut job_lock = db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM edge.document WHERE doc_key = $1 FOR NO KEY UPDATE")
        .bind(&doc_key)
        .execute(&mut *job_lock)
        .await
        .unwrap();
    let until: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "INSERT INTO edge.write_lease (doc_key, until) VALUES ($1, now() + interval '1 hour') RETURNING until",
    )
    .bind(&doc_key)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    job_lock.rollback().await.unwrap();
    core.set_trait(dave, "k", TraitVal::Int(1)).await;

    let retry_at: chrono::DateTime<chrono::Utc> =
        wait::until("the writer to meet the lease", wait::DEFAULT, || async {
            sqlx::query_scalar(
                "SELECT not_before FROM edge.pending WHERE doc_key = $1 AND last_error LIKE '%bulk write lease%'",
            )
            .bind(&doc_key)
            .fetch_optional(&db.pool)
            .await
            .unwrap()
        })
        .await;
    assert!(
        retry_at >= until,
        "retried at {retry_at}, before the lease ends at {until}"
    );
    let item = dave_item().await.expect("dave's item");
    let traits = edge_tests::dynamo::document_of(&item)["identity_traits"].clone();
    assert_eq!(traits, serde_json::json!([]), "written under the lease");

    // The lease passes: its end, and the retry the writer scheduled for it, are now.
    let mut tx = db.pool.begin().await.unwrap();
    for sql in [
        "UPDATE edge.write_lease SET until = now() WHERE doc_key = $1",
        "UPDATE edge.pending SET not_before = now() WHERE doc_key = $1",
    ] {
        sqlx::query(sql)
            .bind(&doc_key)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    wait::until("dave's trait", wait::DEFAULT, || async {
        let doc = edge_tests::dynamo::document_of(&dave_item().await?);
        (doc["identity_traits"].as_array()?.len() == 1).then_some(())
    })
    .await;
    writer.stop().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_identities_are_skipped_into_dead_letters_and_one_environment_can_be_migrated() {
    edge_tests::init_logging();
    let db = TestDb::new().await;
    let tables = TestTables::without_streams().await;
    let core = Core::new(db.pool.clone());
    let org = core.create_organisation("Bad").await;
    let project = core.create_project(org, "P", true, "COMPLETE").await;
    let e1 = core.create_environment(project, "E1", "badMig1").await;
    let e2 = core.create_environment(project, "E2", "badMig2").await;
    let flag = core
        .create_feature(project, "flag", "STANDARD", false, Val::None)
        .await;
    let ids = core
        .generate_identities(e1, "ok-", 300, flag, 5, false)
        .await;
    core.generate_identities(e2, "other-", 50, flag, 5, false)
        .await;
    // Written behind the capture, as data that predates the writer.
    let long = "L".repeat(1100);
    core.exec(&format!(
        "SET session_replication_role = replica;
         INSERT INTO environments_identity (identifier, created_date, environment_id, system_traits)
             VALUES ('{long}', now(), {e1}, '{{}}');
         UPDATE environments_trait SET integer_value = NULL WHERE identity_id = {} AND trait_key = 'age';
         SET session_replication_role = DEFAULT;",
        ids[7]
    ))
    .await;

    let out = migrate_command(&db, &tables, project)
        .arg(format!("--environment={e1}"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["skipped"], 2, "{summary}");
    assert_eq!(summary["migrated"], 299, "{summary}");
    let examples = summary["skipped_examples"].to_string();
    assert!(examples.contains("badMig1_ok-8"), "{examples}");
    assert!(examples.contains("1100 bytes"), "{examples}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("2 identities were skipped"),
        "the job says how many were skipped"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM edge.dead_letter WHERE doc_key LIKE 'identity:%'")
            .await,
        2
    );
    // Only that environment; the project's metadata status is left alone.
    let stored = stored_identity_items(&tables).await;
    assert!(stored
        .values()
        .all(|d| d["environment_api_key"] == "badMig1"));
    let meta = status::read_metadata(&tables.store(), project)
        .await
        .unwrap();
    assert_eq!(meta.status(), status::MigrationStatus::NotStarted);
    db.drop_db().await;
}

/// An identity whose recorded items include one its projection no longer has (an item to
/// delete) is left to the live path: queued, not written by the job. The pages it did write
/// release their leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_with_an_item_to_delete_is_left_to_the_live_path() {
    edge_tests::init_logging();
    let db = TestDb::new().await;
    let tables = TestTables::without_streams().await;
    let core = Core::new(db.pool.clone());
    let org = core.create_organisation("Stale").await;
    let project = core.create_project(org, "P", true, "COMPLETE").await;
    let env = core.create_environment(project, "E", "staleMig").await;
    let flag = core
        .create_feature(project, "flag", "STANDARD", false, Val::None)
        .await;
    let ids = core.generate_identities(env, "s-", 5, flag, 2, false).await;
    // As a write of an earlier projection would have left it: an item the identity no
    // longer projects.
    let stale_doc = format!("identity:{}", ids[2]);
    sqlx::query("INSERT INTO edge.document (doc_key) VALUES ($1) ON CONFLICT DO NOTHING;")
        .bind(&stale_doc)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        r#"INSERT INTO edge.document_item (doc_key, table_kind, item_key)
           VALUES ($1, 'identities', '{"composite_key": "staleMig_gone"}')"#,
    )
    .bind(&stale_doc)
    .execute(&db.pool)
    .await
    .unwrap();

    let summary = migrate_identities::run(
        &db.pool,
        &tables.store(),
        Scope {
            project_id: project,
            environment_id: None,
        },
        &Options {
            progress_bar: false,
            ..Options::default()
        },
    )
    .await
    .expect("migration");
    assert_eq!(summary.deferred, 1, "{summary:?}");
    assert_eq!(summary.migrated, 4, "{summary:?}");
    let version: Option<i64> =
        sqlx::query_scalar("SELECT version FROM edge.document WHERE doc_key = $1")
            .bind(&stale_doc)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        version, None,
        "the job wrote the identity with an item to delete"
    );
    assert_eq!(
        db.scalar_i64(&format!(
            "SELECT count(*) FROM edge.pending WHERE doc_key = '{stale_doc}'"
        ))
        .await,
        1,
        "queued for the live path"
    );
    assert_eq!(tables.scan(TableKind::Identities).await.len(), 4);
    // Every written document's lease is released: the live path may write them at once.
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM edge.write_lease").await,
        0
    );
    db.drop_db().await;
}

/// The item of identity `id` (composite key from the core rows).
async fn identity_item(
    db: &TestDb,
    tables: &TestTables,
    id: i32,
) -> Option<edge_documents::item::Item> {
    let key: String = sqlx::query_scalar(
        "SELECT e.api_key || '_' || i.identifier FROM environments_identity i
           JOIN environments_environment e ON e.id = i.environment_id WHERE i.id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    tables
        .get(TableKind::Identities, &[("composite_key", &key)])
        .await
}

fn trait_count(item: &edge_documents::item::Item) -> usize {
    edge_tests::dynamo::document_of(item)["identity_traits"]
        .as_array()
        .map_or(0, Vec::len)
}

/// A migration page gave up on a batch (it timed out) whose request DynamoDB still applies,
/// after the lease ended and after the live path wrote a newer version: the live path wrote
/// every item when the lease had ended, came back when the lease settled, and wrote them
/// again, so the late batch is overwritten and the lease is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_landing_after_its_lease_ended_is_overwritten_when_the_lease_settles() {
    let (db, tables, core) = edge_tests::setup().await;
    let (_, _, env) = edge_tests::core::basic_project(&core, "settleEnv").await;
    let erin = core.create_identity(env, "erin").await;
    let writer = InProcessWriter::start_on(&db.pool, &tables, 2);
    // What the page sent for erin and gave up on: her item as it is now.
    let abandoned = wait::until("erin written", wait::DEFAULT, || {
        identity_item(&db, &tables, erin)
    })
    .await;
    assert_eq!(trait_count(&abandoned), 0);
    let doc_key = format!("identity:{erin}");
    // The page's lease ended without being released; it settles in an hour.
    sqlx::query(
        "INSERT INTO edge.write_lease (doc_key, until, settled_at)
         VALUES ($1, now() - interval '1 second', now() + interval '1 hour')",
    )
    .bind(&doc_key)
    .execute(&db.pool)
    .await
    .unwrap();

    // A change: written at once, and due again when the lease settles.
    core.set_trait(erin, "k", TraitVal::Int(1)).await;
    let written = wait::until("erin's trait", wait::DEFAULT, || async {
        let item = identity_item(&db, &tables, erin).await?;
        (trait_count(&item) == 1).then_some(item)
    })
    .await;
    wait::until(
        "erin due again when the lease settles",
        wait::DEFAULT,
        || async {
            let n = db
                .scalar_i64(&format!(
                    "SELECT count(*) FROM edge.pending p JOIN edge.write_lease l USING (doc_key)
                 WHERE doc_key = '{doc_key}' AND p.not_before = l.settled_at"
                ))
                .await;
            (n == 1).then_some(())
        },
    )
    .await;

    // The abandoned batch lands now, over the newer version.
    tables
        .store()
        .batch_put(vec![(TableKind::Identities, abandoned)])
        .await
        .unwrap();
    let stale = identity_item(&db, &tables, erin).await.unwrap();
    assert_eq!(trait_count(&stale), 0, "the late batch overwrote erin");

    // The lease settles (as time passing would): erin is written again, whatever the
    // recorded content says, and the lease goes.
    let mut tx = db.pool.begin().await.unwrap();
    for sql in [
        "UPDATE edge.write_lease SET settled_at = now() WHERE doc_key = $1",
        "UPDATE edge.pending SET not_before = now() WHERE doc_key = $1",
    ] {
        sqlx::query(sql)
            .bind(&doc_key)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let rewritten = wait::until("erin written again", wait::DEFAULT, || async {
        let item = identity_item(&db, &tables, erin).await?;
        (trait_count(&item) == 1 && version_of(&item) > version_of(&written)).then_some(item)
    })
    .await;
    wait::until("the settled lease removed", wait::DEFAULT, || async {
        (db.scalar_i64(&format!(
            "SELECT count(*) FROM edge.write_lease WHERE doc_key = '{doc_key}'"
        ))
        .await
            == 0)
            .then_some(())
    })
    .await;
    let recorded: i64 = sqlx::query_scalar("SELECT version FROM edge.document WHERE doc_key = $1")
        .bind(&doc_key)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(recorded, version_of(&rewritten));
    writer.stop().await;
    db.drop_db().await;
}

/// A later page meets leases an earlier page left: one that has ended but not settled is
/// left to the live path (queued), one that has settled is written whatever its recorded
/// content (an abandoned batch may have changed the item) and its lease removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_leaves_a_settling_lease_to_the_live_path_and_rewrites_a_settled_one() {
    edge_tests::init_logging();
    let db = TestDb::new().await;
    let tables = TestTables::without_streams().await;
    let core = Core::new(db.pool.clone());
    let org = core.create_organisation("Leases").await;
    let project = core.create_project(org, "P", true, "COMPLETE").await;
    let env = core.create_environment(project, "E", "leaseMig").await;
    let flag = core
        .create_feature(project, "flag", "STANDARD", false, Val::None)
        .await;
    let ids = core.generate_identities(env, "l-", 3, flag, 2, false).await;
    let (store, options) = (
        tables.store(),
        Options {
            progress_bar: false,
            ..Options::default()
        },
    );
    let run = || {
        migrate_identities::run(
            &db.pool,
            &store,
            Scope {
                project_id: project,
                environment_id: None,
            },
            &options,
        )
    };
    assert_eq!(run().await.expect("first run").migrated, 3);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM edge.write_lease").await,
        0
    );
    let (settling, settled) = (
        format!("identity:{}", ids[0]),
        format!("identity:{}", ids[1]),
    );
    sqlx::query(
        "INSERT INTO edge.write_lease (doc_key, until, settled_at) VALUES
           ($1, now() - interval '2 seconds', now() + interval '1 hour'),
           ($2, now() - interval '2 seconds', now() - interval '1 second')",
    )
    .bind(&settling)
    .bind(&settled)
    .execute(&db.pool)
    .await
    .unwrap();
    // What an abandoned batch may have left for the settled one: other content.
    let mut item = identity_item(&db, &tables, ids[1]).await.unwrap();
    assert!(trait_count(&item) > 0);
    item.insert(
        "identity_traits".into(),
        aws_sdk_dynamodb::types::AttributeValue::L(vec![]),
    );
    tables
        .store()
        .batch_put(vec![(TableKind::Identities, item)])
        .await
        .unwrap();

    let second = run().await.expect("second run");
    assert_eq!(
        (second.migrated, second.unchanged, second.deferred),
        (1, 1, 1),
        "{second:?}"
    );
    let expected = expected_identity_items(&db.pool, &[env]).await;
    assert_same_items(&stored_identity_items(&tables).await, &expected);
    let leases: Vec<String> = sqlx::query_scalar("SELECT doc_key FROM edge.write_lease")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(leases, vec![settling.clone()]);
    assert_eq!(
        db.scalar_i64(&format!(
            "SELECT count(*) FROM edge.pending WHERE doc_key = '{settling}'"
        ))
        .await,
        1,
        "queued for the live path"
    );
    db.drop_db().await;
}

/// Every batch of the page fails, as DynamoDB answered it (`answered`) or not.
#[derive(Clone)]
struct FailingBatches {
    inner: edge_writer::store::DynamoStore,
    unanswered: bool,
}

impl ItemStore for FailingBatches {
    async fn put(
        &self,
        table: TableKind,
        item: edge_documents::item::Item,
        version: i64,
        guard: &edge_writer::store::Guard,
    ) -> Result<edge_writer::store::WriteOutcome, edge_writer::store::StoreError> {
        self.inner.put(table, item, version, guard).await
    }

    async fn delete(
        &self,
        table: TableKind,
        key: edge_documents::item::Item,
        doc_key: &str,
        version: i64,
        guard: &edge_writer::store::Guard,
    ) -> Result<edge_writer::store::WriteOutcome, edge_writer::store::StoreError> {
        self.inner.delete(table, key, doc_key, version, guard).await
    }

    async fn batch_put(
        &self,
        _items: Vec<(TableKind, edge_documents::item::Item)>,
    ) -> Result<(), edge_writer::store::BatchPutError> {
        Err(edge_writer::store::BatchPutError {
            error: edge_writer::store::StoreError {
                op: "BatchWriteItem",
                table: "identities".into(),
                message: "injected".into(),
                retryable: true,
            },
            unanswered: self.unanswered,
        })
    }

    async fn put_all(
        &self,
        puts: Vec<edge_writer::store::GuardedPut>,
    ) -> Result<edge_writer::store::TransactOutcome, edge_writer::store::StoreError> {
        self.inner.put_all(puts).await
    }

    async fn get(
        &self,
        table: TableKind,
        key: edge_documents::item::Item,
    ) -> Result<Option<edge_documents::item::Item>, edge_writer::store::StoreError> {
        self.inner.get(table, key).await
    }
}

/// A page whose batches all failed releases its leases when DynamoDB answered every request
/// (nothing can land later) and leaves them to end and settle when one went unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_page_keeps_its_leases_only_when_a_request_went_unanswered() {
    edge_tests::init_logging();
    let db = TestDb::new().await;
    let tables = TestTables::without_streams().await;
    let core = Core::new(db.pool.clone());
    let org = core.create_organisation("Fail").await;
    let project = core.create_project(org, "P", true, "COMPLETE").await;
    let env = core.create_environment(project, "E", "failMig").await;
    let flag = core
        .create_feature(project, "flag", "STANDARD", false, Val::None)
        .await;
    core.generate_identities(env, "f-", 4, flag, 2, false).await;
    for unanswered in [false, true] {
        let store = FailingBatches {
            inner: tables.store(),
            unanswered,
        };
        let err = migrate_identities::run(
            &db.pool,
            &store,
            Scope {
                project_id: project,
                environment_id: None,
            },
            &Options {
                progress_bar: false,
                page_attempts: 0,
                ..Options::default()
            },
        )
        .await
        .expect_err("every batch fails");
        assert!(err.to_string().contains("injected"), "{err}");
        let (leases, settling): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE settled_at > until) FROM edge.write_lease",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if unanswered {
            assert_eq!((leases, settling), (4, 4), "left to end and settle");
        } else {
            assert_eq!(leases, 0, "released: every request was answered");
        }
    }
    db.drop_db().await;
}
