//! A sync that waits until the write is live everywhere: `POST /v1/sync` with `"wait"` and
//! `writer sync --wait-regions` return once every region named acknowledged every item written
//! (the ledger holds the acknowledgements when they return), with each region's lag; when a
//! region's stream consumer is down they end at their deadline and name that region as
//! unconfirmed (202, exit code 2). Two regions: two DynamoDB Local instances, the relay, a
//! consumer per region.

use std::time::Duration;

use edge_documents::acks::Ack;
use edge_documents::tables::TableKind;
use edge_tests::core::{basic_project, Core, Val};
use edge_tests::dynamo::version_of;
use edge_tests::http::request_with;
use edge_tests::pg::TestDb;
use edge_tests::regions::{TwoRegions, HOME, OTHER};
use edge_tests::wait;
use edge_tests::writer::writer_command;
use serde_json::{json, Value};
use stream_consumer::invalidate::Invalidation;

const TOKEN: &str = "test-sync-token-0123456789";
const ENV_KEY: &str = "envWait";

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// `writer run` on the home region with the HTTP server; killed when dropped.
async fn serve(
    db: &TestDb,
    regions: &TwoRegions,
    sync_timeout_secs: u64,
) -> (tokio::process::Child, String) {
    let addr = free_addr();
    let child = writer_command(&db.url, &regions.a)
        .args([
            "run",
            "--workers=2",
            "--poll-interval-ms=200",
            &format!("--http-addr={addr}"),
            &format!("--sync-timeout-secs={sync_timeout_secs}"),
        ])
        .env("WRITER_SYNC_TOKEN", TOKEN)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait::until("healthz", Duration::from_secs(60), || async {
        let reply = request_with(&addr, "GET", "/healthz", &[], None)
            .await
            .ok()?;
        (reply.status == 200).then_some(())
    })
    .await;
    (child, addr)
}

async fn sync_request(addr: &str, body: &Value) -> (u16, Value, String) {
    let reply = request_with(
        addr,
        "POST",
        "/v1/sync",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        Some(&body.to_string()),
    )
    .await
    .unwrap();
    let parsed = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
    (reply.status, parsed, reply.body)
}

/// The ledger keys of what a sync of the environment writes, with the document each belongs
/// to in a sync result: the environment item and its `_META` item (the environment document),
/// the API key item (the first API key document).
fn written_items(env: i32) -> Vec<(String, &'static str)> {
    vec![
        (format!("environments|{ENV_KEY}"), "environment"),
        (format!("environments_v2|{env}|_META"), "environment"),
        (format!("environment_api_keys|ser.{ENV_KEY}"), "api_key"),
    ]
}

/// The version a sync result reports for an item's document.
fn version_in(result: &Value, doc: &str) -> i64 {
    match doc {
        "environment" => result["environment"]["version"].as_i64().unwrap(),
        _ => result["api_keys"][0]["version"].as_i64().unwrap(),
    }
}

/// Each region's acknowledgement of `item_key` at `version` or newer, by region.
fn acked_regions(acks: &[Ack], version: i64) -> Vec<String> {
    let mut out: Vec<String> = acks
        .iter()
        .filter(|a| a.version >= version && (a.region == HOME || a.region == OTHER))
        .map(|a| a.region.clone())
        .collect();
    out.sort();
    out
}

/// The region entry of a wait report.
fn region<'a>(result: &'a Value, name: &str) -> &'a Value {
    result["wait"]["regions"]
        .as_array()
        .unwrap_or_else(|| panic!("no wait in {result}"))
        .iter()
        .find(|r| r["region"] == name)
        .unwrap_or_else(|| panic!("no region {name} in {result}"))
}

