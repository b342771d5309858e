//! `writer`: the edge replication writer's command line.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use edge_documents::redact;
use edge_documents::tables::TableNames;
use edge_writer::daemon::{self, DaemonConfig};
use edge_writer::failure_policy::error_chain;
use edge_writer::health::Health;
use edge_writer::replicate::{Replicator, Settings};
use edge_writer::store::{self, DynamoStore};
use edge_writer::{db, http, metrics, state, sync};
use tokio::sync::watch;

#[derive(Parser, Debug)]
#[command(
    name = "writer",
    version,
    about = "Replicates Flagsmith core changes into the edge's DynamoDB tables"
)]
struct Cli {
    /// Core Postgres database (the writer's schema `edge` lives in it too).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,

    /// DynamoDB endpoint; defaults to the AWS SDK's (AWS_ENDPOINT_URL, region).
    #[arg(long, env = "DYNAMODB_ENDPOINT", global = true)]
    dynamodb_endpoint: Option<String>,

    #[command(flatten)]
    tables: TableArgs,

    /// statement_timeout of the writer's Postgres sessions, in seconds (0: none). A
    /// cancelled statement is retried as a transient failure. `migrate` and `capture` run
    /// without it (their lock timeouts govern them).
    #[arg(long, env = "EDGE_PG_STATEMENT_TIMEOUT_SECS", default_value_t = 60, global = true,
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pg_statement_timeout_secs: u64,

    /// idle_in_transaction_session_timeout of the writer's Postgres sessions, in seconds
    /// (0: none): a writer stuck inside a transaction never holds Flagsmith's rows longer.
    #[arg(long, env = "EDGE_PG_IDLE_IN_TRANSACTION_TIMEOUT_SECS", default_value_t = 120, global = true,
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pg_idle_in_transaction_timeout_secs: u64,

    /// Log format: text on a terminal, JSON otherwise (auto).
    #[arg(long, value_enum, default_value = "auto", global = true)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Auto,
    Text,
    Json,
}

#[derive(Args, Debug)]
struct TableArgs {
    /// Prefix for every default table name (e.g. `staging_`).
    #[arg(long, env = "EDGE_TABLE_PREFIX", default_value = "", global = true)]
    table_prefix: String,
    #[arg(long, env = "EDGE_ENVIRONMENTS_TABLE", global = true)]
    environments_table: Option<String>,
    #[arg(long, env = "EDGE_ENVIRONMENTS_V2_TABLE", global = true)]
    environments_v2_table: Option<String>,
    #[arg(long, env = "EDGE_IDENTITIES_TABLE", global = true)]
    identities_table: Option<String>,
    #[arg(long, env = "EDGE_ENVIRONMENT_API_KEYS_TABLE", global = true)]
    environment_api_keys_table: Option<String>,
    #[arg(long, env = "EDGE_PROJECT_METADATA_TABLE", global = true)]
    project_metadata_table: Option<String>,
    /// The replication ledger (consumers' acknowledgements, the writer's delete intents).
    #[arg(long, env = "EDGE_ACK_TABLE", global = true)]
    ack_table: Option<String>,
}

impl TableArgs {
    fn names(&self) -> TableNames {
        let mut names = TableNames::with_prefix(&self.table_prefix);
        let overrides = [
            (&self.environments_table, &mut names.environments),
            (&self.environments_v2_table, &mut names.environments_v2),
            (&self.identities_table, &mut names.identities),
            (
                &self.environment_api_keys_table,
                &mut names.environment_api_keys,
            ),
            (&self.project_metadata_table, &mut names.project_metadata),
            (&self.ack_table, &mut names.acks),
        ];
        for (given, slot) in overrides {
            if let Some(name) = given {
                *slot = name.clone();
            }
        }
        names
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Apply the writer's migrations (schema `edge` and the capture triggers, installed one
    /// core table at a time under a short lock timeout), and grant the other roles theirs.
    /// A one-off task, run as a role that owns the core tables (or may create triggers on
    /// them); the daemon itself needs no such role.
    Migrate(MigrateArgs),
    /// Capture in the core database: its state, the kill switch, installing and removing it.
    Capture {
        #[command(subcommand)]
        command: CaptureCommand,
    },
    /// The operator's one view: capture, the queue, dead letters, replication lag, identity
    /// migrations, acknowledgements per region and the last verify. Exit code 0 when nothing
    /// needs an operator, 2 when something does, 1 when Postgres or DynamoDB cannot be read.
    ///
    /// Something needs an operator when: capture is paused, its triggers are missing or a
    /// capture gap waits for `writer backfill --gap`; the oldest unresolved change or the
    /// oldest due document has waited over --max-due-age-secs; there are more than
    /// --max-dead-letters dead letters (or edge items that could not be ingested); an identity
    /// migration is unfinished and not running, or running without progress for
    /// --migration-stall-secs; a region has not acknowledged a sampled write older than
    /// --unconfirmed-after-secs; the last `writer verify` found drift or failed (or, with
    /// --verify-max-age-secs, never ran or is older); the p99 lag is over --max-lag-p99-ms
    /// (when given).
    #[command(verbatim_doc_comment)]
    Status(StatusArgs),
    /// Run the replication daemon until SIGTERM / Ctrl-C.
    Run(RunArgs),
    /// Replicate one environment now and print the versions written; with --wait-regions,
    /// also wait until those regions acknowledged them (exit code 2 if one did not in time).
    Sync {
        /// Environment id or client-side api_key.
        #[arg(long)]
        environment: String,
        /// Wait until these regions (comma-separated, as their stream consumers name
        /// themselves in the replication ledger) acknowledged every item written.
        #[arg(long, value_delimiter = ',', num_args = 1..)]
        wait_regions: Vec<String>,
        /// Longest wait for the acknowledgements, in seconds (with --wait-regions).
        #[arg(long, default_value_t = 60, requires = "wait_regions",
              value_parser = clap::value_parser!(u64).range(1..=edge_writer::sync_wait::MAX_TIMEOUT_SECS))]
        wait_timeout_secs: u64,
        #[command(flatten)]
        replication: ReplicationArgs,
    },
    /// Manage the DynamoDB tables.
    Tables {
        #[command(subcommand)]
        command: TablesCommand,
    },
    /// Documents that could not be replicated.
    DeadLetters {
        #[command(subcommand)]
        command: DeadLettersCommand,
    },
    /// Copy every existing identity of a project (or one environment) into edge storage.
    /// Resumable (a killed run continues after its checkpoint) and safe beside the live
    /// writer; records the migration status in the project metadata table.
    MigrateIdentities(MigrateIdentitiesArgs),
    /// Re-project and re-write documents through the versioned path: one environment, a
    /// project, everything, or what changed since a time. Resumable; safe beside the live
    /// writer.
    Backfill(BackfillArgs),
    /// Adopt an existing core database in one command: migrations and capture (as
    /// `migrate`), the tables (created or checked), every environment, _META and API key of
    /// the edge projects (only those that differ are written), the identities of every edge
    /// project (the resumable identity migration job), then verify. Safe to re-run (an edge
    /// in step is left as it is) and beside the live writer. Exit code: 0 done, no drift;
    /// 2 done, with drift or failed documents; 1 a step failed (re-run to resume).
    Bootstrap(BootstrapArgs),
    /// Compare Postgres with the items of every region and with the consumers'
    /// acknowledgements; list missing, stale, corrupted, extra and unconfirmed items.
    /// Exit code: 0 no drift, 2 drift found, 3 drift found and every drifting document
    /// re-written (`--repair`; run again once replication has carried it), 1 verify failed.
    Verify(VerifyArgs),
    /// Edge -> core ingestion of identities written at the edge: the per-project switch and
    /// the edge items that could not be ingested.
    Ingestion {
        #[command(subcommand)]
        command: IngestionCommand,
    },
    /// Capacity and monthly cost of a workload across regions, at on-demand list prices:
    /// write and read units, stream reads, Lambda invocations, storage, and the writer
    /// processes the rate needs. Pure calculation: reads no database, calls no AWS API.
    Plan(PlanArgs),
    /// Show an environment's items in DynamoDB with their replication metadata.
    Inspect {
        /// Environment client-side api_key.
        #[arg(long)]
        environment: String,
    },
}

