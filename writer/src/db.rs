//! Postgres connections and the writer's migrations.

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};

/// The project's migrations (`migrations/` at the workspace root), embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Limits on every session of the writer, so that it can never hold Flagsmith's database
/// hostage: a statement that runs away is cancelled, and a session left idle inside a
/// transaction (its locks held) is ended by the server.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// `statement_timeout` (zero: none). Cancelled statements are retried as transient.
    pub statement_timeout: Duration,
    /// `idle_in_transaction_session_timeout` (zero: none). Longer than the longest
    /// DynamoDB write a document lock is held across; a writer whose session is ended
    /// there loses its lock, which the versions and the delete re-check make safe.
    pub idle_in_transaction_timeout: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            statement_timeout: Duration::from_secs(60),
            idle_in_transaction_timeout: Duration::from_secs(120),
        }
    }
}

impl SessionLimits {
    /// For one-off administration (`writer migrate`): lock timeouts govern it instead.
    pub fn none() -> Self {
        SessionLimits {
            statement_timeout: Duration::ZERO,
            idle_in_transaction_timeout: Duration::ZERO,
        }
    }
}

/// A pooled connection idle for this long is pinged before it is used again.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// A pool to the core database. `max_connections` must allow two connections per worker
/// (lock and snapshot), plus the listener and the capture task.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    connect_with_limits(url, max_connections, SessionLimits::default()).await
}

/// As [`connect`], with the given session limits.
pub async fn connect_with_limits(
    url: &str,
    max_connections: u32,
    limits: SessionLimits,
) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url
        .parse::<PgConnectOptions>()?
        .application_name("edge-writer")
        .options([
            (
                "statement_timeout",
                limits.statement_timeout.as_millis().to_string(),
            ),
            (
                "idle_in_transaction_session_timeout",
                limits.idle_in_transaction_timeout.as_millis().to_string(),
            ),
        ]);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        // A connection is pinged before use only when it sat idle (the pool pings every
        // connection it takes back, too): a hot worker's connections skip a round trip per
        // document; a broken one is replaced, or fails its statement as transient.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for < PING_IF_IDLE_FOR {
                    return Ok(true);
                }
                Ok(conn.ping().await.is_ok())
            })
        })
        .connect_with(options)
        .await
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("preparing schema edge: {0}")]
    Prepare(#[from] sqlx::Error),
    #[error("applying migrations: {0}")]
    Apply(#[from] sqlx::migrate::MigrateError),
    #[error("installing the capture triggers: {0}")]
    Capture(#[from] crate::capture::control::ControlError),
    #[error("granting role {role}: {source}")]
    Grant {
        role: String,
        #[source]
        source: sqlx::Error,
    },
}

/// Applies the writer's migrations, then installs the capture triggers table by table
/// (see [`crate::capture::control`]), with the default lock policy and no grants.
pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    migrate_with(pool, &MigrateOptions::default())
        .await
        .map(|_| ())
}

/// `writer migrate`'s options.
#[derive(Debug, Clone, Default)]
pub struct MigrateOptions {
    pub locks: crate::capture::control::LockPolicy,
    /// Flagsmith's application role: gets what firing the capture triggers needs.
    pub core_role: Option<String>,
    /// The role the writer (and the consumers' ingestion) run as.
    pub writer_role: Option<String>,
}

/// Applies the writer's migrations. Idempotent; safe with several writers starting at once
/// (the migrator holds an advisory lock). The bookkeeping table `_sqlx_migrations` lives in
/// schema `edge`, next to the writer's other tables, not in the core API's schema.
///
/// Every statement runs with the policy's `lock_timeout`, so a migration that needs a lock
/// on a busy core table fails fast instead of queueing Flagsmith's writes behind it, and is
/// retried (each migration is one transaction) until the policy's total wait.
pub async fn migrate_with(
    pool: &PgPool,
    options: &MigrateOptions,
) -> Result<crate::capture::control::InstallReport, MigrateError> {
    let started = std::time::Instant::now();
    let mut backoff = Duration::from_millis(200);
    loop {
        match apply_migrations(pool, options.locks.lock_timeout).await {
            Ok(()) => break,
            Err(MigrateError::Apply(sqlx::migrate::MigrateError::Execute(e)))
                if crate::capture::control::ControlError::is_lock_timeout(&e)
                    && started.elapsed() + backoff < options.locks.lock_wait =>
            {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                    "a migration waited longer than the lock timeout for a core table; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e),
        }
    }
    let report = crate::capture::control::install_all(pool, options.locks).await?;
    if let Some(role) = &options.core_role {
        crate::grants::grant_core_role(pool, role)
            .await
            .map_err(|source| MigrateError::Grant {
                role: role.clone(),
                source,
            })?;
    }
    if let Some(role) = &options.writer_role {
        crate::grants::grant_writer_role(pool, role)
            .await
            .map_err(|source| MigrateError::Grant {
                role: role.clone(),
                source,
            })?;
    }
    Ok(report)
}

async fn apply_migrations(pool: &PgPool, lock_timeout: Duration) -> Result<(), MigrateError> {
    let mut conn = pool.acquire().await?;
    sqlx::query("CREATE SCHEMA IF NOT EXISTS edge")
        .execute(&mut *conn)
        .await?;
    // Idempotent DDL (DROP ... IF EXISTS) would otherwise log a NOTICE per trigger.
    sqlx::query("SET search_path TO edge, public")
        .execute(&mut *conn)
        .await?;
    sqlx::query("SET client_min_messages TO warning")
        .execute(&mut *conn)
        .await?;
    sqlx::query(&format!(
        "SET lock_timeout = '{}ms'",
        lock_timeout.as_millis().max(1)
    ))
    .execute(&mut *conn)
    .await?;
    let applied = MIGRATOR.run(&mut *conn).await;
    sqlx::query("RESET search_path").execute(&mut *conn).await?;
    sqlx::query("RESET client_min_messages")
        .execute(&mut *conn)
        .await?;
    sqlx::query("RESET lock_timeout")
        .execute(&mut *conn)
        .await?;
    applied?;
    Ok(())
}
