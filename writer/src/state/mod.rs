//! The writer's state in the `edge` schema: one module per table group, one statement per
//! function; every query of the writer on `edge.*` tables is here. Column meanings are
//! documented in the migrations. Elsewhere: the DDL of the capture triggers
//! (`crate::capture::control`, through the schema's own functions), the role grants
//! (`crate::grants`), and the identity snapshot's join of `edge.identity_uuid`
//! (`crate::projection::load`, part of the core read).

pub mod backfill_runs;
pub mod capture;
pub mod change_log;
pub mod dead_letters;
pub mod documents;
pub mod fanouts;
pub mod foreign;
pub mod identity_migrations;
pub mod leases;
pub mod pending;
pub mod prune;
pub mod schema;
pub mod verify_runs;
pub mod verify_stage;
pub mod write_log;
