//! `writer status`, the real binary against real Postgres and DynamoDB Local, in each state an
//! operator meets: healthy (every write acknowledged), a backlog, a region that acknowledges
//! nothing, drift found by verify, dead letters, an identity migration running, stalled and
//! stopped, capture paused; and Postgres or DynamoDB unreachable. Text, JSON and exit codes
//! (0 healthy, 2 an operator is needed, 1 cannot read).

use std::process::Stdio;

use edge_documents::tables::TableKind;
use edge_tests::core::{basic_project, Val};
use edge_tests::dynamo::{document_of, TestTables};
use edge_tests::pg::TestDb;
use edge_tests::regions::{spawn_poller, test_invalidation};
use edge_tests::setup;
use edge_tests::wait;
use edge_tests::writer::{writer_command, InProcessWriter};
use serde_json::Value;
use stream_consumer::ledger::DynamoLedger;
use stream_consumer::Consumer;
use tokio::task::JoinHandle;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

async fn writer(db: &TestDb, tables: &TestTables, args: &[&str]) -> Out {
    run(writer_command(&db.url, tables).args(args)).await
}

async fn run(cmd: &mut tokio::process::Command) -> Out {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run the writer binary");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `writer status <args>` as text.
async fn status(db: &TestDb, tables: &TestTables, args: &[&str]) -> Out {
    let mut all = vec!["status"];
    all.extend_from_slice(args);
    writer(db, tables, &all).await
}

/// `writer status --json <args>`: the exit code and the report.
async fn status_json(db: &TestDb, tables: &TestTables, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = status(db, tables, &all).await;
    let json = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out}"));
    (out.code, json)
}

/// Waits until `writer status <args>` exits with `code` and its text has every one of `parts`.
async fn wait_status(
    db: &TestDb,
    tables: &TestTables,
    args: &[&str],
    code: i32,
    parts: &[&str],
) -> Out {
    wait::until_ok(
        &format!(
            "`writer status {}` to exit {code} with {parts:?}",
            args.join(" ")
        ),
        wait::DEFAULT,
        || async {
            let out = status(db, tables, args).await;
            (out.code == code && parts.iter().all(|p| out.stdout.contains(p)))
                .then_some(())
                .ok_or_else(|| out.to_string())?;
            Ok(out)
        },
    )
    .await
}

/// A stream consumer (the local poller) acknowledging as `region` in the tables' ledger.
fn consumer(tables: &TestTables, region: &str) -> JoinHandle<()> {
    let ledger = DynamoLedger::new(tables.client.clone(), tables.names.acks.clone());
    let consumer = Consumer::new(region, ledger, test_invalidation(vec![]));
    spawn_poller(consumer, tables, 3, |_, _| {})
}

async fn flag_value(tables: &TestTables, api_key: &str) -> Option<Value> {
    let doc = document_of(&tables.environment(api_key).await?);
    Some(doc["feature_states"][0]["feature_state_value"].clone())
}

async fn wait_value(tables: &TestTables, api_key: &str, want: Value) {
    wait::until(&format!("{api_key} = {want}"), wait::DEFAULT, || async {
        (flag_value(tables, api_key).await? == want).then_some(())
    })
    .await
}

fn region<'a>(json: &'a Value, name: &str) -> Option<&'a Value> {
    json["regions"]["regions"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name)
}

