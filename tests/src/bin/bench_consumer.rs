//! Benchmark of the stream consumer: records verified per second (verify, acknowledge in
//! DynamoDB Local, optionally invalidate in Redis) against raw conditional PutItem into the
//! same ledger table in the same run; and the real binary's cold start in Lambda mode
//! (process start to the first batch's response) against the 400 ms of Flagsmith's page.
//!
//! Run with `infra/local/bench.sh consumer [--records N] [--cold-starts N]`.

use std::time::{Duration, Instant};

use edge_documents::acks::{self, Ack};
use edge_documents::item::{encode, Item, ReplicationMeta};
use edge_tests::dynamo::{start_instance, TestTables};
use edge_tests::lambda_api::{consumer_binary, consumer_command, RuntimeApi};
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use stream_consumer::invalidate::redis::RedisTarget;
use stream_consumer::invalidate::{Invalidation, Target};
use stream_consumer::lambda::handle_event;
use stream_consumer::ledger::DynamoLedger;
use stream_consumer::Consumer;

/// Lambda's default batch size for DynamoDB streams.
const BATCH: usize = 100;
const FLAGSMITH_COLD_START_MS: f64 = 400.0;
/// Acknowledgements in flight, in the consumer and in the reference.
const ACKS_IN_FLIGHT: usize = 16;
/// Records of one block of the interleaved measurement.
const BLOCK: usize = 2_000;

