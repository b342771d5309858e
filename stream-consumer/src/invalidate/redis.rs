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

use futures::future::BoxFuture;
use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;

use super::{Change, InvalidateError, Target};

pub struct RedisTarget {
    client: redis::Client,
    prefix: String,
    /// Reused between batches; dropped after an error so the next attempt reconnects.
    conn: Mutex<Option<MultiplexedConnection>>,
}

impl RedisTarget {
    pub fn new(url: &str, prefix: &str) -> Result<Self, String> {
        Ok(RedisTarget {
            client: redis::Client::open(url).map_err(|e| format!("Redis URL {url}: {e}"))?,
            prefix: prefix.to_string(),
            conn: Mutex::new(None),
        })
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

    async fn send(&self, region: &str, changes: &[Change]) -> Result<(), redis::RedisError> {
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            *guard = Some(self.client.get_multiplexed_async_connection().await?);
        }
        let conn = guard.as_mut().expect("connected above");
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
            *guard = None;
        }
        result
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
            self.send(region, changes)
                .await
                .map_err(|e| InvalidateError {
                    target: "redis",
                    message: e.to_string(),
                    retryable: true,
                })
        })
    }
}