fn checks(json: &Value) -> Vec<String> {
    json["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["check"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn healthy_then_a_backlog_an_unacknowledging_region_and_drift_found_by_verify() {
    let (db, tables, core) = setup().await;
    let (_, project, env) = basic_project(&core, "envStatus").await;
    let feature = core
        .create_feature(project, "banner", "STANDARD", true, Val::Int(1))
        .await;
    let _consumer = consumer(&tables, "a");
    let writer_task = InProcessWriter::start_on(&db.pool, &tables, 2);
    wait_value(&tables, "envStatus", Value::from(1)).await;
    core.set_flag(env, feature, true, Val::Int(2)).await;
    wait_value(&tables, "envStatus", Value::from(2)).await;
    wait::writer_idle(&db.pool, wait::DEFAULT).await;

    // Healthy, once region a has acknowledged every sampled write.
    let json = wait::until_ok(
        "region a to acknowledge every sampled write",
        wait::DEFAULT,
        || async {
            let (code, json) = status_json(&db, &tables, &["--region", "a"]).await;
            let a = region(&json, "a").ok_or(json.to_string())?;
            (code == 0 && a["unconfirmed"] == 0 && a["writes_checked"].as_u64() >= Some(2))
                .then(|| json.clone())
                .ok_or(json.to_string())
        },
    )
    .await;
    assert_eq!(json["status"], "ok");
    assert_eq!(json["problems"], serde_json::json!([]));
    // The JSON's shape: every section, with its figures.
    assert_eq!(json["capture"]["enabled"], true);
    assert_eq!(json["queue"]["due"], 0);
    assert!(
        json["queue"]["oldest_due_age_seconds"].is_number(),
        "{json}"
    );
    assert_eq!(json["dead_letters"], serde_json::json!([]));
    assert_eq!(json["lag"]["window_seconds"], 300.0);
    assert!(
        json["lag"]["measured"].as_i64() >= Some(1),
        "the flag change's write was measured: {json}"
    );
    for p in ["p50_seconds", "p99_seconds", "max_seconds"] {
        let lag = json["lag"][p].as_f64().unwrap_or(-1.0);
        assert!((0.0..30.0).contains(&lag), "{p}: {json}");
    }
    assert_eq!(json["migrations"], serde_json::json!([]));
    assert_eq!(json["regions"]["sample_limit"], 50);
    assert!(
        json["regions"]["sampled_items"].as_u64() >= Some(2),
        "{json}"
    );
    let a = region(&json, "a").unwrap();
    assert!(a["acknowledgements"].as_u64() >= Some(2), "{json}");
    assert!(a["newest_ack_at"].is_string(), "{json}");
    assert!(a["lag_p99_seconds"].is_number(), "{json}");
    assert_eq!(json["verify"], Value::Null);
    assert_eq!(json["thresholds"]["max_due_age_seconds"], 300.0);
    assert_eq!(json["thresholds"]["max_dead_letters"], 0);
    assert_eq!(json["thresholds"]["verify_max_age_seconds"], Value::Null);

    let out = status(&db, &tables, &["--region", "a"]).await;
    assert_eq!(out.code, 0, "{out}");
    for part in [
        "writer status: ok",
        "capture: on since",
        "triggers installed; no gap to backfill",
        "change log: empty",
        "none due",
        "dead letters: none",
        "lag (core commit to DynamoDB, last 5 min):",
        "identity migrations: none",
        "a: newest acknowledgement",
        "; 0 of ",
        "verify: never ran",
    ] {
        assert!(out.stdout.contains(part), "{part:?}: {out}");
    }

    // A verify run is recorded, and shown.
    let endpoint = format!("a={}", tables.endpoint);
    let verify_args = ["verify", "--region", &endpoint, "--recheck-after-secs=0"];
    let out = writer(&db, &tables, &verify_args).await;
    assert_eq!(out.code, 0, "{out}");
    let (code, json) = status_json(&db, &tables, &["--region", "a"]).await;
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["verify"]["outcome"], "clean");
    assert_eq!(json["verify"]["regions"], serde_json::json!(["a"]));
    assert!(
        json["verify"]["expected_items"].as_i64() >= Some(2),
        "{json}"
    );
    let out = status(&db, &tables, &[]).await;
    assert!(out.stdout.contains("verify: last run"), "{out}");
    assert!(out.stdout.contains(": clean; "), "{out}");

    // A backlog: changes queued while no writer runs. Within the threshold it is only shown;
    // past it, an operator is needed.
    writer_task.stop().await;
    core.set_flag(env, feature, true, Val::Int(3)).await;
    edge_writer::capture::drain_all(&db.pool, 1000)
        .await
        .expect("queue the change");
    let (code, json) = status_json(&db, &tables, &[]).await;
    assert_eq!(code, 0, "{json}");
    assert!(json["queue"]["due"].as_i64() >= Some(1), "{json}");
    let out = status(&db, &tables, &[]).await;
    assert!(out.stdout.contains("due, the oldest due waiting"), "{out}");
    let out = wait_status(
        &db,
        &tables,
        &["--max-due-age-secs=1"],
        2,
        &[
            "writer status: NEEDS AN OPERATOR",
            "[queue] the oldest due document has waited",
        ],
    )
    .await;
    assert!(!out.stdout.contains("[region]"), "{out}");
    let (code, json) = status_json(&db, &tables, &["--max-due-age-secs=1"]).await;
    assert_eq!(code, 2);
    assert_eq!(json["status"], "attention");
    assert_eq!(checks(&json), ["queue"]);

    // The writer back: drained, healthy again.
    let writer_task = InProcessWriter::start_on(&db.pool, &tables, 2);
    wait_value(&tables, "envStatus", Value::from(3)).await;
    wait_status(
        &db,
        &tables,
        &["--max-due-age-secs=1"],
        0,
        &["writer status: ok"],
    )
    .await;

    // Region b is expected to acknowledge, and nothing does.
    let out = wait_status(
        &db,
        &tables,
        &["--region=a,b", "--unconfirmed-after-secs=1"],
        2,
        &["[region] region b:", "b: no acknowledgement"],
    )
    .await;
    assert!(!out.stdout.contains("[region] region a"), "{out}");
    let (code, json) = status_json(
        &db,
        &tables,
        &["--region=a,b", "--unconfirmed-after-secs=1"],
    )
    .await;
    assert_eq!(code, 2);
    let b = region(&json, "b").unwrap();
    assert_eq!(b["acknowledgements"], 0);
    assert_eq!(b["unconfirmed"], b["writes_checked"]);
    assert!(b["overdue"].as_u64() >= Some(1), "{json}");
    assert_eq!(region(&json, "a").unwrap()["overdue"], 0);

    // Drift: the environment's item removed behind the writer's back. Verify finds it, and
    // status says so until a verify finds none.
    writer_task.stop().await;
    tables
        .client
        .delete_item()
        .table_name(tables.names.name(TableKind::Environments))
        .key(
            "api_key",
            aws_sdk_dynamodb::types::AttributeValue::S("envStatus".into()),
        )
        .send()
        .await
        .unwrap();
    let out = writer(&db, &tables, &verify_args).await;
    assert_eq!(out.code, 2, "{out}");
    let out = status(&db, &tables, &[]).await;
    assert_eq!(out.code, 2, "{out}");
    assert!(
        out.stdout.contains("[verify] the last `writer verify` (")
            && out.stdout.contains("found drift (missing 1)"),
        "{out}"
    );
    let (_, json) = status_json(&db, &tables, &[]).await;
    assert_eq!(json["verify"]["outcome"], "drift");
    assert_eq!(json["verify"]["drift_counts"]["missing"], 1);
    assert_eq!(checks(&json), ["verify"]);

    let mut repair = verify_args.to_vec();
    repair.push("--repair");
    let out = writer(&db, &tables, &repair).await;
    assert_eq!(out.code, 3, "{out}");
    let out = status(&db, &tables, &[]).await;
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stdout.contains("run `writer verify` again"), "{out}");
    let out = writer(&db, &tables, &verify_args).await;
    assert_eq!(out.code, 0, "{out}");
    let out = status(&db, &tables, &[]).await;
    assert_eq!(out.code, 0, "{out}");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_by_kind_with_the_oldest() {
    let (db, tables, core) = setup().await;
    let (_, project, env) = basic_project(&core, "envDead").await;
    core.create_feature(project, "f", "STANDARD", true, Val::Int(1))
        .await;
    core.create_segment(
        project,
        "broken",
        "ALL",
        &[("BOGUS_OPERATOR", Some("k"), Some("v"))],
    )
    .await;
    let writer_task = InProcessWriter::start_on(&db.pool, &tables, 2);
    wait::until("the environment parked", wait::DEFAULT, || async {
        (db.scalar_i64("SELECT count(*) FROM edge.dead_letter").await == 1).then_some(())
    })
    .await;
    writer_task.stop().await;

    let out = status(&db, &tables, &[]).await;
    assert_eq!(out.code, 2, "{out}");
    for part in [
        "[dead_letters] 1 documents in dead letters (invalid_data 1): see `writer dead-letters list`",
        "dead letters: 1",
        &format!("invalid_data: 1; oldest environment:{env} since"),
        "BOGUS_OPERATOR",
    ] {
        assert!(out.stdout.contains(part), "{part:?}: {out}");
    }
    let (code, json) = status_json(&db, &tables, &[]).await;
    assert_eq!(code, 2);
    assert_eq!(checks(&json), ["dead_letters"]);
    let kinds = json["dead_letters"].as_array().unwrap();
    assert_eq!(kinds.len(), 1, "{json}");
    assert_eq!(kinds[0]["kind"], "invalid_data");
    assert_eq!(kinds[0]["count"], 1);
    assert_eq!(kinds[0]["oldest_key"], format!("environment:{env}"));
    assert!(kinds[0]["oldest_failed_at"].is_string());

    // Allowed by the threshold: no operator needed.
    let out = status(&db, &tables, &["--max-dead-letters=1"]).await;
    assert_eq!(out.code, 0, "{out}");

    // An edge item ingestion could not apply is a dead letter of its own kind.
    edge_ingest::dead_letters::park(&db.pool, "envDead_zed", "a trait is a list", None)
        .await
        .unwrap();
    let out = status(&db, &tables, &["--max-dead-letters=0"]).await;
    assert_eq!(out.code, 2, "{out}");
    assert!(
        out.stdout
            .contains("[dead_letters] 1 edge items could not be ingested into core"),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("ingestion: 1; oldest envDead_zed since"),
        "{out}"
    );
    let (_, json) = status_json(&db, &tables, &[]).await;
    assert_eq!(checks(&json), ["dead_letters", "dead_letters"]);
    let out = status(&db, &tables, &["--max-dead-letters=1"]).await;
    assert_eq!(out.code, 0, "{out}");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn capture_paused_then_a_gap_to_backfill_then_healthy() {
    let (db, tables, core) = setup().await;
    let (_, project, _) = basic_project(&core, "envPaused").await;
    core.create_feature(project, "f", "STANDARD", true, Val::Int(1))
        .await;
    let writer_task = InProcessWriter::start_on(&db.pool, &tables, 2);
    wait_value(&tables, "envPaused", Value::from(1)).await;
    wait::writer_idle(&db.pool, wait::DEFAULT).await;
    let out = status(&db, &tables, &[]).await;
    assert_eq!(out.code, 0, "{out}");

    let out = writer(
        &db,
        &tables,
        &["capture", "pause", "--reason", "maintenance"],
    )
    .await;
    assert_eq!(out.code, 0, "{out}");
    let out = status(&db, &tables, &[]).await;
    assert_eq!(out.code, 2, "{out}");
    for part in [
        "[capture] capture is PAUSED since",
        "(maintenance): core changes are not replicated; run `writer capture resume`, then `writer backfill --gap`",
        "capture: PAUSED since",
        "; 1 gap(s) not backfilled",
        "now (still paused)",
    ] {
        assert!(out.stdout.contains(part), "{part:?}: {out}");
    }
    let (code, json) = status_json(&db, &tables, &[]).await;
    assert_eq!(code, 2);
    assert_eq!(json["capture"]["enabled"], false);
    assert_eq!(json["capture"]["reason"], "maintenance");
    assert_eq!(checks(&json), ["capture"]);

    // Resumed: the gap still needs its backfill.
    let out = writer(&db, &tables, &["capture", "resume"]).await;
    assert_eq!(out.code, 0, "{out}");
    let out = status(&db, &tables, &[]).await;
    assert_eq!(out.code, 2, "{out}");
    assert!(
        out.stdout
            .contains("[capture] 1 capture gap(s) not backfilled"),
        "{out}"
    );
    let out = writer(&db, &tables, &["backfill", "--gap"]).await;
    assert_eq!(out.code, 0, "{out}");
    let out = status(&db, &tables, &[]).await;
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("capture: on since"), "{out}");
    writer_task.stop().await;
    db.drop_db().await;
}

