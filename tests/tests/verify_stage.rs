//! `writer verify` compares everything through temporary tables of Postgres (its memory does
//! not grow with the number of items), and the few items of its second look in memory. Both
//! apply the same rule key by key; these tests check, on real Postgres, that the stage's join
//! hands the rule exactly what the in-memory maps hand it: the same findings for many random
//! snapshots in which every combination of expected, stored, acknowledged, intended for
//! deletion, queued and written occurs.

use std::collections::{HashMap, HashSet};

use chrono::{Duration, Utc};
use edge_documents::acks::{Ack, DELETE_INTENT};
use edge_documents::tables::TableKind;
use edge_tests::pg::TestDb;
use edge_writer::verify::expected::ExpectedItem;
use edge_writer::verify::scan::{digest, Ledger, Observed};
use edge_writer::verify::{compare, compare_staged_snapshot, Comparison, Snapshot};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CASES: u64 = 300;

const KEYS: [&str; 10] = [
    "environments|k1",
    "environments|k2",
    "environments_v2|7|META",
    "environment_api_keys|ser.a",
    "identities|envA_alice",
    "identities|envA_bob",
    "identities|envOff_carol",
    "environments_v2|7|identity_override:1:u",
    "environments_v2|7|identity_override:2:u",
    "identities|envA_dan",
];
const DOCS: [&str; 4] = ["environment:1", "environment:2", "identity:1", "identity:2"];
const REGIONS: [&str; 2] = ["r", "s"];

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn random_snapshot(rng: &mut StdRng) -> Snapshot {
    let now = Utc::now();
    let times = [
        now - Duration::hours(1),
        now - Duration::seconds(5),
        now - Duration::days(30),
    ];
    let hashes = ["h1", "h2"];
    let mut snap = Snapshot {
        ingestion_off: HashSet::from(["envOff".to_string()]),
        ..Snapshot::default()
    };
    for key in KEYS {
        if rng.random_bool(0.6) {
            snap.expected.insert(
                key.into(),
                ExpectedItem {
                    doc_key: (*pick(rng, &DOCS)).into(),
                    table: TableKind::Environments,
                    hash: digest(pick::<&str>(rng, &hashes)),
                },
            );
        }
    }
    for region in REGIONS {
        let mut observed = HashMap::new();
        for key in KEYS {
            if rng.random_bool(0.3) {
                continue;
            }
            let version = rng.random_bool(0.75).then(|| rng.random_range(1..5));
            observed.insert(
                key.into(),
                Observed {
                    version,
                    doc_key: (version.is_some() || rng.random_bool(0.2))
                        .then(|| (*pick(rng, &DOCS)).into()),
                    hash: version.map(|_| digest(pick::<&str>(rng, &hashes))),
                    corrupted: rng.random_bool(0.1).then(|| "broken".into()),
                },
            );
        }
        snap.observed.push((region.to_string(), observed));
    }
    let mut ledger = Ledger::default();
    for key in KEYS {
        for region in REGIONS.iter().chain([&DELETE_INTENT]) {
            if rng.random_bool(0.4) {
                ledger.insert(&Ack {
                    item_key: key.into(),
                    region: region.to_string(),
                    version: rng.random_range(1..5),
                    doc_key: (*pick(rng, &DOCS)).into(),
                    hash: String::new(),
                    removed: rng.random_bool(0.3),
                    source_time: String::new(),
                    recorded_at_ms: pick(rng, &times).timestamp_millis(),
                    lag_ms: None,
                });
            }
        }
    }
    snap.ledger = ledger;
    for doc in DOCS {
        if rng.random_bool(0.25) {
            snap.in_flight.insert(doc.to_string());
        }
        if rng.random_bool(0.8) {
            snap.written.insert(doc.to_string(), *pick(rng, &times));
        }
    }
    snap
}

/// A comparison's findings in one order.
fn findings(c: &Comparison) -> Vec<String> {
    let mut out: Vec<String> = c
        .drifts
        .iter()
        .map(|d| {
            format!(
                "drift {} {} {:?} {:?} {}",
                d.region, d.item_key, d.kind, d.doc_key, d.detail
            )
        })
        .chain(
            c.pending_ingestion
                .iter()
                .map(|p| format!("pending {} {} {:?}", p.region, p.item_key, p.doc_key)),
        )
        .chain(
            c.extras
                .iter()
                .map(|(owner, key)| format!("extra {owner} {key}")),
        )
        .chain(
            c.regions
                .iter()
                .map(|r| format!("region {} items={} foreign={}", r.name, r.items, r.foreign)),
        )
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_staged_comparison_finds_what_the_in_memory_comparison_finds() {
    let db = TestDb::new().await;
    let deadline = Utc::now() - Duration::minutes(5);
    let mut drifts = 0;
    for seed in 0..CASES {
        let mut rng = StdRng::seed_from_u64(seed);
        let snap = random_snapshot(&mut rng);
        let in_memory = compare(&snap, deadline);
        let staged = compare_staged_snapshot(&db.pool, &snap, deadline)
            .await
            .unwrap_or_else(|e| panic!("case {seed}: {e}"));
        assert_eq!(
            findings(&staged),
            findings(&in_memory),
            "case {seed}: the stage and the maps disagree"
        );
        drifts += in_memory.drifts.len();
    }
    // The cases are not all quiet: every kind of finding occurs many times over.
    assert!(drifts > CASES as usize, "{drifts} drifts in {CASES} cases");
    eprintln!("{CASES} random snapshots, {drifts} drifts: the same findings both ways");
    db.drop_db().await;
}
