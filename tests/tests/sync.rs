//! Write-through on save: `writer sync` and `POST /v1/sync` replicate now and return the
//! version written; `/healthz` and `/metrics`; clear errors for bad input. `/v1/sync` takes a
//! bearer token, refuses everyone without one configured, keeps to its budget of concurrent
//! syncs and tells callers nothing internal.

use std::time::Duration;

use edge_tests::core::{basic_project, Core, Val};
use edge_tests::dynamo::{document_of, version_of, TestTables};
use edge_tests::http::{request, request_with};
use edge_tests::pg::TestDb;
use edge_tests::wait;
use edge_tests::writer::{writer_binary, writer_command, Lines};
use serde_json::Value;

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

const TOKEN: &str = "test-sync-token-0123456789";

/// `POST /v1/sync` with the test token.
async fn sync_request(addr: &str, body: &str) -> (u16, String) {
    let reply = request_with(
        addr,
        "POST",
        "/v1/sync",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        Some(body),
    )
    .await
    .unwrap();
    (reply.status, reply.body)
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

    // Nothing changed since: a second sync sends nothing and reports the same version.
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
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["environment"]["unchanged"], true, "{again}");
    assert_eq!(
        again["environment"]["version"],
        version_of(&item),
        "{again}"
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
    .env("WRITER_SYNC_TOKEN", TOKEN)
    .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    wait::until("healthz", Duration::from_secs(30), || async {
        let (status, body) = request(&addr, "GET", "/healthz", None).await.ok()?;
        (status == 200 && body.contains("ok")).then_some(())
    })
    .await;

    core.set_flag(env, feature, true, Val::Int(2)).await;
    let (status, body) = sync_request(&addr, &format!(r#"{{"environment":"{env}"}}"#)).await;
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

    let (status, body) = sync_request(&addr, r#"{"environment":"nope"}"#).await;
    assert_eq!(status, 404);
    assert!(body.contains("no environment"), "{body}");
    let (status, _) = sync_request(&addr, "not json").await;
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

struct Served {
    /// Killed when dropped.
    _child: tokio::process::Child,
    addr: String,
    stderr: Lines,
}

/// `writer run` with the HTTP server, `args` and `env` added.
fn serve(db: &TestDb, tables: &TestTables, args: &[&str], env: &[(&str, &str)]) -> Served {
    let addr = free_addr();
    let mut cmd = writer_cmd(db, tables);
    cmd.args([
        "run",
        "--workers=2",
        "--poll-interval-ms=200",
        &format!("--http-addr={addr}"),
    ])
    .args(args)
    .stdin(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = Lines::collect(child.stderr.take().unwrap());
    Served {
        _child: child,
        addr,
        stderr,
    }
}

async fn wait_healthy(addr: &str) {
    wait::until("healthz", Duration::from_secs(30), || async {
        let (status, _) = request(addr, "GET", "/healthz", None).await.ok()?;
        (status == 200).then_some(())
    })
    .await;
}

/// The body of a refusal: exactly an error message and a request id.
fn refusal(body: &str) -> (String, String) {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["error", "request_id"], "{body}");
    (
        v["error"].as_str().unwrap().to_string(),
        v["request_id"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_needs_the_bearer_token() {
    edge_tests::init_logging();
    let db = TestDb::new().await;
    let tables = TestTables::new().await;
    let core = Core::new(db.pool.clone());
    let (_, _, env) = basic_project(&core, "envAuth").await;
    let served = serve(&db, &tables, &[], &[("WRITER_SYNC_TOKEN", TOKEN)]);
    wait_healthy(&served.addr).await;
    let body = format!(r#"{{"environment":"{env}"}}"#);

    // No token, a wrong one, another scheme: 401 with a challenge, before the body is read.
    for auth in [
        None,
        Some("Bearer wrong-token-0123456789".to_string()),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Basic {TOKEN}")),
    ] {
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        for payload in [body.as_str(), "not json"] {
            let reply = request_with(&served.addr, "POST", "/v1/sync", &headers, Some(payload))
                .await
                .unwrap();
            assert_eq!(reply.status, 401, "{auth:?}: {}", reply.body);
            assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
            refusal(&reply.body);
        }
    }
    let (_, metrics) = request(&served.addr, "GET", "/metrics", None)
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"writer_sync_requests_total{result="unauthorized"} 8"#),
        "{metrics}"
    );

    // The token: the sync works.
    let (status, reply) = sync_request(&served.addr, &body).await;
    assert_eq!(status, 200, "{reply}");
    let result: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(result["environment_id"], env);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_without_a_configured_token_is_refused_unless_explicitly_open() {
    edge_tests::init_logging();
    let db = TestDb::new().await;
    let tables = TestTables::new().await;
    let core = Core::new(db.pool.clone());
    let (_, _, env) = basic_project(&core, "envNoToken").await;
    let body = format!(r#"{{"environment":"{env}"}}"#);

    let closed = serve(&db, &tables, &[], &[]);
    wait_healthy(&closed.addr).await;
    for headers in [
        vec![],
        vec![("Authorization", "Bearer anything-at-all-here")],
    ] {
        let reply = request_with(&closed.addr, "POST", "/v1/sync", &headers, Some(&body))
            .await
            .unwrap();
        assert_eq!(reply.status, 403, "{}", reply.body);
        let (error, _) = refusal(&reply.body);
        assert!(error.contains("no sync token"), "{error}");
    }
    drop(closed);

    let open = serve(&db, &tables, &["--allow-unauthenticated-sync"], &[]);
    wait_healthy(&open.addr).await;
    let (status, reply) = request(&open.addr, "POST", "/v1/sync", Some(&body))
        .await
        .unwrap();
    assert_eq!(status, 200, "{reply}");
    db.drop_db().await;
}

/// More concurrent syncs than the budget: the extra one gets 429 at once, while replication
/// goes on; a caller gets 504 at the time limit while its sync goes on; failures say nothing
/// internal and name a request id that the log has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_keeps_to_its_budget_and_hides_internal_errors() {
    edge_tests::init_logging();
    let db = TestDb::new().await;
    let tables = TestTables::new().await;
    let core = Core::new(db.pool.clone());
    let (_, project, env) = basic_project(&core, "envBudget").await;
    let budget_feature = core
        .create_feature(project, "f", "STANDARD", true, Val::Int(1))
        .await;
    let (_, other_project, other_env) = basic_project(&core, "envOther").await;
    let feature = core
        .create_feature(other_project, "f", "STANDARD", true, Val::Int(1))
        .await;
    // A sync holding its place in the budget waits while this file exists.
    let hold = std::env::temp_dir().join(format!("edge-sync-hold-{}", uuid::Uuid::new_v4()));
    std::fs::write(&hold, b"hold").unwrap();
    let point = format!("{}:{}", edge_writer::failpoint::SYNC_STARTS, hold.display());
    let served = serve(
        &db,
        &tables,
        &["--sync-concurrency=1", "--sync-timeout-secs=1"],
        &[
            ("WRITER_SYNC_TOKEN", TOKEN),
            ("EDGE_WRITER_HANG_AT", &point),
        ],
    );
    wait_healthy(&served.addr).await;
    let addr = served.addr.clone();
    let body = format!(r#"{{"environment":"{env}"}}"#);

    let first = tokio::spawn({
        let (addr, body) = (addr.clone(), body.clone());
        async move { sync_request(&addr, &body).await }
    });
    wait::until(
        "the first sync to hold the budget",
        wait::DEFAULT,
        || async { served.stderr.find(&["hang point sync-starts reached"]) },
    )
    .await;

    let started = std::time::Instant::now();
    let reply = request_with(
        &addr,
        "POST",
        "/v1/sync",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        Some(&body),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 429, "{}", reply.body);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once, not queued: {:?}",
        started.elapsed()
    );
    assert_eq!(reply.header("retry-after"), Some("1"));
    refusal(&reply.body);

    // Replication is not starved by the held sync.
    core.set_flag(other_env, feature, true, Val::Int(2)).await;
    wait::until(
        "the daemon to replicate beside the held sync",
        wait::DEFAULT,
        || async {
            let item = tables.environment("envOther").await?;
            (document_of(&item)["feature_states"][0]["feature_state_value"] == 2).then_some(())
        },
    )
    .await;

    // The held sync's caller got 504 at the time limit; the sync goes on and keeps its place.
    let (status, reply) = first.await.unwrap();
    assert_eq!(status, 504, "{reply}");
    let (error, _) = refusal(&reply);
    assert!(error.contains("did not finish in time"), "{error}");
    let (status, reply) = sync_request(&addr, &body).await;
    assert_eq!(status, 429, "the timed-out sync still runs: {reply}");

    std::fs::remove_file(&hold).unwrap();
    wait::until_ok("the budget to be free again", wait::DEFAULT, || async {
        let (status, reply) = sync_request(&addr, &body).await;
        (status == 200)
            .then_some(())
            .ok_or(format!("{status} {reply}"))
    })
    .await;
    drop(served);

    // DynamoDB unreachable: the caller learns that the sync failed and may be retried, and
    // nothing of the error; the log has it under the request id.
    let mut broken = tables.clone();
    broken.endpoint = format!("http://{}", free_addr());
    core.set_flag(env, budget_feature, true, Val::Int(2)).await;
    let served = serve(&db, &broken, &[], &[("WRITER_SYNC_TOKEN", TOKEN)]);
    wait_healthy(&served.addr).await;
    let (status, reply) = sync_request(&served.addr, &body).await;
    assert_eq!(status, 503, "{reply}");
    let (error, request_id) = refusal(&reply);
    assert_eq!(error, "the sync failed for a temporary reason; retry");
    let line = wait::until("the failure in the log", wait::DEFAULT, || async {
        served.stderr.find(&[&request_id, "sync failed"])
    })
    .await;
    assert!(line.len() > error.len(), "the log has the detail: {line}");
    db.drop_db().await;
}
