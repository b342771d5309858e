//! The local poller: the Lambda handler's logic over DynamoDB Streams read with
//! `aws-sdk-dynamodbstreams`, for development, tests and DynamoDB Local.
//!
//! [`StreamTail`] follows every shard of one table's stream: parents before children (a
//! child is opened only once its parent is exhausted or gone), and rewinds a shard to a
//! record that failed, as Lambda redelivers from the first failure. Positions live in memory:
//! a restarted poller starts again from its configured position; handling is idempotent.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use aws_sdk_dynamodbstreams::error::SdkError;
use aws_sdk_dynamodbstreams::operation::get_records::GetRecordsError;
use aws_sdk_dynamodbstreams::types::{Record, ShardIteratorType};
use aws_smithy_types::error::display::DisplayErrorContext;
use edge_documents::tables::{TableKind, TableNames};

use crate::handler::{BatchReport, Consumer};
use crate::ledger::Ledger;
use crate::record;

#[derive(Debug, thiserror::Error)]
#[error("stream of {table}: {op}: {message}")]
pub struct StreamError {
    pub table: String,
    pub op: &'static str,
    pub message: String,
}

/// Where a new poller starts in each shard it finds at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StartAt {
    /// The oldest record still in the stream (24 h on AWS).
    TrimHorizon,
    /// Only records written after the poller started.
    Latest,
}

enum Position {
    Open(String),
    /// Re-open the shard at, or after, a sequence number.
    At(String),
    After(String),
    Start(ShardIteratorType),
    Done,
}

/// Follows one table's stream.
pub struct StreamTail {
    streams: aws_sdk_dynamodbstreams::Client,
    table: String,
    arn: String,
    start: ShardIteratorType,
    positions: HashMap<String, Position>,
    parents: HashMap<String, Option<String>>,
    known: HashSet<String>,
}

impl StreamTail {
    /// The tail of `table`'s stream (found with DescribeTable).
    pub async fn open(
        dynamodb: &aws_sdk_dynamodb::Client,
        streams: aws_sdk_dynamodbstreams::Client,
        table: &str,
        start: StartAt,
    ) -> Result<Self, StreamError> {
        let err = |op, message| StreamError {
            table: table.to_string(),
            op,
            message,
        };
        let described = dynamodb
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| err("DescribeTable", DisplayErrorContext(e).to_string()))?;
        let arn = described
            .table()
            .and_then(|t| t.latest_stream_arn())
            .ok_or_else(|| err("DescribeTable", "the table has no stream".into()))?
            .to_string();
        let mut tail = StreamTail {
            streams,
            table: table.to_string(),
            arn,
            start: match start {
                StartAt::TrimHorizon => ShardIteratorType::TrimHorizon,
                StartAt::Latest => ShardIteratorType::Latest,
            },
            positions: HashMap::new(),
            parents: HashMap::new(),
            known: HashSet::new(),
        };
        tail.discover(true).await?;
        Ok(tail)
    }

    fn err(&self, op: &'static str, e: impl std::error::Error + 'static) -> StreamError {
        StreamError {
            table: self.table.clone(),
            op,
            message: DisplayErrorContext(e).to_string(),
        }
    }

    async fn discover(&mut self, initial: bool) -> Result<(), StreamError> {
        let mut start: Option<String> = None;
        loop {
            let out = self
                .streams
                .describe_stream()
                .stream_arn(&self.arn)
                .set_exclusive_start_shard_id(start.take())
                .send()
                .await
                .map_err(|e| self.err("DescribeStream", e))?;
            let Some(desc) = out.stream_description() else {
                return Ok(());
            };
            for shard in desc.shards() {
                let Some(id) = shard.shard_id() else { continue };
                if self.known.insert(id.to_string()) {
                    self.parents
                        .insert(id.to_string(), shard.parent_shard_id().map(String::from));
                    // Shards found at start-up begin at the configured position; shards
                    // created later (children) are read from their beginning.
                    let from = if initial {
                        self.start.clone()
                    } else {
                        ShardIteratorType::TrimHorizon
                    };
                    self.positions.insert(id.to_string(), Position::Start(from));
                }
            }
            match desc.last_evaluated_shard_id() {
                Some(last) => start = Some(last.to_string()),
                None => return Ok(()),
            }
        }
    }

    fn readable(&self, shard: &str) -> bool {
        match self.parents.get(shard).cloned().flatten() {
            Some(parent) => matches!(self.positions.get(&parent), None | Some(Position::Done)),
            None => true,
        }
    }

    async fn iterator(
        &self,
        shard: &str,
        position: &Position,
    ) -> Result<Option<String>, StreamError> {
        let (kind, seq) = match position {
            Position::Open(it) => return Ok(Some(it.clone())),
            Position::Done => return Ok(None),
            Position::Start(kind) => (kind.clone(), None),
            Position::At(seq) => (ShardIteratorType::AtSequenceNumber, Some(seq.clone())),
            Position::After(seq) => (ShardIteratorType::AfterSequenceNumber, Some(seq.clone())),
        };
        let out = self
            .streams
            .get_shard_iterator()
            .stream_arn(&self.arn)
            .shard_id(shard)
            .shard_iterator_type(kind)
            .set_sequence_number(seq)
            .send()
            .await
            .map_err(|e| self.err("GetShardIterator", e))?;
        Ok(out.shard_iterator().map(String::from))
    }

    /// Reads the next records of every readable shard: `(shard, records)` for each shard
    /// that had some.
    pub async fn poll(&mut self) -> Result<Vec<(String, Vec<Record>)>, StreamError> {
        self.discover(false).await?;
        let mut shards: Vec<String> = self
            .positions
            .iter()
            .filter(|(_, p)| !matches!(p, Position::Done))
            .map(|(id, _)| id.clone())
            .collect();
        shards.sort();
        let mut out = Vec::new();
        for shard in shards {
            if !self.readable(&shard) {
                continue;
            }
            let position = self.positions.remove(&shard).expect("listed above");
            let Some(iterator) = self.iterator(&shard, &position).await? else {
                self.positions.insert(shard, Position::Done);
                continue;
            };
            let result = self
                .streams
                .get_records()
                .shard_iterator(&iterator)
                .limit(1000)
                .send()
                .await;
            let got = match result {
                Ok(got) => got,
                // DynamoDB Local answers so for a TRIM_HORIZON iterator of a shard that has
                // no record yet; on AWS it means the records aged out (24 h). Either way the
                // shard is read again from its oldest record.
                Err(SdkError::ServiceError(e))
                    if matches!(e.err(), GetRecordsError::TrimmedDataAccessException(_)) =>
                {
                    tracing::debug!(table = %self.table, %shard, "trimmed; reading the shard from its oldest record");
                    self.positions
                        .insert(shard, Position::Start(ShardIteratorType::TrimHorizon));
                    continue;
                }
                Err(e) => {
                    // Put the position back; an iterator that failed (expired) is re-opened
                    // from the shard's start: handling is idempotent.
                    let back = match position {
                        Position::Open(_) => Position::Start(ShardIteratorType::TrimHorizon),
                        other => other,
                    };
                    self.positions.insert(shard, back);
                    return Err(self.err("GetRecords", e));
                }
            };
            let records = got.records().to_vec();
            let next = match got.next_shard_iterator() {
                Some(next) => Position::Open(next.to_string()),
                None => Position::Done,
            };
            self.positions.insert(shard.clone(), next);
            if !records.is_empty() {
                out.push((shard, records));
            }
        }
        Ok(out)
    }

    /// Makes the next poll of `shard` start at `sequence` (a record that failed).
    pub fn rewind(&mut self, shard: &str, sequence: &str) {
        self.positions
            .insert(shard.to_string(), Position::At(sequence.to_string()));
    }

    /// Makes the next poll of `shard` start after `sequence` (a record given up on).
    pub fn skip_past(&mut self, shard: &str, sequence: &str) {
        self.positions
            .insert(shard.to_string(), Position::After(sequence.to_string()));
    }
}