#[derive(Args, Debug)]
struct MigrateArgs {
    /// Flagsmith's application role: granted what firing the capture triggers needs (USAGE
    /// on schema edge, INSERT on edge.change_log), nothing more.
    #[arg(long)]
    core_role: Option<String>,
    /// The role the writer daemon and the stream consumers' ingestion run as: schema edge,
    /// SELECT on the captured core tables, the ingestion writes on the identity tables.
    #[arg(long)]
    writer_role: Option<String>,
    #[command(flatten)]
    locks: LockArgs,
}

#[derive(Args, Debug, Clone, Copy)]
struct LockArgs {
    /// Longest time Flagsmith's writes to one core table may queue behind a trigger swap
    /// (each attempt's lock_timeout), in milliseconds.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    lock_timeout_ms: u64,
    /// Keep retrying a table whose lock is not granted for this long, then fail naming the
    /// sessions that hold it.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    lock_wait_secs: u64,
}

impl LockArgs {
    fn policy(&self) -> edge_writer::capture::control::LockPolicy {
        edge_writer::capture::control::LockPolicy {
            lock_timeout: std::time::Duration::from_millis(self.lock_timeout_ms),
            lock_wait: std::time::Duration::from_secs(self.lock_wait_secs),
        }
    }
}

#[derive(Subcommand, Debug)]
enum CaptureCommand {
    /// On or paused, triggers installed, gaps waiting for a backfill, the change log's
    /// backlog. Exit code 0 when nothing needs an operator, 2 otherwise.
    Status {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// The kill switch: the capture triggers return at once (no lock on any core table;
    /// effective for the next row written). What changes meanwhile is not captured: the
    /// gap is recorded, and `writer backfill --gap` after `resume` replays every document.
    Pause {
        /// Why, recorded with the gap.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Capture again. Then run `writer backfill --gap`.
    Resume,
    /// (Re)install the capture triggers where they are missing or outdated.
    Install {
        #[command(flatten)]
        locks: LockArgs,
    },
    /// Pause capture, then remove its triggers and functions from the core tables (schema
    /// edge and its data stay; `writer capture install`, `resume` and `writer backfill --gap`
    /// put everything back).
    Uninstall {
        #[command(flatten)]
        locks: LockArgs,
    },
}

#[derive(Subcommand, Debug)]
enum TablesCommand {
    /// Create the tables that do not exist yet (streams on, NEW_AND_OLD_IMAGES).
    Create {
        /// Without streams (local bulk-load benchmarks only: the stream consumer needs them).
        #[arg(long)]
        no_streams: bool,
    },
}

#[derive(Subcommand, Debug)]
enum IngestionCommand {
    /// Every edge project: its setting (on, off, default), whether ingestion runs, and
    /// whether its identity migration is complete (the default turns ingestion on then).
    List,
    /// Ingest the edge's identity writes of a project into core.
    On {
        #[arg(long)]
        project: i32,
    },
    /// Leave the project's identities written at the edge to the edge: not ingested, and
    /// not replaced by the writer.
    Off {
        #[arg(long)]
        project: i32,
    },
    /// Back to the default: on once the project's identity migration is complete.
    Default {
        #[arg(long)]
        project: i32,
    },
    /// Edge items that could not be ingested, with their key and reason.
    DeadLetters,
}

#[derive(Subcommand, Debug)]
enum DeadLettersCommand {
    /// List parked documents with their errors.
    List,
    /// Replicate parked documents again now (one, or all). A success removes the dead
    /// letter; a failure updates its error. Exits non-zero if any still fails.
    Replay {
        /// A document key, e.g. `environment:12`, `identity:7`.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        doc: Option<String>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("scope").required(true)
    .args(["environment", "project", "all", "since", "gap"])))]
struct BackfillArgs {
    /// One environment: id or client-side api_key.
    #[arg(long)]
    environment: Option<String>,
    /// Every environment of a project.
    #[arg(long)]
    project: Option<i32>,
    /// Every environment.
    #[arg(long)]
    all: bool,
    /// Every document whose newest replicated change was captured at or after this time
    /// (RFC 3339, e.g. 2026-11-01T00:00:00Z).
    #[arg(long, value_parser = parse_time)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Show what would be written and how many items differ from DynamoDB; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// At most this many documents per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Batches replayed at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    concurrency: u16,
    /// Documents written together: one lock transaction, one version, their writes (see
    /// --batch-writes), one commit.
    #[arg(long, default_value_t = edge_writer::backfill::DEFAULT_BATCH as u16,
          value_parser = clap::value_parser!(u16).range(1..=500))]
    batch: u16,
    /// Start from the first document even if a stopped run of this scope left a cursor.
    #[arg(long)]
    restart: bool,
    /// Every document (environments, API keys, identities), to close the gaps capture was
    /// paused for (`writer capture status`). Waits for the transactions that were open when
    /// capture resumed to end first; records the gaps closed when no document failed.
    #[arg(long)]
    gap: bool,
    #[command(flatten)]
    replication: ReplicationArgs,
}

#[derive(Args, Debug)]
struct BootstrapArgs {
    /// Flagsmith's application role, granted what firing the capture triggers needs (as
    /// `writer migrate --core-role`).
    #[arg(long)]
    core_role: Option<String>,
    /// The writer's role, granted what the writer needs (as `writer migrate --writer-role`).
    #[arg(long)]
    writer_role: Option<String>,
    #[command(flatten)]
    locks: LockArgs,
    /// Create the DynamoDB tables that do not exist yet (as `writer tables create`; not in
    /// AWS, where the stack creates them). Without it, each table is checked.
    #[arg(long)]
    create_tables: bool,
    /// With --create-tables: without streams (local bulk loads only).
    #[arg(long, requires = "create_tables")]
    no_streams: bool,
    /// Environment and API key documents written at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    concurrency: u16,
    /// At most this many environment and API key documents per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Identities per page of the identity migration.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    page_size: u32,
    /// Identity pages migrated at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    identity_concurrency: u16,
    /// BatchWriteItem calls in flight per identity page.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    batch_concurrency: u16,
    /// Seconds an identity page's write lease lasts (its batches are abandoned after half).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(2..=3600))]
    lease_secs: u64,
    /// Seconds after a lease ends that a batch abandoned under it may still be applied by
    /// DynamoDB (the longest a request can be in flight): such documents are written again
    /// then.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(0..=3600))]
    late_write_secs: u64,
    /// Regions to verify at the end, as `writer verify --region`. Without any: the home
    /// region (the DynamoDB written to), content only (no acknowledgements checked).
    #[arg(long = "region", value_parser = parse_region)]
    regions: Vec<(String, Option<String>)>,
    /// The verify's timing, as `writer verify`'s (the acknowledgement deadline applies with
    /// --region only).
    #[command(flatten)]
    verify_timing: VerifyTimingArgs,
    /// No progress bars, log lines only.
    #[arg(long)]
    no_progress: bool,
    /// Print the summary as JSON (otherwise one line per step).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    replication: ReplicationArgs,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// The whole report as JSON.
    #[arg(long)]
    json: bool,
    /// A region whose stream consumer acknowledges writes, as it names itself (repeat, or
    /// comma-separated in the variable). Regions found acknowledging are shown too; a region
    /// given here that acknowledges nothing is reported.
    #[arg(long = "region", env = "EDGE_STATUS_REGIONS", value_delimiter = ',')]
    regions: Vec<String>,
    /// The replication lag figures cover this many seconds back.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=3600))]
    lag_window_secs: u64,
    /// How many recent writes (the newest of each document) have their acknowledgements read
    /// from the ledger, one Query per item, at most 10 items per write on average. 0: none.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=1000))]
    ack_sample: u64,
    /// Threshold: the oldest unresolved change, or the oldest due document, waited longer.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    max_due_age_secs: u64,
    /// Threshold: more dead letters than this (the writer's; ingestion's counted apart).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    max_dead_letters: i64,
    /// Threshold: a region has not acknowledged a write made longer ago than this.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=1_209_600))]
    unconfirmed_after_secs: u64,
    /// Threshold: a running identity migration made no progress for this long.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    migration_stall_secs: u64,
    /// Threshold: the last `writer verify` finished longer ago than this, or never ran
    /// (unset: its age is not judged).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    verify_max_age_secs: Option<u64>,
    /// Threshold: the writer's p99 replication lag over the window, in milliseconds (unset:
    /// not judged).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_lag_p99_ms: Option<u64>,
}

