//! The real `stream-consumer` binary in Lambda mode against unsafe surroundings: a Redis that
//! accepts connections and never answers, a Redis URL with a password that fails at start-up,
//! and a webhook whose signing secret comes from Secrets Manager. Its output (stdout: JSON
//! logs and metrics; stderr) never shows a secret.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_documents::item::{encode, Item, ReplicationMeta};
use edge_tests::dynamo::TestTables;
use edge_tests::lambda_api::{consumer_binary, consumer_command, RuntimeApi};
use edge_tests::webhook::Receiver;
use edge_tests::{init_logging, wait};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

const PASSWORD: &str = "hunter2-redis-token-0451";

fn environment_item(api_key: &str, version: i64) -> Item {
    let meta = ReplicationMeta {
        version,
        source_time: chrono::Utc::now().to_rfc3339(),
        doc_key: "environment:1".into(),
    };
    encode(
        &serde_json::json!({"api_key": api_key, "name": "Production", "id": 1}),
        &meta,
        None,
    )
    .unwrap()
    .item
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

/// A Lambda event with one verified environment item of `api_key` at `version`.
fn event(tables: &TestTables, api_key: &str, version: i64) -> serde_json::Value {
    let arn = format!(
        "arn:aws:dynamodb:eu-west-2:000000000000:table/{}/stream/2026-11-26T00:00:00.000",
        tables.names.environments
    );
    let seq = (100 + version).to_string();
    serde_json::json!({"Records": [{
        "eventID": seq, "eventName": "MODIFY", "eventSource": "aws:dynamodb",
        "awsRegion": "eu-west-2", "eventSourceARN": arn,
        "dynamodb": {"SequenceNumber": seq, "Keys": {"api_key": {"S": api_key}},
                     "NewImage": lambda_image(&environment_item(api_key, version)),
                     "StreamViewType": "NEW_AND_OLD_IMAGES"}
    }]})
}

/// The consumer binary against `tables` and `api`, its output captured.
fn consumer(tables: &TestTables, api: &RuntimeApi) -> tokio::process::Command {
    let mut cmd = consumer_command(&consumer_binary(), api);
    cmd.env("AWS_ENDPOINT_URL", &tables.endpoint)
        .env("EDGE_REGION", "local")
        .env(
            "EDGE_TABLE_PREFIX",
            tables
                .names
                .environments
                .trim_end_matches("flagsmith_environments"),
        )
        // Every level the consumer itself logs at: no secret hides in a debug line either.
        .env(
            "RUST_LOG",
            "info,stream_consumer=debug,edge_documents=debug",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Waits for the response to `id`, failing on a start-up error.
async fn response(
    api: &RuntimeApi,
    id: &str,
    timeout: Duration,
) -> edge_tests::lambda_api::Invocation {
    wait::until("the consumer's response", timeout, || async {
        if let Some(e) = api.init_error() {
            panic!("the consumer failed to start: {e}");
        }
        api.invocation(id)
    })
    .await
}

/// Stops the child and returns everything it printed (stdout and stderr).
async fn output_of(mut child: tokio::process::Child) -> String {
    let _ = child.start_kill();
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the killed consumer exits")
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A TCP listener that accepts connections, reads what it is sent and never answers.
async fn silent_redis() -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            open.push(tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
            }));
        }
    });
    (address, accepted, task)
}

