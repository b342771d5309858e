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
use futures::future::join_all;
use serde_json::{json, Value};
use stream_consumer::invalidate::redis::RedisTarget;
use stream_consumer::invalidate::{Invalidation, Target};
use stream_consumer::lambda::handle_event;
use stream_consumer::ledger::DynamoLedger;
use stream_consumer::Consumer;

/// Lambda's default batch size for DynamoDB streams.
const BATCH: usize = 100;
const FLAGSMITH_COLD_START_MS: f64 = 400.0;

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

async fn raw_puts(tables: &TestTables, count: usize, offset: i64) -> f64 {
    let started = Instant::now();
    let now = chrono::Utc::now();
    for chunk in (0..count).collect::<Vec<_>>().chunks(16) {
        join_all(chunk.iter().map(|i| {
            let ack = Ack {
                item_key: format!("reference|{}", i % 1000),
                region: "ref".into(),
                version: offset + *i as i64 + 1,
                doc_key: "environment:0".into(),
                hash: "sha256:0".into(),
                removed: false,
                source_time: now.to_rfc3339(),
                recorded_at_ms: now.timestamp_millis(),
                lag_ms: Some(1),
            };
            acks::put_newer(&tables.client, &tables.names.acks, &ack).send()
        }))
        .await
        .into_iter()
        .for_each(|r| {
            r.expect("reference PutItem");
        });
    }
    count as f64 / started.elapsed().as_secs_f64()
}

async fn consume(
    tables: &TestTables,
    events: &[Value],
    invalidation: Invalidation,
) -> (f64, usize) {
    let ledger = DynamoLedger::new(tables.client.clone(), tables.names.acks.clone());
    let consumer = Consumer::new("bench", ledger, invalidation);
    let started = Instant::now();
    let mut verified = 0;
    for event in events {
        let (response, report) = handle_event(&consumer, &tables.names, event).await;
        assert!(
            response.batch_item_failures.is_empty(),
            "{:?}",
            report.failure
        );
        verified += report.verified;
    }
    (verified as f64 / started.elapsed().as_secs_f64(), verified)
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
    let events = events(&tables, records, 0);

    let verify_rate = verify_only(&events, &tables);
    // DynamoDB Local runs on the JVM: warm it up, then measure the reference before and after
    // the consumer runs and compare with the mean, so that neither side gets the warmer JVM.
    raw_puts(&tables, 5_000, 0).await;
    let reference_before = raw_puts(&tables, records.min(10_000), 10_000).await;
    let (rate, verified) = consume(&tables, &events, Invalidation::none()).await;
    let redis_url =
        std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let redis_targets: Vec<Box<dyn Target>> = vec![Box::new(
        RedisTarget::new(&redis_url, "edge-bench:").unwrap(),
    )];
    // Higher versions, so that every acknowledgement is written again.
    let events2 = self::events(&tables, records, records as i64);
    let (rate_redis, _) = consume(
        &tables,
        &events2,
        Invalidation::new(redis_targets, 4, Duration::from_millis(50)),
    )
    .await;
    let reference_after = raw_puts(&tables, records.min(10_000), 100_000).await;
    let reference = (reference_before + reference_after) / 2.0;

    println!();
    println!("records verified: {verified}");
    println!(
        "reference: raw conditional PutItem into the ledger table, 16 at once: {reference:.0} items/s \
         (before {reference_before:.0}, after {reference_after:.0})"
    );
    println!(
        "verification alone (decode, hash, version check; no I/O): {verify_rate:.0} records/s"
    );
    println!(
        "consumer (verify + acknowledge): {rate:.0} records/s = {:.2}x the reference",
        rate / reference
    );
    println!(
        "consumer + Redis invalidation: {rate_redis:.0} records/s = {:.2}x the reference",
        rate_redis / reference
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
