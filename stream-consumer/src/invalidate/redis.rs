//! Redis: delete the cached entries of each change and publish it on the environment's
//! channel, in one pipeline per batch.
//!
//! Keys (with the configured prefix `P`):
//! - `P environment:{environment_api_key}` for every change of an environment,
//! - `P identity:{environment_api_key}:{identifier}` for identities and identity overrides,
//! - `P server_key:{key}` for server-side keys;
//!
//! and a `PUBLISH P invalidate:{environment_api_key}` with the change as JSON, for caches that
//! subscribe rather than expire.

use std::time::Duration;

use edge_documents::redact;
use futures::future::BoxFuture;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use tokio::sync::Mutex;

use super::{Change, InvalidateError, Target};

/// Default bound on connecting (TCP, TLS and the connection's set-up commands).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default bound on the answer to a batch's pipeline.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct RedisTarget {
    client: redis::Client,
    prefix: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    /// Reused between batches; dropped after an error so the next attempt reconnects.
    conn: Mutex<Option<MultiplexedConnection>>,
}

impl RedisTarget {
    /// A target for `url` (`redis://` or, with TLS, `rediss://`; user and password in the
    /// URL), with the default timeouts. Errors never show the URL's password.
    pub fn new(url: &str, prefix: &str) -> Result<Self, String> {
        // rustls is built without a default crypto provider; ring is the one the AWS clients
        // use too. Installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(RedisTarget {
            client: redis::Client::open(url)
                .map_err(|e| format!("Redis URL {}: {e}", redact::url(url)))?,
            prefix: prefix.to_string(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            conn: Mutex::new(None),
        })
    }

    /// Bounds connecting and each pipeline's answer: a Redis that accepts and never answers
    /// fails the attempt after `connect + response` at most.
    pub fn with_timeouts(mut self, connect: Duration, response: Duration) -> Self {
        self.connect_timeout = connect;
        self.response_timeout = response;
        self
    }

    /// The keys deleted and the channel published for one change.
    pub fn plan(&self, change: &Change) -> (Vec<String>, Option<String>) {
        let p = &self.prefix;
        let mut keys = Vec::new();
        if let Some(env) = &change.environment_api_key {
            keys.push(format!("{p}environment:{env}"));
            if let Some(id) = &change.identifier {
                keys.push(format!("{p}identity:{env}:{id}"));
            }
        }
        if let Some(key) = &change.server_key {
            keys.push(format!("{p}server_key:{key}"));
        }
        let channel = change
            .environment_api_key
            .as_ref()
            .map(|env| format!("{p}invalidate:{env}"));
        (keys, channel)
    }

    /// One attempt on the connection in `slot` (made first when there is none); an error
    /// drops it.
    async fn send(
        &self,
        slot: &mut Option<MultiplexedConnection>,
        region: &str,
        changes: &[Change],
    ) -> Result<(), redis::RedisError> {
        if slot.is_none() {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(self.connect_timeout)
                .set_response_timeout(self.response_timeout);
            *slot = Some(
                self.client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            );
        }
        let conn = slot.as_mut().expect("connected above");
        let mut pipe = redis::pipe();
        for change in changes {
            let (keys, channel) = self.plan(change);
            if !keys.is_empty() {
                pipe.del(keys).ignore();
            }
            if let Some(channel) = channel {
                let message = serde_json::json!({"region": region, "change": change});
                pipe.publish(channel, message.to_string()).ignore();
            }
        }
        let result: Result<(), _> = pipe.query_async(conn).await;
        if result.is_err() {
            *slot = None;
        }
        result
    }

    /// [`Self::send`] within `connect + response`, whatever the client library does: an
    /// attempt cut short drops the connection, so the next one starts afresh. Attempts of
    /// concurrent batches (the poller) take turns on the one connection; the bound runs from
    /// an attempt's turn.
    async fn send_bounded(&self, region: &str, changes: &[Change]) -> Result<(), String> {
        let bound = self.connect_timeout + self.response_timeout;
        let mut slot = self.conn.lock().await;
        match tokio::time::timeout(bound, self.send(&mut slot, region, changes)).await {
            Ok(result) => result.map_err(|e| {
                if e.is_timeout() {
                    format!(
                        "timed out (bounds: {} ms to connect, {} ms per answer)",
                        self.connect_timeout.as_millis(),
                        self.response_timeout.as_millis()
                    )
                } else {
                    e.to_string()
                }
            }),
            Err(_) => {
                *slot = None;
                Err(format!("no answer within {} ms", bound.as_millis()))
            }
        }
    }
}

