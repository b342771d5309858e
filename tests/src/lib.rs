//! Test harness for the end-to-end suites: real Postgres, real DynamoDB Local.
//!
//! - [`pg`]: a fresh, randomly named database per test with Flagsmith's core schema (the
//!   exact DDL, `fixtures/flagsmith-core-schema.sql`) and the writer's migrations.
//! - [`dynamo`]: one DynamoDB Local per test binary (tables get a per-test prefix).
//! - [`core`]: inserts core rows the way Flagsmith's core API writes them.
//! - [`wait`]: polling with deadlines.
//! - [`relay`], [`regions`], [`webhook`]: two DynamoDB Local instances as two regions with
//!   emulated global-table replication, stream consumers on both, a webhook receiver.

pub mod core;
pub mod counting;
pub mod dynamo;
pub mod edge;
pub mod gated;
pub mod http;
pub mod identities;
pub mod lambda_api;
pub mod pg;
pub mod pg_count;
pub mod pg_tls;
pub mod proxy;
pub mod regions;
pub mod relay;
pub mod wait;
pub mod webhook;
pub mod writer;

/// Logs of the code under test, once per process (`RUST_LOG` filters).
pub fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
    });
}

/// A binary of this build (`target/<profile>/<name>`), from a test (`target/<profile>/deps/..`)
/// or a benchmark binary (`target/<profile>/..`).
pub fn target_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the running executable's path");
    let mut dir = exe.parent().expect("target/<profile>").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} not found: build it first with `cargo build --workspace --bins`",
        bin.display()
    );
    bin
}

/// The repository root (the workspace), for scripts and fixtures.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A test's world: a fresh core database, fresh DynamoDB tables, and the core-row writer.
pub async fn setup() -> (pg::TestDb, dynamo::TestTables, core::Core) {
    init_logging();
    let db = pg::TestDb::new().await;
    let tables = dynamo::TestTables::new().await;
    let core = core::Core::new(db.pool.clone());
    (db, tables, core)
}

/// The machine, for benchmark reports: core count and CPU model.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}")
}
