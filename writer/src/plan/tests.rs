use super::*;

const SIZES: ItemSizes = ItemSizes {
    environment: 3000, // 3 WU
    meta: 3100,        // 4 WU
    api_key: 300,      // 1 WU
    identity: 600,     // 1 WU
    ack: 250,          // 1 WU
};

fn workload(n: f64, k: f64, regions: u32) -> Workload {
    Workload {
        changes_per_second: n,
        identity_changes_per_second: k,
        regions,
        environments: 10,
        identities: 1000,
        verify_passes_per_day: 1.0,
    }
}

fn plan_of(w: &Workload) -> Plan {
    plan(
        w,
        &Deployment::default(),
        Shape::default(),
        SIZES,
        Prices::default(),
    )
}

#[test]
fn write_units_are_whole_kilobytes() {
    for (size, units) in [
        (1, 1),
        (1023, 1),
        (1024, 1),
        (1025, 2),
        (3300, 4),
        (400 * 1024, 400),
    ] {
        assert_eq!(write_units(size), units, "size {size}");
    }
}

#[test]
fn consistent_read_units_are_whole_4_kb() {
    for (bytes, units) in [
        (0.0, 0.0),
        (1.0, 1.0),
        (4096.0, 1.0),
        (4097.0, 2.0),
        (664_000.0, 163.0),
    ] {
        assert_eq!(read_units_consistent(bytes), units, "bytes {bytes}");
    }
}

#[test]
fn shards_carry_1000_writes_a_second() {
    for (writes, expected) in [
        (0.0, 1.0),
        (1.0, 1.0),
        (1000.0, 1.0),
        (1001.0, 2.0),
        (2500.0, 3.0),
    ] {
        assert_eq!(shards(writes), expected, "writes {writes}");
    }
}

#[test]
fn invocations_follow_the_batch_and_the_window() {
    // (records/s, batch size, window s, invocations/s)
    for (records, batch, window, expected) in [
        (0.0, 100, 1.0, 0.0),
        (0.5, 100, 1.0, 0.5),     // each record alone
        (10.0, 100, 1.0, 1.0),    // one batch per window
        (100.0, 100, 1.0, 1.0),   // a full batch per window
        (250.0, 100, 1.0, 2.5),   // full batches
        (1500.0, 100, 1.0, 15.0), // two shards of 750/s
        (10.0, 10, 5.0, 1.0),     // the batch fills before the window closes
    ] {
        let got = invocations(records, batch, window);
        assert!(
            (got - expected).abs() < 1e-9,
            "{records}/s: {got} != {expected}"
        );
    }
}

#[test]
fn write_units_across_regions() {
    // (env changes/s, identity changes/s, regions) ->
    // (home WU/s, replicated WU/s, stream records/s per region, ack WU/s, ack rWU/s)
    for (n, k, r, home, replicated, records, acks, acks_replicated) in [
        (10.0, 5.0, 1, 75.0, 0.0, 25.0, 25.0, 0.0),
        (10.0, 5.0, 3, 75.0, 150.0, 25.0, 75.0, 150.0),
        (0.0, 100.0, 2, 100.0, 100.0, 100.0, 200.0, 200.0),
        (1.0, 0.0, 5, 7.0, 28.0, 2.0, 10.0, 40.0),
    ] {
        let p = plan_of(&workload(n, k, r)).per_second;
        let case = format!("n={n} k={k} r={r}");
        assert_eq!(p.home_write_units, home, "{case}");
        assert_eq!(p.replicated_write_units, replicated, "{case}");
        assert_eq!(p.stream_records_per_region, records, "{case}");
        assert_eq!(p.ack_write_units, acks, "{case}");
        assert_eq!(p.ack_replicated_write_units, acks_replicated, "{case}");
        assert_eq!(
            p.ack_expiry_replicated_write_units, acks_replicated,
            "{case}"
        );
        assert_eq!(p.consumer_read_units, 0.0, "{case}");
    }
}

#[test]
fn lambda_invocations_and_billed_duration() {
    let p = plan_of(&workload(10.0, 5.0, 3)).per_second;
    // environments 10/s, environments_v2 10/s, identities 5/s: one batch a second each.
    assert_eq!(p.lambda_invocations_per_region, 3.0);
    // 25 records over 3 invocations at 1,201 records/s: 6.9 ms, billed 7 ms.
    assert_eq!(p.lambda_billed_ms_per_invocation, 7.0);
    // Four streams, one shard each, polled 4 times a second.
    assert_eq!(p.stream_get_records_per_region, 16.0);
}

#[test]
fn a_verify_pass_reads_every_region_and_the_ledger() {
    let p = plan_of(&workload(10.0, 5.0, 2));
    // Per region: 10 x (3000 + 3100 + 300) + 1000 x 600 = 664,000 B -> 163 RU.
    // Ledger: 2 regions x (2 x 10 + 1000) acknowledgements x 250 B = 510,000 B -> 125 RU.
    assert_eq!(p.verify_read_units_per_pass, 2.0 * 163.0 + 125.0);
}

