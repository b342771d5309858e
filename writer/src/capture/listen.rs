//! Waking the capture task when changes commit, without making every core transaction pay
//! for a NOTIFY.
//!
//! NOTIFY serialises the commits of the transactions that send one, so the capture triggers
//! notify only when a writer is waiting idle. The handshake is an advisory lock, the *wake
//! lock* ([`WAKE_LOCK`]):
//!
//! - a writer that found the change log empty takes the wake lock exclusively (on a session
//!   of its own), drains the change log once more, and sleeps until a notification or its
//!   poll interval; on waking it releases the lock, then drains;
//! - a capture trigger tries to take the lock *shared* for its transaction. If it cannot, a
//!   writer is idle: it notifies. If it can, no writer is idle, and it holds the lock until its
//!   transaction ends, so a writer going idle waits for the transaction to end before its last
//!   drain, which then sees the transaction's changes.
//!
//! So a change is never left waiting for the poll interval while a writer sleeps, except when
//! the writer could not take the lock within [`WAKE_LOCK_WAIT`] (a core transaction kept open
//! that long), and the poll covers that. A notification is only ever a hint: the writer also
//! polls, because notifications sent while it is disconnected are lost.

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;

/// Channel the capture triggers notify.
pub const CHANNEL: &str = "edge_change_log";

/// The wake lock's two-int advisory lock key: 'edge', 'capt' (see the capture-safety
/// migration, whose triggers use the same key).
pub const WAKE_LOCK: (i32, i32) = (1701078885, 1667330164);

/// How long a writer going idle waits for the wake lock: the core transactions that decided
/// not to notify must end first.
pub const WAKE_LOCK_WAIT: Duration = Duration::from_millis(250);

/// Why [`ChangeListener::sleep`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    Notified,
    Timeout,
    Shutdown,
}

/// The capture task's LISTEN connection and its hold on the wake lock.
pub struct ChangeListener {
    pool: PgPool,
    listener: Option<PgListener>,
    /// The session that holds the wake lock (a connection of its own: sqlx's listener runs
    /// no queries in a spawned task). If it dies the lock is released and the triggers stop
    /// notifying; the poll interval covers that until the next `go_idle` reconnects.
    lock_conn: Option<sqlx::PgConnection>,
    holds_wake_lock: bool,
}

impl ChangeListener {
    pub fn new(pool: PgPool) -> ChangeListener {
        ChangeListener {
            pool,
            listener: None,
            lock_conn: None,
            holds_wake_lock: false,
        }
    }

    pub fn holds_wake_lock(&self) -> bool {
        self.holds_wake_lock
    }

    /// Connects and listens if not yet done. Returns false (polling only) on failure.
    async fn ensure_listening(&mut self) -> bool {
        if self.listener.is_some() {
            return true;
        }
        let mut listener = match PgListener::connect_with(&self.pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN connection failed; polling only until it is back");
                return false;
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %e, "LISTEN failed; polling only until it is back");
            return false;
        }
        self.listener = Some(listener);
        true
    }

    /// Announces that this writer is about to sleep: takes the wake lock, waiting for the core
    /// transactions that chose not to notify. Returns whether it holds the lock now; the
    /// caller must then drain the change log once more before [`Self::sleep`].
    pub async fn go_idle(&mut self) -> bool {
        if self.holds_wake_lock {
            return true;
        }
        if !self.ensure_listening().await {
            return false;
        }
        if self.lock_conn.is_none() {
            match self.pool.acquire().await {
                Ok(c) => {
                    let mut c = c.detach();
                    // This session only ever takes the wake lock.
                    let set = sqlx::query("SELECT set_config('lock_timeout', $1, false)")
                        .bind(format!("{}ms", WAKE_LOCK_WAIT.as_millis()))
                        .execute(&mut c)
                        .await;
                    if let Err(e) = set {
                        tracing::warn!(error = %e, "no connection for the wake lock; polling");
                        return false;
                    }
                    self.lock_conn = Some(c);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no connection for the wake lock; polling");
                    return false;
                }
            }
        }
        let Some(conn) = self.lock_conn.as_mut() else {
            return false;
        };
        match sqlx::query("SELECT pg_advisory_lock($1, $2)")
            .bind(WAKE_LOCK.0)
            .bind(WAKE_LOCK.1)
            .execute(&mut *conn)
            .await
        {
            Ok(_) => {
                self.holds_wake_lock = true;
                true
            }
            // A core transaction (or another idle writer) holds it: poll this time.
            Err(e) if super::control::ControlError::is_lock_timeout(&e) => false,
            Err(e) => {
                tracing::warn!(error = %e, "wake lock connection lost; reconnecting");
                self.lock_conn = None;
                false
            }
        }
    }

    /// Sleeps until a notification, `timeout` or shutdown, then releases the wake lock.
    pub async fn sleep(
        &mut self,
        timeout: Duration,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Woken {
        let woken = match self.listener.as_mut() {
            Some(listener) => tokio::select! {
                _ = shutdown.changed() => Woken::Shutdown,
                received = listener.recv() => match received {
                    Ok(_) => Woken::Notified,
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                        self.listener = None;
                        self.holds_wake_lock = false;
                        Woken::Timeout
                    }
                },
                _ = tokio::time::sleep(timeout) => Woken::Timeout,
            },
            None => tokio::select! {
                _ = shutdown.changed() => Woken::Shutdown,
                _ = tokio::time::sleep(timeout) => Woken::Timeout,
            },
        };
        self.release().await;
        woken
    }

    /// Releases the wake lock (the writer is busy: transactions need not notify).
    pub async fn release(&mut self) {
        if !self.holds_wake_lock {
            return;
        }
        self.holds_wake_lock = false;
        if let Some(conn) = self.lock_conn.as_mut() {
            if let Err(e) = sqlx::query("SELECT pg_advisory_unlock_all()")
                .execute(&mut *conn)
                .await
            {
                tracing::warn!(error = %e, "wake lock connection lost; reconnecting");
                self.lock_conn = None;
            }
        }
    }
}
