//! A fresh database per test: Flagsmith's core tables plus the writer's migrations.

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgPool};

/// Flagsmith's core DDL (flagsmith-api 2.68.0), kept in the project as the test fixture.
pub const CORE_SCHEMA: &str = include_str!("../fixtures/flagsmith-core-schema.sql");

/// The server the test databases are created on: `TEST_DATABASE_URL`, else `DATABASE_URL`,
/// else the local server on 127.0.0.1:5432 (trust auth).
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    /// Creates `edge_test_<random>`, loads the core schema and applies the migrations.
    pub async fn new() -> TestDb {
        let admin: PgConnectOptions = admin_url().parse().expect("a valid database URL");
        let name = format!("edge_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = admin.connect().await.unwrap_or_else(|e| {
            panic!(
                "cannot connect to Postgres at {} ({e}); set TEST_DATABASE_URL",
                admin_url()
            )
        });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create the test database");
        conn.close().await.ok();
        let options = admin.clone().database(&name);
        let url = options.to_url_lossy().to_string();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(40)
            .connect_with(options)
            .await
            .expect("connect to the test database");
        sqlx::raw_sql(CORE_SCHEMA)
            .execute(&pool)
            .await
            .expect("load Flagsmith's core schema");
        edge_writer::db::migrate(&pool)
            .await
            .expect("apply the writer's migrations");
        TestDb { name, url, pool }
    }

    /// A second, independent pool (for a second writer instance).
    pub async fn another_pool(&self, max_connections: u32) -> PgPool {
        edge_writer::db::connect(&self.url, max_connections)
            .await
            .expect("connect to the test database")
    }

    /// Drops the database (call at the end of a test).
    pub async fn drop_db(self) {
        self.pool.close().await;
        let admin: PgConnectOptions = admin_url().parse().expect("a valid database URL");
        if let Ok(mut conn) = admin.connect().await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn)
            .await;
        }
    }

    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}
