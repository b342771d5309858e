//! Benchmark of the identity migration job and of backfills, each against a reference
//! measured in the same run on the same kind of table (a fresh DynamoDB Local per size,
//! tables without streams):
//!
//! - identities migrated per second (`writer migrate-identities`, release build, as a child
//!   process) as a ratio to the raw BatchWriteItem ceiling: identity-shaped items written
//!   with the same number of batches in flight, nothing else;
//! - the job's peak RSS for each size (it should be flat: memory is bounded by pages);
//! - backfill throughput in environments per second (`writer backfill --project`), as a
//!   ratio to raw conditional PutItem of the same documents at the same concurrency;
//! - `writer verify` over the migrated project (one region): wall time and peak RSS.
//!
//! Run with `infra/local/bench.sh identities [--counts 100000,1000000] [--environments 200]`.

use std::time::{Duration, Instant};

use edge_documents::item::{encode, Item, ReplicationMeta};
use edge_documents::tables::TableKind;
use edge_tests::core::{Core, Val};
use edge_tests::dynamo::{start_instance, TestTables};
use edge_tests::pg::TestDb;
use edge_writer::store::{Guard, ItemStore, BATCH_MAX_ITEMS};
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};

const CONCURRENCY: usize = 8;
const BATCH_CONCURRENCY: usize = 4;

struct Options {
    counts: Vec<i32>,
    environments: i32,
}

fn options() -> Options {
    let mut o = Options {
        counts: vec![100_000, 1_000_000],
        environments: 200,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || -> ! {
        eprintln!(
            "usage: bench_identities [--counts N[,N...]] [--environments N] (positive integers)"
        );
        std::process::exit(2)
    };
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_else(|| usage());
        match args[i].as_str() {
            "--counts" => {
                o.counts = value
                    .split(',')
                    .map(|v| {
                        v.trim()
                            .parse::<i32>()
                            .ok()
                            .filter(|n| *n > 0)
                            .unwrap_or_else(|| usage())
                    })
                    .collect()
            }
            "--environments" => {
                o.environments = value
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| usage())
            }
            _ => usage(),
        }
        i += 2;
    }
    o
}

fn writer_binary() -> std::path::PathBuf {
    edge_tests::target_binary("writer")
}

fn writer(db: &TestDb, tables: &TestTables) -> tokio::process::Command {
    let mut cmd = edge_tests::writer::writer_command_for(&writer_binary(), &db.url, tables);
    cmd.env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs a writer command to completion; returns its JSON summary, wall time and peak RSS.
async fn run_measured(mut cmd: tokio::process::Command) -> (Value, Duration, u64) {
    let started = Instant::now();
    let mut child = cmd.spawn().expect("start the writer");
    let pid = child.id().expect("a pid");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut stdout, &mut buf)
            .await
            .map(|_| buf)
    });
    let mut peak_kb = 0u64;
    let status = loop {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(kb) = s
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
            {
                peak_kb = peak_kb.max(kb);
            }
        }
        match tokio::time::timeout(Duration::from_millis(100), child.wait()).await {
            Ok(status) => break status.expect("writer status"),
            Err(_) => continue,
        }
    };
    let elapsed = started.elapsed();
    let out = reader.await.unwrap().expect("writer stdout");
    assert!(
        status.success(),
        "writer failed: {}",
        String::from_utf8_lossy(&out)
    );
    (
        serde_json::from_slice(&out).expect("a JSON summary"),
        elapsed,
        peak_kb,
    )
}

/// An identity item as the job writes it, keyed by `n`.
fn identity_item(n: usize) -> Item {
    let body = json!({
        "composite_key": format!("refEnv_user-{n}"),
        "identifier": format!("user-{n}"),
        "environment_api_key": "refEnv",
        "identity_uuid": uuid::Uuid::new_v4().to_string(),
        "created_date": "2026-01-01T00:00:00.123456+00:00",
        "django_id": n,
        "identity_traits": [
            {"trait_key": "age", "trait_value": n},
            {"trait_key": "plan", "trait_value": format!("plan-{}", n % 5)},
            {"trait_key": "beta", "trait_value": n % 2 == 0}
        ],
        "identity_features": [],
    });
    let meta = ReplicationMeta {
        version: 1,
        source_time: "2026-01-01T00:00:00+00:00".into(),
        doc_key: format!("identity:{n}"),
    };
    encode(&body, &meta, None).expect("an item").item
}

/// Reference: raw BatchWriteItem of `n` identity items, with as many batches in flight as
/// the job keeps (pages x batches per page).
async fn raw_batch_ceiling(tables: &TestTables, n: usize) -> f64 {
    let store = tables.store();
    let items: Vec<Item> = (0..n).map(identity_item).collect();
    let batches: Vec<Vec<(TableKind, Item)>> = items
        .chunks(BATCH_MAX_ITEMS)
        .map(|c| {
            c.iter()
                .map(|i| (TableKind::Identities, i.clone()))
                .collect()
        })
        .collect();
    let started = Instant::now();
    stream::iter(batches)
        .map(|b| store.batch_put(b))
        .buffer_unordered(CONCURRENCY * BATCH_CONCURRENCY)
        .for_each(|r| async move { r.expect("raw batch") })
        .await;
    n as f64 / started.elapsed().as_secs_f64()
}