fn signal(child: &tokio::process::Child, sig: &str) {
    let pid = child.id().expect("the job is running");
    let status = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_identity_migration_running_stalled_stopped_and_complete() {
    let (db, tables, core) = setup().await;
    let (_, project, env) = basic_project(&core, "envMig").await;
    let feature = core
        .create_feature(project, "f", "STANDARD", true, Val::Int(1))
        .await;
    const IDENTITIES: i64 = 3000;
    core.generate_identities(env, "u-", IDENTITIES as i32, feature, 10, false)
        .await;
    let job_args = [
        "migrate-identities".to_string(),
        format!("--project={project}"),
        "--page-size=5".into(),
        "--concurrency=1".into(),
        "--batch-concurrency=1".into(),
        "--no-progress".into(),
    ];
    let mut job = writer_command(&db.url, &tables)
        .args(&job_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the migration job");
    // Stopped (SIGSTOP) midway: its session stays, it makes no progress.
    wait::until("the job's first checkpoint", wait::DEFAULT, || async {
        (db.scalar_i64(&format!(
            "SELECT count(*) FROM edge.identity_migration WHERE project_id = {project} AND checkpoint_id > 0 AND status = 'IN_PROGRESS'"
        ))
        .await
            == 1)
            .then_some(())
    })
    .await;
    signal(&job, "STOP");
    // Whatever statement it had sent has finished: its figures no longer move.
    wait::until(
        "the stopped job's statements to finish",
        wait::DEFAULT,
        || async {
            (db.scalar_i64(
                "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = 'edge-writer'
                AND state = 'active'",
            )
            .await
                == 0)
                .then_some(())
        },
    )
    .await;

    let (code, json) = status_json(&db, &tables, &[]).await;
    assert_eq!(code, 0, "running, within the stall threshold: {json}");
    let m = &json["migrations"][0];
    assert_eq!(m["project_id"], project);
    assert_eq!(m["status"], "IN_PROGRESS");
    assert_eq!(m["running"], true);
    assert_eq!(m["total"], IDENTITIES);
    let done = m["done"].as_i64().unwrap();
    assert!(done > 0 && done < IDENTITIES, "{json}");
    assert!(m["processed"].as_i64() >= Some(done), "{json}");
    let out = status(&db, &tables, &[]).await;
    assert_eq!(out.code, 0, "{out}");
    let pct = format!("{:.1}%", done as f64 * 100.0 / IDENTITIES as f64);
    assert!(
        out.stdout.contains(&format!(
            "project {project}: in progress, {pct} ({done} of {IDENTITIES} identities), "
        )),
        "{out}"
    );
    assert!(out.stdout.contains("identities/s"), "{out}");
    assert!(out.stdout.contains("; running, last progress"), "{out}");

    // No progress for longer than the threshold: stalled.
    wait_status(
        &db,
        &tables,
        &["--migration-stall-secs=1"],
        2,
        &[&format!(
            "[migration] the identity migration of project {project} is running at {pct} but made no progress for"
        )],
    )
    .await;

    // Killed: not running any more, to be resumed.
    signal(&job, "KILL");
    job.wait().await.unwrap();
    let out = wait_status(
        &db,
        &tables,
        &[],
        2,
        &[
            &format!("[migration] the identity migration of project {project} is unfinished at {pct} and not running"),
            &format!("resume it with `writer migrate-identities --project {project}`"),
            "; NOT running, last progress",
        ],
    )
    .await;
    assert!(!out.stdout.contains("[queue]"), "{out}");

    // Resumed to the end: complete, healthy.
    let out = run(writer_command(&db.url, &tables).args(&job_args)).await;
    assert_eq!(out.code, 0, "{out}");
    let out = status(&db, &tables, &[]).await;
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout
            .contains(&format!("project {project}: complete (100%), ")),
        "{out}"
    );
    let (_, json) = status_json(&db, &tables, &[]).await;
    assert_eq!(json["migrations"][0]["status"], "COMPLETE");
    assert_eq!(json["migrations"][0]["running"], false);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_postgres_or_dynamodb_is_an_error_naming_it() {
    let (db, tables, _core) = setup().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };

    let url = format!("postgres://postgres@127.0.0.1:{closed}/core");
    let out = run(writer_command(&url, &tables).arg("status")).await;
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stderr
            .contains(&format!("connecting to Postgres at {url}")),
        "{out}"
    );

    let endpoint = format!("http://127.0.0.1:{closed}");
    let out = run(writer_command(&db.url, &tables)
        .arg("status")
        .env("DYNAMODB_ENDPOINT", &endpoint))
    .await;
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stderr.contains(&format!(
            "DynamoDB: reading the replication ledger {} at {endpoint}",
            tables.names.acks
        )),
        "{out}"
    );

    let out = run(writer_command(&db.url, &tables)
        .arg("status")
        .env("EDGE_ACK_TABLE", "no_such_ledger"))
    .await;
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stderr
            .contains("reading the replication ledger no_such_ledger at")
            && out.stderr.contains("ResourceNotFound"),
        "{out}"
    );

    // Without the ledger reads (--ack-sample 0), DynamoDB is not needed.
    let out = run(writer_command(&db.url, &tables)
        .args(["status", "--ack-sample=0"])
        .env("DYNAMODB_ENDPOINT", &endpoint))
    .await;
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("regions: not checked"), "{out}");
    db.drop_db().await;
}
