//! Edge -> core ingestion.
//!
//! Identities have two writers: core, through this pipeline, and the edge (the Edge API and
//! Flagsmith's edge identity endpoints, which put whole identity items into
//! `flagsmith_identities`). An edge write is recognised by what it lacks: the writer's
//! replication attributes, which a whole-item put drops. This crate applies such a write to
//! Flagsmith's core tables under the merge rule ([`merge`]), so core sees the edge's
//! identities and traits and the writer can re-project the merged document without losing
//! either side's change.
//!
//! Used by the stream consumer (every region's stream, see its `ingest` module) and by the
//! writer, which adopts an edge item it finds when no consumer ingested it in time.

pub mod apply;
pub mod clock;
pub mod dead_letters;
pub mod edge_item;
pub mod merge;
pub mod switch;

pub use apply::{
    ingest, last_ingested_at, was_ingested, Applied, EdgeWrite, IngestError, Ingested,
};
