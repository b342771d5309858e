//! Write-through on save: `writer sync` and `POST /v1/sync` replicate now and return the
//! version written; `/healthz` and `/metrics`; clear errors for bad input.

use std::time::Duration;

use edge_tests::core::{basic_project, Core, Val};
use edge_tests::dynamo::{document_of, version_of, TestTables};
use edge_tests::http::request;
use edge_tests::pg::TestDb;
use edge_tests::wait;
use edge_tests::writer::{writer_binary, writer_command};
use serde_json::Value;

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn writer_cmd(db: &TestDb, tables: &TestTables) -> tokio::process::Command {
    writer_command(&db.url, tables)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_command_writes_now_and_reports_the_version() {
    edge_tests::init_logging();
    let db = TestDb::new().await;
    let tables = TestTables::new().await;
    let core = Core::new(db.pool.clone());
    let (_, project, env) = basic_project(&core, "envSync").await;
    let feature = core
        .create_feature(project, "f", "STANDARD", true, Val::str("a"))
        .await;

    // No daemon runs: the sync alone makes the change visible (read-your-writes).
    core.set_flag(env, feature, true, Val::str("b")).await;
    let out = writer_cmd(&db, &tables)
        .args(["sync", "--environment", "envSync"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    let item = tables
        .environment("envSync")
        .await
        .expect("written by sync");
    assert_eq!(result["environment"]["version"], version_of(&item));
    assert_eq!(result["environment_id"], env);
    assert_eq!(result["api_keys"].as_array().unwrap().len(), 1);
    assert_eq!(
        document_of(&item)["feature_states"][0]["feature_state_value"],
        "b"
    );

    // Unknown environment: a clear error and a non-zero exit.
    let out = writer_cmd(&db, &tables)
        .args(["sync", "--environment", "noSuchKey"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no environment with id or api_key \"noSuchKey\""),
        "{stderr}"
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sync_health_and_metrics() {
    edge_tests::init_logging();
    let db = TestDb::new().await;
    let tables = TestTables::new().await;
    let core = Core::new(db.pool.clone());
    let (_, project, env) = basic_project(&core, "envHttp").await;
    let feature = core
        .create_feature(project, "f", "STANDARD", true, Val::Int(1))
        .await;

    let addr = free_addr();
    let mut cmd = writer_cmd(&db, &tables);
    cmd.args([
        "run",
        "--workers=2",
        "--poll-interval-ms=200",
        &format!("--http-addr={addr}"),
    ])
    .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    wait::until("healthz", Duration::from_secs(30), || async {
        let (status, body) = request(&addr, "GET", "/healthz", None).await.ok()?;
        (status == 200 && body.contains("ok")).then_some(())
    })
    .await;

    core.set_flag(env, feature, true, Val::Int(2)).await;
    let (status, body) = request(
        &addr,
        "POST",
        "/v1/sync",
        Some(&format!(r#"{{"environment":"{env}"}}"#)),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let result: Value = serde_json::from_str(&body).unwrap();
    // Read-your-writes: the item holds the new value right after the response, at a version
    // at least the one returned (the daemon may have written again since).
    let item = tables.environment("envHttp").await.unwrap();
    assert_eq!(
        document_of(&item)["feature_states"][0]["feature_state_value"],
        2
    );
    assert!(version_of(&item) >= result["environment"]["version"].as_i64().unwrap());

    let (status, body) = request(&addr, "POST", "/v1/sync", Some(r#"{"environment":"nope"}"#))
        .await
        .unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("no environment"), "{body}");
    let (status, _) = request(&addr, "POST", "/v1/sync", Some("not json"))
        .await
        .unwrap();
    assert!((400..500).contains(&status));

    let (status, body) = request(&addr, "GET", "/metrics", None).await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("writer_documents_total"), "{body}");

    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().unwrap().to_string())
        .status();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    db.drop_db().await;
}

#[tokio::test]
async fn invalid_cli_input_gets_a_clear_error() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(writer_binary())
            .args(args)
            .env_remove("DATABASE_URL")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run(&["run", "--workers", "0"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--workers"), "{err}");
    let (code, err) = run(&["migrate"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("DATABASE_URL"), "{err}");
    let (code, err) = run(&[
        "run",
        "--http-addr",
        "nonsense",
        "--database-url",
        "postgres://127.0.0.1:1/x",
    ]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("connecting to Postgres at postgres://127.0.0.1:1/x"),
        "{err}"
    );
}
