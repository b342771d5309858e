//! A local HTTP receiver for webhook invalidations: records every request (accepted and
//! refused apart), checks nothing itself (the tests check the signature), and can be told to
//! fail its first requests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct Received {
    pub signature: Option<String>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("webhook bodies are JSON")
    }

    /// Whether the signature header is the HMAC-SHA256 of the body under `secret`.
    pub fn signed_with(&self, secret: &str) -> bool {
        let Some(sig) = self
            .signature
            .as_deref()
            .and_then(|s| s.strip_prefix("sha256="))
        else {
            return false;
        };
        let Ok(sig) = hex::decode(sig) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(&self.body);
        mac.verify_slice(&sig).is_ok()
    }
}

#[derive(Default)]
struct Inner {
    received: Mutex<Vec<Received>>,
    refused: Mutex<Vec<Received>>,
    attempts: AtomicUsize,
    fail_first: AtomicUsize,
}

pub struct Receiver {
    pub url: String,
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let n = inner.attempts.fetch_add(1, Ordering::SeqCst);
    let request = Received {
        signature: headers
            .get("x-flagsmith-edge-signature")
            .and_then(|v| v.to_str().ok())
            .map(String::from),
        body: body.to_vec(),
    };
    if n < inner.fail_first.load(Ordering::SeqCst) {
        inner.refused.lock().unwrap().push(request);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    inner.received.lock().unwrap().push(request);
    StatusCode::NO_CONTENT
}

impl Receiver {
    /// Listens on a free local port; the first `fail_first` requests get a 503.
    pub async fn start(fail_first: usize) -> Receiver {
        let inner = Arc::new(Inner::default());
        inner.fail_first.store(fail_first, Ordering::SeqCst);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/invalidate", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/invalidate", post(receive))
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, inner, task }
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.received.lock().unwrap().clone()
    }

    /// The requests answered with a failure.
    pub fn refused(&self) -> Vec<Received> {
        self.inner.refused.lock().unwrap().clone()
    }

    /// Requests answered so far, failed ones included.
    pub fn attempts(&self) -> usize {
        self.inner.attempts.load(Ordering::SeqCst)
    }
}
