//! The stream consumer: verifies every replicated item in every region, acknowledges it in
//! the replication ledger and invalidates caches.
//!
//! - [`record`]: a stream record, from Lambda's JSON or from `aws-sdk-dynamodbstreams`;
//! - [`verify`]: the checks of one item, without I/O;
//! - [`ledger`]: acknowledgements and the writer's delete intents (DynamoDB);
//! - [`invalidate`]: Redis, webhook and CloudFront targets with retries;
//! - [`handler`]: a batch, in order, up to its first failure;
//! - [`ingest`]: identity items written at the edge, applied to core (`edge_ingest`);
//! - [`lambda`] and [`poller`]: the two ways records arrive;
//! - [`metrics`]: CloudWatch Embedded Metric Format;
//! - [`config`]: settings from flags or environment variables;
//! - [`secrets`]: secrets read from AWS Secrets Manager at start-up.

pub mod config;
pub mod handler;
pub mod ingest;
pub mod invalidate;
pub mod lambda;
pub mod ledger;
pub mod metrics;
pub mod poller;
pub mod record;
pub mod secrets;
pub mod verify;

pub use handler::{BatchReport, Consumer};
pub use verify::{verify, VerifyError};