impl StatusArgs {
    fn options(&self) -> edge_writer::status::Options {
        use edge_writer::status::{Options, Thresholds};
        Options {
            lag_window: Duration::from_secs(self.lag_window_secs),
            regions: self.regions.clone(),
            ack_sample: self.ack_sample as usize,
            thresholds: Thresholds {
                max_due_age: Duration::from_secs(self.max_due_age_secs),
                max_dead_letters: self.max_dead_letters,
                unconfirmed_after: Duration::from_secs(self.unconfirmed_after_secs),
                migration_stall: Duration::from_secs(self.migration_stall_secs),
                verify_max_age: self.verify_max_age_secs.map(Duration::from_secs),
                max_lag_p99: self.max_lag_p99_ms.map(Duration::from_millis),
            },
        }
    }
}

#[derive(Args, Debug)]
struct PlanArgs {
    /// Environment document writes a second (each writes the environment and `_META` items;
    /// plan the peak, as if no change coalesced with another).
    #[arg(long, value_parser = non_negative)]
    changes_per_second: f64,
    /// Regions with a replica of the tables, the home region included.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=5))]
    regions: u32,
    /// Identities stored at the edge.
    #[arg(long)]
    identities: u64,
    /// Identity document writes a second (traits, overrides).
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    identity_changes_per_second: f64,
    /// Environments at the edge (each has an environment, a `_META` and an API key item).
    #[arg(long, default_value_t = 100)]
    environments: u64,
    /// `writer verify` passes a day.
    #[arg(long, default_value_t = 1.0, value_parser = non_negative)]
    verify_passes_per_day: f64,
    /// Feature states per environment document, for its measured size.
    #[arg(long, default_value_t = 20)]
    features_per_environment: usize,
    /// Segments per project, for the environment document's measured size.
    #[arg(long, default_value_t = 2)]
    segments_per_project: usize,
    /// Traits per identity, for the identity document's measured size.
    #[arg(long, default_value_t = 5)]
    traits_per_identity: usize,
    /// Records per consumer invocation (the template's `ConsumerBatchSize`).
    #[arg(long, default_value_t = edge_writer::plan::CONSUMER_BATCH_SIZE,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    consumer_batch_size: u32,
    /// Documents one writer process writes a second (the README's measured figure).
    #[arg(long, default_value_t = edge_writer::plan::WRITER_DOCUMENTS_PER_SECOND, value_parser = positive)]
    writer_documents_per_second: f64,
    #[command(flatten)]
    prices: PriceArgs,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
}

/// Prices in US dollars; the defaults are us-east-1 on-demand list prices
/// (`writer/src/plan/prices.rs`).
#[derive(Args, Debug)]
struct PriceArgs {
    /// Write request units, per million.
    #[arg(long, value_parser = non_negative, default_value_t = edge_writer::plan::prices::WRITE_REQUEST_UNITS_PER_MILLION)]
    price_wru_per_million: f64,
    /// Replicated write request units, per million.
    #[arg(long, value_parser = non_negative, default_value_t = edge_writer::plan::prices::REPLICATED_WRITE_REQUEST_UNITS_PER_MILLION)]
    price_rwru_per_million: f64,
    /// Read request units, per million.
    #[arg(long, value_parser = non_negative, default_value_t = edge_writer::plan::prices::READ_REQUEST_UNITS_PER_MILLION)]
    price_rru_per_million: f64,
    /// Storage, per GB-month.
    #[arg(long, value_parser = non_negative, default_value_t = edge_writer::plan::prices::STORAGE_PER_GB_MONTH)]
    price_storage_gb_month: f64,
    /// Point-in-time recovery, per GB-month.
    #[arg(long, value_parser = non_negative, default_value_t = edge_writer::plan::prices::PITR_PER_GB_MONTH)]
    price_pitr_gb_month: f64,
    /// DynamoDB Streams read request units, per million (shown only: free for Lambda).
    #[arg(long, value_parser = non_negative, default_value_t = edge_writer::plan::prices::STREAMS_READ_REQUEST_UNITS_PER_MILLION)]
    price_streams_rru_per_million: f64,
    /// Lambda requests, per million.
    #[arg(long, value_parser = non_negative, default_value_t = edge_writer::plan::prices::LAMBDA_REQUESTS_PER_MILLION)]
    price_lambda_requests_per_million: f64,
    /// Lambda duration, per GB-second (arm64).
    #[arg(long, value_parser = non_negative, default_value_t = edge_writer::plan::prices::LAMBDA_ARM64_PER_GB_SECOND)]
    price_lambda_gb_second: f64,
    /// Data transfer to another region, per GB.
    #[arg(long, value_parser = non_negative, default_value_t = edge_writer::plan::prices::INTER_REGION_TRANSFER_PER_GB)]
    price_transfer_gb: f64,
}

impl PriceArgs {
    fn prices(&self) -> edge_writer::plan::Prices {
        edge_writer::plan::Prices {
            write_request_units_per_million: self.price_wru_per_million,
            replicated_write_request_units_per_million: self.price_rwru_per_million,
            read_request_units_per_million: self.price_rru_per_million,
            storage_per_gb_month: self.price_storage_gb_month,
            pitr_per_gb_month: self.price_pitr_gb_month,
            streams_read_request_units_per_million: self.price_streams_rru_per_million,
            lambda_requests_per_million: self.price_lambda_requests_per_million,
            lambda_per_gb_second: self.price_lambda_gb_second,
            inter_region_transfer_per_gb: self.price_transfer_gb,
        }
    }
}

/// A finite number >= 0.
fn non_negative(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("`{s}` is not a number >= 0")),
    }
}

/// A finite number > 0.
fn positive(s: &str) -> std::result::Result<f64, String> {
    match non_negative(s)? {
        x if x > 0.0 => Ok(x),
        _ => Err(format!("`{s}` is not a number > 0")),
    }
}

fn plan_command(args: &PlanArgs) -> Result<()> {
    use edge_writer::plan;
    let shape = plan::Shape {
        features_per_environment: args.features_per_environment,
        segments_per_project: args.segments_per_project,
        traits_per_identity: args.traits_per_identity,
    };
    let workload = plan::Workload {
        changes_per_second: args.changes_per_second,
        identity_changes_per_second: args.identity_changes_per_second,
        regions: args.regions,
        environments: args.environments,
        identities: args.identities,
        verify_passes_per_day: args.verify_passes_per_day,
    };
    let deployment = plan::Deployment {
        batch_size: args.consumer_batch_size,
        writer_documents_per_second: args.writer_documents_per_second,
        ..plan::Deployment::default()
    };
    let sizes = plan::sizes::measure(&shape);
    let result = plan::plan(&workload, &deployment, shape, sizes, args.prices.prices());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print!("{}", plan::render_text(&result));
    }
    Ok(())
}

