//! Real writer processes: kill -9 at the worst moment, restarts, graceful SIGTERM.

use std::time::Duration;

use edge_documents::tables::TableKind;
use edge_tests::core::Val;
use edge_tests::dynamo::{document_of, version_of};
use edge_tests::pg::TestDb;
use edge_tests::wait;
use edge_tests::writer::WriterProcess;
use edge_writer::failpoint::AFTER_DYNAMODB_WRITE;

use edge_tests::setup;

async fn state_version(db: &TestDb, doc_key: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT version FROM edge.document WHERE doc_key = $1")
        .bind(doc_key)
        .fetch_optional(&db.pool)
        .await
        .unwrap()
        .flatten()
}

/// kill -9 between DynamoDB accepting the write and the bookkeeping commit: the change
/// stays queued, the next writer writes it again with a higher version, and the table holds
/// exactly one item per key with the right content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_the_dynamodb_write_and_its_bookkeeping_loses_nothing() {
    let (db, tables, core) = setup().await;
    // No API key: the environment is the only document, so it is the one that crashes.
    let org = core.create_organisation("Acme").await;
    let project = core.create_project(org, "P", true, "COMPLETE").await;
    let env = core.create_environment(project, "E", "envCrash").await;
    core.create_feature(project, "f", "STANDARD", true, Val::str("committed"))
        .await;
    let doc_key = format!("environment:{env}");

    let crashing = WriterProcess::spawn(
        &db.url,
        &tables,
        &[("EDGE_WRITER_CRASH_AT", AFTER_DYNAMODB_WRITE)],
    );
    let status = crashing.wait_exit(Duration::from_secs(60)).await;
    assert!(!status.success(), "the writer aborted at the crash point");

    // Some document reached DynamoDB, and its bookkeeping never committed.
    let crashed: Vec<(String, Option<i64>)> =
        sqlx::query_as("SELECT doc_key, version FROM edge.document WHERE doc_key IN (SELECT doc_key FROM edge.pending)")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(!crashed.is_empty(), "the crashed document is still queued");
    let before = tables
        .environment("envCrash")
        .await
        .expect("DynamoDB accepted the write before the crash");
    assert_eq!(
        state_version(&db, &doc_key).await,
        None,
        "no bookkeeping for the crashed write"
    );

    let writer = WriterProcess::spawn(&db.url, &tables, &[]);
    let final_version = wait::until(
        "the document recorded after the restart",
        wait::DEFAULT,
        || async {
            let v = state_version(&db, &doc_key).await?;
            let queued = db
                .scalar_i64("SELECT count(*) FROM edge.pending WHERE not_before <= now()")
                .await;
            (queued == 0).then_some(v)
        },
    )
    .await;
    let item = tables.environment("envCrash").await.expect("the item");
    assert_eq!(version_of(&item), final_version);
    assert!(
        version_of(&item) > version_of(&before),
        "the rewrite has a higher version"
    );
    assert_eq!(
        document_of(&item)["feature_states"][0]["feature_state_value"],
        "committed"
    );
    // Exactly one item per key: nothing duplicated.
    assert_eq!(tables.scan(TableKind::Environments).await.len(), 1);
    assert_eq!(tables.scan(TableKind::EnvironmentsV2).await.len(), 1);

    let status = writer.terminate().await;
    assert!(
        status.success(),
        "SIGTERM stops the writer gracefully: {status:?}"
    );
    db.drop_db().await;
}

/// kill -9 in the middle of a burst; a new writer finishes the work. Each commit of the burst
/// changes its own environment and nothing commits to it again, so a change the killed
/// writer had taken but not finished is only ever written if its queue row survived the
/// kill: every environment must end with its own committed value, at the version
/// `edge.document` recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_then_restart_converges() {
    const ENVS: usize = 40;
    const KILL_AFTER: usize = 20;
    let (db, tables, core) = setup().await;
    let org = core.create_organisation("Acme").await;
    let project = core.create_project(org, "P", true, "COMPLETE").await;
    let mut envs = Vec::new();
    for i in 0..ENVS {
        envs.push(
            core.create_environment(project, "E", &format!("envKill{i}"))
                .await,
        );
    }
    let feature = core
        .create_feature(project, "n", "STANDARD", true, Val::Int(0))
        .await;
    let value = |api_key: String| {
        let tables = tables.clone();
        async move {
            let item = tables.environment(&api_key).await?;
            let doc = document_of(&item);
            Some((
                doc["feature_states"][0]["feature_state_value"].as_i64()?,
                version_of(&item),
            ))
        }
    };
    let writer = WriterProcess::spawn(&db.url, &tables, &[]);
    wait::writer_idle(&db.pool, wait::DEFAULT).await;
    for i in 0..ENVS {
        assert_eq!(value(format!("envKill{i}")).await.map(|v| v.0), Some(0));
    }

    let mut writer = Some(writer);
    for (i, env) in envs.iter().enumerate() {
        core.set_flag(*env, feature, true, Val::Int(i as i32 + 1))
            .await;
        if i + 1 == KILL_AFTER {
            let status = writer.take().unwrap().kill9_status().await;
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(9),
                "the writer was running and died of the kill: {status:?}"
            );
            let mut arrived = 0;
            for j in 0..KILL_AFTER {
                if value(format!("envKill{j}")).await.map(|v| v.0) == Some(j as i64 + 1) {
                    arrived += 1;
                }
            }
            println!(
                "at the kill, {arrived} of the first {KILL_AFTER} changes had reached DynamoDB"
            );
        }
    }
    let writer = WriterProcess::spawn(&db.url, &tables, &[]);
    wait::writer_idle(&db.pool, wait::DEFAULT).await;
    for (i, env) in envs.iter().enumerate() {
        let api_key = format!("envKill{i}");
        let (v, version) = wait::until(&format!("{api_key} = {}", i + 1), wait::DEFAULT, || {
            let api_key = api_key.clone();
            let value = &value;
            async move { value(api_key).await.filter(|(v, _)| *v == i as i64 + 1) }
        })
        .await;
        assert_eq!(v, i as i64 + 1);
        assert_eq!(
            state_version(&db, &format!("environment:{env}")).await,
            Some(version),
            "{api_key}: the item holds the recorded version"
        );
    }
    let status = writer.terminate().await;
    assert!(status.success(), "{status:?}");
    db.drop_db().await;
}
