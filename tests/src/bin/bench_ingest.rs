//! Benchmark of edge -> core ingestion: edge identity writes (one trait changed, as an SDK
//! identify call or the dashboard makes them) applied to core through the consumer's
//! ingestion path, per second, against raw single-row trait upserts into the same Postgres in
//! the same run (the capture triggers fire for both). The two alternate in blocks after a
//! warm-up of each, so neither side runs cold.
//!
//! Run with `infra/local/bench.sh ingest [--writes N] [--concurrency N]`.

use std::time::{Duration, Instant};

use edge_documents::item::Item;
use edge_documents::tables::TableKind;
use edge_tests::core::{basic_project, Core};
use edge_tests::edge::new_identity;
use edge_tests::pg::TestDb;
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use stream_consumer::ingest::{Ingestion, Outcome, Role};
use stream_consumer::record::ChangeRecord;

const IDENTITIES: usize = 2_000;
const BLOCK: usize = 250;

fn options() -> (usize, usize) {
    let (mut writes, mut concurrency) = (4_000usize, 4usize);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args
            .get(i + 1)
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|v| *v > 0);
        let Some(value) = value else {
            eprintln!("usage: bench_ingest [--writes N] [--concurrency N] (positive integers)");
            std::process::exit(2);
        };
        match args[i].as_str() {
            "--writes" => writes = value,
            "--concurrency" => concurrency = value,
            other => {
                eprintln!("unknown option {other}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    (writes, concurrency)
}

fn item(doc: &Value) -> Item {
    serde_dynamo::aws_sdk_dynamodb_1::to_item(doc.clone()).expect("an identity document")
}

fn with_trait(doc: &Value, n: usize) -> Value {
    let mut doc = doc.clone();
    doc["identity_traits"] = json!([
        {"trait_key": "plan", "trait_value": "gold"},
        {"trait_key": "visits", "trait_value": n},
    ]);
    doc
}

#[tokio::main]
async fn main() {
    let (writes, concurrency) = options();
    let db = TestDb::new().await;
    let core = Core::new(db.pool.clone());
    let (_, project, env) = basic_project(&core, "benchEnv").await;
    edge_ingest::switch::set(&db.pool, project, Some(true))
        .await
        .expect("ingestion on");
    let ingestion = Ingestion::from_pool(db.pool.clone(), Role::Home);

    // The identities, created at the edge once (ingested: they exist in core from then on).
    let docs: Vec<Value> = (0..IDENTITIES)
        .map(|i| with_trait(&new_identity("benchEnv", &format!("user-{i}"), &[]), 0))
        .collect();
    stream::iter(docs.iter().map(|d| {
        let record = record(None, d);
        let ingestion = ingestion.clone();
        async move { apply(&ingestion, &record).await }
    }))
    .buffer_unordered(concurrency)
    .collect::<Vec<()>>()
    .await;
    edge_writer::capture::drain_all(&db.pool, 5_000)
        .await
        .expect("drain the change log");
    let ids: Vec<i32> = sqlx::query_scalar(
        "SELECT id FROM environments_identity WHERE environment_id = $1 ORDER BY identifier",
    )
    .bind(env)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(ids.len(), IDENTITIES);

    let mut counter = 0usize;
    let mut ingest_time = Duration::ZERO;
    let mut raw_time = Duration::ZERO;
    let (mut ingested, mut raw) = (0usize, 0usize);
    let blocks = writes.div_ceil(BLOCK);
    // Block 0 of each side is a warm-up and not counted.
    for block in 0..=blocks {
        // Edge writes: each changes the `visits` trait of one identity (old image -> new).
        let records: Vec<ChangeRecord> = (0..BLOCK)
            .map(|_| {
                counter += 1;
                let d = &docs[counter % IDENTITIES];
                record(Some(&with_trait(d, counter - 1)), &with_trait(d, counter))
            })
            .collect();
        let t = Instant::now();
        stream::iter(records.iter().map(|r| apply(&ingestion, r)))
            .buffer_unordered(concurrency)
            .collect::<Vec<()>>()
            .await;
        let took = t.elapsed();
        // The reference: the same number of single-row trait upserts, as core's identify does.
        let rows: Vec<(i32, usize)> = (0..BLOCK)
            .map(|k| (ids[(counter + k) % IDENTITIES], counter + k))
            .collect();
        let t = Instant::now();
        stream::iter(rows.iter().map(|(id, n)| {
            let pool = db.pool.clone();
            async move {
                sqlx::query(
                    r#"INSERT INTO environments_trait (trait_key, value_type, integer_value,
                           created_date, identity_id)
                       VALUES ('visits_raw', 'int', $2, now(), $1)
                       ON CONFLICT (trait_key, identity_id) DO UPDATE SET
                           integer_value = excluded.integer_value"#,
                )
                .bind(id)
                .bind(*n as i32)
                .execute(&pool)
                .await
                .expect("raw upsert");
            }
        }))
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
        let raw_took = t.elapsed();
        // The live writer resolves the change log continuously; here, between blocks (not
        // timed), so that the change log stays as short as it is in production.
        edge_writer::capture::drain_all(&db.pool, 5_000)
            .await
            .expect("drain the change log");
        if block > 0 {
            ingest_time += took;
            raw_time += raw_took;
            ingested += BLOCK;
            raw += BLOCK;
        }
    }
    let rate = ingested as f64 / ingest_time.as_secs_f64();
    let raw_rate = raw as f64 / raw_time.as_secs_f64();
    println!("machine: {}", edge_tests::machine());
    println!(
        "edge identity writes ingested: {ingested} in {:.2} s = {rate:.0}/s (concurrency {concurrency})",
        ingest_time.as_secs_f64()
    );
    println!(
        "raw single-row trait upserts (same Postgres, interleaved): {raw} in {:.2} s = {raw_rate:.0}/s",
        raw_time.as_secs_f64()
    );
    println!("ratio: {:.2}", rate / raw_rate);
    db.drop_db().await;
}

fn record(old: Option<&Value>, new: &Value) -> ChangeRecord {
    let key = new["composite_key"].as_str().unwrap().to_string();
    ChangeRecord {
        sequence: "0".into(),
        table: TableKind::Identities,
        keys: [(
            "composite_key".to_string(),
            aws_sdk_dynamodb::types::AttributeValue::S(key),
        )]
        .into(),
        new: Some(item(new)),
        old: old.map(item),
        created_at: Some(chrono::Utc::now()),
    }
}

async fn apply(ingestion: &Ingestion, record: &ChangeRecord) {
    let key = match record.keys.get("composite_key") {
        Some(aws_sdk_dynamodb::types::AttributeValue::S(k)) => k.clone(),
        _ => unreachable!("built above"),
    };
    match ingestion.apply(record, &key).await {
        Ok(Outcome::Ingested(_)) => {}
        other => panic!("ingesting {key}: {other:?}"),
    }
}