/// How the poller reads.
#[derive(Debug, Clone, Copy)]
pub struct PollOptions {
    pub start: StartAt,
    /// Attempts at a failing record before it is given up (logged as sent to the failure
    /// destination, as Lambda's bounded retries do) and the shard moves past it; 0: never.
    pub max_attempts: u32,
}

/// Polls the streams of `kinds` and hands their records to `consumer`, forever (the caller
/// stops it by dropping the future). `on_batch` sees every batch report (logging, tests).
pub async fn run<L: Ledger>(
    consumer: &Consumer<L>,
    dynamodb: &aws_sdk_dynamodb::Client,
    streams: &aws_sdk_dynamodbstreams::Client,
    tables: &TableNames,
    kinds: &[TableKind],
    options: PollOptions,
    on_batch: &(dyn Fn(TableKind, &BatchReport) + Send + Sync),
) -> Result<(), StreamError> {
    let mut tails = Vec::new();
    let mut attempts: HashMap<(String, String), u32> = HashMap::new();
    for kind in kinds {
        let tail =
            StreamTail::open(dynamodb, streams.clone(), tables.name(*kind), options.start).await?;
        tails.push((*kind, tail));
    }
    let mut idle = Duration::from_millis(50);
    let mut failing = Duration::from_millis(100);
    loop {
        let mut any = false;
        let mut failed = false;
        for (kind, tail) in tails.iter_mut() {
            let batches = match tail.poll().await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the stream failed; retrying");
                    failed = true;
                    continue;
                }
            };
            for (shard, records) in batches {
                any = true;
                // Collected first: a lazy iterator here makes the poller's future not provably
                // Send (rust-lang/rust#110338).
                let decoded: Vec<_> = records
                    .iter()
                    .map(|r| record::from_streams(r, *kind))
                    .collect();
                let report = consumer.handle(decoded).await;
                on_batch(*kind, &report);
                if let Some((sequence, error)) = &report.failure {
                    let n = attempts
                        .entry((shard.clone(), sequence.clone()))
                        .or_insert(0);
                    *n += 1;
                    if options.max_attempts > 0 && *n >= options.max_attempts {
                        tracing::error!(region = consumer.region(), table = kind.as_str(), %sequence,
                            %error, attempts = *n, "record given up after its last attempt (the on-failure destination, on Lambda)");
                        tail.skip_past(&shard, sequence);
                        attempts.remove(&(shard.clone(), sequence.clone()));
                    } else {
                        tracing::error!(region = consumer.region(), table = kind.as_str(), %sequence,
                            %error, attempts = *n, "record failed; it will be handled again");
                        tail.rewind(&shard, sequence);
                    }
                    failed = true;
                }
            }
        }
        if failed {
            // A record that keeps failing is retried with backoff, as Lambda would.
            tokio::time::sleep(failing).await;
            failing = (failing * 2).min(Duration::from_secs(5));
        } else {
            failing = Duration::from_millis(100);
        }
        if any {
            idle = Duration::from_millis(50);
        } else {
            tokio::time::sleep(idle).await;
            idle = (idle * 2).min(Duration::from_millis(500));
        }
    }
}
