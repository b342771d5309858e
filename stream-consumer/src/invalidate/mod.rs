//! Cache invalidation after a verified change, to any number of targets chosen by
//! configuration: Redis ([`redis`]), an HTTP webhook ([`webhook`]) and CloudFront
//! ([`cloudfront`]).
//!
//! A batch's changes are deduplicated (one entry per environment, identity and server-side
//! key, at its newest version) and sent to every target at once. Each target is retried with
//! exponential backoff and jitter; a target that still fails is reported (logs, the
//! `InvalidationFailures` metric) and never fails verification: the replica is correct, only a
//! cache may serve the old document until its TTL.

pub mod cloudfront;
pub mod redis;
pub mod webhook;

use std::collections::BTreeMap;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use edge_documents::item::Item;
use edge_documents::tables::TableKind;
use futures::future::{join_all, BoxFuture};
use serde::Serialize;

/// One verified change, as the caches know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub table: &'static str,
    pub doc_key: String,
    pub version: i64,
    /// The environment's client-side key: what Flagsmith's caches are keyed by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment_api_key: Option<String>,
    /// The identity's identifier (identities and identity overrides).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identifier: Option<String>,
    /// A server-side key (the environment API keys table).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_key: Option<String>,
    pub removed: bool,
}

impl Change {
    /// The change an item of `table` stands for (the new image, or the old one of a removal).
    pub fn of_item(
        table: TableKind,
        item: &Item,
        doc_key: &str,
        version: i64,
        removed: bool,
    ) -> Change {
        let s = |k: &str| match item.get(k) {
            Some(aws_sdk_dynamodb::types::AttributeValue::S(s)) => Some(s.clone()),
            _ => None,
        };
        let environment_api_key = match table {
            TableKind::Environments => s("api_key"),
            TableKind::EnvironmentApiKeys => s("client_api_key"),
            _ => s("environment_api_key"),
        };
        Change {
            table: table.as_str(),
            doc_key: doc_key.to_string(),
            version,
            environment_api_key,
            identifier: s("identifier"),
            server_key: (table == TableKind::EnvironmentApiKeys)
                .then(|| s("key"))
                .flatten(),
            removed,
        }
    }

    fn cache_identity(&self) -> (Option<String>, Option<String>, Option<String>) {
        (
            self.environment_api_key.clone(),
            self.identifier.clone(),
            self.server_key.clone(),
        )
    }
}

/// One entry per cache identity, at its newest version, in a stable order.
pub fn dedupe(changes: Vec<Change>) -> Vec<Change> {
    let mut by_identity: BTreeMap<_, Change> = BTreeMap::new();
    for change in changes {
        let id = change.cache_identity();
        match by_identity.get(&id) {
            Some(have) if have.version >= change.version => {}
            _ => {
                by_identity.insert(id, change);
            }
        }
    }
    by_identity.into_values().collect()
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{target}: {message}")]
pub struct InvalidateError {
    pub target: &'static str,
    pub message: String,
    /// Worth another attempt (timeouts, connection errors, 5xx, throttling).
    pub retryable: bool,
}

/// A cache invalidation target.
pub trait Target: Send + Sync {
    fn name(&self) -> &'static str;
    fn invalidate<'a>(
        &'a self,
        region: &'a str,
        changes: &'a [Change],
    ) -> BoxFuture<'a, Result<(), InvalidateError>>;
}

/// Every configured target, with the retry policy.
pub struct Invalidation {
    targets: Vec<Box<dyn Target>>,
    attempts: usize,
    first_delay: Duration,
}

impl Invalidation {
    pub fn new(targets: Vec<Box<dyn Target>>, attempts: usize, first_delay: Duration) -> Self {
        Invalidation {
            targets,
            attempts: attempts.max(1),
            first_delay,
        }
    }

    pub fn none() -> Self {
        Self::new(vec![], 1, Duration::ZERO)
    }

    pub fn target_names(&self) -> Vec<&'static str> {
        self.targets.iter().map(|t| t.name()).collect()
    }

    async fn send_with_retry(
        target: &dyn Target,
        region: &str,
        changes: &[Change],
        policy: ExponentialBuilder,
    ) -> Result<(), InvalidateError> {
        let attempt = || target.invalidate(region, changes);
        attempt
            .retry(policy)
            .when(|e: &InvalidateError| e.retryable)
            .notify(|e: &InvalidateError, after: Duration| {
                tracing::warn!(target = e.target, error = %e.message,
                    retry_in_ms = after.as_millis() as u64, "cache invalidation failed; retrying")
            })
            .await
    }

    /// Sends `changes` to every target; returns the targets that failed after all attempts.
    pub async fn run(&self, region: &str, changes: &[Change]) -> Vec<InvalidateError> {
        if changes.is_empty() {
            return vec![];
        }
        let policy = ExponentialBuilder::default()
            .with_min_delay(self.first_delay)
            .with_max_delay(self.first_delay * 20)
            .with_max_times(self.attempts - 1)
            .with_jitter();
        let mut sends = Vec::with_capacity(self.targets.len());
        for target in &self.targets {
            sends.push(Self::send_with_retry(
                target.as_ref(),
                region,
                changes,
                policy,
            ));
        }
        let results = join_all(sends).await;
        results.into_iter().filter_map(Result::err).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn change(env: &str, version: i64) -> Change {
        Change {
            table: "environments",
            doc_key: "environment:1".into(),
            version,
            environment_api_key: Some(env.into()),
            identifier: None,
            server_key: None,
            removed: false,
        }
    }

    #[test]
    fn dedupe_keeps_the_newest_change_per_cache_entry() {
        let out = dedupe(vec![change("a", 1), change("b", 5), change("a", 3)]);
        assert_eq!(out, vec![change("a", 3), change("b", 5)]);
    }

    struct Flaky {
        calls: Arc<AtomicUsize>,
        fail_first: usize,
        retryable: bool,
    }

    impl Target for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        fn invalidate<'a>(
            &'a self,
            _region: &'a str,
            _changes: &'a [Change],
        ) -> BoxFuture<'a, Result<(), InvalidateError>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst);
                if n < self.fail_first {
                    Err(InvalidateError {
                        target: "flaky",
                        message: format!("attempt {n}"),
                        retryable: self.retryable,
                    })
                } else {
                    Ok(())
                }
            })
        }
    }

    #[tokio::test]
    async fn a_failing_target_is_retried_then_reported() {
        let calls = Arc::new(AtomicUsize::new(0));
        let target = |fail_first, retryable| {
            Box::new(Flaky {
                calls: calls.clone(),
                fail_first,
                retryable,
            }) as Box<dyn Target>
        };
        let inv = Invalidation::new(vec![target(2, true)], 3, Duration::from_millis(1));
        assert!(inv.run("r", &[change("a", 1)]).await.is_empty());
        assert_eq!(calls.swap(0, Ordering::SeqCst), 3);

        let inv = Invalidation::new(vec![target(10, true)], 3, Duration::from_millis(1));
        assert_eq!(inv.run("r", &[change("a", 1)]).await.len(), 1);
        assert_eq!(calls.swap(0, Ordering::SeqCst), 3);

        let inv = Invalidation::new(vec![target(10, false)], 3, Duration::from_millis(1));
        assert_eq!(inv.run("r", &[change("a", 1)]).await.len(), 1);
        assert_eq!(
            calls.swap(0, Ordering::SeqCst),
            1,
            "a permanent error is not retried"
        );
    }
}