/// How `writer verify` (and bootstrap's verify) waits on what is in flight.
#[derive(Args, Debug)]
struct VerifyTimingArgs {
    /// A write older than this many seconds without an acknowledgement of a region is
    /// reported as unconfirmed.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=1_209_600))]
    ack_deadline_secs: u64,
    /// Seconds before what drifted is looked at again; only drift that persists is reported
    /// (a change committed during the scans, or on its way to a region, is not drift). 0: report
    /// the first look.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=3600))]
    recheck_after_secs: u64,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// A region to verify, as its stream consumer names it: `NAME` (an AWS region, reached at
    /// the SDK's endpoint for it) or `NAME=ENDPOINT_URL`. Repeat for every replica region.
    #[arg(long = "region", required = true, value_parser = parse_region)]
    regions: Vec<(String, Option<String>)>,
    #[command(flatten)]
    timing: VerifyTimingArgs,
    /// Re-write every drifting document through the normal versioned path.
    #[arg(long)]
    repair: bool,
    /// Print the whole report as JSON instead of one line per drift and a summary.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    replication: ReplicationArgs,
}

fn parse_region(s: &str) -> Result<(String, Option<String>), String> {
    let (name, endpoint) = match s.split_once('=') {
        Some((n, e)) => (n, Some(e.to_string())),
        None => (s, None),
    };
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(format!("`{s}` is not NAME or NAME=ENDPOINT_URL"));
    }
    if let Some(e) = &endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(format!(
                "endpoint `{e}` of region {name} is not an http(s) URL"
            ));
        }
    }
    Ok((name.to_string(), endpoint))
}

fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("{s:?} is not an RFC 3339 time like 2026-11-01T00:00:00Z: {e}"))
}

#[derive(Args, Debug)]
struct MigrateIdentitiesArgs {
    /// Core project id.
    #[arg(long)]
    project: i32,
    /// Only this environment of the project (the project's metadata status is not changed).
    #[arg(long)]
    environment: Option<i32>,
    /// Identities per page (one lock transaction and one snapshot each).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    page_size: u32,
    /// Pages migrated at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// BatchWriteItem calls in flight per page.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    batch_concurrency: u16,
    /// Start from the first identity, ignoring an unfinished run's checkpoint.
    #[arg(long)]
    restart: bool,
    /// Write identities whose content is unchanged since they were last written, too.
    #[arg(long)]
    rewrite: bool,
    /// Seconds a page's write lease lasts (its batches are abandoned after half of it).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(2..=3600))]
    lease_secs: u64,
    /// Seconds after a lease ends that a batch abandoned under it may still be applied by
    /// DynamoDB (the longest a request can be in flight): such documents are written again
    /// then.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(0..=3600))]
    late_write_secs: u64,
    /// No progress bar, log lines only.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Documents replicated concurrently.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: u16,
    /// Identity documents a worker takes together when many are due (a fan-out storm):
    /// one snapshot, one version, their writes concurrently, one commit. Environment and
    /// API key documents are always taken one at a time.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u16).range(1..=500))]
    batch: u16,
    /// Polling interval in milliseconds (the fallback for lost notifications).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    poll_interval_ms: u64,
    /// Address of the HTTP server (/v1/sync, /healthz, /metrics); "off" to disable.
    #[arg(long, env = "WRITER_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    http_addr: String,
    /// Apply migrations before starting.
    #[arg(long)]
    migrate: bool,
    /// Bearer token that `POST /v1/sync` callers must send (at least 16 characters). Without
    /// one, /v1/sync refuses every request (403) unless --allow-unauthenticated-sync.
    #[arg(long, env = "WRITER_SYNC_TOKEN", hide_env_values = true)]
    sync_token: Option<String>,
    /// Serve /v1/sync without a token: local development only, never where anything else can
    /// reach the port.
    #[arg(long, conflicts_with = "sync_token")]
    allow_unauthenticated_sync: bool,
    /// Syncs served at once (each has its own connections, apart from the workers'); more
    /// concurrent requests get 429 at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    sync_concurrency: u16,
    /// Seconds a /v1/sync caller waits for the result before a 504 (the sync goes on).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    sync_timeout_secs: u64,
    /// /healthz reports a stuck worker when due work has waited this many seconds while a
    /// worker has been busy on one document, or no worker has finished one, for as long.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    stuck_after_secs: u64,
    #[command(flatten)]
    replication: ReplicationArgs,
}

impl RunArgs {
    fn sync_auth(&self) -> Result<http::SyncAuth> {
        match self.sync_token.as_deref().map(str::trim) {
            Some(token) if token.len() < 16 => {
                bail!("--sync-token (WRITER_SYNC_TOKEN) must be at least 16 characters")
            }
            Some(token) => Ok(http::SyncAuth::Token(token.to_string())),
            None if self.allow_unauthenticated_sync => Ok(http::SyncAuth::Open),
            None => Ok(http::SyncAuth::Disabled),
        }
    }
}

#[derive(Args, Debug)]
struct ReplicationArgs {
    /// Compress environment items larger than this many bytes.
    #[arg(long, default_value_t = edge_documents::item::DEFAULT_COMPRESS_ABOVE_BYTES as u64,
          value_parser = clap::value_parser!(u64).range(1024..=409_600))]
    compress_above_bytes: u64,
    /// Seconds before an applied delete is checked again for a late resurrecting write.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    delete_recheck_after_secs: u64,
    /// Attempts before a document failing with an unclassified error is parked.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(i32).range(1..=1000))]
    max_attempts: i32,
    /// Longest backoff between attempts, in milliseconds.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    retry_cap_ms: u64,
    /// Seconds an identity item written at the edge may wait for a stream consumer to ingest
    /// it before the writer ingests it itself.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    ingest_grace_secs: u64,
    /// How the documents of a batch (a fan-out storm's identities, a backfill's batch) are
    /// written: `puts` (one conditional PutItem per item) or `transactions`
    /// (TransactWriteItems of up to 100 items, each under its own condition: one request per
    /// batch, a third of the writer's CPU, twice the write capacity).
    #[arg(long, value_enum, default_value_t = BatchWrites::Puts)]
    batch_writes: BatchWrites,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum BatchWrites {
    Transactions,
    Puts,
}

impl ReplicationArgs {
    fn settings(&self) -> Settings {
        let defaults = Settings::default();
        Settings {
            compress_above_bytes: self.compress_above_bytes as usize,
            delete_recheck_after: Duration::from_secs(self.delete_recheck_after_secs),
            max_attempts: self.max_attempts,
            retry_cap: Duration::from_millis(self.retry_cap_ms),
            ingest_grace: Duration::from_secs(self.ingest_grace_secs),
            batch_transactions: self.batch_writes == BatchWrites::Transactions,
            retry_base: defaults
                .retry_base
                .min(Duration::from_millis(self.retry_cap_ms)),
            ..defaults
        }
    }
}

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let metrics = metrics::install();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(dispatch(cli, metrics))
}

async fn pool(cli: &Cli, max_connections: u32) -> Result<sqlx::PgPool> {
    let limits = db::SessionLimits {
        statement_timeout: std::time::Duration::from_secs(cli.pg_statement_timeout_secs),
        idle_in_transaction_timeout: std::time::Duration::from_secs(
            cli.pg_idle_in_transaction_timeout_secs,
        ),
    };
    pool_with_limits(cli, max_connections, limits).await
}

