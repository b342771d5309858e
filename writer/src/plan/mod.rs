//! `writer plan`: capacity and monthly cost of a workload across R regions, without I/O.
//!
//! Every figure comes from something the code does or measured:
//!
//! - item sizes from the writer's own layout and encoder ([`sizes`]);
//! - write units per item as DynamoDB bills them on a standard table: `ceil(size / 1 KB)`,
//!   once in the home region (the writer's conditional PutItem) and once more as a replicated
//!   write in every other region (the five edge tables are global tables);
//! - the ledger (`flagsmith_edge_replication_acks`) is a global table too: each region's
//!   consumer writes one acknowledgement per stream record into its local replica, and that
//!   acknowledgement is replicated to the R-1 other regions; when it expires (TTL, 14 days)
//!   the delete is free where it happens and a replicated write everywhere else;
//! - the consumer reads nothing for an insert or update (the hash travels in the item); it
//!   reads the delete intent (one GetItem) for a removal only;
//! - `writer verify` Scans the four streamed tables in every region and the ledger in the home
//!   region, with consistent reads (`verify/scan.rs`): 1 read unit per 4 KB, not halved;
//! - Lambda batches as the template configures it ([`CONSUMER_BATCH_SIZE`],
//!   [`BATCHING_WINDOW_SECS`], [`LAMBDA_MEMORY_MB`]), and runs at the consumer's measured rate;
//! - writer processes from the writer's measured single-process throughput.
//!
//! Prices are in [`prices`].

pub mod prices;
pub mod sizes;

use serde::Serialize;

pub use prices::Prices;
pub use sizes::{ItemSizes, Shape};

/// Seconds in a month as AWS bills them (730 hours).
pub const MONTH_SECONDS: f64 = 730.0 * 3600.0;
/// Days in that month.
pub const MONTH_DAYS: f64 = 730.0 / 24.0;
/// `ConsumerBatchSize`'s default in `infra/aws/template.yaml`: records per invocation.
pub const CONSUMER_BATCH_SIZE: u32 = 100;
/// `MaximumBatchingWindowInSeconds` of the template's event source mappings.
pub const BATCHING_WINDOW_SECS: f64 = 1.0;
/// `MemorySize` of the consumer function in the template.
pub const LAMBDA_MEMORY_MB: u32 = 256;
/// Lambda polls each stream shard this many times a second (AWS Lambda's documented rate).
pub const LAMBDA_POLLS_PER_SHARD_PER_SECOND: f64 = 4.0;
/// Writes a second one DynamoDB stream shard carries at most.
pub const SHARD_WRITES_PER_SECOND: f64 = 1000.0;
/// Bytes DynamoDB adds to each item for storage (indexing overhead).
pub const STORAGE_OVERHEAD_PER_ITEM: usize = 100;
/// Seconds an acknowledgement is kept (the ledger's TTL).
pub const ACK_RETENTION_SECS: f64 = edge_documents::acks::RETENTION_SECONDS as f64;

/// One writer process: documents written per second through the live path, when each change
/// is its own document write (no coalescing). README, "Performance" > "Identity migration and
/// backfills": a backfill of 200 environments, document by document through the live path
/// (lock, snapshot, version, conditional puts of the environment and `_META` items,
/// bookkeeping), 61 environments/s (2026-11-26, release build, 2 cores, Postgres and
/// DynamoDB Local on the same machine).
pub const WRITER_DOCUMENTS_PER_SECOND: f64 = 61.0;
/// Where [`WRITER_DOCUMENTS_PER_SECOND`] comes from, as printed.
pub const WRITER_THROUGHPUT_SOURCE: &str =
    "README.md, Performance > Identity migration and backfills: \
a backfill through the live path wrote 61 environments/s in one process (2026-11-26, 2 cores, \
DynamoDB Local); a burst of changes over few environments coalesces to 7,907 changes/s \
(Performance > The writer), so this is the uncoalesced floor";
/// The consumer's measured rate, records verified and acknowledged per second (README,
/// "Performance" > "The stream consumer", run 1 of 2026-12-07, records with old images, the
/// slower of the two runs, against DynamoDB Local).
pub const CONSUMER_RECORDS_PER_SECOND: f64 = 1201.0;

