//! The schema's own bookkeeping: which migrations are applied (`edge._sqlx_migrations`).

use sqlx::PgPool;

/// Versions of the migrations applied successfully; empty when none ever ran.
pub async fn applied_migrations(pool: &PgPool) -> Result<Vec<i64>, sqlx::Error> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('edge._sqlx_migrations') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    if !exists {
        return Ok(Vec::new());
    }
    sqlx::query_scalar("SELECT version FROM edge._sqlx_migrations WHERE success")
        .fetch_all(pool)
        .await
}
