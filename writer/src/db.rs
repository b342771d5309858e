//! Postgres connections and the writer's migrations.

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

/// The project's migrations (`migrations/` at the workspace root), embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// A pool to the core database. `max_connections` must allow two connections per worker
/// (lock and snapshot), plus the listener and the capture task.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url
        .parse::<PgConnectOptions>()?
        .application_name("edge-writer");
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
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