/// A pool for one-off administration (`migrate`, `capture`): no statement timeout.
async fn admin_pool(cli: &Cli) -> Result<sqlx::PgPool> {
    pool_with_limits(cli, 2, db::SessionLimits::none()).await
}

async fn pool_with_limits(
    cli: &Cli,
    max_connections: u32,
    limits: db::SessionLimits,
) -> Result<sqlx::PgPool> {
    let Some(url) = cli.database_url.as_deref() else {
        bail!("no database: pass --database-url or set DATABASE_URL (the core Flagsmith database)");
    };
    db::connect_with_limits(url, max_connections, limits)
        .await
        .with_context(|| format!("connecting to Postgres at {}", redact::url(url)))
}

async fn dynamo(cli: &Cli) -> DynamoStore {
    let client = store::client::dynamodb(cli.dynamodb_endpoint.as_deref()).await;
    DynamoStore::new(client, cli.tables.names())
}

/// Runs the command; a command that found something for the operator to act on (drift,
/// paused capture, unacknowledged regions) returns exit code 2 rather than exiting, so
/// that connections close and output is flushed.
async fn dispatch(
    cli: Cli,
    metrics_handle: metrics_exporter_prometheus::PrometheusHandle,
) -> Result<ExitCode> {
    match &cli.command {
        Command::Migrate(args) => {
            let pool = admin_pool(&cli).await?;
            let options = db::MigrateOptions {
                locks: args.locks.policy(),
                core_role: args.core_role.clone(),
                writer_role: args.writer_role.clone(),
            };
            let report = db::migrate_with(&pool, &options)
                .await
                .map_err(|e| anyhow::anyhow!(error_chain(&e)))
                .context("migrating schema edge")?;
            println!(
                "migrations applied; capture triggers installed on {} tables ({} already current, {} lock retries)",
                report.installed.len(),
                report.unchanged,
                report.lock_retries
            );
            for role in [&args.core_role, &args.writer_role].into_iter().flatten() {
                println!("granted role {role}");
            }
        }
        Command::Capture { command } => return capture_command(&cli, command).await,
        Command::Tables {
            command: TablesCommand::Create { no_streams },
        } => {
            let store = dynamo(&cli).await;
            let created =
                store::tables::create_tables_with(store.client(), store.tables(), !no_streams)
                    .await
                    .context("creating DynamoDB tables")?;
            if created.is_empty() {
                println!("all tables exist");
            } else {
                println!("created: {}", created.join(", "));
            }
        }
        Command::Sync {
            environment,
            wait_regions,
            wait_timeout_secs,
            replication,
        } => {
            return sync_command(
                &cli,
                environment,
                wait_regions,
                *wait_timeout_secs,
                replication,
            )
            .await
        }
        Command::DeadLetters {
            command: DeadLettersCommand::Replay { doc, all },
        } => replay_dead_letters(&cli, doc.as_deref(), *all).await?,
        Command::Backfill(args) => backfill(&cli, args).await?,
        Command::Verify(args) => return verify(&cli, args).await,
        Command::Bootstrap(args) => return bootstrap(&cli, args).await,
        Command::DeadLetters {
            command: DeadLettersCommand::List,
        } => {
            let pool = pool(&cli, 1).await?;
            let letters = state::dead_letters::list(&pool)
                .await
                .context("reading dead letters")?;
            if letters.is_empty() {
                println!("no dead letters");
            }
            for l in letters {
                println!(
                    "{}\t{}\tattempts={}\tlast={}\t{}",
                    l.doc_key, l.error_kind, l.attempts, l.last_failed_at, l.error
                );
            }
        }
        Command::Ingestion { command } => ingestion(&cli, command).await?,
        Command::Inspect { environment } => inspect(&cli, environment).await?,
        Command::Plan(args) => plan_command(args)?,
        Command::Status(args) => return status(&cli, args).await,
        Command::MigrateIdentities(args) => migrate_identities(&cli, args).await?,
        Command::Run(args) => run(&cli, args, metrics_handle).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// A library's exit code (0 ok, 2 operator attention) as the process's.
fn exit_code(code: i32) -> ExitCode {
    u8::try_from(code).map_or(ExitCode::FAILURE, ExitCode::from)
}

async fn ingestion(cli: &Cli, command: &IngestionCommand) -> Result<()> {
    use edge_ingest::{dead_letters, switch};
    let pool = pool(cli, 1).await?;
    let (project, setting) = match command {
        IngestionCommand::On { project } => (*project, Some(true)),
        IngestionCommand::Off { project } => (*project, Some(false)),
        IngestionCommand::Default { project } => (*project, None),
        IngestionCommand::List => {
            for p in switch::list(&pool).await.context("reading the projects")? {
                println!(
                    "project {}\t{}\tsetting={}\tingestion={}\tmigration_complete={}",
                    p.project_id,
                    p.name,
                    p.setting,
                    if p.ingestion { "on" } else { "off" },
                    p.migration_complete
                );
            }
            return Ok(());
        }
        IngestionCommand::DeadLetters => {
            let letters = dead_letters::list(&pool)
                .await
                .context("reading the ingestion dead letters")?;
            if letters.is_empty() {
                println!("no ingestion dead letters");
            }
            for l in letters {
                println!(
                    "{}\tattempts={}\tlast={}\t{}",
                    l.item_key, l.attempts, l.last_failed_at, l.error
                );
            }
            return Ok(());
        }
    };
    switch::set(&pool, project, setting)
        .await
        .with_context(|| format!("setting ingestion of project {project}"))?;
    let state = switch::list(&pool)
        .await
        .context("reading the projects")?
        .into_iter()
        .find(|p| p.project_id == project);
    match state {
        Some(p) => println!(
            "project {}: setting={}, ingestion {}",
            p.project_id,
            p.setting,
            if p.ingestion { "on" } else { "off" }
        ),
        None => println!("project {project}: setting saved (it is not an edge project now)"),
    }
    Ok(())
}

async fn replay_dead_letters(cli: &Cli, doc: Option<&str>, all: bool) -> Result<()> {
    use edge_writer::dead_letter_replay::{self, Selection};
    let selection = match doc {
        Some(d) => Selection::One(d.parse().map_err(|e| anyhow::anyhow!("--doc: {e}"))?),
        None if all => Selection::All,
        None => bail!("pass --doc <key> or --all"),
    };
    let pool = pool(cli, 4).await?;
    let replicator = Replicator::new(pool, dynamo(cli).await, Settings::default());
    let replayed = dead_letter_replay::replay(&replicator, &selection).await?;
    if replayed.is_empty() {
        println!("no dead letters");
        return Ok(());
    }
    for r in &replayed {
        match &r.result {
            Ok(outcome) => println!(
                "{}\treplayed\tversion={}\twritten={}\tdeleted={}",
                r.doc_key,
                outcome.version.map_or("-".into(), |v| v.to_string()),
                outcome.written,
                outcome.deleted
            ),
            Err(message) => println!("{}\tfailed\t{message}", r.doc_key),
        }
    }
    let failed = replayed.iter().filter(|r| r.result.is_err()).count();
    if failed > 0 {
        bail!("{failed} of {} dead letters still fail", replayed.len());
    }
    Ok(())
}

async fn backfill(cli: &Cli, args: &BackfillArgs) -> Result<()> {
    use edge_writer::backfill::{self, Options, Scope};
    let concurrency = u32::from(args.concurrency);
    let pool = pool(cli, concurrency * 2 + 4).await?;
    let mut gaps = Vec::new();
    let scope = if args.gap {
        use edge_writer::capture::control;
        gaps = control::settle_gaps(&pool, std::time::Duration::from_secs(600))
            .await
            .map_err(|e| anyhow::anyhow!(error_chain(&e)))
            .context("backfill --gap")?;
        if gaps.is_empty() {
            println!("no capture gap to backfill");
            return Ok(());
        }
        Scope::Gap(gaps.clone())
    } else if let Some(env) = &args.environment {
        let id = sync::find_environment(&pool, env)
            .await
            .map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
        Scope::Environment(id)
    } else if let Some(p) = args.project {
        Scope::Project(p)
    } else if let Some(t) = args.since {
        Scope::Since(t)
    } else {
        Scope::All
    };
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("--rate must be a positive number of documents per second, not {rate}");
        }
    }
    let replicator = Replicator::new(pool, dynamo(cli).await, args.replication.settings());
    let options = Options {
        dry_run: args.dry_run,
        rate: args.rate,
        concurrency: usize::from(args.concurrency),
        batch: usize::from(args.batch),
        restart: args.restart,
        only_differing: false,
        progress_bar: false,
    };
    let summary = backfill::run(&replicator, &scope, &options)
        .await
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))
        .with_context(|| format!("backfill of {}", scope.key()))?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    if summary.failed > 0 {
        bail!(
            "{} documents failed (queued for the writer; see the failures above)",
            summary.failed
        );
    }
    if !gaps.is_empty() && !args.dry_run {
        let mut conn = replicator.pool().acquire().await?;
        let closed = edge_writer::capture::control::close_gaps(&mut conn, &gaps)
            .await
            .context("recording the capture gaps closed")?;
        println!("capture gaps closed: {closed}");
    }
    Ok(())
}

