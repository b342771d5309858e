//! How many times the live path waits on Postgres to replicate one document: counted on the
//! wire (`Query` and `Sync` messages, see `pg_count`) with real Postgres and DynamoDB Local.
//!
//! The figures are printed (README, Performance: round trips per document) and bounded, so a
//! change that adds round trips to the procedure fails here instead of showing up as latency.

use edge_documents::tables::TableKind;
use edge_tests::core::{basic_project, TraitVal, Val};
use edge_tests::pg_count::PgCountingProxy;
use edge_tests::setup;
use edge_tests::wait;
use edge_tests::writer::test_settings;
use edge_writer::replicate::{Outcome, Replicator};
use edge_writer::store::ItemStore;
use edge_writer::DocKey;

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

/// A fan-out storm (a trait changed on every identity of an environment) is taken in
/// batches: the first due identity document brings up to `batch - 1` more with it, one
/// snapshot, one version and one commit for all of them, and each document is written as
/// the live path writes one. An environment document is always taken alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_identity_documents_is_taken_in_batches() {
    const IDENTITIES: i32 = 60;
    const BATCH: usize = 25;
    let (db, tables, core) = setup().await;
    let (_, project, env) = basic_project(&core, "envStorm").await;
    let feature = core
        .create_feature(project, "checkout", "STANDARD", true, Val::str("v1"))
        .await;
    let ids = core
        .generate_identities(env, "storm-", IDENTITIES, feature, 10, true)
        .await;

    let proxy = PgCountingProxy::start_for(&db.url).await;
    let counted = edge_writer::db::connect(&proxy.url_for(&db.url), 4)
        .await
        .expect("pool through the counting proxy");
    let replicator = Replicator::new(counted, tables.store(), test_settings());
    edge_writer::capture::drain_all(&db.pool, 1000)
        .await
        .expect("capture");
    while !replicator
        .replicate_due(BATCH)
        .await
        .expect("claim")
        .is_empty()
    {}

    // An environment change, captured (due) before the storm: captured in one transaction,
    // they would share a due time and their order would be the index's.
    core.set_flag(env, feature, false, Val::str("v2")).await;
    edge_writer::capture::drain_all(&db.pool, 1000)
        .await
        .expect("capture");
    core.exec(&format!(
        "UPDATE environments_trait SET integer_value = integer_value + 1000 \
         WHERE trait_key = 'age' AND identity_id IN (SELECT id FROM environments_identity \
         WHERE environment_id = {env})"
    ))
    .await;
    edge_writer::capture::drain_all(&db.pool, 1000)
        .await
        .expect("capture");

    let mut batches: Vec<(Vec<Outcome>, u64)> = vec![];
    loop {
        let before = proxy.round_trips();
        let done = replicator.replicate_due(BATCH).await.expect("claim");
        let pool = replicator.pool();
        wait::until(
            "every connection back in the pool",
            wait::DEFAULT,
            || async { (pool.num_idle() as u32 == pool.size()).then_some(()) },
        )
        .await;
        if done.is_empty() {
            break;
        }
        let outcomes = done.into_iter().map(|r| r.expect("replicated")).collect();
        batches.push((outcomes, proxy.round_trips() - before));
    }
    let sizes: Vec<usize> = batches.iter().map(|(o, _)| o.len()).collect();
    // The environment document changed first and is due first: alone.
    assert_eq!(batches[0].0.len(), 1, "batches: {sizes:?}");
    assert!(batches[0].0[0].doc_key.starts_with("environment:"));
    let identity_batches = &batches[1..];
    assert!(
        identity_batches
            .iter()
            .all(|(o, _)| o.iter().all(|o| o.doc_key.starts_with("identity:"))),
        "batches: {sizes:?}"
    );
    assert_eq!(
        sizes[1..],
        [BATCH, BATCH, IDENTITIES as usize - 2 * BATCH],
        "identity documents taken {BATCH} at a time"
    );
    let written: std::collections::BTreeSet<String> = identity_batches
        .iter()
        .flat_map(|(o, _)| o.iter())
        .filter(|o| o.written >= 1 && o.version.is_some())
        .map(|o| o.doc_key.clone())
        .collect();
    assert_eq!(written.len(), IDENTITIES as usize, "every identity written");

    // What DynamoDB holds is the new trait value, at the batch's version, for every one.
    let store_items: Vec<serde_json::Value> = tables
        .scan(TableKind::Identities)
        .await
        .iter()
        .map(edge_tests::dynamo::document_of)
        .collect();
    for id in &ids {
        let item = store_items
            .iter()
            .find(|i| i["django_id"] == serde_json::json!(id))
            .unwrap_or_else(|| panic!("identity {id} in DynamoDB"));
        let age = item["identity_traits"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["trait_key"] == "age"))
            .map(|t| t["trait_value"].clone());
        assert_eq!(
            age,
            Some(serde_json::json!(id + 1000)),
            "identity {id}: {item}"
        );
    }
    let (full, trips) = &identity_batches[0];
    println!(
        "round trips per identity document in a batch of {}: {:.2} ({} for the batch)",
        full.len(),
        *trips as f64 / full.len() as f64,
        trips
    );
    // Everything once for the batch, as for one document (the claim, snapshot, version,
    // item records, bookkeeping and commit), and one more claim for the rest of the batch.
    assert!(
        *trips <= MAX_IDENTITY + 1,
        "a batch of {} took {trips} round trips (at most {})",
        full.len(),
        MAX_IDENTITY + 1
    );
    db.drop_db().await;
}

