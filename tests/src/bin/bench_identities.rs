//! Benchmark of the identity migration job and of backfills, each against a reference
//! measured in the same run on the same kind of table (a fresh DynamoDB Local per size,
//! tables without streams):
//!
//! - identities migrated per second (`writer migrate-identities`, release build, as a child
//!   process) as a ratio to the raw BatchWriteItem ceiling: the same number of items as the
//!   job writes, copies of the job's own items (projected from the same identities, overrides
//!   included, into the same tables), with the same number of batches in flight, nothing
//!   else; measured right before and right after the job, after a warm-up of the JVM, and
//!   the faster of the two is the one compared with;
//! - the job's peak RSS for each size (it should be flat: memory is bounded by pages);
//! - backfill throughput in environments per second (`writer backfill --project`, its
//!   defaults: 4 batches of 25 in flight, conditional PutItem; then again with
//!   `--batch-writes transactions`), as a ratio to raw conditional PutItem of the same items
//!   (each environment's item and its `_META` item, in parallel) with as many documents in
//!   flight as the backfill can have (4 batches of which 16 documents each write at once),
//!   measured warm before and after the backfills, the faster compared with;
//! - `writer verify` over the migrated project (one region): wall time and peak RSS, and its
//!   items per second as a ratio to a raw parallel Scan of the tables it reads (the same
//!   segments, one table after the other), right before and right after it, the faster
//!   compared with. Verify also projects every document from Postgres and compares; the
//!   ratio says what that adds to reading DynamoDB.
//!
//! Run with `infra/local/bench.sh identities [--counts 100000,1000000] [--environments 200]`.

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use edge_documents::item::{encode, Item, ReplicationMeta, DEFAULT_COMPRESS_ABOVE_BYTES};
use edge_documents::tables::TableKind;
use edge_tests::core::{Core, Val};
use edge_tests::dynamo::{start_instance, TestTables};
use edge_tests::pg::TestDb;
use edge_writer::doc_key::DocKey;
use edge_writer::store::{Guard, ItemStore, BATCH_MAX_ITEMS};
use futures::future::join_all;
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};

const CONCURRENCY: usize = 8;
const BATCH_CONCURRENCY: usize = 4;

struct Options {
    counts: Vec<i32>,
    environments: i32,
    /// Only what `writer verify` needs: the job without its references, then verify; no
    /// backfill.
    verify_only: bool,
}

fn options() -> Options {
    let mut o = Options {
        counts: vec![100_000, 1_000_000],
        environments: 200,
        verify_only: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || -> ! {
        eprintln!(
            "usage: bench_identities [--counts N[,N...]] [--environments N] [--verify-only] (positive integers)"
        );
        std::process::exit(2)
    };
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--verify-only" {
            o.verify_only = true;
            i += 1;
            continue;
        }
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

/// The items of a document as the writer writes them, from one snapshot.
async fn items_of(pool: &sqlx::PgPool, doc: DocKey) -> Vec<(TableKind, Item)> {
    let mut conn = pool.acquire().await.expect("a connection");
    let projected = edge_writer::projection::project(&mut conn, doc)
        .await
        .expect("a projection");
    let meta = ReplicationMeta {
        version: 1,
        source_time: "2026-01-01T00:00:00+00:00".into(),
        doc_key: doc.to_string(),
    };
    projected
        .items
        .iter()
        .map(|d| {
            let threshold = d.compressible.then_some(DEFAULT_COMPRESS_ABOVE_BYTES);
            let item = encode(&d.body, &meta, threshold).expect("an item").item;
            (d.table, item)
        })
        .collect()
}

/// A copy of an item under a key of its own: every string key attribute gets `tag` in front.
fn rekeyed(table: TableKind, item: &Item, tag: &str) -> Item {
    let mut item = item.clone();
    for attr in table.key_attributes() {
        if let Some(AttributeValue::S(v)) = item.get(attr) {
            let v = format!("{tag}{v}");
            item.insert(attr.to_string(), AttributeValue::S(v));
        }
    }
    item
}

/// Templates: the items of the first identities of the environment, as the job writes them.
async fn identity_templates(pool: &sqlx::PgPool, env: i32, n: i64) -> Vec<Vec<(TableKind, Item)>> {
    let ids: Vec<i32> = sqlx::query_scalar(
        "SELECT id FROM environments_identity WHERE environment_id = $1 ORDER BY id LIMIT $2",
    )
    .bind(env)
    .bind(n)
    .fetch_all(pool)
    .await
    .expect("identity ids");
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(items_of(pool, DocKey::Identity(id)).await);
    }
    out
}