/// What is planned for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Workload {
    /// Environment document writes a second (each writes the environment and `_META` items).
    pub changes_per_second: f64,
    /// Identity document writes a second (each writes one identity item).
    pub identity_changes_per_second: f64,
    /// Regions with a replica, the home region included.
    pub regions: u32,
    pub environments: u64,
    pub identities: u64,
    pub verify_passes_per_day: f64,
}

/// Deployment settings and measured rates a plan depends on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Deployment {
    pub batch_size: u32,
    pub batching_window_secs: f64,
    pub lambda_memory_mb: u32,
    pub consumer_records_per_second: f64,
    pub writer_documents_per_second: f64,
}

impl Default for Deployment {
    fn default() -> Self {
        Deployment {
            batch_size: CONSUMER_BATCH_SIZE,
            batching_window_secs: BATCHING_WINDOW_SECS,
            lambda_memory_mb: LAMBDA_MEMORY_MB,
            consumer_records_per_second: CONSUMER_RECORDS_PER_SECOND,
            writer_documents_per_second: WRITER_DOCUMENTS_PER_SECOND,
        }
    }
}

/// Write units of one item: `ceil(size / 1 KB)`.
pub fn write_units(size: usize) -> u64 {
    (size as u64).div_ceil(1024).max(1)
}

/// Read units of a strongly consistent read of `bytes`: `ceil(bytes / 4 KB)`.
pub fn read_units_consistent(bytes: f64) -> f64 {
    (bytes / 4096.0).ceil()
}

/// Stream shards for `writes` a second (at least one).
pub fn shards(writes: f64) -> f64 {
    (writes / SHARD_WRITES_PER_SECOND).ceil().max(1.0)
}

/// Lambda invocations a second for a stream carrying `records` a second: a shard's batch is
/// handed over when it is full or when the batching window closes, whichever is first.
pub fn invocations(records: f64, batch_size: u32, window_secs: f64) -> f64 {
    if records <= 0.0 {
        return 0.0;
    }
    let shards = shards(records);
    let per_shard = records / shards;
    let batch = f64::from(batch_size);
    let per_shard_invocations = if per_shard * window_secs >= batch {
        per_shard / batch
    } else {
        per_shard.min(1.0 / window_secs)
    };
    shards * per_shard_invocations
}

/// One line of the monthly bill.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    pub name: &'static str,
    pub unit: &'static str,
    pub per_month: f64,
    /// Price of one million units (request units, requests) or of one unit (GB, GB-second).
    pub price: f64,
    pub price_per: &'static str,
    pub usd_per_month: f64,
    pub how: String,
}

/// Rates a second, over all regions unless named otherwise.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rates {
    pub home_write_units: f64,
    pub replicated_write_units: f64,
    pub ack_write_units: f64,
    pub ack_replicated_write_units: f64,
    pub ack_expiry_replicated_write_units: f64,
    pub consumer_read_units: f64,
    pub stream_records_per_region: f64,
    pub stream_get_records_per_region: f64,
    pub lambda_invocations_per_region: f64,
    pub lambda_billed_ms_per_invocation: f64,
}

/// A computed plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub workload: Workload,
    pub deployment: Deployment,
    pub shape: Shape,
    pub item_bytes: ItemSizes,
    pub item_write_units: ItemWriteUnits,
    pub per_second: Rates,
    pub storage_gb_per_region: f64,
    pub verify_read_units_per_pass: f64,
    pub monthly: Vec<Line>,
    pub total_usd_per_month: f64,
    pub writer_processes: u64,
    pub writer_throughput_per_process: f64,
    pub writer_throughput_source: &'static str,
    pub prices: Prices,
    pub prices_note: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemWriteUnits {
    pub environment: u64,
    pub meta: u64,
    pub api_key: u64,
    pub identity: u64,
    pub ack: u64,
}

pub const PRICES_NOTE: &str = "us-east-1 on-demand list prices (see writer/src/plan/prices.rs \
for the date); no free tier, no discounts; adjust with --price-*";

