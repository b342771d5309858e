//! Benchmark: commit -> DynamoDB latency at a steady change rate, and coalesced throughput,
//! each against a reference measured in the same run on the same kind of table (raw
//! conditional PutItem into a streams-enabled DynamoDB Local table).
//!
//! The latency reference is interleaved with the writer's samples: during the steady phase
//! a raw PutItem of a document of the same size goes out half a period after each change, so
//! both sides see the same JVM, the same table and the same load. A warm-up phase of both
//! runs first and is not recorded. The throughput reference is measured right before and
//! right after the burst; the faster of the two is the one compared with.
//!
//! Run with `infra/local/bench.sh` (release build, real Postgres, a fresh DynamoDB Local).
//! Options: `--rate N` changes per second (20), `--seconds N` (20), `--warmup N` seconds
//! (10), `--environments N` (20), `--burst N` changes for the coalescing run (10000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_documents::item::{encode, ReplicationMeta};
use edge_documents::tables::TableKind;
use edge_tests::core::{Core, Val};
use edge_tests::counting::CountingStore;
use edge_tests::dynamo::{document_of, start_instance, TestTables};
use edge_tests::pg::TestDb;
use edge_tests::writer::{test_settings, InProcessWriter};
use edge_writer::replicate::Replicator;
use edge_writer::store::{Guard, ItemStore};
use futures::future::join_all;
use serde_json::Value;

struct Options {
    rate: u64,
    seconds: u64,
    warmup: u64,
    environments: usize,
    burst: usize,
}