/// Reference: raw BatchWriteItem of copies of the job's items, identity `n` taking the items
/// of template `n % templates`, with as many batches in flight as the job keeps (pages x
/// batches per page). Items are made as batches are sent, so memory stays flat. Returns
/// items written and items per second.
async fn raw_batch_ceiling(
    tables: &TestTables,
    templates: &[Vec<(TableKind, Item)>],
    identities: usize,
    tag: &str,
) -> (usize, f64) {
    let store = tables.store();
    let mut batch = Vec::with_capacity(BATCH_MAX_ITEMS);
    let mut next = 0usize;
    let batches = std::iter::from_fn(move || {
        while next < identities {
            for (table, item) in &templates[next % templates.len()] {
                batch.push((*table, rekeyed(*table, item, &format!("{tag}{next}-"))));
            }
            next += 1;
            if batch.len() >= BATCH_MAX_ITEMS {
                let rest = batch.split_off(BATCH_MAX_ITEMS);
                return Some(std::mem::replace(&mut batch, rest));
            }
        }
        (!batch.is_empty()).then(|| std::mem::take(&mut batch))
    });
    let started = Instant::now();
    let written = stream::iter(batches)
        .map(|b| {
            let n = b.len();
            let store = store.clone();
            async move {
                store.batch_put(b).await.expect("raw batch");
                n
            }
        })
        .buffer_unordered(CONCURRENCY * BATCH_CONCURRENCY)
        .fold(0usize, |acc, n| async move { acc + n })
        .await;
    (written, written as f64 / started.elapsed().as_secs_f64())
}

/// The job between two raw BatchWriteItem references (after a warm-up of the JVM).
async fn migration_measured(
    count: i32,
    project: i32,
    db: &TestDb,
    endpoint: &str,
    tables: &TestTables,
    reference_tables: &TestTables,
    env: i32,
) {
    // The JVM warms up first (on tables of its own), then the reference, the job, and the
    // reference again, each on fresh tables.
    let templates = identity_templates(&db.pool, env, 1000).await;
    let warm_tables = TestTables::on_with(endpoint, false).await;
    let (warm_items, warm_rate) = raw_batch_ceiling(&warm_tables, &templates, 50_000, "w").await;
    eprintln!("bench: warm-up, {warm_items} items at {warm_rate:.0} items/s");
    let (ref_items, before) =
        raw_batch_ceiling(reference_tables, &templates, count as usize, "a").await;
    eprintln!("bench: raw BatchWriteItem before the job: {before:.0} items/s ({ref_items} items)");

    let mut cmd = writer(db, tables);
    cmd.arg("migrate-identities")
        .arg(format!("--project={project}"))
        .arg(format!("--concurrency={CONCURRENCY}"))
        .arg(format!("--batch-concurrency={BATCH_CONCURRENCY}"))
        .arg("--no-progress");
    let (summary, wall, peak_kb) = run_measured(cmd).await;
    let migrated = summary["migrated"].as_f64().unwrap_or(0.0);
    let items = summary["items_written"].as_f64().unwrap_or(0.0);
    let after_tables = TestTables::on_with(endpoint, false).await;
    let (_, after) = raw_batch_ceiling(&after_tables, &templates, count as usize, "b").await;
    eprintln!("bench: raw BatchWriteItem after the job: {after:.0} items/s");
    let ceiling = before.max(after);
    let rate = migrated / wall.as_secs_f64();
    let items_rate = items / wall.as_secs_f64();
    println!(
        "identities={count} migrated={migrated} items={items} wall_s={:.1} identities_per_s={rate:.0} \
         items_per_s={items_rate:.0} raw_batch_items={ref_items} raw_batch_items_per_s_before={before:.0} \
         raw_batch_items_per_s_after={after:.0} ratio_items={:.2} peak_rss_mb={:.1}",
        wall.as_secs_f64(),
        items_rate / ceiling,
        peak_kb as f64 / 1024.0
    );
}

async fn migration_case(count: i32, verify_only: bool) {
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

    if verify_only {
        let mut cmd = writer(&db, &tables);
        cmd.arg("migrate-identities")
            .arg(format!("--project={project}"))
            .arg(format!("--concurrency={CONCURRENCY}"))
            .arg(format!("--batch-concurrency={BATCH_CONCURRENCY}"))
            .arg("--no-progress");
        let (summary, wall, _) = run_measured(cmd).await;
        eprintln!(
            "bench: {} identities migrated in {:.1} s (no reference: --verify-only)",
            summary["migrated"],
            wall.as_secs_f64()
        );
    } else {
        migration_measured(
            count,
            project,
            &db,
            &dynamo.endpoint,
            &tables,
            &reference_tables,
            env,
        )
        .await;
    }

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
    let before = raw_scan(&tables).await;
    let (report, wall, peak_kb) = run_measured(cmd).await;
    assert_eq!(report["counts"], json!({}), "no drift: {report}");
    let after = raw_scan(&tables).await;
    let (scanned, reference) = [before, after]
        .into_iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("two reference scans");
    eprintln!(
        "bench: raw parallel Scan of the verified tables: {:.0} items/s before verify, {:.0} after ({scanned} items)",
        before.1, after.1
    );
    println!(
        "verify identities={count} expected_items={} region_items={} wall_s={:.1} items_per_s={:.0} raw_scan_items_per_s={reference:.0} ratio={:.2} peak_rss_mb={:.1}",
        report["expected_items"],
        report["regions"][0]["items"],
        wall.as_secs_f64(),
        report["expected_items"].as_f64().unwrap_or(0.0) / wall.as_secs_f64(),
        report["regions"][0]["items"].as_f64().unwrap_or(0.0) / wall.as_secs_f64() / reference,
        peak_kb as f64 / 1024.0
    );
    db.drop_db().await;
}