async fn capture_command(cli: &Cli, command: &CaptureCommand) -> Result<ExitCode> {
    use edge_writer::capture::control;
    let pool = admin_pool(cli).await?;
    match command {
        CaptureCommand::Status { json } => {
            let status = control::status(&pool)
                .await
                .context("reading capture state (has `writer migrate` run?)")?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_capture_status(&status);
            }
            if status.needs_operator() {
                return Ok(ExitCode::from(2));
            }
        }
        CaptureCommand::Pause { reason } => {
            let changed = control::set_capture(&pool, false, reason.as_deref())
                .await
                .context("pausing capture")?;
            if changed {
                println!("capture paused: core changes are no longer recorded from now on.");
                println!("when resumed, run `writer backfill --gap` to replay every document.");
            } else {
                println!("capture was already paused");
            }
        }
        CaptureCommand::Resume => {
            let changed = control::set_capture(&pool, true, None)
                .await
                .context("resuming capture")?;
            if changed {
                println!("capture resumed. Changes made while it was paused were not captured:");
                println!("run `writer backfill --gap` now to replay every document.");
            } else {
                println!("capture was not paused");
            }
        }
        CaptureCommand::Install { locks } => {
            let report = control::install_all(&pool, locks.policy())
                .await
                .map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
            println!(
                "capture triggers installed on {} tables ({} already current)",
                report.installed.len(),
                report.unchanged
            );
            let status = control::status(&pool).await?;
            if !status.enabled {
                println!(
                    "capture is paused: run `writer capture resume`, then `writer backfill --gap`"
                );
            }
        }
        CaptureCommand::Uninstall { locks } => {
            // Paused first: the gap from now on is recorded, for the backfill after a
            // reinstall.
            control::set_capture(&pool, false, Some("capture uninstalled"))
                .await
                .context("pausing capture before removing it")?;
            let removed = control::uninstall_all(&pool, locks.policy())
                .await
                .map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
            println!("capture removed from {} core tables", removed.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_capture_status(s: &edge_writer::capture::control::CaptureStatus) {
    let state = if s.enabled { "on" } else { "PAUSED" };
    println!("capture: {state} since {}", s.changed_at.to_rfc3339());
    if let Some(reason) = &s.reason {
        println!("  reason: {reason}");
    }
    if s.tables_not_installed.is_empty() {
        println!("triggers: installed on every captured table");
    } else {
        println!(
            "triggers: MISSING or outdated on {} (run `writer capture install`)",
            s.tables_not_installed.join(", ")
        );
    }
    for g in &s.open_gaps {
        let until = g
            .resumed_at
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| "now (still paused)".into());
        println!(
            "gap {}: not captured from {} until {until}; run `writer backfill --gap` once resumed",
            g.id,
            g.paused_at.to_rfc3339()
        );
    }
    match s.oldest_change_at {
        Some(t) => println!(
            "change log: {} rows waiting, oldest captured {}",
            s.change_log_rows,
            t.to_rfc3339()
        ),
        None => println!("change log: empty"),
    }
}

/// Clients for the regions given with `--region`.
async fn regions(given: &[(String, Option<String>)]) -> Vec<edge_writer::verify::Region> {
    let mut regions = Vec::new();
    for (name, endpoint) in given {
        let client = match endpoint {
            Some(url) => store::client::dynamodb(Some(url)).await,
            None => store::client::dynamodb_in_region(name).await,
        };
        regions.push(edge_writer::verify::Region {
            name: name.clone(),
            client,
        });
    }
    regions
}

async fn bootstrap(cli: &Cli, args: &BootstrapArgs) -> Result<ExitCode> {
    use edge_writer::bootstrap::{self, Options, TablesMode, VerifyPlan};
    use edge_writer::migrate_identities::{self as job, PageSettings};
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("--rate must be a positive number of documents per second, not {rate}");
        }
    }
    let admin = admin_pool(cli).await?;
    let connections =
        (u32::from(args.concurrency) * 2 + 4).max(u32::from(args.identity_concurrency) * 2 + 4);
    let replicator = Replicator::new(
        pool(cli, connections).await?,
        dynamo(cli).await,
        args.replication.settings(),
    );
    let options = Options {
        migrate: db::MigrateOptions {
            locks: args.locks.policy(),
            core_role: args.core_role.clone(),
            writer_role: args.writer_role.clone(),
        },
        tables: if args.create_tables {
            TablesMode::Create {
                streams: !args.no_streams,
            }
        } else {
            TablesMode::Check
        },
        concurrency: usize::from(args.concurrency),
        rate: args.rate,
        identities: job::Options {
            page_size: args.page_size,
            concurrency: usize::from(args.identity_concurrency),
            page: PageSettings {
                lease: Duration::from_secs(args.lease_secs),
                late_writes: Duration::from_secs(args.late_write_secs),
                batch_concurrency: usize::from(args.batch_concurrency),
                rewrite_unchanged: false,
            },
            ..job::Options::default()
        },
        lease_wait: Duration::from_secs(args.lease_secs * 2 + 10),
        verify: VerifyPlan {
            regions: regions(&args.regions).await,
            ack_deadline: Duration::from_secs(args.verify_timing.ack_deadline_secs),
            recheck_after: Duration::from_secs(args.verify_timing.recheck_after_secs),
        },
        progress_bar: !args.no_progress,
    };
    let summary = bootstrap::run(&admin, &replicator, &options)
        .await
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))
        .context("bootstrap (safe to re-run: it resumes)")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_bootstrap(&summary);
    }
    Ok(if summary.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn print_bootstrap(s: &edge_writer::bootstrap::Summary) {
    let m = &s.migrations;
    if m.already_current {
        println!("1 migrations and capture: already current");
    } else {
        println!(
            "1 migrations and capture: applied; triggers installed on {} tables ({} lock retries)",
            m.capture_installed_on.len(),
            m.lock_retries
        );
    }
    for role in &m.roles_granted {
        println!("  granted role {role}");
    }
    println!(
        "2 tables ({}): {} created, {} checked",
        s.tables.mode,
        s.tables.created.len(),
        s.tables.checked.len()
    );
    let d = &s.documents;
    println!(
        "3 environments, _META, API keys: {} documents, {} written, {} unchanged, {} failed",
        d.documents, d.written, d.unchanged, d.failed
    );
    for (key, error) in &d.failures {
        println!("  failed {key}: {error}");
    }
    for p in &s.identities {
        println!(
            "4 identities of project {}: {} migrated, {} unchanged, {} skipped, {} left to the live path; {}",
            p.project_id, p.migrated, p.unchanged, p.skipped, p.deferred, p.status
        );
    }
    let q = &s.queued;
    println!(
        "4 identities left to the live path: {} queued, {} written, {} unchanged, {} failed",
        q.documents, q.written, q.unchanged, q.failed
    );
    let v = &s.verify;
    println!(
        "5 verify ({}{}): {}; expected {} items, drift {:?}",
        v.regions.join(", "),
        if v.acknowledgements_checked {
            ""
        } else {
            ", content only"
        },
        if v.clean { "no drift" } else { "DRIFT" },
        v.report.expected_items,
        v.report.counts
    );
    for d in v.report.drifts.iter().take(50) {
        println!("  {}", drift_line(d));
    }
    for note in &s.notes {
        println!("note: {note}");
    }
    println!(
        "written: {} documents, {} identities; {:.1} s",
        s.documents_written, s.identities_written, s.seconds
    );
}

async fn status(cli: &Cli, args: &StatusArgs) -> Result<ExitCode> {
    use edge_writer::status::{self, LedgerSource};
    let options = args.options();
    let pool = pool(cli, 2).await?;
    let store = dynamo(cli).await;
    let table = &store.tables().acks;
    let endpoint = cli
        .dynamodb_endpoint
        .clone()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
    let described = match (endpoint, store.client().config().region()) {
        (Some(url), _) => format!("{table} at {url}"),
        (None, Some(region)) => format!("{table} in {region}"),
        (None, None) => table.clone(),
    };
    let ledger = LedgerSource {
        client: store.client(),
        table,
        described,
    };
    let figures = status::gather(&pool, &ledger, &options)
        .await
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))
        .context("writer status")?;
    let report = status::assess(figures, &options.thresholds);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(exit_code(report.exit_code()))
}

