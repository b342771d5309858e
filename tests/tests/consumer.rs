//! The stream consumer against real services: two DynamoDB Local instances as two regions
//! (with the test relay standing in for global-table replication), Postgres, Redis and a
//! local webhook receiver; and the real `stream-consumer` binary in Lambda mode.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use edge_documents::item::{encode, Item, ReplicationMeta, ATTR_VERSION};
use edge_documents::tables::TableKind;
use edge_tests::core::{basic_project, TraitVal, Val};
use edge_tests::dynamo::{version_of, TestTables};
use edge_tests::lambda_api::{consumer_binary, consumer_command, RuntimeApi};
use edge_tests::pg::TestDb;
use edge_tests::regions::{test_invalidation, TwoRegions, HOME, OTHER};
use edge_tests::webhook::{Received, Receiver};
use edge_tests::writer::{writer_command, InProcessWriter};
use edge_tests::{init_logging, wait};
use futures::StreamExt;
use stream_consumer::invalidate::redis::RedisTarget;
use stream_consumer::invalidate::webhook::WebhookTarget;
use stream_consumer::invalidate::{Invalidation, Target};

const REDIS_URL: &str = "redis://127.0.0.1:6379";
const SECRET: &str = "test-webhook-secret";

fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| REDIS_URL.to_string())
}

/// Waits until both regions acknowledged `item_key` at `version` or later; returns the lags.
async fn wait_acked(regions: &TwoRegions, item_key: &str, version: i64) -> Vec<(String, i64)> {
    wait::until(
        &format!("{item_key} v{version} acknowledged by {HOME} and {OTHER}"),
        Duration::from_secs(60),
        || async {
            let acks = regions.acks(item_key).await;
            let lags: Vec<(String, i64)> = [HOME, OTHER]
                .iter()
                .filter_map(|r| {
                    acks.iter()
                        .find(|a| a.region == *r && a.version >= version)
                        .map(|a| (r.to_string(), a.lag_ms.unwrap_or(-1)))
                })
                .collect();
            (lags.len() == 2).then_some(lags)
        },
    )
    .await
}

/// Whether an invalidation (a webhook body or a Redis message) names the environment item
/// of `envAck` at `version` or later.
fn names_environment_at(changes: &[serde_json::Value], version: i64) -> bool {
    changes.iter().any(|c| {
        c["table"] == "environments"
            && c["environment_api_key"] == "envAck"
            && c["version"].as_i64().is_some_and(|v| v >= version)
    })
}