#[test]
fn the_monthly_bill_is_the_sum_of_its_lines() {
    let p = plan_of(&workload(10.0, 5.0, 3));
    let sum: f64 = p.monthly.iter().map(|l| l.usd_per_month).sum();
    assert!((p.total_usd_per_month - sum).abs() < 1e-9);
    let line = |name: &str| p.monthly.iter().find(|l| l.name == name).unwrap();
    let home = line("writer PutItem, home region");
    assert_eq!(home.per_month, 75.0 * MONTH_SECONDS);
    let expected = 75.0 * MONTH_SECONDS / 1e6 * prices::WRITE_REQUEST_UNITS_PER_MILLION;
    assert!((home.usd_per_month - expected).abs() < 1e-9);
    // Lambda's reads of the streams are not billed.
    assert_eq!(
        line("stream GetRecords (Lambda trigger)").usd_per_month,
        0.0
    );
    // One region: nothing is replicated, nothing crosses regions.
    let single = plan_of(&workload(10.0, 5.0, 1));
    for name in [
        "replication to the other regions",
        "acknowledgements replicated",
        "replication traffic between regions",
    ] {
        let l = single.monthly.iter().find(|l| l.name == name).unwrap();
        assert_eq!(l.usd_per_month, 0.0, "{name}");
    }
}

#[test]
fn price_overrides_scale_their_lines() {
    let w = workload(10.0, 5.0, 3);
    let base = plan_of(&w);
    let doubled = plan(
        &w,
        &Deployment::default(),
        Shape::default(),
        SIZES,
        Prices {
            replicated_write_request_units_per_million: 2.0
                * prices::REPLICATED_WRITE_REQUEST_UNITS_PER_MILLION,
            ..Prices::default()
        },
    );
    for (a, b) in base.monthly.iter().zip(&doubled.monthly) {
        let factor = if a.unit == "rWRU" { 2.0 } else { 1.0 };
        assert!(
            (b.usd_per_month - factor * a.usd_per_month).abs() < 1e-9,
            "{}",
            a.name
        );
    }
}

#[test]
fn writer_processes_from_the_measured_throughput() {
    for (n, k, processes) in [
        (0.0, 0.0, 1),
        (61.0, 0.0, 1),
        (61.0, 1.0, 2),
        (500.0, 500.0, 17),
    ] {
        assert_eq!(
            plan_of(&workload(n, k, 2)).writer_processes,
            processes,
            "{n} + {k}"
        );
    }
}

#[test]
fn storage_counts_items_ledger_and_overhead() {
    // 1 region, 1 change/s: in 14 days every item was acknowledged (capped at 2E + M).
    let p = plan_of(&workload(1.0, 0.0, 1));
    let data = 664_000.0;
    let ledger = 1020.0 * 250.0;
    let overhead = (30.0 + 1000.0 + 1020.0) * 100.0;
    assert!((p.storage_gb_per_region - (data + ledger + overhead) / 1e9).abs() < 1e-12);
}

#[test]
fn constants_match_the_template_and_the_readme() {
    let template = include_str!("../../../infra/aws/template.yaml");
    let batch = template
        .split("  ConsumerBatchSize:")
        .nth(1)
        .and_then(|rest| {
            rest.lines()
                .find(|l| l.trim_start().starts_with("Default:"))
        })
        .expect("ConsumerBatchSize has a default");
    assert_eq!(batch.trim(), format!("Default: {CONSUMER_BATCH_SIZE}"));
    assert!(template.contains(&format!("MemorySize: {LAMBDA_MEMORY_MB}")));
    assert!(template.contains("Architectures: [arm64]"));
    assert!(template.contains(&format!(
        "MaximumBatchingWindowInSeconds: {BATCHING_WINDOW_SECS}"
    )));
    let readme = include_str!("../../../README.md");
    assert!(readme.contains(&format!("{WRITER_DOCUMENTS_PER_SECOND} environments/s")));
    assert!(readme.contains("1,201/s"));
    assert_eq!(CONSUMER_RECORDS_PER_SECOND, 1201.0);
}

#[test]
fn the_text_names_every_line_and_the_throughput_source() {
    let p = plan_of(&workload(10.0, 5.0, 3));
    let text = render_text(&p);
    for l in &p.monthly {
        assert!(text.contains(l.name), "{}", l.name);
    }
    assert!(text.contains("Writer processes: 1"));
    assert!(text.contains(WRITER_THROUGHPUT_SOURCE));
    assert_eq!(grouped(1_234_567.8), "1,234,568");
    assert_eq!(grouped(999.0), "999");
}