/// A backfill takes its documents in batches (`replicate_many_now`): the lock transaction,
/// its settings, the locks, the version, the item records, the bookkeeping and the commit
/// once for the batch, whatever its size; only the snapshot is one message per environment
/// (each environment document is its own snapshot of about ten kinds of rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_batch_costs_its_round_trips_once_for_the_batch() {
    const ENVIRONMENTS: usize = 10;
    let (db, tables, core) = setup().await;
    let (_, project, first) = basic_project(&core, "envBatch0").await;
    let mut docs = vec![DocKey::Environment(first)];
    for n in 1..ENVIRONMENTS {
        let env = core
            .create_environment(project, &format!("Env {n}"), &format!("envBatch{n}"))
            .await;
        docs.push(DocKey::Environment(env));
    }
    core.create_feature(project, "checkout", "STANDARD", true, Val::str("v1"))
        .await;
    edge_writer::capture::drain_all(&db.pool, 1000)
        .await
        .expect("capture");

    let proxy = PgCountingProxy::start_for(&db.url).await;
    let counted = edge_writer::db::connect(&proxy.url_for(&db.url), 4)
        .await
        .expect("pool through the counting proxy");
    let replicator = Replicator::new(counted, tables.store(), test_settings());
    let pool = replicator.pool().clone();
    let mut trips = Vec::new();
    // Two warm-up rounds (statements prepared once per connection), then a batch of one and
    // the batch of all; forced, as a backfill writes.
    for batch in [&docs[..], &docs[..], &docs[..1], &docs[..]] {
        let before = proxy.round_trips();
        let results = replicator.replicate_many_now(batch, true).await;
        wait::until(
            "every connection back in the pool",
            wait::DEFAULT,
            || async { (pool.num_idle() as u32 == pool.size()).then_some(()) },
        )
        .await;
        for result in &results {
            let outcome = result.as_ref().expect("replicated");
            assert!(outcome.written > 0, "{outcome:?}");
        }
        trips.push(proxy.round_trips() - before);
    }
    let (one, all) = (trips[2], trips[3]);
    println!(
        "round trips of a backfill batch: {one} for one environment, {all} for {ENVIRONMENTS} ({:.2} per environment)",
        all as f64 / ENVIRONMENTS as f64
    );
    // One document as the live path writes it, with the lock transaction's settings instead
    // of the claim, and its own BEGIN.
    assert!(
        one <= MAX_ENVIRONMENT + 2,
        "a backfill batch of one took {one} round trips (at most {}); rounds: {trips:?}",
        MAX_ENVIRONMENT + 2
    );
    // Each further environment adds its snapshot, nothing else.
    assert!(
        all <= one + (ENVIRONMENTS as u64 - 1),
        "a backfill batch of {ENVIRONMENTS} took {all} round trips, one of one {one}: more than one per further environment; rounds: {trips:?}"
    );
    db.drop_db().await;
}

/// Postgres keeps a prepared statement's plan for the life of the connection. A claim
/// planned while the queue was empty and analysed as such (sequential scans in a nested
/// loop) would take time quadratic in the queue's depth once a storm fills it, long past the
/// writer's statement timeout; the claim is planned at every execution instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_first_made_on_an_empty_queue_stays_cheap_when_it_fills() {
    const QUEUED: i64 = 40_000;
    let (db, _tables, _core) = setup().await;
    // The writer's own pool and session limits (statement timeout included), one connection.
    let pool = edge_writer::db::connect(&db.url, 1).await.expect("pool");
    // Analysed while empty, as autovacuum leaves a quiet writer's tables.
    for sql in ["ANALYZE edge.pending", "ANALYZE edge.document"] {
        sqlx::query(sql).execute(&db.pool).await.expect("analyze");
    }
    for _ in 0..8 {
        let mut tx = pool.begin().await.expect("begin");
        let claimed = edge_writer::state::pending::claim_due(&mut tx, 25)
            .await
            .expect("claim on an empty queue");
        assert!(claimed.is_empty());
        tx.rollback().await.expect("rollback");
    }
    // A storm: many identity documents queued at once.
    for sql in [
        format!(
            "INSERT INTO edge.document (doc_key) \
             SELECT 'identity:' || n FROM generate_series(1, {QUEUED}) AS n"
        ),
        format!(
            "INSERT INTO edge.pending (doc_key, seq, not_before) \
             SELECT 'identity:' || n, nextval('edge.pending_seq'), now() \
             FROM generate_series(1, {QUEUED}) AS n"
        ),
    ] {
        sqlx::query(&sql).execute(&db.pool).await.expect("queue");
    }
    let mut tx = pool.begin().await.expect("begin");
    let claimed = edge_writer::state::pending::claim_due(&mut tx, 25)
        .await
        .expect("a claim over a deep queue, within the writer's statement timeout");
    assert_eq!(claimed.len(), 25);
    tx.rollback().await.expect("rollback");
    db.drop_db().await;
}