/// Reference for `writer verify`: a raw parallel Scan of the tables it verifies, with as many
/// segments as it uses and consistent reads as it reads, one table after the other as it
/// goes, items counted and dropped.
/// Returns (items, items/s).
async fn raw_scan(tables: &TestTables) -> (u64, f64) {
    let started = Instant::now();
    let mut items = 0u64;
    for kind in edge_writer::verify::VERIFIED_TABLES {
        let name = tables.names.name(kind);
        let segments = edge_writer::verify::scan::SEGMENTS;
        let counts = join_all((0..segments).map(|segment| async move {
            let mut start = None;
            let mut n = 0u64;
            loop {
                let page = tables
                    .client
                    .scan()
                    .table_name(name)
                    .segment(segment)
                    .total_segments(segments)
                    .consistent_read(true)
                    .set_exclusive_start_key(start.take())
                    .send()
                    .await
                    .expect("reference Scan");
                n += page.items().len() as u64;
                match page.last_evaluated_key() {
                    Some(k) if !k.is_empty() => start = Some(k.clone()),
                    _ => return n,
                }
            }
        }))
        .await;
        items += counts.iter().sum::<u64>();
    }
    (items, items as f64 / started.elapsed().as_secs_f64())
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
    // The same items as the job writes (each environment's item and its `_META` item).
    let env_ids: Vec<i32> = sqlx::query_scalar(
        "SELECT id FROM environments_environment WHERE project_id = $1 ORDER BY id",
    )
    .bind(project)
    .fetch_all(&db.pool)
    .await
    .expect("environment ids");
    let mut docs = Vec::with_capacity(env_ids.len());
    for id in &env_ids {
        docs.push(items_of(&db.pool, DocKey::Environment(*id)).await);
    }
    let items_per_env = docs.iter().map(Vec::len).sum::<usize>() as f64 / docs.len() as f64;
    // Warm-up, reference, job, reference: each on fresh tables of the same DynamoDB Local.
    let warm = TestTables::on_with(&dynamo.endpoint, false).await;
    raw_puts(&warm, &docs, "w").await;
    let before = raw_puts(&reference_tables, &docs, "a").await;
    let mut runs = Vec::new();
    for mode in ["puts", "transactions"] {
        let tables = if mode == "puts" {
            tables.clone()
        } else {
            TestTables::on_with(&dynamo.endpoint, false).await
        };
        let mut cmd = writer(&db, &tables);
        cmd.arg("backfill")
            .arg(format!("--project={project}"))
            .arg(format!("--batch-writes={mode}"));
        let (summary, wall, _) = run_measured(cmd).await;
        runs.push((mode, summary, wall));
    }
    let after_tables = TestTables::on_with(&dynamo.endpoint, false).await;
    let after = raw_puts(&after_tables, &docs, "b").await;
    let raw = before.max(after);
    for (mode, summary, wall) in runs {
        let rate = environments as f64 / wall.as_secs_f64();
        println!(
            "backfill batch_writes={mode} environments={environments} written={} items_per_environment={items_per_env:.1} \
             wall_s={:.2} (its own run {:.2} s, process start and connections aside) \
             environments_per_s={rate:.1} raw_put_environments_per_s_before={before:.1} \
             raw_put_environments_per_s_after={after:.1} ratio={:.2}",
            summary["written"],
            wall.as_secs_f64(),
            summary["seconds"].as_f64().unwrap_or(f64::NAN),
            rate / raw
        );
    }
    db.drop_db().await;
}

/// Documents a backfill can have writing at once with its defaults: 4 batches in flight, 16
/// documents of each writing at a time.
const BACKFILL_DOCUMENTS_IN_FLIGHT: usize = 4 * 16;

/// Reference: conditional PutItem of each document's items (in parallel), as many documents
/// at a time as the backfill can have. Returns documents per second.
async fn raw_puts(tables: &TestTables, docs: &[Vec<(TableKind, Item)>], tag: &str) -> f64 {
    let store = tables.store();
    let started = Instant::now();
    stream::iter(docs.iter())
        .map(|items| {
            let store = store.clone();
            async move {
                join_all(items.iter().map(|(table, item)| {
                    store.put(*table, rekeyed(*table, item, tag), 1, &Guard::Version)
                }))
                .await
                .into_iter()
                .for_each(|r| {
                    r.expect("raw put");
                });
            }
        })
        .buffer_unordered(BACKFILL_DOCUMENTS_IN_FLIGHT)
        .for_each(|()| async {})
        .await;
    docs.len() as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let o = options();
    edge_tests::init_logging();
    println!("machine: {}", edge_tests::machine());
    for count in &o.counts {
        migration_case(*count, o.verify_only).await;
    }
    if !o.verify_only {
        backfill_case(o.environments).await;
    }
}
