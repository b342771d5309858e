//! The writer notices when it stops: a panicked worker is restarted (logged, counted in
//! `writer_task_restarts_total`), a worker that panics again and again makes `/healthz`
//! unhealthy, a hung worker makes it unhealthy while due work waits and healthy again once it
//! moves; the heartbeat (`oldest_due_age_seconds`, `oldest_change_age_seconds`) is in the
//! `writer queue` log line and in /metrics. Real `writer` processes with fault points
//! (writer/src/failpoint.rs).

use std::process::Stdio;
use std::time::Duration;

use edge_tests::core::{basic_project, Val};
use edge_tests::dynamo::{document_of, TestTables};
use edge_tests::http::request;
use edge_tests::pg::TestDb;
use edge_tests::setup;
use edge_tests::wait;
use edge_tests::writer::{writer_command, Lines};
use edge_writer::failpoint::WORKER_TAKES_DOCUMENT;
use serde_json::Value;

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

struct Running {
    child: tokio::process::Child,
    addr: String,
    stderr: Lines,
}

/// `writer run` with one worker, a 1 s stuck threshold and the HTTP server; `env` adds the
/// fault points.
fn spawn(db: &TestDb, tables: &TestTables, env: &[(&str, &str)]) -> Running {
    let addr = free_addr();
    let mut cmd = writer_command(&db.url, tables);
    cmd.args([
        "run",
        "--workers=1",
        "--poll-interval-ms=200",
        "--stuck-after-secs=1",
        &format!("--http-addr={addr}"),
    ])
    .env("RUST_LOG", "info")
    .stdin(Stdio::null())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start the writer");
    let stderr = Lines::collect(child.stderr.take().unwrap());
    Running {
        child,
        addr,
        stderr,
    }
}

async fn healthz(addr: &str) -> Option<(u16, Value)> {
    let (status, body) = request(addr, "GET", "/healthz", None).await.ok()?;
    Some((status, serde_json::from_str(&body).ok()?))
}

