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
}

/// Applies the writer's migrations. Idempotent; safe with several writers starting at once
/// (the migrator holds an advisory lock). The bookkeeping table `_sqlx_migrations` lives in
/// schema `edge`, next to the writer's other tables, not in the core API's schema.
pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
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
    let applied = MIGRATOR.run(&mut *conn).await;
    sqlx::query("RESET search_path").execute(&mut *conn).await?;
    sqlx::query("RESET client_min_messages")
        .execute(&mut *conn)
        .await?;
    applied?;
    Ok(())
}