/// The regions whose webhook calls so far name the environment item at `version` or later.
fn webhook_regions(receiver: &Receiver, version: i64) -> BTreeSet<String> {
    receiver
        .received()
        .iter()
        .map(Received::json)
        .filter(|b| names_environment_at(b["changes"].as_array().unwrap(), version))
        .map(|b| b["region"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Reads Redis messages until both regions published the environment at `version` or later.
async fn wait_published(
    messages: &mut (impl futures::Stream<Item = redis::Msg> + Unpin),
    version: i64,
) {
    let mut seen_regions = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen_regions.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "v{version} published by {seen_regions:?} only"
        );
        let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await
        else {
            continue;
        };
        let body: serde_json::Value =
            serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
        assert_eq!(body["change"]["environment_api_key"], "envAck");
        if names_environment_at(std::slice::from_ref(&body["change"]), version) {
            seen_regions.insert(body["region"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(
        seen_regions,
        BTreeSet::from([HOME.to_string(), OTHER.to_string()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_committed_change_is_acknowledged_by_both_regions_and_invalidated() {
    init_logging();
    let db = TestDb::new().await;
    let core = edge_tests::core::Core::new(db.pool.clone());
    let prefix = format!("edge-test-{}:", uuid::Uuid::new_v4().simple());
    // The receiver fails its first two requests: the consumers must retry.
    let receiver = Receiver::start(2).await;
    let redis = redis::Client::open(redis_url()).unwrap();
    let mut conn = redis
        .get_multiplexed_async_connection()
        .await
        .expect("Redis at 127.0.0.1:6379 (TEST_REDIS_URL)");
    let mut pubsub = redis.get_async_pubsub().await.unwrap();
    pubsub
        .subscribe(format!("{prefix}invalidate:envAck"))
        .await
        .unwrap();
    let mut messages = Box::pin(pubsub.on_message());
    let cache_key = format!("{prefix}environment:envAck");

    let (url, prefix_c) = (receiver.url.clone(), prefix.clone());
    let regions = TwoRegions::start(move |_| {
        let targets: Vec<Box<dyn Target>> = vec![
            Box::new(RedisTarget::new(&redis_url(), &prefix_c).unwrap()),
            Box::new(WebhookTarget::new(&url, SECRET, Duration::from_secs(2)).unwrap()),
        ];
        test_invalidation(targets)
    })
    .await;

    let (_, project, env) = basic_project(&core, "envAck").await;
    let feature = core
        .create_feature(project, "checkout", "STANDARD", false, Val::str("v1"))
        .await;
    let writer = InProcessWriter::start_on(&db.pool, &regions.a, 2);

    let item = wait::until("the environment in region a", wait::DEFAULT, || async {
        regions.a.environment("envAck").await
    })
    .await;
    let first = version_of(&item);
    let lags = wait_acked(&regions, "environments|envAck", first).await;
    println!("first write acknowledged, lag per region (ms): {lags:?}");
    assert!(
        lags.iter().all(|(_, lag)| *lag >= 0),
        "every acknowledgement carries its lag: {lags:?}"
    );
    // The first write's invalidations are over in both regions and both targets before the
    // entry is cached: what follows can only be the change's.
    wait_published(&mut messages, first).await;
    wait::until("the first write's webhook calls", wait::DEFAULT, || async {
        (webhook_regions(&receiver, first).len() == 2).then_some(())
    })
    .await;
    let _: () = redis::cmd("SET")
        .arg(&cache_key)
        .arg("a cached environment document")
        .query_async(&mut conn)
        .await
        .unwrap();

    // A change committed in core: acknowledged by both regions at its new version.
    core.set_flag(env, feature, true, Val::str("v2")).await;
    let version = wait::until("the new version in region a", wait::DEFAULT, || async {
        let item = regions.a.environment("envAck").await?;
        let doc = edge_tests::dynamo::document_of(&item).to_string();
        doc.contains("\"v2\"").then(|| version_of(&item))
    })
    .await;
    assert!(version > first);
    let lags = wait_acked(&regions, "environments|envAck", version).await;
    println!("change acknowledged, lag per region (ms): {lags:?}");
    let item_b = regions
        .b
        .environment("envAck")
        .await
        .expect("relayed to region b");
    assert_eq!(
        version_of(&item_b),
        version,
        "region b holds the same version"
    );

    // Redis: the entry cached after the first write is gone, and both regions published the
    // change.
    wait::until("the cached entry deleted", wait::DEFAULT, || async {
        let exists: bool = redis::cmd("EXISTS")
            .arg(&cache_key)
            .query_async(&mut conn.clone())
            .await
            .ok()?;
        (!exists).then_some(())
    })
    .await;
    wait_published(&mut messages, version).await;

    // Webhook: signed calls from both regions naming the change.
    wait::until("webhook calls from both regions", wait::DEFAULT, || async {
        (webhook_regions(&receiver, version).len() == 2).then_some(())
    })
    .await;
    let received = receiver.received();
    for r in &received {
        assert!(r.signed_with(SECRET), "signature of {:?}", r.signature);
        assert!(!r.signed_with("another secret"));
        let changes = r.json()["changes"].as_array().unwrap().clone();
        assert!(changes.iter().all(|c| c["environment_api_key"] == "envAck"));
    }
    // The two refused calls were sent again, the same changes from the same region.
    let refused = receiver.refused();
    assert_eq!(refused.len(), 2, "the receiver refused its first two calls");
    for r in &refused {
        let (region, changes) = (r.json()["region"].clone(), r.json()["changes"].clone());
        assert!(
            received
                .iter()
                .any(|ok| ok.json()["region"] == region && ok.json()["changes"] == changes),
            "the refused call of {region} with {changes} was never retried"
        );
    }
    assert!(
        regions.invalidation_failures().is_empty(),
        "{:?}",
        regions.invalidation_failures()
    );
    let lags_ms = regions.lags_ms();
    let max = lags_ms.iter().max().copied().unwrap_or_default();
    println!(
        "replication lag over {} acknowledgements: max {max} ms",
        lags_ms.len()
    );
    assert!(regions.failures().is_empty(), "{:?}", regions.failures());
    writer.stop().await;
    db.drop_db().await;
}

/// Runs `writer verify` for both regions; returns (exit code, stdout).
async fn verify(db: &TestDb, regions: &TwoRegions, extra: &[&str]) -> (i32, String) {
    let out = writer_command(&db.url, &regions.a)
        .arg("verify")
        .arg(format!("--region={HOME}={}", regions.a.endpoint))
        .arg(format!("--region={OTHER}={}", regions.b.endpoint))
        .arg("--recheck-after-secs=1")
        .args(extra)
        .output()
        .await
        .expect("run writer verify");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let code = out.status.code().unwrap_or(-1);
    assert!(code != 1, "verify failed to run:\n{stdout}\n{stderr}");
    (code, stdout)
}

fn key(pairs: &[(&str, &str)]) -> HashMap<String, AttributeValue> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), AttributeValue::S(v.to_string())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corruption_in_a_replica_is_detected_by_the_consumer_and_by_verify_and_repaired() {
    init_logging();
    let db = TestDb::new().await;
    let core = edge_tests::core::Core::new(db.pool.clone());
    let regions = TwoRegions::start(|_| Invalidation::none()).await;
    let (_, project, env) = basic_project(&core, "envDrift").await;
    core.create_feature(project, "checkout", "STANDARD", true, Val::str("v1"))
        .await;
    let identity = core.create_identity(env, "alice").await;
    core.set_trait(identity, "plan", TraitVal::Str("gold".into()))
        .await;
    let writer = InProcessWriter::start_on(&db.pool, &regions.a, 2);
    wait::writer_idle(&db.pool, wait::DEFAULT).await;
    let env_item = regions.a.environment("envDrift").await.unwrap();
    let id_key = key(&[("composite_key", "envDrift_alice")]);
    let api_key = key(&[("key", "ser.envDrift")]);
    let identity_item = get(&regions.a, TableKind::Identities, &id_key)
        .await
        .unwrap();
    wait_acked(&regions, "environments|envDrift", version_of(&env_item)).await;
    wait_acked(
        &regions,
        "identities|envDrift_alice",
        version_of(&identity_item),
    )
    .await;
    wait_acked(&regions, "environment_api_keys|ser.envDrift", 0).await;
    let (code, out) = verify(&db, &regions, &["--ack-deadline-secs=3600"]).await;
    assert_eq!(code, 0, "a faithful pair of regions verifies:\n{out}");

    // Behind the writer's back, in region b: a changed attribute, an older version, a delete.
    let mut tampered = regions.b.environment("envDrift").await.unwrap();
    tampered.insert("name".into(), AttributeValue::S("tampered".into()));
    put(&regions.b, TableKind::Environments, tampered).await;
    let mut older = get(&regions.b, TableKind::Identities, &id_key)
        .await
        .unwrap();
    let v = version_of(&older);
    older.insert(ATTR_VERSION.into(), AttributeValue::N((v - 1).to_string()));
    put(&regions.b, TableKind::Identities, older).await;
    regions
        .b
        .client
        .delete_item()
        .table_name(regions.b.names.name(TableKind::EnvironmentApiKeys))
        .set_key(Some(api_key.clone()))
        .send()
        .await
        .unwrap();

    // The consumer of region b reports each of them.
    let expected = [
        "content hash",
        "version went backwards",
        "removed without a delete of the writer",
    ];
    wait::until(
        "region b's consumer to report all three",
        Duration::from_secs(60),
        || async {
            let failures = regions.failures();
            expected
                .iter()
                .all(|e| failures.iter().any(|(r, f)| r == OTHER && f.contains(e)))
                .then_some(())
        },
    )
    .await;

    // verify finds them too, then repairs them.
    let (code, out) = verify(&db, &regions, &["--ack-deadline-secs=3600"]).await;
    assert_eq!(code, 2, "drift exits with 2:\n{out}");
    for (kind, item) in [
        ("Corrupted", "environments|envDrift"),
        ("Stale", "identities|envDrift_alice"),
        ("Missing", "environment_api_keys|ser.envDrift"),
    ] {
        // verify prints a server-side key by its prefix only.
        let item = edge_documents::redact::item_key(item);
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("{OTHER}\t{kind}\t{item}\t"))),
            "{kind} {item} in region {OTHER} is listed:\n{out}"
        );
    }
    println!("{out}");
    let (code, out) = verify(&db, &regions, &["--ack-deadline-secs=3600", "--repair"]).await;
    assert_eq!(code, 3, "repaired drift exits with 3:\n{out}");

    // Once replication has carried the repair, both regions verify, acknowledgements included.
    wait::until(
        "both regions to verify clean after the repair",
        Duration::from_secs(90),
        || async {
            let (code, _) = verify(&db, &regions, &["--ack-deadline-secs=1"]).await;
            (code == 0).then_some(())
        },
    )
    .await;
    let repaired = regions.b.environment("envDrift").await.unwrap();
    assert_ne!(
        edge_tests::dynamo::document_of(&repaired)["name"],
        "tampered"
    );
    writer.stop().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_no_region_confirmed_are_listed_as_unconfirmed() {
    init_logging();
    let db = TestDb::new().await;
    let core = edge_tests::core::Core::new(db.pool.clone());
    let tables = TestTables::new().await;
    basic_project(&core, "envNoAck").await;
    let writer = InProcessWriter::start_on(&db.pool, &tables, 1);
    wait::writer_idle(&db.pool, wait::DEFAULT).await;
    writer.stop().await;
    // No consumer runs: once the deadline has passed, every write is unconfirmed.
    let out = wait::until("the deadline to pass", Duration::from_secs(30), || async {
        let out = writer_command(&db.url, &tables)
            .args(["verify", "--ack-deadline-secs=1"])
            .arg(format!("--region=solo={}", tables.endpoint))
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        // Each document passes the deadline on its own; wait for the environment's.
        (out.status.code() == Some(2)
            && stdout
                .lines()
                .any(|l| l.starts_with("solo\tUnconfirmed\tenvironments|envNoAck\t")))
        .then_some(stdout)
    })
    .await;
    for item in ["environments_v2|", "environment_api_keys|ser.envNoAck"] {
        // verify prints a server-side key by its prefix only.
        let item = edge_documents::redact::item_key(item);
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("solo\tUnconfirmed\t{item}"))),
            "{item} is unconfirmed:\n{out}"
        );
    }
    db.drop_db().await;
}

async fn get(
    tables: &TestTables,
    table: TableKind,
    key: &HashMap<String, AttributeValue>,
) -> Option<Item> {
    tables
        .client
        .get_item()
        .table_name(tables.names.name(table))
        .set_key(Some(key.clone()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
}

async fn put(tables: &TestTables, table: TableKind, item: Item) {
    tables
        .client
        .put_item()
        .table_name(tables.names.name(table))
        .set_item(Some(item))
        .send()
        .await
        .unwrap();
}

fn lambda_image(item: &Item) -> serde_json::Value {
    let item: serde_dynamo::Item = item
        .clone()
        .into_iter()
        .map(|(k, v)| (k, serde_dynamo::AttributeValue::from(v)))
        .collect::<HashMap<_, _>>()
        .into();
    serde_json::to_value(item).unwrap()
}

fn environment_item(version: i64) -> Item {
    let meta = ReplicationMeta {
        version,
        source_time: chrono::Utc::now().to_rfc3339(),
        doc_key: "environment:1".into(),
    };
    encode(
        &serde_json::json!({"api_key": "envPoison", "name": "Production", "id": 1}),
        &meta,
        None,
    )
    .unwrap()
    .item
}

/// The real binary in Lambda mode: one poisoned record in a batch of three is reported, and
/// it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_poison_record_reports_exactly_that_record() {
    init_logging();
    let tables = TestTables::new().await;
    let api = RuntimeApi::start().await;
    let mut child = consumer_command(&consumer_binary(), &api)
        .env("AWS_ENDPOINT_URL", &tables.endpoint)
        .env("EDGE_REGION", "local")
        .env(
            "EDGE_TABLE_PREFIX",
            tables
                .names
                .environments
                .trim_end_matches("flagsmith_environments"),
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the consumer binary");
    let arn = format!(
        "arn:aws:dynamodb:eu-west-2:000000000000:table/{}/stream/2026-11-26T00:00:00.000",
        tables.names.environments
    );
    let mut poisoned = environment_item(2);
    poisoned.insert(
        "name".into(),
        AttributeValue::S("changed behind the writer's back".into()),
    );
    let record = |seq: &str, new: &Item| {
        serde_json::json!({
            "eventID": seq, "eventName": "MODIFY", "eventSource": "aws:dynamodb",
            "awsRegion": "eu-west-2", "eventSourceARN": arn,
            "dynamodb": {"SequenceNumber": seq, "Keys": {"api_key": {"S": "envPoison"}},
                         "NewImage": lambda_image(new), "StreamViewType": "NEW_AND_OLD_IMAGES"}
        })
    };
    let event = serde_json::json!({"Records": [
        record("100", &environment_item(1)),
        record("200", &poisoned),
        record("300", &environment_item(3)),
    ]});
    let id = api.invoke(event);
    let invocation = wait::until("the consumer's response", wait::DEFAULT, || async {
        if let Some(e) = api.init_error() {
            panic!("the consumer failed to start: {e}");
        }
        api.invocation(&id)
    })
    .await;
    let response = invocation.response.expect("a response, not an error");
    assert_eq!(
        response["batchItemFailures"],
        serde_json::json!([{"itemIdentifier": "200"}]),
        "{response}"
    );
    // The record before the poison was acknowledged; the one after it was not (it is
    // redelivered with the poison).
    let ack = tables
        .client
        .get_item()
        .table_name(&tables.names.acks)
        .set_key(Some(key(&[
            ("item_key", "environments|envPoison"),
            ("region", "local"),
        ])))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .and_then(|i| edge_documents::acks::Ack::from_item(&i))
        .expect("the first record is acknowledged");
    assert_eq!(ack.version, 1);
    let _ = child.kill().await;
}

/// The CloudFront target against a local endpoint speaking CloudFront's API: the real SDK
/// request (XML body, distribution in the path), retried after a throttling answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudfront_invalidations_are_sent_with_the_filled_paths() {
    use axum::body::Bytes;
    use axum::http::{StatusCode, Uri};
    use std::sync::{Arc, Mutex};
    use stream_consumer::invalidate::cloudfront::CloudFrontTarget;
    use stream_consumer::invalidate::Change;

    init_logging();
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let seen_c = seen.clone();
    let app = axum::Router::new().fallback(move |uri: Uri, body: Bytes| {
        let seen = seen_c.clone();
        async move {
            let mut seen = seen.lock().unwrap();
            seen.push((uri.path().to_string(), String::from_utf8_lossy(&body).to_string()));
            if seen.len() == 1 {
                // CloudFront's throttling answer: the target retries.
                return (
                    StatusCode::BAD_REQUEST,
                    [("content-type", "text/xml")],
                    "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error></ErrorResponse>".to_string(),
                );
            }
            (
                StatusCode::CREATED,
                [("content-type", "text/xml")],
                "<Invalidation><Id>I1</Id><Status>InProgress</Status><CreateTime>2026-11-26T00:00:00Z</CreateTime><InvalidationBatch><Paths><Quantity>1</Quantity><Items><Path>/x</Path></Items></Paths><CallerReference>r</CallerReference></InvalidationBatch></Invalidation>".to_string(),
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let sdk = stream_consumer::config::loader()
        .endpoint_url(&endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "local", "local", None, None, "static",
        ))
        .load()
        .await;
    let target = CloudFrontTarget::new(
        aws_sdk_cloudfront_client(&sdk),
        "EDFDVBD6EXAMPLE",
        vec!["/api/v1/environment-document/{environment_api_key}*".into()],
    )
    .unwrap();
    let changes = vec![Change {
        table: "environments",
        doc_key: "environment:1".into(),
        version: 7,
        environment_api_key: Some("envCdn".into()),
        identifier: None,
        server_key: None,
        removed: false,
    }];
    let inv = test_invalidation(vec![Box::new(target)]);
    let failures = inv.run("a", &changes).await;
    assert!(failures.is_empty(), "{failures:?}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        2,
        "one throttled attempt, one accepted: {seen:?}"
    );
    let (path, body) = &seen[1];
    assert_eq!(
        path,
        "/2020-05-31/distribution/EDFDVBD6EXAMPLE/invalidation"
    );
    assert!(
        body.contains("<Path>/api/v1/environment-document/envCdn*</Path>"),
        "{body}"
    );
    assert!(body.contains("<Quantity>1</Quantity>"), "{body}");
    server.abort();
}

fn aws_sdk_cloudfront_client(sdk: &aws_config::SdkConfig) -> aws_sdk_cloudfront::Client {
    aws_sdk_cloudfront::Client::new(sdk)
}