fn options() -> Options {
    let mut o = Options {
        rate: 20,
        seconds: 20,
        warmup: 10,
        environments: 20,
        burst: 10_000,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        let Some(value) = value.filter(|v| *v > 0) else {
            eprintln!("usage: bench [--rate N] [--seconds N] [--warmup N] [--environments N] [--burst N] (positive integers)");
            std::process::exit(2);
        };
        match args[i].as_str() {
            "--rate" => o.rate = value,
            "--seconds" => o.seconds = value,
            "--warmup" => o.warmup = value,
            "--environments" => o.environments = value as usize,
            "--burst" => o.burst = value as usize,
            other => {
                eprintln!("unknown option {other}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    o
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn flag_value(tables: &TestTables, api_key: &str) -> Option<i64> {
    let item = tables.environment(api_key).await?;
    let doc = document_of(&item);
    doc["feature_states"]
        .as_array()?
        .iter()
        .find(|f| f["feature"]["name"] == "counter")?["feature_state_value"]
        .as_i64()
}

/// Reference: one conditional PutItem of an environment-sized item (key `raw{n % 20}`, version
/// `n + 1`), timed.
async fn raw_put(store: &edge_writer::store::DynamoStore, body: &Value, n: usize) -> Duration {
    let mut body = body.clone();
    body["api_key"] = Value::from(format!("raw{}", n % 20));
    let meta = ReplicationMeta {
        version: n as i64 + 1,
        source_time: "2025-01-01T00:00:00+00:00".into(),
        doc_key: format!("bench:{}", n % 20),
    };
    let item = encode(&body, &meta, Some(350 * 1024)).unwrap().item;
    let t = Instant::now();
    store
        .put(TableKind::Environments, item, n as i64 + 1, &Guard::Version)
        .await
        .expect("raw put");
    t.elapsed()
}

/// A steady phase: `rate` changes per second for `seconds`, each timed from its commit to
/// its value being readable in DynamoDB, and half a period after each change a raw PutItem,
/// timed. Returns both samples, sorted.
#[allow(clippy::too_many_arguments)]
async fn steady(
    core: &Core,
    tables: &TestTables,
    envs: &[i32],
    counter: i32,
    sample: &Value,
    rate: u64,
    seconds: u64,
    first_value: i32,
) -> (Vec<Duration>, Vec<Duration>) {
    let total = (rate * seconds) as usize;
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let tables_arc = Arc::new(tables.clone());
    let store = tables.store();
    let mut watchers = Vec::with_capacity(total);
    let mut raws = Vec::with_capacity(total);
    let started = Instant::now();
    for n in 0..total {
        let due = started + period.mul_f64(n as f64);
        tokio::time::sleep_until(due.into()).await;
        let env_index = n % envs.len();
        let value = first_value + n as i32;
        core.set_flag(envs[env_index], counter, true, Val::Int(value))
            .await;
        let committed = Instant::now();
        let tables = tables_arc.clone();
        watchers.push(tokio::spawn(async move {
            let key = format!("bench{env_index}");
            loop {
                if flag_value(&tables, &key)
                    .await
                    .is_some_and(|v| v >= i64::from(value))
                {
                    return committed.elapsed();
                }
                if committed.elapsed() > Duration::from_secs(60) {
                    panic!("change {value} to {key} not visible after 60 s");
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
        let (store, body) = (store.clone(), sample.clone());
        let raw_due = due + period / 2;
        let raw_n = first_value as usize + n;
        raws.push(tokio::spawn(async move {
            tokio::time::sleep_until(raw_due.into()).await;
            raw_put(&store, &body, raw_n).await
        }));
    }
    let mut lat: Vec<Duration> = join_all(watchers)
        .await
        .into_iter()
        .map(|r| r.expect("watcher"))
        .collect();
    let mut raw: Vec<Duration> = join_all(raws)
        .await
        .into_iter()
        .map(|r| r.expect("raw put"))
        .collect();
    lat.sort();
    raw.sort();
    (lat, raw)
}

/// Reference: conditional PutItem throughput with `concurrency` writers.
async fn raw_put_throughput(
    tables: &TestTables,
    body: &Value,
    total: usize,
    concurrency: usize,
) -> f64 {
    let store = tables.store();
    let started = Instant::now();
    let per = total / concurrency;
    join_all((0..concurrency).map(|w| {
        let store = store.clone();
        let body = body.clone();
        async move {
            for i in 0..per {
                let mut body = body.clone();
                body["api_key"] = Value::from(format!("tp{w}_{i}"));
                let meta = ReplicationMeta {
                    version: 1,
                    source_time: "2025-01-01T00:00:00+00:00".into(),
                    doc_key: format!("bench:{w}:{i}"),
                };
                let item = encode(&body, &meta, Some(350 * 1024)).unwrap().item;
                store
                    .put(TableKind::Environments, item, 1, &Guard::Version)
                    .await
                    .expect("raw put");
            }
        }
    }))
    .await;
    (per * concurrency) as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let o = options();
    edge_tests::init_logging();
    eprintln!("bench: starting Postgres database and DynamoDB Local");
    let db = TestDb::new().await;
    let ddb = start_instance();
    let tables = TestTables::on(&ddb.endpoint).await;
    let core = Core::new(db.pool.clone());

    let org = core.create_organisation("Bench").await;
    let project = core.create_project(org, "Bench", true, "COMPLETE").await;
    let mut envs = Vec::new();
    for i in 0..o.environments {
        envs.push(
            core.create_environment(project, &format!("E{i}"), &format!("bench{i}"))
                .await,
        );
    }
    let counter = core
        .create_feature(project, "counter", "STANDARD", true, Val::Int(0))
        .await;
    for i in 0..9 {
        core.create_feature(
            project,
            &format!("feature_{i}"),
            "STANDARD",
            i % 2 == 0,
            Val::Str(format!("value {i}")),
        )
        .await;
    }
    let seg = core
        .create_segment(
            project,
            "beta",
            "ANY",
            &[("EQUAL", Some("beta"), Some("true"))],
        )
        .await;
    core.create_segment_override(envs[0], counter, seg, 0, true, Val::Int(-1))
        .await;

    // Initial replication.
    let store = CountingStore::new(tables.store());
    let writer = InProcessWriter::start(
        Replicator::new(db.pool.clone(), store.clone(), test_settings()),
        8,
    );
    for i in 0..envs.len() {
        let key = format!("bench{i}");
        edge_tests::wait::until("initial documents", Duration::from_secs(120), || {
            flag_value(&tables, &key)
        })
        .await;
    }
    let sample = document_of(&tables.environment("bench0").await.unwrap());
    let item_bytes = serde_json::to_vec(&sample).unwrap().len();

    // Warm-up of both sides, then the measured phase: writer and raw PutItem interleaved.
    eprintln!("bench: warm-up, {} s", o.warmup);
    steady(&core, &tables, &envs, counter, &sample, o.rate, o.warmup, 1).await;
    eprintln!(
        "bench: steady rate {} changes/s for {} s, raw PutItem interleaved",
        o.rate, o.seconds
    );
    let first_value = 1 + (o.rate * o.warmup) as i32;
    let (lat, raw) = steady(
        &core,
        &tables,
        &envs,
        counter,
        &sample,
        o.rate,
        o.seconds,
        first_value,
    )
    .await;
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    let (raw_p50, raw_p99) = (percentile(&raw, 0.5), percentile(&raw, 0.99));
    writer.stop().await;

    // Coalescing: a burst committed while no writer runs, then drained.
    eprintln!("bench: raw PutItem throughput reference (before the burst)");
    let raw_tp_before = raw_put_throughput(&tables, &sample, 2000, 8).await;
    eprintln!(
        "bench: burst of {} changes over {} environments",
        o.burst, o.environments
    );
    let burst_started = Instant::now();
    let per_conn = o.burst.div_ceil(8);
    join_all((0..8).map(|c| {
        let core = core.clone();
        let envs = envs.clone();
        async move {
            for i in 0..per_conn {
                let n = c * per_conn + i;
                if n >= o.burst {
                    break;
                }
                core.set_flag(
                    envs[n % envs.len()],
                    counter,
                    true,
                    Val::Int(1_000_000 + n as i32),
                )
                .await;
            }
        }
    }))
    .await;
    let commit_secs = burst_started.elapsed().as_secs_f64();
    let before = store.environment_puts();
    let drain_started = Instant::now();
    let writer = InProcessWriter::start(
        Replicator::new(db.pool.clone(), store.clone(), test_settings()),
        8,
    );
    edge_tests::wait::until("burst drained", Duration::from_secs(300), || async {
        let left = db.scalar_i64("SELECT (SELECT count(*) FROM edge.change_log) + (SELECT count(*) FROM edge.pending WHERE not_before <= now())").await;
        (left == 0).then_some(())
    })
    .await;
    let drain_secs = drain_started.elapsed().as_secs_f64();
    writer.stop().await;
    let burst_writes = store.environment_puts() - before;

    eprintln!("bench: raw PutItem throughput reference (after the burst)");
    let raw_tp_after = raw_put_throughput(&tables, &sample, 2000, 8).await;
    let raw_tp = raw_tp_before.max(raw_tp_after);

    println!("## Benchmark ({})", edge_tests::machine());
    println!();
    println!("Environment document: {item_bytes} bytes of JSON, {} environments, DynamoDB Local in memory with streams on.", o.environments);
    println!();
    println!("| measure | value | reference (same run) | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| commit -> DynamoDB p50, {} changes/s | {:.1} ms | raw PutItem p50 {:.1} ms (interleaved) | {:.1}x |",
        o.rate,
        ms(p50),
        ms(raw_p50),
        ms(p50) / ms(raw_p50)
    );
    println!(
        "| commit -> DynamoDB p99, {} changes/s | {:.1} ms | raw PutItem p99 {:.1} ms (interleaved) | {:.1}x |",
        o.rate,
        ms(p99),
        ms(raw_p99),
        ms(p99) / ms(raw_p99)
    );
    println!(
        "| burst: {} changes drained | {:.0} changes/s ({:.2} s) | raw PutItem x8 {:.0} items/s | {:.1}x |",
        o.burst, o.burst as f64 / drain_secs, drain_secs, raw_tp, (o.burst as f64 / drain_secs) / raw_tp
    );
    println!(
        "| burst: environment writes | {burst_writes} for {} changes ({:.0} changes per write) | | |",
        o.burst, o.burst as f64 / burst_writes.max(1) as f64
    );
    println!(
        "| raw PutItem x8 before / after the burst | {raw_tp_before:.0} / {raw_tp_after:.0} items/s | | |"
    );
    println!();
    println!(
        "(burst commit time, {} changes on 8 connections: {:.2} s; samples: {} latency, {} raw interleaved, after a {} s warm-up of both)",
        o.burst,
        commit_secs,
        lat.len(),
        raw.len(),
        o.warmup
    );
    db.drop_db().await;
}