/// A metric's value in /metrics (the first series whose line starts with `series`).
async fn metric(addr: &str, series: &str) -> Option<f64> {
    let (_, body) = request(addr, "GET", "/metrics", None).await.ok()?;
    body.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn stop(mut running: Running) {
    if let Some(pid) = running.child.id() {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
    }
    let status = tokio::time::timeout(Duration::from_secs(30), running.child.wait())
        .await
        .expect("the writer stops within 30 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{}", running.stderr.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_worker_is_restarted_counted_and_flagged_when_it_keeps_panicking() {
    let (db, tables, core) = setup().await;
    let (_, project, env) = basic_project(&core, "envPanic").await;
    let feature = core
        .create_feature(project, "f", "STANDARD", true, Val::Int(1))
        .await;
    // The only worker panics the first three times it takes a document.
    let point = format!("{WORKER_TAKES_DOCUMENT}:3");
    let running = spawn(&db, &tables, &[("EDGE_WRITER_PANIC_AT", &point)]);
    let addr = running.addr.clone();

    wait::until_ok(
        "the first restart, logged and counted",
        wait::DEFAULT,
        || async {
            let line = running
                .stderr
                .find(&["writer task panicked; restarting it", "worker-0"])
                .ok_or_else(|| format!("no restart logged yet:\n{}", running.stderr.all()))?;
            assert!(
                line.contains("panic point worker-takes-document reached"),
                "{line}"
            );
            let restarts = metric(&addr, "writer_task_restarts_total{task=\"worker-0\"}")
                .await
                .ok_or("no restart counted yet")?;
            (restarts >= 1.0).then_some(()).ok_or(format!("{restarts}"))
        },
    )
    .await;

    // The third restart within the window: unhealthy, naming the task.
    let body = wait::until_ok(
        "/healthz to report the flapping worker",
        wait::DEFAULT,
        || async {
            let (status, body) = healthz(&addr).await.ok_or("no answer")?;
            let flapping = body["problems"].as_array().into_iter().flatten().any(|p| {
                p.as_str()
                    .unwrap_or("")
                    .contains("task worker-0 restarted 3 times")
            });
            (status == 503 && flapping)
                .then_some(body.clone())
                .ok_or(format!("{status} {body}"))
        },
    )
    .await;
    assert_eq!(body["status"], "unhealthy", "{body}");
    assert_eq!(body["restarts"]["worker-0"], 3, "{body}");

    // The restarted worker replicates.
    core.set_flag(env, feature, true, Val::Int(2)).await;
    wait::until(
        "the restarted worker to replicate",
        wait::DEFAULT,
        || async {
            let item = tables.environment("envPanic").await?;
            (document_of(&item)["feature_states"][0]["feature_state_value"] == 2).then_some(())
        },
    )
    .await;
    assert_eq!(
        metric(&addr, "writer_task_restarts_total{task=\"worker-0\"}").await,
        Some(3.0),
        "no restart beyond the three panics"
    );
    stop(running).await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_worker_makes_healthz_unhealthy_while_due_work_waits_and_healthy_once_it_moves() {
    let (db, tables, core) = setup().await;
    let (_, project, env) = basic_project(&core, "envHang").await;
    let feature = core
        .create_feature(project, "f", "STANDARD", true, Val::Int(1))
        .await;
    // The worker hangs when it takes a document while this file exists.
    let hold = std::env::temp_dir().join(format!("edge-hang-{}", uuid::Uuid::new_v4()));
    let point = format!("{WORKER_TAKES_DOCUMENT}:{}", hold.display());
    let running = spawn(&db, &tables, &[("EDGE_WRITER_HANG_AT", &point)]);
    let addr = running.addr.clone();

    // The heartbeat line, at start: both ages as fields.
    let line = wait::until("the first `writer queue` line", wait::DEFAULT, || async {
        running.stderr.find(&["writer queue"])
    })
    .await;
    assert!(line.contains("oldest_due_age_seconds="), "{line}");
    assert!(line.contains("oldest_change_age_seconds="), "{line}");

    // Everything replicated: healthy. Then the worker hangs at its next document, but nothing
    // is due: still healthy.
    wait::until_ok("the writer to be healthy", wait::DEFAULT, || async {
        let (status, body) = healthz(&addr).await.ok_or("no answer")?;
        (status == 200)
            .then_some(())
            .ok_or(format!("{status} {body}"))
    })
    .await;
    wait::writer_idle(&db.pool, wait::DEFAULT).await;
    std::fs::write(&hold, b"hold").unwrap();
    wait::until("the worker to hang", wait::DEFAULT, || async {
        running
            .stderr
            .find(&["hang point worker-takes-document reached"])
    })
    .await;
    let (status, body) = healthz(&addr).await.unwrap();
    assert_eq!(
        status, 200,
        "a hung worker with nothing due is no problem: {body}"
    );

    core.set_flag(env, feature, true, Val::Int(2)).await;
    let body = wait::until_ok(
        "/healthz to report the hung worker",
        wait::DEFAULT,
        || async {
            let (status, body) = healthz(&addr).await.ok_or("no answer")?;
            let stuck = body["problems"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p.as_str().unwrap_or("").contains("worker 0 has been busy"));
            (status == 503 && stuck)
                .then_some(body.clone())
                .ok_or(format!("{status} {body}"))
        },
    )
    .await;
    assert!(
        body["oldest_due_age_seconds"].as_f64().unwrap() > 1.0,
        "{body}"
    );
    wait::until_ok(
        "the heartbeat gauge to show the waiting document",
        wait::DEFAULT,
        || async {
            let age = metric(&addr, "writer_oldest_due_age_seconds")
                .await
                .ok_or("no gauge yet")?;
            (age >= 1.0).then_some(()).ok_or(format!("{age}"))
        },
    )
    .await;

    // Released: the document is replicated and the writer is healthy again.
    std::fs::remove_file(&hold).unwrap();
    wait::until(
        "the released worker to replicate",
        wait::DEFAULT,
        || async {
            let item = tables.environment("envHang").await?;
            (document_of(&item)["feature_states"][0]["feature_state_value"] == 2).then_some(())
        },
    )
    .await;
    wait::until_ok("/healthz to recover", wait::DEFAULT, || async {
        let (status, body) = healthz(&addr).await.ok_or("no answer")?;
        (status == 200 && body["status"] == "ok")
            .then_some(())
            .ok_or(format!("{status} {body}"))
    })
    .await;
    stop(running).await;
    db.drop_db().await;
}
