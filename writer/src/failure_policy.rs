//! What happens to a document whose replication failed: how the failure is classified, and
//! whether the document is retried (and when) or parked in dead letters. Pure: the queue and
//! dead-letter writes are the caller's (`crate::replicate`).

use std::time::Duration;

use chrono::{DateTime, Utc};

/// How a failure is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Infrastructure: retried with backoff until it works, never parked.
    Transient,
    /// Core data that cannot become a valid document: parked at once.
    InvalidData,
    /// A document over DynamoDB's item limit even compressed: parked at once.
    TooLarge,
    /// DynamoDB refused the request for good (validation): parked at once.
    Rejected,
    /// An identity item written by someone else (the edge) waits for edge -> core
    /// ingestion: retried after it, never parked.
    AwaitingIngestion,
    /// Anything else: retried, parked after `max_attempts`.
    Other,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Transient => "transient",
            FailureKind::InvalidData => "invalid_data",
            FailureKind::TooLarge => "too_large",
            FailureKind::Rejected => "rejected",
            FailureKind::AwaitingIngestion => "awaiting_ingestion",
            FailureKind::Other => "persistent",
        }
    }
}

/// Postgres errors: connection trouble, lock timeouts, serialisation failures and the like
/// are transient; undecodable rows are bad data; the rest is unclassified.
pub fn classify_sqlx(e: &sqlx::Error) -> FailureKind {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => FailureKind::Transient,
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => FailureKind::InvalidData,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            let transient = code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57")
                || matches!(code.as_ref(), "40001" | "40P01" | "55P03");
            if transient {
                FailureKind::Transient
            } else {
                FailureKind::Other
            }
        }
        _ => FailureKind::Other,
    }
}

/// Retries of failed documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts before a document that keeps failing with an unclassified error is parked.
    pub max_attempts: i32,
    /// Backoff between failed attempts: doubles from `retry_base` up to `retry_cap`, with
    /// full jitter.
    pub retry_base: Duration,
    pub retry_cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            retry_base: Duration::from_millis(500),
            retry_cap: Duration::from_secs(60),
        }
    }
}

/// What to do with a failed document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Into dead letters, out of the queue: retrying cannot help.
    Park,
    /// Due again after this long.
    Retry(Duration),
}