/// Computes the plan of `workload` with items of `sizes`.
pub fn plan(
    workload: &Workload,
    deployment: &Deployment,
    shape: Shape,
    sizes: ItemSizes,
    prices: Prices,
) -> Plan {
    let r = f64::from(workload.regions.max(1));
    let n = workload.changes_per_second;
    let k = workload.identity_changes_per_second;
    let e = workload.environments as f64;
    let m = workload.identities as f64;
    let wu = ItemWriteUnits {
        environment: write_units(sizes.environment),
        meta: write_units(sizes.meta),
        api_key: write_units(sizes.api_key),
        identity: write_units(sizes.identity),
        ack: write_units(sizes.ack),
    };

    // Writes.
    let home = n * (wu.environment + wu.meta) as f64 + k * wu.identity as f64;
    let replicated = (r - 1.0) * home;
    let records_per_region = 2.0 * n + k;
    let ack_writes = r * records_per_region * wu.ack as f64;
    let ack_replicated = (r - 1.0) * ack_writes;
    let ack_expiry = ack_replicated;

    // Streams and Lambda, per region: environments (n), environments_v2 (_META, n),
    // identities (k), API keys (no steady writes, one idle shard).
    let streams = [n, n, k, 0.0];
    let get_records: f64 = streams
        .iter()
        .map(|&w| shards(w) * LAMBDA_POLLS_PER_SHARD_PER_SECOND)
        .sum();
    let invocations_per_region: f64 = streams
        .iter()
        .map(|&w| invocations(w, deployment.batch_size, deployment.batching_window_secs))
        .sum();
    let billed_ms = if invocations_per_region > 0.0 {
        let records_per_invocation = records_per_region / invocations_per_region;
        (records_per_invocation / deployment.consumer_records_per_second * 1000.0)
            .ceil()
            .max(1.0)
    } else {
        0.0
    };

    // Storage, per region: the edge items and the ledger (every region's acknowledgements).
    let data_bytes =
        e * (sizes.environment + sizes.meta + sizes.api_key) as f64 + m * sizes.identity as f64;
    let data_items = 3.0 * e + m;
    let acked_items = (records_per_region * ACK_RETENTION_SECS).min(2.0 * e + m);
    let ledger_items = r * acked_items;
    let ledger_bytes = ledger_items * sizes.ack as f64;
    let stored_bytes =
        data_bytes + ledger_bytes + (data_items + ledger_items) * STORAGE_OVERHEAD_PER_ITEM as f64;
    let gb = |bytes: f64| bytes / 1e9;
    let storage_gb_per_region = gb(stored_bytes);

    // Verify: the four tables in every region, the ledger in the home region.
    let verify_per_pass =
        r * read_units_consistent(data_bytes) + read_units_consistent(ledger_bytes);
    let verify_per_month = verify_per_pass * workload.verify_passes_per_day * MONTH_DAYS;

    // Replication's traffic between regions.
    let transfer_bytes_per_second = (r - 1.0)
        * (n * (sizes.environment + sizes.meta) as f64 + k * sizes.identity as f64)
        + ack_replicated / wu.ack as f64 * sizes.ack as f64;

    let mo = MONTH_SECONDS;
    let per_million = |units: f64, price: f64| units / 1e6 * price;
    let mut monthly = Vec::new();
    let mut line = |name, unit, per_month: f64, price: f64, price_per, usd: f64, how: String| {
        monthly.push(Line {
            name,
            unit,
            per_month,
            price,
            price_per,
            usd_per_month: usd,
            how,
        })
    };
    line(
        "writer PutItem, home region",
        "WRU",
        home * mo,
        prices.write_request_units_per_million,
        "million",
        per_million(home * mo, prices.write_request_units_per_million),
        format!(
            "{n}/s x ({} env + {} _META WU) + {k}/s x {} identity WU",
            wu.environment, wu.meta, wu.identity
        ),
    );
    line(
        "replication to the other regions",
        "rWRU",
        replicated * mo,
        prices.replicated_write_request_units_per_million,
        "million",
        per_million(
            replicated * mo,
            prices.replicated_write_request_units_per_million,
        ),
        format!("the home region's write units x {} other regions", r - 1.0),
    );
    line(
        "acknowledgements (ledger PutItem)",
        "WRU",
        ack_writes * mo,
        prices.write_request_units_per_million,
        "million",
        per_million(ack_writes * mo, prices.write_request_units_per_million),
        format!(
            "{records_per_region} records/s x {r} regions x {} WU",
            wu.ack
        ),
    );
    line(
        "acknowledgements replicated",
        "rWRU",
        ack_replicated * mo,
        prices.replicated_write_request_units_per_million,
        "million",
        per_million(
            ack_replicated * mo,
            prices.replicated_write_request_units_per_million,
        ),
        format!(
            "each acknowledgement x {} other regions (the ledger is a global table)",
            r - 1.0
        ),
    );
    line(
        "acknowledgements expiring (TTL), at most",
        "rWRU",
        ack_expiry * mo,
        prices.replicated_write_request_units_per_million,
        "million",
        per_million(
            ack_expiry * mo,
            prices.replicated_write_request_units_per_million,
        ),
        "a TTL delete is free where it runs, a replicated write elsewhere; an acknowledgement \
         overwritten within 14 days expires once"
            .into(),
    );
    line(
        "consumer reads (ledger GetItem)",
        "RRU",
        0.0,
        prices.read_request_units_per_million,
        "million",
        0.0,
        "none for inserts and updates; one per removal (delete intent), not planned here".into(),
    );
    line(
        "writer verify Scans",
        "RRU",
        verify_per_month,
        prices.read_request_units_per_million,
        "million",
        per_million(verify_per_month, prices.read_request_units_per_million),
        format!(
            "{} passes/day x ({r} regions x {:.0} MB / 4 KB + ledger {:.0} MB / 4 KB), consistent reads",
            workload.verify_passes_per_day,
            data_bytes / 1e6,
            ledger_bytes / 1e6
        ),
    );
    line(
        "stream GetRecords (Lambda trigger)",
        "streams RRU",
        r * get_records * mo,
        prices.streams_read_request_units_per_million,
        "million",
        0.0,
        format!(
            "{} polls/s per shard x {get_records_shards} shards x {r} regions; free for Lambda triggers \
             (${:.2} at the streams price otherwise)",
            LAMBDA_POLLS_PER_SHARD_PER_SECOND,
            per_million(r * get_records * mo, prices.streams_read_request_units_per_million),
            get_records_shards = get_records / LAMBDA_POLLS_PER_SHARD_PER_SECOND
        ),
    );
    let invocations_month = r * invocations_per_region * mo;
    line(
        "Lambda requests",
        "invocations",
        invocations_month,
        prices.lambda_requests_per_million,
        "million",
        per_million(invocations_month, prices.lambda_requests_per_million),
        format!(
            "{invocations_per_region:.2}/s per region: batches of {} or every {} s per shard",
            deployment.batch_size, deployment.batching_window_secs
        ),
    );
    let gb_seconds =
        invocations_month * billed_ms / 1000.0 * f64::from(deployment.lambda_memory_mb) / 1024.0;
    line(
        "Lambda duration",
        "GB-s",
        gb_seconds,
        prices.lambda_per_gb_second,
        "GB-s",
        gb_seconds * prices.lambda_per_gb_second,
        format!(
            "{billed_ms} ms per invocation at {} records/s, {} MB",
            deployment.consumer_records_per_second, deployment.lambda_memory_mb
        ),
    );
    let storage_gb = r * storage_gb_per_region;
    line(
        "storage",
        "GB-month",
        storage_gb,
        prices.storage_per_gb_month,
        "GB-month",
        storage_gb * prices.storage_per_gb_month,
        format!("{r} regions x {storage_gb_per_region:.3} GB (items, ledger, 100 B per item)"),
    );
    line(
        "point-in-time recovery",
        "GB-month",
        storage_gb,
        prices.pitr_per_gb_month,
        "GB-month",
        storage_gb * prices.pitr_per_gb_month,
        "PITR is on for every replica in the template".into(),
    );
    let transfer_gb = gb(transfer_bytes_per_second * mo);
    line(
        "replication traffic between regions",
        "GB",
        transfer_gb,
        prices.inter_region_transfer_per_gb,
        "GB",
        transfer_gb * prices.inter_region_transfer_per_gb,
        "item and acknowledgement bytes sent to each other region".into(),
    );

    let total = monthly.iter().map(|l| l.usd_per_month).sum();
    let documents_per_second = n + k;
    let writer_processes = (documents_per_second / deployment.writer_documents_per_second)
        .ceil()
        .max(1.0) as u64;
    Plan {
        workload: workload.clone(),
        deployment: deployment.clone(),
        shape,
        item_bytes: sizes,
        item_write_units: wu,
        per_second: Rates {
            home_write_units: home,
            replicated_write_units: replicated,
            ack_write_units: ack_writes,
            ack_replicated_write_units: ack_replicated,
            ack_expiry_replicated_write_units: ack_expiry,
            consumer_read_units: 0.0,
            stream_records_per_region: records_per_region,
            stream_get_records_per_region: get_records,
            lambda_invocations_per_region: invocations_per_region,
            lambda_billed_ms_per_invocation: billed_ms,
        },
        storage_gb_per_region,
        verify_read_units_per_pass: verify_per_pass,
        monthly,
        total_usd_per_month: total,
        writer_processes,
        writer_throughput_per_process: deployment.writer_documents_per_second,
        writer_throughput_source: WRITER_THROUGHPUT_SOURCE,
        prices,
        prices_note: PRICES_NOTE,
    }
}

