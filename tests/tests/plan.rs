//! `writer plan`, the real binary: no database, no AWS, text and JSON agree.

use edge_tests::writer::writer_binary;
use serde_json::Value;

fn plan(args: &[&str]) -> std::process::Output {
    std::process::Command::new(writer_binary())
        .arg("plan")
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("DYNAMODB_ENDPOINT")
        .output()
        .expect("writer runs")
}

const WORKLOAD: [&str; 10] = [
    "--changes-per-second",
    "200",
    "--identity-changes-per-second",
    "40",
    "--regions",
    "3",
    "--identities",
    "100000",
    "--environments",
    "50",
];

fn json_plan(extra: &[&str]) -> Value {
    let mut args = WORKLOAD.to_vec();
    args.extend_from_slice(extra);
    args.push("--json");
    let out = plan(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[test]
fn plan_needs_no_database_and_prints_a_consistent_json_plan() {
    let p = json_plan(&[]);
    let lines = p["monthly"].as_array().unwrap();
    let sum: f64 = lines
        .iter()
        .map(|l| l["usd_per_month"].as_f64().unwrap())
        .sum();
    assert!((p["total_usd_per_month"].as_f64().unwrap() - sum).abs() < 1e-6);
    // 240 document writes/s at 61 per process.
    assert_eq!(p["writer_processes"], 4);
    // Sizes come from the encoder: the environment item is several write units.
    let env_units = p["item_write_units"]["environment"].as_u64().unwrap();
    let env_bytes = p["item_bytes"]["environment"].as_u64().unwrap();
    assert_eq!(env_units, env_bytes.div_ceil(1024));
    assert!(env_units > 1);
    // 200 env changes/s x (env + _META units) + 40 identity changes/s x identity units.
    let meta_units = p["item_write_units"]["meta"].as_u64().unwrap();
    let id_units = p["item_write_units"]["identity"].as_u64().unwrap();
    let home = 200 * (env_units + meta_units) + 40 * id_units;
    assert_eq!(
        p["per_second"]["home_write_units"].as_f64().unwrap(),
        home as f64
    );
    assert_eq!(
        p["per_second"]["replicated_write_units"].as_f64().unwrap(),
        2.0 * home as f64
    );
    // Streams at 200/s: two full batches a second on each of the two environment streams,
    // one batch a second on the identities stream.
    assert_eq!(
        p["per_second"]["lambda_invocations_per_region"]
            .as_f64()
            .unwrap(),
        5.0
    );
}

#[test]
fn price_overrides_apply() {
    let p = json_plan(&["--price-rwru-per-million", "0", "--price-transfer-gb", "0"]);
    for l in p["monthly"].as_array().unwrap() {
        if l["unit"] == "rWRU" || l["unit"] == "GB" {
            assert_eq!(l["usd_per_month"].as_f64().unwrap(), 0.0, "{l}");
        }
    }
    assert_eq!(
        p["prices"]["replicated_write_request_units_per_million"],
        0.0
    );
}

#[test]
fn the_text_quotes_the_throughput_source_and_bad_input_is_refused() {
    let out = plan(&WORKLOAD);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Writer processes: 4 (240 document writes/s at 61 per process)"));
    assert!(text.contains("README.md, Performance"));
    assert!(text.contains("total"));
    let mut args = WORKLOAD.to_vec();
    args[5] = "0";
    let out = plan(&args);
    assert!(!out.status.success(), "0 regions is refused");
    let mut args = WORKLOAD.to_vec();
    args[1] = "-5";
    let out = plan(&args);
    assert!(!out.status.success(), "a negative rate is refused");
}
