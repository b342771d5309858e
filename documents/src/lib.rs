//! The contract between the writer, DynamoDB and the stream consumer.
//!
//! - [`model`]: the documents themselves, field by field as Flagsmith's readers expect them
//!   (`flagsmith_schemas.dynamodb`, the Python SDK's mapper).
//! - [`tables`]: the DynamoDB tables, their keys and indexes (one definition used to create
//!   them locally and checked against the deployment templates).
//! - [`item`]: how a document becomes a DynamoDB item: replication metadata attributes,
//!   Flagsmith's compressed form for large documents, and the way back for verification.
//! - [`hash`]: the content hash recorded by the writer and recomputed by the consumer.
//! - [`acks`]: the replication ledger (acknowledgements of the consumers, delete intents of
//!   the writer).
//! - [`redact`]: URLs and keys as logs, errors and reports may show them (no secrets).

pub mod acks;
pub mod hash;
pub mod item;
pub mod model;
pub mod redact;
pub mod tables;

#[cfg(test)]
mod properties;
