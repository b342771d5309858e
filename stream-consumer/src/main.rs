//! `stream-consumer`: the Lambda on the edge tables' DynamoDB streams, or (`poll`) the same
//! handler over DynamoDB Streams for local runs.
//!
//! Without a subcommand it runs the Lambda runtime loop; settings come from environment
//! variables (see `stream-consumer poll --help` for the list).

use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edge_documents::tables::TableKind;
use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::Value;
use stream_consumer::config::{sdk_config, Settings};
use stream_consumer::poller::{self, PollOptions, StartAt};
use stream_consumer::{lambda, metrics};

#[derive(Parser)]
#[command(
    version,
    about = "Verifies replicated edge items from DynamoDB streams, acknowledges them and invalidates caches"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run as an AWS Lambda function (the default).
    Lambda,
    /// Poll the streams of the edge tables (DynamoDB Local, development).
    Poll {
        #[command(flatten)]
        settings: Box<Settings>,
        /// Endpoint of the edge tables and their streams (default: AWS_ENDPOINT_URL).
        #[arg(long)]
        endpoint_url: Option<String>,
        /// Where to start in the shards found at start-up.
        #[arg(long, value_enum, default_value = "trim-horizon")]
        from: StartAt,
        /// Attempts at a failing record before it is given up and logged; 0: retry forever.
        #[arg(long, default_value_t = 5)]
        max_attempts: u32,
    },
}

/// The tables whose streams the consumer verifies.
const STREAMED: [TableKind; 4] = [
    TableKind::Environments,
    TableKind::EnvironmentsV2,
    TableKind::Identities,
    TableKind::EnvironmentApiKeys,
];

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .without_time()
            .init();
    } else {
        use std::io::IsTerminal;
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stdout().is_terminal())
            .init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Lambda) {
        Command::Lambda => run_lambda().await,
        Command::Poll {
            settings,
            endpoint_url,
            from,
            max_attempts,
        } => {
            init_logging(false);
            let sdk = sdk_config(endpoint_url.as_deref()).await;
            let consumer = settings.consumer(&sdk).await?;
            let tables = settings.tables();
            tracing::info!(region = %settings.region, targets = ?consumer.invalidation().target_names(),
                "polling the edge tables' streams");
            let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
            let streams = aws_sdk_dynamodbstreams::Client::new(&sdk);
            let on_batch = |kind: TableKind, report: &stream_consumer::BatchReport| {
                tracing::info!(table = kind.as_str(), records = report.records,
                    verified = report.verified, removals = report.removals,
                    max_lag_ms = ?report.max_lag_ms(), invalidated = report.invalidated,
                    ingested = report.ingested, ingest_parked = report.ingest_parked,
                    invalidation_failures = report.invalidation_failures.len(),
                    failed = ?report.failure.as_ref().map(|f| &f.0), "batch handled");
            };
            tokio::select! {
                r = poller::run(&consumer, &dynamodb, &streams, &tables, &STREAMED,
                    PollOptions { start: from, max_attempts }, &on_batch) => {
                    r.context("polling the streams")
                }
                _ = tokio::signal::ctrl_c() => Ok(()),
            }
        }
    }
}

async fn run_lambda() -> anyhow::Result<()> {
    init_logging(true);
    let settings = Settings::from_env().context("reading the consumer's environment")?;
    let sdk = sdk_config(None).await;
    let consumer = Arc::new(settings.consumer(&sdk).await?);
    let tables = Arc::new(settings.tables());
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let consumer = consumer.clone();
        let tables = tables.clone();
        async move {
            let (response, report) = lambda::handle_event(&consumer, &tables, &event.payload).await;
            if let Some((sequence, error)) = &report.failure {
                tracing::error!(%sequence, %error, "record failed verification; reported as a batch item failure");
            }
            // Embedded Metric Format: a raw JSON line on stdout.
            println!(
                "{}",
                metrics::emf(consumer.region(), &report, chrono::Utc::now().timestamp_millis())
            );
            Ok::<_, lambda_runtime::Error>(response)
        }
    }))
    .await
    .map_err(|e| anyhow::anyhow!("Lambda runtime: {e}"))
}