/// One drift as `writer verify` prints it: region, kind, item key (redacted), document, detail.
fn drift_line(d: &edge_writer::verify::Drift) -> String {
    format!(
        "{}\t{:?}\t{}\t{}\t{}",
        d.region,
        d.kind,
        redact::item_key(&d.item_key),
        d.doc_key.as_deref().unwrap_or("-"),
        d.detail
    )
}

async fn verify(cli: &Cli, args: &VerifyArgs) -> Result<ExitCode> {
    use edge_writer::verify::{self, Options};
    let pool = pool(cli, 4).await?;
    let store = dynamo(cli).await;
    let regions = regions(&args.regions).await;
    let ledger = store.client().clone();
    let tables = store.tables().clone();
    let replicator = Replicator::new(pool, store, args.replication.settings());
    let options = Options {
        ack_deadline: Duration::from_secs(args.timing.ack_deadline_secs),
        recheck_after: Duration::from_secs(args.timing.recheck_after_secs),
        repair: args.repair,
    };
    let started_at = chrono::Utc::now();
    let result = verify::run(&replicator, &tables, &ledger, &regions, &options).await;
    // Recorded for `writer status`; a run that cannot be recorded still reports.
    if let Err(e) = verify::record_run(
        replicator.pool(),
        started_at,
        &regions,
        args.repair,
        result.as_ref(),
    )
    .await
    {
        tracing::warn!(error = %e, "recording the verify run in edge.verify_run failed");
    }
    let report = result
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))
        .context("verify")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for d in &report.drifts {
            println!("{}", drift_line(d));
        }
        for p in &report.pending_ingestion {
            println!(
                "{}\tpending ingestion\t{}\t{}\twritten at the edge, not merged into core yet (never repaired)",
                p.region,
                redact::item_key(&p.item_key),
                p.doc_key.as_deref().unwrap_or("-")
            );
        }
        for u in &report.unprojectable {
            println!("postgres\tunprojectable\t{u}");
        }
        for f in &report.repair_failures {
            println!("repair failed\t{f}");
        }
        let regions: Vec<String> = report
            .regions
            .iter()
            .map(|r| format!("{}: {} items ({} foreign)", r.name, r.items, r.foreign))
            .collect();
        println!(
            "expected {} items; {}; {} documents in flight; {} pending ingestion; {} transient; drift {:?}; repaired {} documents; {:.1} s",
            report.expected_items,
            regions.join(", "),
            report.in_flight_documents,
            report.pending_ingestion.len(),
            report.transient_drifts,
            report.counts,
            report.repaired_documents,
            report.seconds
        );
    }
    Ok(exit_code(report.outcome(args.repair).exit_code()))
}

/// `writer sync`: exit code 0 when written (and acknowledged by every region waited for), 2
/// when written but a region waited for did not acknowledge in time, 1 on an error.
async fn sync_command(
    cli: &Cli,
    environment: &str,
    wait_regions: &[String],
    wait_timeout_secs: u64,
    replication: &ReplicationArgs,
) -> Result<ExitCode> {
    use edge_writer::sync_wait::{self, AckReader, WaitFor};
    let wait = if wait_regions.is_empty() {
        None
    } else {
        Some(
            WaitFor::new(wait_regions, Duration::from_secs(wait_timeout_secs))
                .map_err(|e| anyhow::anyhow!("--wait-regions: {e}"))?,
        )
    };
    let pool = pool(cli, 4).await?;
    let store = dynamo(cli).await;
    let ledger = AckReader::new(store.client().clone(), store.tables().acks.clone());
    let replicator = Replicator::new(pool, store, replication.settings());
    let mut result = sync::sync_environment(&replicator, environment)
        .await
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))
        .with_context(|| format!("syncing environment {environment:?}"))?;
    if let Some(wait) = &wait {
        let targets = sync_wait::targets(&replicator, &result)
            .await
            .map_err(|e| anyhow::anyhow!(error_chain(&e)))
            .with_context(|| format!("reading back what the sync of {environment:?} wrote"))?;
        let deadline = std::time::Instant::now() + wait.timeout;
        result.wait =
            Some(sync_wait::wait_for_acks(&ledger, &targets, &wait.regions, deadline, false).await);
    }
    println!("{}", serde_json::to_string_pretty(&result)?);
    if let Some(report) = &result.wait {
        if !report.complete {
            let confirmed: Vec<String> = report
                .regions
                .iter()
                .filter(|r| r.acknowledged)
                .map(|r| format!("{} (lag {} ms)", r.region, r.lag_ms.unwrap_or_default()))
                .collect();
            eprintln!(
                "environment {environment:?} written, but not acknowledged within {wait_timeout_secs} s by region(s): {}; acknowledged by: {}",
                report.unconfirmed().join(", "),
                if confirmed.is_empty() {
                    "none".to_string()
                } else {
                    confirmed.join(", ")
                }
            );
            return Ok(ExitCode::from(2));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn migrate_identities(cli: &Cli, args: &MigrateIdentitiesArgs) -> Result<()> {
    use edge_writer::migrate_identities::{self as job, Options, PageSettings, Scope};
    let concurrency = u32::from(args.concurrency);
    let pool = pool(cli, concurrency * 2 + 4).await?;
    let options = Options {
        page_size: args.page_size,
        concurrency: usize::from(args.concurrency),
        page: PageSettings {
            lease: Duration::from_secs(args.lease_secs),
            late_writes: Duration::from_secs(args.late_write_secs),
            batch_concurrency: usize::from(args.batch_concurrency),
            rewrite_unchanged: args.rewrite,
        },
        restart: args.restart,
        progress_bar: !args.no_progress,
        ..Options::default()
    };
    let scope = Scope {
        project_id: args.project,
        environment_id: args.environment,
    };
    let summary = job::run(&pool, &dynamo(cli).await, scope, &options)
        .await
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))
        .with_context(|| format!("migrating the identities of project {}", args.project))?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    if summary.skipped > 0 {
        eprintln!(
            "{} identities were skipped into dead letters (see `writer dead-letters list`)",
            summary.skipped
        );
    }
    Ok(())
}