fn assert_acknowledged(result: &Value, name: &str) {
    let r = region(result, name);
    assert_eq!(r["acknowledged"], true, "{result}");
    assert_eq!(r["unconfirmed_items"], 0, "{result}");
    assert!(r["lag_ms"].as_i64().is_some_and(|l| l >= 0), "{result}");
    let at = r["acknowledged_at"].as_str().unwrap();
    chrono::DateTime::parse_from_rfc3339(at).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiting_sync_returns_once_every_region_acknowledged() {
    edge_tests::init_logging();
    let db = TestDb::new().await;
    let core = Core::new(db.pool.clone());
    let (_, project, env) = basic_project(&core, ENV_KEY).await;
    let feature = core
        .create_feature(project, "f", "STANDARD", true, Val::Int(1))
        .await;
    let regions = TwoRegions::start(|_| Invalidation::none()).await;
    let (mut writer, addr) = serve(&db, &regions, 180).await;

    // Over HTTP.
    core.set_flag(env, feature, true, Val::Int(2)).await;
    let body =
        json!({"environment": ENV_KEY, "wait": {"regions": [HOME, OTHER], "timeout_secs": 150}});
    let (status, result, raw) = sync_request(&addr, &body).await;
    // The ledger at the moment the answer arrived.
    let mut at_return = Vec::new();
    for (key, _) in written_items(env) {
        at_return.push(regions.acks(&key).await);
    }
    assert_eq!(status, 200, "{raw}");
    assert_eq!(result["wait"]["complete"], true, "{raw}");
    assert_eq!(result["wait"]["items"], 3, "{raw}");
    assert_eq!(result["wait"]["limited_by_request_timeout"], false, "{raw}");
    assert_acknowledged(&result, HOME);
    assert_acknowledged(&result, OTHER);
    for ((key, doc), acks) in written_items(env).iter().zip(&at_return) {
        let version = version_in(&result, doc);
        assert_eq!(
            acked_regions(acks, version),
            [HOME, OTHER],
            "{key} v{version} acknowledged by both regions when the sync returned: {acks:?}"
        );
    }
    // The value is what it is now: the acknowledged version holds it in region b.
    let item = regions
        .b
        .get(TableKind::Environments, &[("api_key", ENV_KEY)])
        .await
        .unwrap();
    assert!(version_of(&item) >= version_in(&result, "environment"));

    // A wait that cannot be served is refused before anything is written.
    for wait in [
        json!({"regions": []}),
        json!({"regions": ["a b"]}),
        json!({"regions": [HOME], "timeout_secs": 0}),
        json!({"regions": [HOME], "timeout": 5}),
    ] {
        let (status, _, raw) =
            sync_request(&addr, &json!({"environment": ENV_KEY, "wait": wait})).await;
        assert_eq!(status, 400, "{wait}: {raw}");
        let v: Value = serde_json::from_str(&raw).unwrap();
        assert!(v["error"].as_str().unwrap().contains("wait"), "{raw}");
    }

    // On the command line.
    core.set_flag(env, feature, true, Val::Int(3)).await;
    let out = writer_command(&db.url, &regions.a)
        .args([
            "sync",
            "--environment",
            ENV_KEY,
            "--wait-regions",
            &format!("{HOME},{OTHER}"),
            "--wait-timeout-secs",
            "150",
        ])
        .output()
        .await
        .unwrap();
    let mut at_return = Vec::new();
    for (key, _) in written_items(env) {
        at_return.push(regions.acks(&key).await);
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["wait"]["complete"], true, "{result}");
    assert_acknowledged(&result, HOME);
    assert_acknowledged(&result, OTHER);
    for ((key, doc), acks) in written_items(env).iter().zip(&at_return) {
        let version = version_in(&result, doc);
        assert_eq!(
            acked_regions(acks, version),
            [HOME, OTHER],
            "{key} v{version} acknowledged by both regions when the sync returned: {acks:?}"
        );
    }
    writer.kill().await.unwrap();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiting_sync_names_the_region_that_did_not_acknowledge() {
    edge_tests::init_logging();
    let db = TestDb::new().await;
    let core = Core::new(db.pool.clone());
    let (_, project, env) = basic_project(&core, ENV_KEY).await;
    let feature = core
        .create_feature(project, "f", "STANDARD", true, Val::Int(1))
        .await;
    let mut regions = TwoRegions::start(|_| Invalidation::none()).await;
    regions.stop_consumer(OTHER).await;
    // The request's time limit is shorter than the wait asked for: it bounds the wait, and the
    // answer (not a 504) comes before it.
    let (mut writer, addr) = serve(&db, &regions, 30).await;

    core.set_flag(env, feature, true, Val::Int(2)).await;
    let body =
        json!({"environment": ENV_KEY, "wait": {"regions": [HOME, OTHER], "timeout_secs": 600}});
    let (status, result, raw) = sync_request(&addr, &body).await;
    assert_eq!(status, 202, "{raw}");
    assert_eq!(result["wait"]["complete"], false, "{raw}");
    assert_eq!(result["wait"]["limited_by_request_timeout"], true, "{raw}");
    assert!(
        result["wait"]["timeout_ms"].as_u64().unwrap() < 30_000,
        "{raw}"
    );
    assert_acknowledged(&result, HOME);
    let b = region(&result, OTHER);
    assert_eq!(b["acknowledged"], false, "{raw}");
    assert_eq!(b["unconfirmed_items"], 3, "{raw}");
    assert!(b["lag_ms"].is_null(), "{raw}");
    // The ledger agrees: region a acknowledged every item at the version written, b none.
    for (key, doc) in written_items(env) {
        let version = version_in(&result, doc);
        let acks = regions.acks(&key).await;
        assert_eq!(acked_regions(&acks, version), [HOME], "{key}: {acks:?}");
    }
    // Region b has the write (the relay runs); only its consumer is missing.
    let version = version_in(&result, "environment");
    wait::until(
        "region b holds the write",
        Duration::from_secs(60),
        || async {
            let item = regions
                .b
                .get(TableKind::Environments, &[("api_key", ENV_KEY)])
                .await?;
            (version_of(&item) >= version).then_some(())
        },
    )
    .await;

    // On the command line: exit code 2 and a message naming the region.
    core.set_flag(env, feature, true, Val::Int(3)).await;
    let out = writer_command(&db.url, &regions.a)
        .args([
            "sync",
            "--environment",
            ENV_KEY,
            "--wait-regions",
            &format!("{HOME},{OTHER}"),
            "--wait-timeout-secs",
            "30",
        ])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "not acknowledged within 30 s by region(s): {OTHER}; acknowledged by: {HOME} (lag "
        )),
        "{stderr}"
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["wait"]["complete"], false, "{result}");
    assert_acknowledged(&result, HOME);
    assert_eq!(region(&result, OTHER)["acknowledged"], false, "{result}");
    writer.kill().await.unwrap();
    db.drop_db().await;
}