/// A Redis that accepts and never answers: the batch still finishes well before Lambda's
/// timeout, verified and acknowledged, with the invalidation counted as failed after the
/// configured attempts; nothing printed shows the Redis password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_never_answers_fails_only_the_invalidation_within_its_timeouts() {
    init_logging();
    let tables = TestTables::new().await;
    let api = RuntimeApi::start().await;
    let (address, accepted, listener) = silent_redis().await;
    let (connect_ms, response_ms, attempts) = (300u64, 300u64, 2usize);
    let child = consumer(&tables, &api)
        .env(
            "EDGE_INVALIDATE_REDIS_URL",
            format!("redis://default:{PASSWORD}@{address}"),
        )
        .env(
            "EDGE_INVALIDATE_REDIS_CONNECT_TIMEOUT_MS",
            connect_ms.to_string(),
        )
        .env(
            "EDGE_INVALIDATE_REDIS_RESPONSE_TIMEOUT_MS",
            response_ms.to_string(),
        )
        .env("EDGE_INVALIDATION_ATTEMPTS", attempts.to_string())
        .env("EDGE_INVALIDATION_RETRY_MS", "10")
        .spawn()
        .expect("start the consumer binary");

    let invoked = Instant::now();
    let id = api.invoke(event(&tables, "envHungRedis", 1));
    let invocation = response(&api, &id, wait::DEFAULT).await;
    let took = invocation.answered_at - invoked;
    let response = invocation.response.expect("a response, not an error");
    assert_eq!(
        response["batchItemFailures"],
        serde_json::json!([]),
        "a failed invalidation never fails the record: {response}"
    );
    // Each attempt is bounded by connect + response; the rest (DynamoDB Local, start-up of
    // the runtime client) takes well under the slack.
    let bound = Duration::from_millis((connect_ms + response_ms) * attempts as u64)
        + Duration::from_secs(5);
    println!("answered after {took:?} with Redis silent");
    assert!(took < bound, "answered after {took:?}, bound {bound:?}");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        attempts,
        "one connection per attempt"
    );

    let output = output_of(child).await;
    listener.abort();
    assert!(
        output.contains("cache invalidation failed after all attempts"),
        "{output}"
    );
    assert!(
        output.contains(r#""InvalidationFailures":1"#),
        "the metric counts the failed target:\n{output}"
    );
    assert!(!output.contains(PASSWORD), "the password leaked:\n{output}");
}

/// A Redis URL that the consumer refuses at start-up: the error names the URL without its
/// password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credentialed_redis_url_that_fails_at_start_up_is_printed_without_its_password() {
    init_logging();
    let tables = TestTables::new().await;
    let api = RuntimeApi::start().await;
    let child = consumer(&tables, &api)
        .env(
            "EDGE_INVALIDATE_REDIS_URL",
            format!("rediss://default:{PASSWORD}@127.0.0.1:6379/not-a-database"),
        )
        .spawn()
        .expect("start the consumer binary");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the consumer exits at start-up")
        .unwrap();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("start-up failure:\n{output}");
    assert!(!out.status.success(), "{output}");
    assert!(
        output.contains("rediss://default:***@127.0.0.1:6379"),
        "the error names the Redis:\n{output}"
    );
    assert!(!output.contains("feature"), "TLS is built in:\n{output}");
    assert!(!output.contains(PASSWORD), "the password leaked:\n{output}");
}

#[derive(Default)]
struct FakeSecretsManager {
    calls: AtomicUsize,
    secret_ids: Mutex<Vec<String>>,
}