fn options() -> (usize, usize) {
    let (mut records, mut cold) = (20_000usize, 10usize);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args
            .get(i + 1)
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|v| *v > 0);
        let Some(value) = value else {
            eprintln!("usage: bench_consumer [--records N] [--cold-starts N] (positive integers)");
            std::process::exit(2);
        };
        match args[i].as_str() {
            "--records" => records = value,
            "--cold-starts" => cold = value,
            other => {
                eprintln!("unknown option {other}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    (records, cold)
}

/// An environment item of realistic size: 20 feature states.
fn environment_item(n: usize, version: i64) -> Item {
    let features: Vec<Value> = (0..20)
        .map(|f| {
            json!({"feature": {"id": f, "name": format!("feature_{f}"), "type": "STANDARD"},
                   "enabled": f % 2 == 0, "feature_state_value": format!("value-{f}"),
                   "django_id": n * 100 + f, "featurestate_uuid": uuid::Uuid::new_v4().to_string(),
                   "multivariate_feature_state_values": []})
        })
        .collect();
    let meta = ReplicationMeta {
        version,
        source_time: chrono::Utc::now().to_rfc3339(),
        doc_key: format!("environment:{n}"),
    };
    encode(
        &json!({"api_key": format!("env{n}"), "id": n, "name": "Production",
                "project": {"id": 1, "name": "Storefront", "organisation": {"id": 1, "name": "Acme"},
                            "segments": [], "hide_disabled_flags": false},
                "feature_states": features}),
        &meta,
        Some(350 * 1024),
    )
    .unwrap()
    .item
}

fn lambda_image(item: &Item) -> Value {
    let item: serde_dynamo::Item = item
        .clone()
        .into_iter()
        .map(|(k, v)| (k, serde_dynamo::AttributeValue::from(v)))
        .collect::<std::collections::HashMap<_, _>>()
        .into();
    serde_json::to_value(item).unwrap()
}

/// `records` stream records in Lambda batches; versions start above `offset`.
fn events(tables: &TestTables, records: usize, offset: i64) -> Vec<Value> {
    let arn = format!(
        "arn:aws:dynamodb:eu-west-2:000000000000:table/{}/stream/2026",
        tables.names.environments
    );
    let all: Vec<Value> = (0..records)
        .map(|i| {
            // 1000 distinct items, each written several times at rising versions.
            let n = i % 1000;
            let item = environment_item(n, offset + 1 + i as i64);
            let mut record = json!({"eventName": "INSERT", "eventSourceARN": arn,
                   "dynamodb": {"SequenceNumber": format!("{i:020}"),
                                "Keys": {"api_key": {"S": format!("env{n}")}},
                                "NewImage": lambda_image(&item)}});
            // A rewrite carries the previous version as its old image (NEW_AND_OLD_IMAGES), so
            // the consumer's version-order check runs on it as on a real stream.
            if i >= 1000 {
                let previous = environment_item(n, offset + 1 + (i - 1000) as i64);
                record["eventName"] = json!("MODIFY");
                record["dynamodb"]["OldImage"] = lambda_image(&previous);
            }
            record
        })
        .collect();
    all.chunks(BATCH).map(|c| json!({"Records": c})).collect()
}

/// Raw conditional PutItem of acknowledgement items into the ledger table, 16 in flight (a
/// sliding window, as the consumer keeps them). Returns the time it took.
async fn raw_puts(tables: &TestTables, count: usize, offset: i64) -> Duration {
    let started = Instant::now();
    let now = chrono::Utc::now();
    stream::iter(0..count)
        .map(|i| {
            let ack = Ack {
                item_key: format!("reference|{}", i % 1000),
                region: "ref".into(),
                version: offset + i as i64 + 1,
                doc_key: "environment:0".into(),
                hash: "sha256:0".into(),
                removed: false,
                source_time: now.to_rfc3339(),
                recorded_at_ms: now.timestamp_millis(),
                lag_ms: Some(1),
            };
            acks::put_newer(&tables.client, &tables.names.acks, &ack).send()
        })
        .buffer_unordered(ACKS_IN_FLIGHT)
        .for_each(|r| {
            r.expect("reference PutItem");
            async {}
        })
        .await;
    started.elapsed()
}

/// The consumer and the reference, block by block, on the same table and JVM: each block of
/// `BLOCK` records goes through the consumer, then as many raw PutItems. Returns both rates
/// (records/s, items/s) and how many records were verified.
async fn interleaved(
    tables: &TestTables,
    events: &[Value],
    invalidation: Invalidation,
    reference_offset: i64,
) -> (f64, f64, usize) {
    let ledger = DynamoLedger::new(tables.client.clone(), tables.names.acks.clone());
    let consumer = Consumer::new("bench", ledger, invalidation);
    let (mut consumer_time, mut reference_time) = (Duration::ZERO, Duration::ZERO);
    let (mut verified, mut referenced) = (0usize, 0usize);
    for (block, chunk) in events.chunks(BLOCK / BATCH).enumerate() {
        let started = Instant::now();
        let mut records = 0;
        for event in chunk {
            let (response, report) = handle_event(&consumer, &tables.names, event).await;
            assert!(
                response.batch_item_failures.is_empty(),
                "{:?}",
                report.failure
            );
            verified += report.verified;
            records += report.records;
        }
        consumer_time += started.elapsed();
        let offset = reference_offset + (block * BLOCK) as i64;
        reference_time += raw_puts(tables, records, offset).await;
        referenced += records;
    }
    (
        verified as f64 / consumer_time.as_secs_f64(),
        referenced as f64 / reference_time.as_secs_f64(),
        verified,
    )
}

fn verify_only(events: &[Value], tables: &TestTables) -> f64 {
    let started = Instant::now();
    let mut n = 0;
    for event in events {
        for r in event["Records"].as_array().unwrap() {
            let record = stream_consumer::record::from_lambda(r, &tables.names).unwrap();
            stream_consumer::verify(record.new.as_ref().unwrap(), record.old.as_ref()).unwrap();
            n += 1;
        }
    }
    n as f64 / started.elapsed().as_secs_f64()
}

async fn cold_start(tables: &TestTables, event: &Value) -> Duration {
    let api = RuntimeApi::start().await;
    let id = api.invoke(event.clone());
    let prefix = tables
        .names
        .environments
        .trim_end_matches("flagsmith_environments")
        .to_string();
    let started = Instant::now();
    let mut child = consumer_command(&consumer_binary(), &api)
        .env("AWS_ENDPOINT_URL", &tables.endpoint)
        .env("EDGE_REGION", "bench")
        .env("EDGE_TABLE_PREFIX", prefix)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the consumer binary");
    let deadline = Instant::now() + Duration::from_secs(30);
    let answered = loop {
        if let Some(inv) = api.invocation(&id) {
            break inv;
        }
        assert!(Instant::now() < deadline, "no response within 30 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let _ = child.kill().await;
    let response = answered.response.expect("a response");
    assert_eq!(response["batchItemFailures"], json!([]), "{response}");
    answered.answered_at - started
}

#[tokio::main]
async fn main() {
    let (records, cold_starts) = options();
    println!("machine: {}", edge_tests::machine());
    let dynamo = start_instance();
    let tables = TestTables::on(&dynamo.endpoint).await;
    println!("building {records} stream records ({BATCH} per batch)...");
    // Versions rise from the warm-up to the first pass to the second, so that every
    // acknowledgement is a real write (an older one would be refused as a redelivery).
    let warm_up = events(&tables, BLOCK.min(records), 0);
    let events = self::events(&tables, records, BLOCK as i64);

    let verify_rate = verify_only(&events, &tables);
    // DynamoDB Local runs on the JVM: warm it up with both (unrecorded), then measure the
    // consumer and the reference block by block, so that both see the same JVM and table.
    interleaved(&tables, &warm_up, Invalidation::none(), 1_000_000).await;
    let (rate, reference, verified) =
        interleaved(&tables, &events, Invalidation::none(), 10_000_000).await;
    let redis_url =
        std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let redis_targets: Vec<Box<dyn Target>> = vec![Box::new(
        RedisTarget::new(&redis_url, "edge-bench:").unwrap(),
    )];
    let events2 = self::events(&tables, records, (BLOCK + records) as i64);
    let (rate_redis, reference_redis, _) = interleaved(
        &tables,
        &events2,
        Invalidation::new(redis_targets, 4, Duration::from_millis(50)),
        20_000_000,
    )
    .await;

    println!();
    println!("records verified: {verified}");
    println!(
        "verification alone (decode, hash, version check; no I/O): {verify_rate:.0} records/s"
    );
    println!(
        "consumer (verify + acknowledge): {rate:.0} records/s; reference, interleaved in blocks \
         of {BLOCK}: raw conditional PutItem into the ledger table, {ACKS_IN_FLIGHT} in flight: \
         {reference:.0} items/s; ratio {:.2}",
        rate / reference
    );
    println!(
        "consumer + Redis invalidation: {rate_redis:.0} records/s; reference (interleaved): \
         {reference_redis:.0} items/s; ratio {:.2}",
        rate_redis / reference_redis
    );

    let first = events[0].clone();
    let mut starts: Vec<Duration> = Vec::new();
    for _ in 0..cold_starts {
        starts.push(cold_start(&tables, &first).await);
    }
    starts.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p50 = ms(starts[starts.len() / 2]);
    println!(
        "cold start (process start -> first batch of {BATCH} answered), {cold_starts} runs: min {:.1} ms, p50 {p50:.1} ms, max {:.1} ms = {:.2}x Flagsmith's {FLAGSMITH_COLD_START_MS} ms",
        ms(starts[0]),
        ms(*starts.last().unwrap()),
        p50 / FLAGSMITH_COLD_START_MS
    );
}
