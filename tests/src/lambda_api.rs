//! A minimal AWS Lambda Runtime API (the `2018-06-01` interface a custom runtime polls), so
//! that the real `stream-consumer` binary can run in Lambda mode locally: it hands out the
//! queued events one at a time and records each response with the time it arrived.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct Invocation {
    pub request_id: String,
    /// The function's response, or its error report.
    pub response: Result<serde_json::Value, String>,
    pub answered_at: Instant,
}

#[derive(Default)]
struct Inner {
    queue: Mutex<VecDeque<(String, serde_json::Value)>>,
    queued: Notify,
    done: Mutex<Vec<Invocation>>,
    init_error: Mutex<Option<String>>,
}

pub struct RuntimeApi {
    /// `host:port`, the value of `AWS_LAMBDA_RUNTIME_API`.
    pub address: String,
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn next(State(inner): State<Arc<Inner>>) -> impl IntoResponse {
    loop {
        let notified = inner.queued.notified();
        if let Some((id, event)) = inner.queue.lock().unwrap().pop_front() {
            let mut headers = HeaderMap::new();
            headers.insert(
                "lambda-runtime-aws-request-id",
                HeaderValue::from_str(&id).unwrap(),
            );
            let deadline = chrono::Utc::now().timestamp_millis() + 60_000;
            headers.insert("lambda-runtime-deadline-ms", HeaderValue::from(deadline));
            headers.insert(
                "lambda-runtime-invoked-function-arn",
                HeaderValue::from_static(
                    "arn:aws:lambda:eu-west-2:000000000000:function:stream-consumer",
                ),
            );
            headers.insert(
                "lambda-runtime-trace-id",
                HeaderValue::from_static("Root=1-0-0"),
            );
            return (headers, event.to_string());
        }
        notified.await;
    }
}

async fn respond(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    let at = Instant::now();
    let response = serde_json::from_slice(&body).map_err(|e| e.to_string());
    inner.done.lock().unwrap().push(Invocation {
        request_id: id,
        response,
        answered_at: at,
    });
    StatusCode::ACCEPTED
}

async fn error(State(inner): State<Arc<Inner>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    inner.done.lock().unwrap().push(Invocation {
        request_id: id,
        response: Err(String::from_utf8_lossy(&body).to_string()),
        answered_at: Instant::now(),
    });
    StatusCode::ACCEPTED
}

async fn init_error(State(inner): State<Arc<Inner>>, body: Bytes) -> StatusCode {
    *inner.init_error.lock().unwrap() = Some(String::from_utf8_lossy(&body).to_string());
    StatusCode::ACCEPTED
}

impl RuntimeApi {
    pub async fn start() -> RuntimeApi {
        let inner = Arc::new(Inner::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(respond),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        RuntimeApi {
            address,
            inner,
            task,
        }
    }

    /// Queues an event; returns its request id.
    pub fn invoke(&self, event: serde_json::Value) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        self.inner
            .queue
            .lock()
            .unwrap()
            .push_back((id.clone(), event));
        self.inner.queued.notify_waiters();
        id
    }

    pub fn invocation(&self, request_id: &str) -> Option<Invocation> {
        self.inner
            .done
            .lock()
            .unwrap()
            .iter()
            .find(|i| i.request_id == request_id)
            .cloned()
    }

    pub fn init_error(&self) -> Option<String> {
        self.inner.init_error.lock().unwrap().clone()
    }
}

/// The `stream-consumer` binary next to the test executable, set up as a Lambda function
/// against `api` (add the consumer's `EDGE_*` variables).
pub fn consumer_command(binary: &std::path::Path, api: &RuntimeApi) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(binary);
    cmd.env("AWS_LAMBDA_RUNTIME_API", &api.address)
        .env("AWS_LAMBDA_FUNCTION_NAME", "stream-consumer")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "/local/stream-consumer")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "local")
        .env("AWS_REGION", "eu-west-2")
        .env("AWS_ACCESS_KEY_ID", "local")
        .env("AWS_SECRET_ACCESS_KEY", "local")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .kill_on_drop(true);
    cmd
}

/// The `stream-consumer` binary of this build.
pub fn consumer_binary() -> std::path::PathBuf {
    crate::target_binary("stream-consumer")
}