/// Secrets Manager's `GetSecretValue` (JSON 1.1 protocol) answering `secret` for any id, or
/// `ResourceNotFoundException` without one.
async fn fake_secrets_manager(
    secret: Option<&'static str>,
) -> (String, Arc<FakeSecretsManager>, tokio::task::JoinHandle<()>) {
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    let state = Arc::new(FakeSecretsManager::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let s = state.clone();
    let app = axum::Router::new().route(
        "/",
        post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let s = s.clone();
            async move {
                let target = headers
                    .get("x-amz-target")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if target != "secretsmanager.GetSecretValue" {
                    return (StatusCode::BAD_REQUEST, HeaderMap::new(), String::new());
                }
                s.calls.fetch_add(1, Ordering::SeqCst);
                let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let id = request["SecretId"].as_str().unwrap_or_default().to_string();
                s.secret_ids.lock().unwrap().push(id.clone());
                let mut headers = HeaderMap::new();
                headers.insert(
                    "content-type",
                    "application/x-amz-json-1.1".parse().unwrap(),
                );
                let Some(secret) = secret else {
                    let answer = serde_json::json!({
                        "__type": "ResourceNotFoundException",
                        "message": "Secrets Manager can't find the specified secret."
                    });
                    return (StatusCode::BAD_REQUEST, headers, answer.to_string());
                };
                let answer = serde_json::json!({
                    "ARN": id, "Name": "edge-webhook", "SecretString": secret,
                    "VersionId": "00000000-0000-0000-0000-000000000001",
                    "VersionStages": ["AWSCURRENT"], "CreatedDate": 1764547200.0
                });
                (StatusCode::OK, headers, answer.to_string())
            }
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, state, task)
}

/// The webhook's signing secret read from Secrets Manager, once at start-up: every POST is
/// signed with it, and it is printed nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_secret_comes_from_secrets_manager_once() {
    const SECRET: &str = "signing-secret-from-secrets-manager-7f3a";
    const ARN: &str = "arn:aws:secretsmanager:eu-west-2:000000000000:secret:edge-webhook-AbCdEf";
    init_logging();
    let tables = TestTables::new().await;
    let api = RuntimeApi::start().await;
    let receiver = Receiver::start(0).await;
    let (endpoint, secrets, server) = fake_secrets_manager(Some(SECRET)).await;
    let child = consumer(&tables, &api)
        .env("AWS_ENDPOINT_URL_SECRETS_MANAGER", &endpoint)
        .env("EDGE_INVALIDATE_WEBHOOK_URL", &receiver.url)
        .env("EDGE_INVALIDATE_WEBHOOK_SECRET_ARN", ARN)
        .spawn()
        .expect("start the consumer binary");

    for version in [1, 2] {
        let id = api.invoke(event(&tables, "envSecretArn", version));
        let invocation = response(&api, &id, wait::DEFAULT).await;
        let response = invocation.response.expect("a response, not an error");
        assert_eq!(
            response["batchItemFailures"],
            serde_json::json!([]),
            "{response}"
        );
    }
    let received = wait::until("both webhook calls", wait::DEFAULT, || async {
        let r = receiver.received();
        (r.len() == 2).then_some(r)
    })
    .await;
    for r in &received {
        assert!(
            r.signed_with(SECRET),
            "signed with the secret from Secrets Manager"
        );
    }
    assert_eq!(
        secrets.calls.load(Ordering::SeqCst),
        1,
        "read once, at start-up"
    );
    assert_eq!(*secrets.secret_ids.lock().unwrap(), vec![ARN.to_string()]);

    let output = output_of(child).await;
    server.abort();
    assert!(!output.contains(SECRET), "the secret leaked:\n{output}");
}

/// A webhook secret that cannot be read: the start-up fails, naming the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_secret_that_cannot_be_read_fails_the_start_up_naming_it() {
    const ARN: &str = "arn:aws:secretsmanager:eu-west-2:000000000000:secret:missing-AbCdEf";
    init_logging();
    let tables = TestTables::new().await;
    let api = RuntimeApi::start().await;
    let (endpoint, secrets, server) = fake_secrets_manager(None).await;
    let child = consumer(&tables, &api)
        .env("AWS_ENDPOINT_URL_SECRETS_MANAGER", &endpoint)
        .env("EDGE_INVALIDATE_WEBHOOK_URL", "http://127.0.0.1:9/hook")
        .env("EDGE_INVALIDATE_WEBHOOK_SECRET_ARN", ARN)
        .spawn()
        .expect("start the consumer binary");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the consumer exits at start-up")
        .unwrap();
    server.abort();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("reading secret {ARN} from Secrets Manager"))
            && stderr.contains("ResourceNotFoundException"),
        "{stderr}"
    );
    assert_eq!(secrets.calls.load(Ordering::SeqCst), 1);
}
