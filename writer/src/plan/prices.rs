//! List prices used by `writer plan`.
//!
//! Region us-east-1 (US East, N. Virginia), public on-demand list prices as published since
//! the DynamoDB on-demand price reduction of 2024-11-01 (on-demand and replicated write
//! units halved and cut by two thirds respectively), written down here on 2026-12-01 without
//! re-reading the live pricing pages that day. They are list prices: no free tier, no
//! savings plans or reserved capacity, no taxes.
//! Check them against the AWS pricing pages for your region and pass `--price-*` to
//! `writer plan` to use others.

use serde::Serialize;

/// On-demand write request unit (up to 1 KB written, standard table class), per million.
pub const WRITE_REQUEST_UNITS_PER_MILLION: f64 = 0.625;
/// Replicated write request unit (global tables, each replica region), per million.
pub const REPLICATED_WRITE_REQUEST_UNITS_PER_MILLION: f64 = 0.625;
/// On-demand read request unit (up to 4 KB strongly consistent, 8 KB eventually), per million.
pub const READ_REQUEST_UNITS_PER_MILLION: f64 = 0.125;
/// Storage, standard table class, per GB-month (the first 25 GB free per region are not taken off).
pub const STORAGE_PER_GB_MONTH: f64 = 0.25;
/// Continuous backups (point-in-time recovery, on for every replica in the template), per GB-month.
pub const PITR_PER_GB_MONTH: f64 = 0.20;
/// DynamoDB Streams read request unit (one GetRecords call), per million. GetRecords calls made
/// by Lambda for a DynamoDB trigger, and by global tables' replication, are not charged.
pub const STREAMS_READ_REQUEST_UNITS_PER_MILLION: f64 = 0.20;
/// Lambda requests, per million.
pub const LAMBDA_REQUESTS_PER_MILLION: f64 = 0.20;
/// Lambda duration on arm64 (the consumer's architecture in the template), per GB-second.
pub const LAMBDA_ARM64_PER_GB_SECOND: f64 = 0.000_013_333_4;
/// Data transfer out of us-east-1 to another AWS region, per GB (what replication carries).
pub const INTER_REGION_TRANSFER_PER_GB: f64 = 0.02;

/// The prices a plan is computed with (US dollars).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prices {
    pub write_request_units_per_million: f64,
    pub replicated_write_request_units_per_million: f64,
    pub read_request_units_per_million: f64,
    pub storage_per_gb_month: f64,
    pub pitr_per_gb_month: f64,
    pub streams_read_request_units_per_million: f64,
    pub lambda_requests_per_million: f64,
    pub lambda_per_gb_second: f64,
    pub inter_region_transfer_per_gb: f64,
}

impl Default for Prices {
    fn default() -> Self {
        Prices {
            write_request_units_per_million: WRITE_REQUEST_UNITS_PER_MILLION,
            replicated_write_request_units_per_million: REPLICATED_WRITE_REQUEST_UNITS_PER_MILLION,
            read_request_units_per_million: READ_REQUEST_UNITS_PER_MILLION,
            storage_per_gb_month: STORAGE_PER_GB_MONTH,
            pitr_per_gb_month: PITR_PER_GB_MONTH,
            streams_read_request_units_per_million: STREAMS_READ_REQUEST_UNITS_PER_MILLION,
            lambda_requests_per_million: LAMBDA_REQUESTS_PER_MILLION,
            lambda_per_gb_second: LAMBDA_ARM64_PER_GB_SECOND,
            inter_region_transfer_per_gb: INTER_REGION_TRANSFER_PER_GB,
        }
    }
}