async fn inspect(cli: &Cli, api_key: &str) -> Result<()> {
    let store = dynamo(cli).await;
    let table = store.tables().environments.clone();
    let item = edge_writer::inspect::environment(&store, &table, api_key).await?;
    println!("{item}");
    Ok(())
}

async fn run(
    cli: &Cli,
    args: &RunArgs,
    metrics_handle: metrics_exporter_prometheus::PrometheusHandle,
) -> Result<()> {
    let workers = u32::from(args.workers);
    let sync_auth = args.sync_auth()?;
    let daemon_pool = pool(cli, workers * 2 + 4).await?;
    if args.migrate {
        db::migrate(&daemon_pool)
            .await
            .context("migrating schema edge")?;
    }
    let store = dynamo(cli).await;
    let replicator = Replicator::new(daemon_pool, store.clone(), args.replication.settings());
    let config = DaemonConfig {
        workers: usize::from(args.workers),
        batch: usize::from(args.batch),
        poll_interval: Duration::from_millis(args.poll_interval_ms),
        stuck_after: Duration::from_secs(args.stuck_after_secs),
        ..DaemonConfig::default()
    };
    let health = Arc::new(Health::new(config.workers, config.stuck_after));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let server = if args.http_addr == "off" {
        None
    } else {
        let addr: SocketAddr = args.http_addr.parse().with_context(|| {
            format!(
                "--http-addr {:?} is not an address like 127.0.0.1:8080",
                args.http_addr
            )
        })?;
        // Syncs have their own connections: callers cannot starve replication of them.
        let sync_pool = pool(cli, u32::from(args.sync_concurrency) * 2 + 1).await?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the HTTP server to {addr}"))?;
        match &sync_auth {
            http::SyncAuth::Token(_) => {
                tracing::info!(%addr, "HTTP server listening (/v1/sync with a bearer token, /healthz, /metrics)")
            }
            http::SyncAuth::Disabled => {
                tracing::warn!(%addr, "HTTP server listening (/healthz, /metrics); /v1/sync is disabled: no --sync-token (WRITER_SYNC_TOKEN)")
            }
            http::SyncAuth::Open => {
                tracing::warn!(%addr, "HTTP server listening; /v1/sync WITHOUT authentication (--allow-unauthenticated-sync)")
            }
        }
        let app = http::router(http::AppState {
            replicator: replicator.clone(),
            sync: Arc::new(http::SyncService::new(
                Replicator::new(sync_pool, store.clone(), args.replication.settings()),
                edge_writer::sync_wait::AckReader::new(
                    store.client().clone(),
                    store.tables().acks.clone(),
                ),
                sync_auth,
                usize::from(args.sync_concurrency),
                Duration::from_secs(args.sync_timeout_secs),
            )),
            health: health.clone(),
            metrics: metrics_handle,
        });
        let mut rx = shutdown_rx.clone();
        Some(tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.changed().await;
                })
                .await
        }))
    };

    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested; finishing documents in progress");
        let _ = shutdown_tx.send(true);
    });

    tracing::info!(workers = args.workers, "writer running");
    daemon::run_with_health(replicator, config, health, shutdown_rx).await;
    if let Some(server) = server {
        server
            .await
            .context("HTTP server task")?
            .context("HTTP server")?;
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact::url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact::url("postgres://u@h:5432/db?password=secret"),
            "postgres://u@h:5432/db?password=***"
        );
        assert_eq!(redact::url("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn cli_rejects_bad_input_clearly() {
        let err = Cli::try_parse_from(["writer", "run", "--workers", "0"]).unwrap_err();
        assert!(err.to_string().contains("--workers"), "{err}");
        let err = Cli::try_parse_from(["writer", "sync"]).unwrap_err();
        assert!(err.to_string().contains("--environment"), "{err}");
        let cli = Cli::try_parse_from(["writer", "--table-prefix", "t_", "migrate"]).unwrap();
        assert_eq!(cli.tables.names().environments, "t_flagsmith_environments");
    }

    #[test]
    fn bootstrap_takes_the_jobs_flags() {
        let cli = Cli::try_parse_from([
            "writer",
            "bootstrap",
            "--create-tables",
            "--region",
            "a=http://127.0.0.1:1",
            "--region",
            "eu-west-1",
            "--lease-secs",
            "4",
        ])
        .unwrap();
        let Command::Bootstrap(args) = cli.command else {
            panic!("{:?}", cli.command)
        };
        assert!(args.create_tables && !args.no_streams);
        assert_eq!(args.regions.len(), 2);
        assert_eq!(args.lease_secs, 4);
        let err = Cli::try_parse_from(["writer", "bootstrap", "--no-streams"]).unwrap_err();
        assert!(err.to_string().contains("--create-tables"), "{err}");
        let err =
            Cli::try_parse_from(["writer", "bootstrap", "--region", "a=ftp://x"]).unwrap_err();
        assert!(err.to_string().contains("not an http(s) URL"), "{err}");
    }

    #[test]
    fn sync_takes_the_regions_to_wait_for() {
        let cli = Cli::try_parse_from([
            "writer",
            "sync",
            "--environment",
            "k",
            "--wait-regions",
            "eu-west-2,us-east-1",
            "--wait-timeout-secs",
            "15",
        ])
        .unwrap();
        let Command::Sync {
            wait_regions,
            wait_timeout_secs,
            ..
        } = cli.command
        else {
            panic!("{:?}", cli.command)
        };
        assert_eq!(wait_regions, vec!["eu-west-2", "us-east-1"]);
        assert_eq!(wait_timeout_secs, 15);
        let cli = Cli::try_parse_from(["writer", "sync", "--environment", "k"]).unwrap();
        assert!(
            matches!(cli.command, Command::Sync { ref wait_regions, .. } if wait_regions.is_empty())
        );
        let err = Cli::try_parse_from([
            "writer",
            "sync",
            "--environment",
            "k",
            "--wait-timeout-secs",
            "5",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("--wait-regions"), "{err}");
        let err = Cli::try_parse_from([
            "writer",
            "sync",
            "--environment",
            "k",
            "--wait-regions",
            "a",
            "--wait-timeout-secs",
            "0",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("--wait-timeout-secs"), "{err}");
    }

    fn run_args(args: &[&str]) -> RunArgs {
        let mut all = vec!["writer", "run"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all).unwrap().command {
            Command::Run(args) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sync_is_refused_without_a_token_unless_explicitly_open() {
        assert!(matches!(
            run_args(&[]).sync_auth().unwrap(),
            http::SyncAuth::Disabled
        ));
        assert!(matches!(
            run_args(&["--allow-unauthenticated-sync"])
                .sync_auth()
                .unwrap(),
            http::SyncAuth::Open
        ));
        assert!(matches!(
            run_args(&["--sync-token", "0123456789abcdef"])
                .sync_auth()
                .unwrap(),
            http::SyncAuth::Token(_)
        ));
        let short = run_args(&["--sync-token", "short"])
            .sync_auth()
            .unwrap_err();
        assert!(short.to_string().contains("at least 16"), "{short}");
        let both = Cli::try_parse_from([
            "writer",
            "run",
            "--sync-token",
            "0123456789abcdef",
            "--allow-unauthenticated-sync",
        ])
        .unwrap_err();
        assert!(both.to_string().contains("cannot be used with"), "{both}");
    }
}