impl Target for RedisTarget {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn invalidate<'a>(
        &'a self,
        region: &'a str,
        changes: &'a [Change],
    ) -> BoxFuture<'a, Result<(), InvalidateError>> {
        Box::pin(async move {
            self.send_bounded(region, changes)
                .await
                .map_err(|message| InvalidateError {
                    target: "redis",
                    message,
                    retryable: true,
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::invalidate::Invalidation;

    fn change() -> Change {
        Change {
            table: "environments",
            doc_key: "environment:1".into(),
            version: 1,
            environment_api_key: Some("envHung".into()),
            identifier: None,
            server_key: None,
            removed: false,
        }
    }

    /// A listener that accepts connections, reads what it is sent and never answers; counts
    /// the connections and keeps them open until it is dropped.
    async fn silent_listener() -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                open.push(tokio::spawn(async move {
                    let mut socket = socket;
                    let mut buf = [0u8; 1024];
                    while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
                }));
            }
        });
        (address, accepted, task)
    }

    #[tokio::test]
    async fn a_redis_that_never_answers_fails_the_invalidation_within_the_timeouts() {
        let (address, accepted, listener) = silent_listener().await;
        let (connect, response) = (Duration::from_millis(200), Duration::from_millis(200));
        let target = RedisTarget::new(&format!("redis://{address}"), "p:")
            .unwrap()
            .with_timeouts(connect, response);
        let attempts = 3;
        let invalidation =
            Invalidation::new(vec![Box::new(target)], attempts, Duration::from_millis(10));
        let started = Instant::now();
        // The harness's own bound, far above the product's: a regression fails, not hangs.
        let failures =
            tokio::time::timeout(Duration::from_secs(60), invalidation.run("r", &[change()]))
                .await
                .expect("the invalidation finishes");
        let took = started.elapsed();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert_eq!(failures[0].target, "redis");
        // Each attempt is bounded by connect + response; the backoff adds at most
        // 10 ms * 20 per retry.
        let bound = (connect + response) * attempts as u32 + Duration::from_millis(400 * 2);
        assert!(took < bound, "took {took:?}, bound {bound:?}");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            attempts,
            "every attempt connects afresh"
        );
        listener.abort();
    }

    /// A Redis that completes the client's connection set-up (`CLIENT SETINFO`, answered
    /// `+OK`) and then never answers again.
    async fn redis_that_stops_answering() -> (String, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                open.push(tokio::spawn(async move {
                    let (mut seen, mut answered) = (Vec::new(), 0);
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = socket.read(&mut buf).await {
                        seen.extend_from_slice(&buf[..n]);
                        let setinfo = seen.windows(7).filter(|w| w == b"SETINFO").count();
                        for _ in answered..setinfo {
                            socket.write_all(b"+OK\r\n").await.unwrap();
                        }
                        answered = setinfo;
                    }
                }));
            }
        });
        (address, task)
    }

    #[tokio::test]
    async fn a_redis_that_stops_answering_after_connecting_fails_the_attempt_in_time() {
        let (address, listener) = redis_that_stops_answering().await;
        let (connect, response) = (Duration::from_secs(5), Duration::from_millis(200));
        let target = RedisTarget::new(&format!("redis://{address}"), "p:")
            .unwrap()
            .with_timeouts(connect, response);
        let started = Instant::now();
        let err =
            tokio::time::timeout(Duration::from_secs(60), target.invalidate("r", &[change()]))
                .await
                .expect("the attempt finishes")
                .unwrap_err();
        let took = started.elapsed();
        println!("after {took:?}: {}", err.message);
        assert!(err.retryable, "{}", err.message);
        assert!(took >= response, "took {took:?}: {}", err.message);
        assert!(err.message.starts_with("timed out"), "{}", err.message);
        // The connection was made (the connect bound is far away): the response bound ended it.
        assert!(took < connect, "took {took:?}: {}", err.message);
        assert!(
            target.conn.lock().await.is_none(),
            "the connection is dropped after the timeout"
        );
        listener.abort();
    }

    #[tokio::test]
    async fn rediss_urls_speak_tls() {
        // A plain TCP listener: the client's first bytes must be a TLS handshake record.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut first = [0u8; 1];
            socket.read_exact(&mut first).await.unwrap();
            let _ = socket.write_all(b"-ERR this is not TLS\r\n").await;
            first[0]
        });
        let target = RedisTarget::new(&format!("rediss://:s3cret-token@{address}"), "p:")
            .expect("rediss:// is supported by this build")
            .with_timeouts(Duration::from_secs(5), Duration::from_secs(5));
        let err = target.invalidate("r", &[change()]).await.unwrap_err();
        assert_eq!(server.await.unwrap(), 0x16, "a TLS handshake record");
        println!("a plain listener behind rediss://: {}", err.message);
        assert!(err.retryable);
        assert!(!err.message.contains("feature"), "{}", err.message);
        assert!(!err.message.contains("s3cret-token"), "{}", err.message);
    }

    #[test]
    fn url_errors_never_show_the_password() {
        let err = RedisTarget::new("redis://default:s3cret-token@127.0.0.1:6379/not-a-db", "p:")
            .err()
            .expect("an invalid database number");
        assert!(!err.contains("s3cret-token"), "{err}");
        assert!(err.contains("redis://default:***@127.0.0.1:6379"), "{err}");
    }
}
