//! Writers for the suites: in-process daemons (fast) and real `writer` processes (for
//! kill -9 and restarts).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use edge_writer::daemon::{self, DaemonConfig};
use edge_writer::replicate::{Replicator, Settings};
use edge_writer::store::ItemStore;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::dynamo::TestTables;

/// Settings with short backoffs, so failure tests converge quickly.
pub fn test_settings() -> Settings {
    Settings {
        retry_base: Duration::from_millis(50),
        retry_cap: Duration::from_millis(500),
        delete_recheck_after: Duration::from_secs(2),
        max_attempts: 3,
        // The suites exercise the batches' transactions; the processes they start use the
        // command's default, one PutItem per item.
        batch_transactions: true,
        ..Settings::default()
    }
}

pub fn test_daemon_config(workers: usize) -> DaemonConfig {
    DaemonConfig {
        workers,
        poll_interval: Duration::from_millis(200),
        capture_batch: 1000,
        ..DaemonConfig::default()
    }
}

pub struct InProcessWriter {
    shutdown: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

impl InProcessWriter {
    pub fn start<S: ItemStore>(replicator: Replicator<S>, workers: usize) -> InProcessWriter {
        let (shutdown, rx) = watch::channel(false);
        let handle = tokio::spawn(daemon::run(replicator, test_daemon_config(workers), rx));
        InProcessWriter { shutdown, handle }
    }

    /// A writer on the tables' DynamoDB with test settings.
    pub fn start_on(pool: &PgPool, tables: &TestTables, workers: usize) -> InProcessWriter {
        Self::start(
            Replicator::new(pool.clone(), tables.store(), test_settings()),
            workers,
        )
    }

    /// Graceful stop: returns once every task has finished its current document.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("writer stops within 30 s")
            .expect("writer task");
    }
}

/// The `writer` binary next to the test executable (built by `cargo build --workspace`).
pub fn writer_binary() -> PathBuf {
    crate::target_binary("writer")
}

/// The `writer` binary configured for the test database and tables (add a subcommand).
pub fn writer_command(database_url: &str, tables: &TestTables) -> tokio::process::Command {
    writer_command_for(&writer_binary(), database_url, tables)
}

/// As [`writer_command`], for a given `writer` binary (the benchmarks use the release one).
pub fn writer_command_for(
    binary: &std::path::Path,
    database_url: &str,
    tables: &TestTables,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(binary);
    cmd.arg("--log-format=text")
        .env("DATABASE_URL", database_url)
        .env("DYNAMODB_ENDPOINT", &tables.endpoint)
        .env("AWS_REGION", "eu-west-2")
        .env("AWS_ACCESS_KEY_ID", "local")
        .env("AWS_SECRET_ACCESS_KEY", "local")
        .env("EDGE_ENVIRONMENTS_TABLE", &tables.names.environments)
        .env("EDGE_ENVIRONMENTS_V2_TABLE", &tables.names.environments_v2)
        .env("EDGE_IDENTITIES_TABLE", &tables.names.identities)
        .env(
            "EDGE_ENVIRONMENT_API_KEYS_TABLE",
            &tables.names.environment_api_keys,
        )
        .env(
            "EDGE_PROJECT_METADATA_TABLE",
            &tables.names.project_metadata,
        )
        .env("EDGE_ACK_TABLE", &tables.names.acks)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
    cmd
}

/// A real writer process.
pub struct WriterProcess {
    pub child: tokio::process::Child,
}

impl WriterProcess {
    /// `writer run` against the test database and tables; `env` adds variables (e.g. a
    /// crash point).
    pub fn spawn(database_url: &str, tables: &TestTables, env: &[(&str, &str)]) -> WriterProcess {
        let mut cmd = writer_command(database_url, tables);
        cmd.arg("run")
            .arg("--workers=4")
            .arg("--poll-interval-ms=200")
            .arg("--http-addr=off")
            .arg("--retry-cap-ms=500")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        WriterProcess {
            child: cmd.spawn().expect("start the writer binary"),
        }
    }

    /// SIGKILL, like `kill -9`.
    pub async fn kill9(mut self) {
        self.child.kill().await.expect("kill the writer");
    }

    /// SIGKILL, and the exit status (a process that had already exited reports its own).
    pub async fn kill9_status(mut self) -> std::process::ExitStatus {
        self.child.start_kill().expect("send SIGKILL to the writer");
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("a killed writer exits")
            .expect("writer status")
    }

    /// Waits for the process to exit by itself (e.g. at a crash point).
    pub async fn wait_exit(mut self, timeout: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .expect("writer exits in time")
            .expect("writer status")
    }

    /// SIGTERM and wait for a graceful exit.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("writer exits within 30 s of SIGTERM")
            .expect("writer status")
    }
}

/// The lines a child process writes to a pipe (its stderr), collected as they come, without
/// terminal colour codes.
#[derive(Clone, Default)]
pub struct Lines(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Lines {
    /// Reads `pipe` line by line in a task until it closes.
    pub fn collect<R: tokio::io::AsyncRead + Unpin + Send + 'static>(pipe: R) -> Lines {
        use tokio::io::AsyncBufReadExt;
        let lines = Lines::default();
        let sink = lines.clone();
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(pipe).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                sink.0.lock().unwrap().push(strip_colours(&line));
            }
        });
        lines
    }

    /// The first line containing every one of `parts`.
    pub fn find(&self, parts: &[&str]) -> Option<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|l| parts.iter().all(|p| l.contains(p)))
            .cloned()
    }

    pub fn all(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }
}

/// `line` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
