//! How many times the live path waits on Postgres to replicate one document: counted on the
//! wire (`Query` and `Sync` messages, see `pg_count`) with real Postgres and DynamoDB Local.
//!
//! The figures are printed (README, Performance: round trips per document) and bounded, so a
//! change that adds round trips to the procedure fails here instead of showing up as latency.

use edge_tests::core::{basic_project, TraitVal, Val};
use edge_tests::pg_count::PgCountingProxy;
use edge_tests::setup;
use edge_tests::wait;
use edge_tests::writer::test_settings;
use edge_writer::replicate::{Outcome, Replicator};
use edge_writer::store::ItemStore;

/// Round trips of the live path for one environment document and for one identity document
/// (the daemon's `replicate_next`: claim, snapshot, version, writes, bookkeeping, commit).
const MAX_ENVIRONMENT: u64 = 8;
const MAX_IDENTITY: u64 = 8;

/// Replicates every due document, one `replicate_next` at a time, and returns the round
/// trips of each call (those of the pool returning its connections included: the pool pings
/// a connection as it takes it back).
async fn replicate_all<S: ItemStore>(
    replicator: &Replicator<S>,
    proxy: &PgCountingProxy,
) -> Vec<(Outcome, u64)> {
    let mut out = vec![];
    loop {
        let before = proxy.round_trips();
        let next = replicator.replicate_next().await.expect("claim");
        let pool = replicator.pool();
        wait::until(
            "every connection back in the pool",
            wait::DEFAULT,
            || async { (pool.num_idle() as u32 == pool.size()).then_some(()) },
        )
        .await;
        let trips = proxy.round_trips() - before;
        match next {
            None => return out,
            Some(result) => out.push((result.expect("replicated"), trips)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_document_costs_a_bounded_number_of_postgres_round_trips() {
    let (db, tables, core) = setup().await;
    let (_, project, env) = basic_project(&core, "envTrips").await;
    let feature = core
        .create_feature(project, "checkout", "STANDARD", true, Val::str("v1"))
        .await;
    let segment = core
        .create_segment(
            project,
            "beta",
            "ANY",
            &[("EQUAL", Some("plan"), Some("beta"))],
        )
        .await;
    core.create_segment_override(env, feature, segment, 1, true, Val::str("beta"))
        .await;
    let identity = core.create_identity(env, "alice").await;
    for (key, value) in [("plan", "beta"), ("country", "fr"), ("tier", "1")] {
        core.set_trait(identity, key, TraitVal::Str(value.into()))
            .await;
    }

    let proxy = PgCountingProxy::start_for(&db.url).await;
    let counted = edge_writer::db::connect(&proxy.url_for(&db.url), 4)
        .await
        .expect("pool through the counting proxy");
    let replicator = Replicator::new(counted, tables.store(), test_settings());

    // Warm-up: every statement prepared once on the pool's connections.
    for round in 0..3 {
        core.set_flag(env, feature, true, Val::str(&format!("warm{round}")))
            .await;
        core.set_trait(identity, "plan", TraitVal::Str(format!("warm{round}")))
            .await;
        edge_writer::capture::drain_all(&db.pool, 1000)
            .await
            .expect("capture");
        replicate_all(&replicator, &proxy).await;
    }

    core.set_flag(env, feature, false, Val::str("v2")).await;
    edge_writer::capture::drain_all(&db.pool, 1000)
        .await
        .expect("capture");
    let written = replicate_all(&replicator, &proxy).await;
    let environment: Vec<u64> = written
        .iter()
        .filter(|(o, _)| o.doc_key.starts_with("environment:") && o.written > 0)
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(environment.len(), 1, "one environment write: {written:?}");

    core.set_trait(identity, "plan", TraitVal::Str("gold".into()))
        .await;
    edge_writer::capture::drain_all(&db.pool, 1000)
        .await
        .expect("capture");
    let written = replicate_all(&replicator, &proxy).await;
    let identity_trips: Vec<u64> = written
        .iter()
        .filter(|(o, _)| o.doc_key.starts_with("identity:") && o.written > 0)
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(identity_trips.len(), 1, "one identity write: {written:?}");

    println!(
        "round trips per document written: environment {}, identity {}",
        environment[0], identity_trips[0]
    );
    assert!(
        environment[0] <= MAX_ENVIRONMENT,
        "an environment document took {} round trips (at most {MAX_ENVIRONMENT})",
        environment[0]
    );
    assert!(
        identity_trips[0] <= MAX_IDENTITY,
        "an identity document took {} round trips (at most {MAX_IDENTITY})",
        identity_trips[0]
    );
    db.drop_db().await;
}