/// `1234567.8` as `1,234,568`.
fn grouped(x: f64) -> String {
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 && digits != "0" {
        out.insert(0, '-');
    }
    out
}

/// The plan as text.
pub fn render_text(plan: &Plan) -> String {
    use std::fmt::Write;
    let w = &plan.workload;
    let s = &plan.item_bytes;
    let u = &plan.item_write_units;
    let p = &plan.per_second;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Workload: {} environment changes/s, {} identity changes/s, {} regions, {} environments, \
         {} identities, {} verify passes/day",
        w.changes_per_second,
        w.identity_changes_per_second,
        w.regions,
        grouped(w.environments as f64),
        grouped(w.identities as f64),
        w.verify_passes_per_day
    );
    let _ = writeln!(
        out,
        "Items (bytes as DynamoDB counts them, measured with the writer's encoder; {} features, \
         {} segments, {} traits):",
        plan.shape.features_per_environment,
        plan.shape.segments_per_project,
        plan.shape.traits_per_identity
    );
    for (name, bytes, units) in [
        ("environment", s.environment, u.environment),
        ("_META", s.meta, u.meta),
        ("API key", s.api_key, u.api_key),
        ("identity", s.identity, u.identity),
        ("acknowledgement", s.ack, u.ack),
    ] {
        let _ = writeln!(out, "  {name:<16} {bytes:>7} B  {units:>3} WU");
    }
    let _ = writeln!(out, "Per second (all regions):");
    for (name, value) in [
        ("write units, home region", p.home_write_units),
        ("replicated write units", p.replicated_write_units),
        ("acknowledgement write units", p.ack_write_units),
        (
            "acknowledgement replicated write units",
            p.ack_replicated_write_units,
        ),
        (
            "acknowledgement expiry rWRU (at most)",
            p.ack_expiry_replicated_write_units,
        ),
        ("consumer read units", p.consumer_read_units),
        ("stream records, per region", p.stream_records_per_region),
        (
            "stream GetRecords, per region",
            p.stream_get_records_per_region,
        ),
        (
            "Lambda invocations, per region",
            p.lambda_invocations_per_region,
        ),
    ] {
        let _ = writeln!(out, "  {name:<40} {value:>12.2}");
    }
    let _ = writeln!(
        out,
        "  {:<40} {:>12}",
        "verify read units per pass",
        grouped(plan.verify_read_units_per_pass)
    );
    let _ = writeln!(
        out,
        "  {:<40} {:>12.3}",
        "storage GB per region", plan.storage_gb_per_region
    );
    let _ = writeln!(out, "Monthly (730 h), {}:", plan.prices_note);
    let _ = writeln!(
        out,
        "  {:<42} {:>26} {:>20} {:>10}",
        "", "quantity", "price", "USD/month"
    );
    for l in &plan.monthly {
        let quantity = if l.per_month < 100.0 {
            format!("{:.2} {}", l.per_month, l.unit)
        } else {
            format!("{} {}", grouped(l.per_month), l.unit)
        };
        let price = format!("${}/{}", trim(l.price), l.price_per);
        let _ = writeln!(
            out,
            "  {:<42} {:>26} {:>20} {:>10.2}",
            l.name, quantity, price, l.usd_per_month
        );
        let _ = writeln!(out, "      {}", l.how);
    }
    let _ = writeln!(
        out,
        "  {:<42} {:>26} {:>20} {:>10.2}",
        "total", "", "", plan.total_usd_per_month
    );
    let _ = writeln!(
        out,
        "Writer processes: {} ({} document writes/s at {} per process)",
        plan.writer_processes,
        w.changes_per_second + w.identity_changes_per_second,
        plan.writer_throughput_per_process
    );
    let _ = writeln!(out, "  {}", plan.writer_throughput_source);
    out
}

fn trim(price: f64) -> String {
    let s = format!("{price:.10}");
    let s = s.trim_end_matches('0');
    s.trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests;
