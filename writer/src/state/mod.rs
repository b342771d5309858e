//! The writer's state in the `edge` schema: one module per table group, one statement per
//! function. Column meanings are documented in the migrations.

pub mod dead_letters;
pub mod documents;
pub mod foreign;
pub mod identity_migrations;
pub mod leases;
pub mod pending;
pub mod prune;
pub mod verify_runs;
pub mod write_log;