/// The decision for a document that failed with `kind` after `failed_before` earlier failed
/// attempts. `leased_until`: the failure was a bulk-write lease, retried once it ends.
pub fn decide(
    policy: &RetryPolicy,
    kind: FailureKind,
    failed_before: i32,
    leased_until: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Decision {
    let attempts = failed_before.saturating_add(1);
    let park = match kind {
        FailureKind::Transient | FailureKind::AwaitingIngestion => false,
        FailureKind::InvalidData | FailureKind::TooLarge | FailureKind::Rejected => true,
        FailureKind::Other => attempts >= policy.max_attempts,
    };
    if park {
        return Decision::Park;
    }
    Decision::Retry(match leased_until {
        Some(until) => (until - now)
            .to_std()
            .unwrap_or_default()
            .max(Duration::from_millis(10)),
        None => backoff_delay(policy, attempts),
    })
}

/// How long an identity document whose item was written at the edge waits before it looks
/// again for the item's ingestion into core, after `failed_before` earlier waits: 2 s,
/// doubling, at most 30 s.
pub fn ingestion_wait(failed_before: i32) -> Duration {
    Duration::from_secs(2)
        .saturating_mul(1u32 << failed_before.clamp(0, 4) as u32)
        .min(Duration::from_secs(30))
}

/// Exponential backoff with full jitter for failed attempts.
pub fn backoff_delay(policy: &RetryPolicy, attempts: i32) -> Duration {
    let exp = policy
        .retry_base
        .saturating_mul(1u32 << attempts.clamp(0, 20) as u32)
        .min(policy.retry_cap);
    let jitter: f64 = rand::random::<f64>();
    // Never less than half the exponential step, so retries still spread out.
    exp.mul_f64(0.5 + jitter / 2.0)
}

/// An error and its causes on one line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let s = RetryPolicy::default();
        for attempts in 1..30 {
            let d = backoff_delay(&s, attempts);
            assert!(d <= s.retry_cap, "{d:?}");
            assert!(d >= s.retry_base.min(s.retry_cap) / 2, "{d:?}");
        }
        assert!(backoff_delay(&s, 20) >= s.retry_cap / 2);
    }

    /// A Postgres error with a SQLSTATE, as the server reports one.
    #[derive(Debug)]
    struct PgCode(&'static str);

    impl std::fmt::Display for PgCode {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for PgCode {}

    impl sqlx::error::DatabaseError for PgCode {
        fn message(&self) -> &str {
            self.0
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    pub(crate) fn db(code: &'static str) -> sqlx::Error {
        sqlx::Error::Database(Box::new(PgCode(code)))
    }

    #[test]
    fn postgres_errors_are_transient_bad_data_or_unclassified() {
        let io = || sqlx::Error::Io(std::io::Error::other("connection reset"));
        let cases: Vec<(&str, sqlx::Error, FailureKind)> = vec![
            ("connection lost", io(), FailureKind::Transient),
            (
                "pool timed out",
                sqlx::Error::PoolTimedOut,
                FailureKind::Transient,
            ),
            (
                "pool closed",
                sqlx::Error::PoolClosed,
                FailureKind::Transient,
            ),
            (
                "protocol",
                sqlx::Error::Protocol("unexpected message".into()),
                FailureKind::Transient,
            ),
            (
                "undecodable value",
                sqlx::Error::Decode("not UTF-8".into()),
                FailureKind::InvalidData,
            ),
            (
                "connection failure (08006)",
                db("08006"),
                FailureKind::Transient,
            ),
            (
                "too many connections (53300)",
                db("53300"),
                FailureKind::Transient,
            ),
            (
                "statement timeout (57014)",
                db("57014"),
                FailureKind::Transient,
            ),
            ("serialisation failure", db("40001"), FailureKind::Transient),
            ("deadlock", db("40P01"), FailureKind::Transient),
            ("lock not available", db("55P03"), FailureKind::Transient),
            ("unique violation", db("23505"), FailureKind::Other),
            ("permission denied", db("42501"), FailureKind::Other),
            (
                "row not found",
                sqlx::Error::RowNotFound,
                FailureKind::Other,
            ),
        ];
        for (case, err, expected) in cases {
            assert_eq!(classify_sqlx(&err), expected, "{case}");
        }
    }

    #[test]
    fn failure_kinds_are_named_as_dead_letters_record_them() {
        let names: Vec<&str> = [
            FailureKind::Transient,
            FailureKind::InvalidData,
            FailureKind::TooLarge,
            FailureKind::Rejected,
            FailureKind::AwaitingIngestion,
            FailureKind::Other,
        ]
        .into_iter()
        .map(FailureKind::as_str)
        .collect();
        assert_eq!(
            names,
            [
                "transient",
                "invalid_data",
                "too_large",
                "rejected",
                "awaiting_ingestion",
                "persistent"
            ]
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Chained(&'static str, #[source] Option<Box<Chained>>);

    #[test]
    fn an_error_chain_names_each_cause_once() {
        let inner = Chained("connection refused", None);
        let middle = Chained("PutItem on edge-identities", Some(Box::new(inner)));
        let outer = Chained("identity:7", Some(Box::new(middle)));
        assert_eq!(
            error_chain(&outer),
            "identity:7: PutItem on edge-identities: connection refused"
        );
        // A cause its parent already quotes is not repeated.
        let inner = Chained("timed out", None);
        let outer = Chained("identity:7: timed out", Some(Box::new(inner)));
        assert_eq!(error_chain(&outer), "identity:7: timed out");
    }

    #[test]
    fn bad_data_parks_at_once_outages_never_and_the_rest_after_its_attempts() {
        let policy = RetryPolicy {
            max_attempts: 3,
            retry_base: Duration::from_millis(100),
            retry_cap: Duration::from_secs(10),
        };
        let now = Utc::now();
        let parked =
            |kind, failed_before| decide(&policy, kind, failed_before, None, now) == Decision::Park;
        for kind in [
            FailureKind::InvalidData,
            FailureKind::TooLarge,
            FailureKind::Rejected,
        ] {
            assert!(parked(kind, 0), "{kind:?}");
        }
        for failed_before in [0, 1, 2, 50, i32::MAX] {
            assert!(
                !parked(FailureKind::Transient, failed_before),
                "{failed_before}"
            );
            assert!(!parked(FailureKind::AwaitingIngestion, failed_before));
        }
        // The third attempt of an unclassified failure is the last.
        assert!(!parked(FailureKind::Other, 0));
        assert!(!parked(FailureKind::Other, 1));
        assert!(parked(FailureKind::Other, 2));
        assert!(parked(FailureKind::Other, 7));
    }

    #[test]
    fn retries_back_off_with_the_attempts_and_a_lease_is_waited_out() {
        let policy = RetryPolicy {
            max_attempts: 100,
            retry_base: Duration::from_millis(100),
            retry_cap: Duration::from_secs(1000),
        };
        let now = Utc::now();
        let delay =
            |failed_before| match decide(&policy, FailureKind::Other, failed_before, None, now) {
                Decision::Retry(d) => d,
                Decision::Park => panic!("parked"),
            };
        // Attempt n waits between half and all of base * 2^n.
        for (failed_before, full_ms) in [(0, 200), (1, 400), (4, 3200)] {
            let d = delay(failed_before).as_millis() as u64;
            assert!(
                (full_ms / 2..=full_ms).contains(&d),
                "after {failed_before} failures: {d} ms, not within half of {full_ms} ms"
            );
        }
        // A lease: retried once it ends, whatever the attempts.
        let until = now + chrono::Duration::seconds(7);
        assert_eq!(
            decide(&policy, FailureKind::Transient, 3, Some(until), now),
            Decision::Retry(Duration::from_secs(7))
        );
        // A lease that has just ended: retried at once (after 10 ms).
        assert_eq!(
            decide(
                &policy,
                FailureKind::Transient,
                3,
                Some(now - chrono::Duration::seconds(1)),
                now
            ),
            Decision::Retry(Duration::from_millis(10))
        );
    }

    #[test]
    fn the_wait_for_ingestion_doubles_from_two_seconds_up_to_thirty() {
        let waits: Vec<u64> = (0..7).map(|n| ingestion_wait(n).as_secs()).collect();
        assert_eq!(waits, vec![2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(ingestion_wait(-1).as_secs(), 2);
    }
}