async fn migration_case(count: i32) {
    eprintln!("bench: {count} identities: fresh DynamoDB Local and database");
    let dynamo = start_instance();
    let reference_tables = TestTables::on_with(&dynamo.endpoint, false).await;
    let tables = TestTables::on_with(&dynamo.endpoint, false).await;
    let db = TestDb::new().await;
    let core = Core::new(db.pool.clone());
    let org = core.create_organisation("Bench").await;
    let project = core.create_project(org, "Bench", true, "COMPLETE").await;
    let env = core.create_environment(project, "Bench", "benchIds").await;
    let flag = core
        .create_feature(project, "flag", "STANDARD", false, Val::None)
        .await;
    let t = Instant::now();
    let mut left = count;
    let mut round = 0;
    while left > 0 {
        let n = left.min(100_000);
        core.generate_identities(env, &format!("u{round}-"), n, flag, 10, false)
            .await;
        left -= n;
        round += 1;
    }
    core.exec("ANALYZE").await;
    eprintln!(
        "bench: {count} identities generated in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let reference_n = (count as usize).min(100_000);
    let ceiling = raw_batch_ceiling(&reference_tables, reference_n).await;
    eprintln!("bench: raw BatchWriteItem ceiling {ceiling:.0} items/s ({reference_n} items)");

    let mut cmd = writer(&db, &tables);
    cmd.arg("migrate-identities")
        .arg(format!("--project={project}"))
        .arg(format!("--concurrency={CONCURRENCY}"))
        .arg(format!("--batch-concurrency={BATCH_CONCURRENCY}"))
        .arg("--no-progress");
    let (summary, wall, peak_kb) = run_measured(cmd).await;
    let migrated = summary["migrated"].as_f64().unwrap_or(0.0);
    let items = summary["items_written"].as_f64().unwrap_or(0.0);
    let rate = migrated / wall.as_secs_f64();
    println!(
        "identities={count} migrated={migrated} items={items} wall_s={:.1} identities_per_s={rate:.0} \
         items_per_s={:.0} raw_batch_items_per_s={ceiling:.0} ratio={:.2} peak_rss_mb={:.1}",
        wall.as_secs_f64(),
        items / wall.as_secs_f64(),
        rate / ceiling,
        peak_kb as f64 / 1024.0
    );

    // verify over everything: the environment is written first, so that nothing drifts.
    let mut cmd = writer(&db, &tables);
    cmd.args(["sync", "--environment", "benchIds"]);
    run_measured(cmd).await;
    let mut cmd = writer(&db, &tables);
    cmd.arg("verify")
        .arg(format!("--region=bench={}", tables.endpoint))
        .args([
            "--ack-deadline-secs=1209600",
            "--recheck-after-secs=0",
            "--json",
        ]);
    let (report, wall, peak_kb) = run_measured(cmd).await;
    assert_eq!(report["counts"], json!({}), "no drift: {report}");
    println!(
        "verify identities={count} expected_items={} region_items={} wall_s={:.1} items_per_s={:.0} peak_rss_mb={:.1}",
        report["expected_items"],
        report["regions"][0]["items"],
        wall.as_secs_f64(),
        report["expected_items"].as_f64().unwrap_or(0.0) / wall.as_secs_f64(),
        peak_kb as f64 / 1024.0
    );
    db.drop_db().await;
}

async fn backfill_case(environments: i32) {
    eprintln!("bench: backfill of {environments} environments");
    let dynamo = start_instance();
    let tables = TestTables::on_with(&dynamo.endpoint, false).await;
    let reference_tables = TestTables::on_with(&dynamo.endpoint, false).await;
    let db = TestDb::new().await;
    let core = Core::new(db.pool.clone());
    let org = core.create_organisation("Bench").await;
    let project = core.create_project(org, "Bench", true, "COMPLETE").await;
    for f in 0..20 {
        core.create_feature(
            project,
            &format!("f{f}"),
            "STANDARD",
            f % 2 == 0,
            Val::Int(f),
        )
        .await;
    }
    for e in 0..environments {
        core.create_environment(project, &format!("E{e}"), &format!("bf{e}"))
            .await;
    }
    // Reference: raw conditional PutItem of the same documents, 4 at a time.
    let mut cmd = writer(&db, &tables);
    cmd.arg("backfill")
        .arg(format!("--project={project}"))
        .arg("--concurrency=4");
    let (summary, wall, _) = run_measured(cmd).await;
    let docs: Vec<Item> = tables.scan(TableKind::Environments).await;
    let store = reference_tables.store();
    let started = Instant::now();
    stream::iter(docs.into_iter().enumerate())
        .map(|(i, mut item)| {
            item.insert(
                "api_key".into(),
                aws_sdk_dynamodb::types::AttributeValue::S(format!("ref{i}")),
            );
            store.put(TableKind::Environments, item, 1, &Guard::Version)
        })
        .buffer_unordered(4)
        .for_each(|r| async move {
            r.expect("raw put");
        })
        .await;
    let raw = environments as f64 / started.elapsed().as_secs_f64();
    let rate = environments as f64 / wall.as_secs_f64();
    println!(
        "backfill environments={environments} written={} wall_s={:.1} environments_per_s={rate:.1} \
         raw_put_per_s={raw:.1} ratio={:.2}",
        summary["written"],
        wall.as_secs_f64(),
        rate / raw
    );
    db.drop_db().await;
}

#[tokio::main]
async fn main() {
    let o = options();
    edge_tests::init_logging();
    println!("machine: {}", edge_tests::machine());
    for count in &o.counts {
        migration_case(*count).await;
    }
    backfill_case(o.environments).await;
}
