//! The edge writer: core Postgres changes to Flagsmith's edge documents in DynamoDB.
//!
//! Data flow: row triggers append to the change log ([`capture`] turns it into a coalesced
//! queue of documents), [`replicate`] takes a document (or a batch of them) under its lock,
//! builds it from one snapshot ([`projection`]) and writes it conditionally ([`store`]), recording
//! progress in the writer's own tables ([`state`]). [`daemon`] runs this continuously;
//! [`sync`] and [`http`] do it on request.

pub mod backfill;
pub mod bootstrap;
pub mod bulk_write;
pub mod capture;
pub mod daemon;
pub mod db;
pub mod dead_letter_replay;
pub mod doc_key;
pub mod failpoint;
pub mod failure_policy;
pub mod grants;
pub mod health;
pub mod http;
pub mod inspect;
pub mod lag_window;
pub mod metrics;
pub mod migrate_identities;
pub mod plan;
pub mod projection;
pub mod replicate;
pub mod simple_query;
pub mod state;
pub mod status;
pub mod store;
pub mod sync;
pub mod sync_wait;
mod transact_write;
pub mod verify;
pub mod write_plan;

pub use doc_key::DocKey;
pub use replicate::{Outcome, Replicator, Settings};
