//! Waiting on conditions with a deadline (never a fixed sleep).

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// As [`until`], `check` saying what is still wrong (`Err`) until it holds; the panic after
/// `timeout` names the last thing wrong.
pub async fn until_ok<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        let wrong = match check().await {
            Ok(v) => return v,
            Err(wrong) => wrong,
        };
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}: {wrong}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

pub const DEFAULT: Duration = Duration::from_secs(30);

/// Waits until the writer has nothing left to do now: no unresolved change and no due
/// document.
pub async fn writer_idle(pool: &sqlx::PgPool, timeout: Duration) {
    until("the writer to be idle", timeout, || async {
        let (log, due): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM edge.change_log) + (SELECT count(*) FROM edge.fanout),
                    (SELECT count(*) FROM edge.pending WHERE not_before <= now())",
        )
        .fetch_one(pool)
        .await
        .ok()?;
        (log == 0 && due == 0).then_some(())
    })
    .await;
}
