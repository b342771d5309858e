//! Identities have two writers: the edge (the Edge API, Flagsmith's edge identity endpoints)
//! and core through the writer. Real Postgres and DynamoDB Local; edge writes are made as
//! Flagsmith's `EdgeIdentity.save` makes them (`edge_tests::edge`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use edge_documents::item::{Item, ATTR_VERSION};
use edge_documents::tables::TableKind;
use edge_tests::core::{basic_project, TraitVal, Val};
use edge_tests::dynamo::{document_of, TestTables};
use edge_tests::edge::{self, MERGE_DEADLINE};
use edge_tests::pg::TestDb;
use edge_tests::regions::{TwoRegions, HOME, OTHER};
use edge_tests::wait;
use edge_tests::writer::{test_settings, writer_command, InProcessWriter};
use edge_writer::replicate::{Replicator, Settings};
use serde_json::{json, Value};
use stream_consumer::ingest::{Ingestion, Role};
use stream_consumer::invalidate::Invalidation;
use stream_consumer::ledger::DynamoLedger;
use stream_consumer::record::{ChangeRecord, Malformed};
use stream_consumer::Consumer;

async fn identity_item(tables: &TestTables, composite_key: &str) -> Option<Item> {
    tables
        .get(TableKind::Identities, &[("composite_key", composite_key)])
        .await
}

/// A writer that never ingests an edge item itself (no consumer in these tests does it
/// before the test says so).
fn patient_writer(db: &TestDb, tables: &TestTables) -> InProcessWriter {
    let settings = Settings {
        ingest_grace: Duration::from_secs(3600),
        ..test_settings()
    };
    InProcessWriter::start(
        Replicator::new(db.pool.clone(), tables.store(), settings),
        2,
    )
}

/// `writer verify` of one region; returns (exit code, stdout).
async fn verify(db: &TestDb, tables: &TestTables, extra: &[&str]) -> (i32, String) {
    let out = writer_command(&db.url, tables)
        .arg("verify")
        .arg(format!("--region=a={}", tables.endpoint))
        .arg("--recheck-after-secs=1")
        .arg("--ack-deadline-secs=3600")
        .args(extra)
        .output()
        .await
        .expect("run writer verify");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code != 1,
        "verify failed to run:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (code, stdout)
}

async fn core_trait(db: &TestDb, identity: i32, key: &str) -> Option<(String, Value)> {
    sqlx::query_as::<_, (Option<String>, Value)>(
        r#"SELECT value_type, to_jsonb(COALESCE(to_jsonb(integer_value), to_jsonb(float_value),
                  to_jsonb(boolean_value), to_jsonb(string_value)))
           FROM environments_trait WHERE identity_id = $1 AND trait_key = $2"#,
    )
    .bind(identity)
    .bind(key)
    .fetch_optional(&db.pool)
    .await
    .unwrap()
    .map(|(t, v)| (t.unwrap_or_default(), v))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edge_edit_is_never_clobbered_by_core_or_repair_and_is_merged_after_ingestion() {
    let (db, tables, core) = edge_tests::setup().await;
    let (_, project, env) = basic_project(&core, "edgeEnv").await;
    let flag = core
        .create_feature(project, "flag", "STANDARD", false, Val::str("default"))
        .await;
    let alice = core.create_identity(env, "alice").await;
    core.set_trait(alice, "age", TraitVal::Int(30)).await;
    core.set_trait(alice, "plan", TraitVal::Str("gold".into()))
        .await;
    edge_ingest::switch::set(&db.pool, project, Some(true))
        .await
        .unwrap();
    let writer = patient_writer(&db, &tables);
    wait::until("alice written", wait::DEFAULT, || async {
        identity_item(&tables, "edgeEnv_alice")
            .await
            .filter(|i| edge::trait_of(&document_of(i), "plan").is_some())
    })
    .await;

    // The dashboard edits alice at the edge: a trait changed, one added, an override set.
    let put = edge::edit_identity(&tables, "edgeEnv_alice", |doc| {
        edge::set_trait(doc, "plan", Some(json!("platinum")));
        edge::set_trait(doc, "edge_only", Some(json!(7)));
        edge::set_override(doc, flag.into(), "flag", true, json!("edge value"));
    })
    .await;
    // Then core changes alice. Without ingestion running, the writer must leave the edge's
    // item alone: it waits.
    core.set_trait(alice, "age", TraitVal::Int(31)).await;
    wait::until(
        "the writer to find the edge's item and wait for its ingestion",
        wait::DEFAULT,
        || async {
            let state: Option<String> =
                sqlx::query_scalar("SELECT foreign_state FROM edge.document WHERE doc_key = $1")
                    .bind(format!("identity:{alice}"))
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            (state.as_deref() == Some("awaiting_ingestion")).then_some(())
        },
    )
    .await;
    let item = identity_item(&tables, "edgeEnv_alice").await.unwrap();
    assert!(
        !item.contains_key(ATTR_VERSION),
        "the edge's item was replaced"
    );
    assert_eq!(
        document_of(&item),
        put,
        "the edge's item is exactly what the edge wrote"
    );
    let parked: i64 = db.scalar_i64("SELECT count(*) FROM edge.dead_letter").await;
    assert_eq!(parked, 0, "waiting for ingestion is not a failure");

    // verify: pending ingestion, not stale; --repair writes nothing over it.
    let (code, out) = verify(&db, &tables, &["--repair"]).await;
    assert!(
        out.lines()
            .any(|l| l.contains("pending ingestion") && l.contains("identities|edgeEnv_alice")),
        "{out}"
    );
    assert!(
        !out.lines()
            .any(|l| l.contains("identities|edgeEnv_alice") && !l.contains("pending ingestion")),
        "the edge's item is reported only as pending ingestion:\n{out}"
    );
    assert!(code == 0 || code == 3, "{code}: {out}");
    // A repair writes before verify exits: whatever it wrote is there now.
    let item = identity_item(&tables, "edgeEnv_alice").await.unwrap();
    assert_eq!(document_of(&item), put, "repair wrote over the edge's item");

    // Ingestion (the home region's consumer): core gets the edge's changes, the writer
    // replaces the item with the merged document.
    let consumer = edge::spawn_consumer(
        &tables,
        &tables,
        "a",
        Some((db.pool.clone(), Role::Home)),
        |_, _| {},
    );
    let merged = wait::until("the merged document", MERGE_DEADLINE, || async {
        let item = identity_item(&tables, "edgeEnv_alice").await?;
        item.contains_key(ATTR_VERSION).then(|| document_of(&item))
    })
    .await;
    assert_eq!(
        edge::trait_of(&merged, "age"),
        Some(&json!(31)),
        "core's change"
    );
    assert_eq!(
        edge::trait_of(&merged, "plan"),
        Some(&json!("platinum")),
        "the edge's change"
    );
    assert_eq!(edge::trait_of(&merged, "edge_only"), Some(&json!(7)));
    let fs = merged["identity_features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["feature"]["id"] == json!(flag))
        .expect("the edge's override");
    assert_eq!(fs["enabled"], true);
    assert_eq!(fs["feature_state_value"], "edge value");
    assert_eq!(merged["identity_uuid"], put["identity_uuid"]);
    // Core holds the same.
    assert_eq!(
        core_trait(&db, alice, "plan").await,
        Some(("unicode".into(), json!("platinum")))
    );
    assert_eq!(
        core_trait(&db, alice, "edge_only").await,
        Some(("int".into(), json!(7)))
    );
    assert_eq!(
        core_trait(&db, alice, "age").await,
        Some(("int".into(), json!(31)))
    );
    let overrides: i64 = db
        .scalar_i64(&format!(
            "SELECT count(*) FROM features_featurestate WHERE identity_id = {alice} AND feature_id = {flag}"
        ))
        .await;
    assert_eq!(overrides, 1);

    // An edge put built from a read older than core's last change (the README's worked
    // example): core sets age=32; the edge then puts alice back with age=31, the value before
    // core's change. That is an echo, not an edit: core keeps 32, and the edge's item is still
    // replaced although the merged document equals what the writer last wrote.
    core.set_trait(alice, "age", TraitVal::Int(32)).await;
    wait::until("age=32 at the edge", MERGE_DEADLINE, || async {
        let doc = document_of(&identity_item(&tables, "edgeEnv_alice").await?);
        (edge::trait_of(&doc, "age") == Some(&json!(32))).then_some(())
    })
    .await;
    edge::edit_identity(&tables, "edgeEnv_alice", |doc| {
        edge::set_trait(doc, "age", Some(json!(31)));
    })
    .await;
    let merged = wait::until(
        "the echo replaced by the merged document",
        MERGE_DEADLINE,
        || async {
            let item = identity_item(&tables, "edgeEnv_alice").await?;
            item.contains_key(ATTR_VERSION).then(|| document_of(&item))
        },
    )
    .await;
    assert_eq!(edge::trait_of(&merged, "age"), Some(&json!(32)));
    assert_eq!(
        core_trait(&db, alice, "age").await,
        Some(("int".into(), json!(32)))
    );

    // The edge's writes were re-projected, not counted as core changes, and nothing loops:
    // the queue drains and verify is clean.
    wait::writer_idle(&db.pool, MERGE_DEADLINE).await;
    let (code, out) = verify(&db, &tables, &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 pending ingestion"), "{out}");
    consumer.abort();
    writer.stop().await;
    db.drop_db().await;
}

/// A storm's batches go out in transactions (TransactWriteItems, each identity item under the
/// ownership condition). Identities written at the edge in the middle of a batch cancel their
/// transaction but are never replaced: they wait for ingestion, exactly as the edge wrote
/// them, and every other identity of their batches is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_written_in_transactions_never_replaces_an_edge_item() {
    const IDENTITIES: usize = 60;
    let (db, tables, core) = edge_tests::setup().await;
    let (_, project, env) = basic_project(&core, "stormEnv").await;
    let mut ids = Vec::new();
    for i in 0..IDENTITIES {
        let id = core.create_identity(env, &format!("u{i}")).await;
        core.set_trait(id, "plan", TraitVal::Str("gold".into()))
            .await;
        ids.push(id);
    }
    edge_ingest::switch::set(&db.pool, project, Some(true))
        .await
        .unwrap();
    let writer = patient_writer(&db, &tables);
    wait::writer_idle(&db.pool, MERGE_DEADLINE).await;
    writer.stop().await;

    // The edge edits three identities spread over the batches, then core changes every
    // identity at once (one statement: a storm) while no writer runs.
    let edge_keys = ["stormEnv_u5", "stormEnv_u29", "stormEnv_u47"];
    let mut edge_puts = HashMap::new();
    for key in edge_keys {
        let put = edge::edit_identity(&tables, key, |doc| {
            edge::set_trait(doc, "edge_only", Some(json!(key)));
        })
        .await;
        edge_puts.insert(key, put);
    }
    sqlx::query("UPDATE environments_trait SET string_value = 'platinum' WHERE trait_key = 'plan'")
        .execute(&db.pool)
        .await
        .unwrap();

    let store = edge_tests::counting::CountingStore::new(tables.store());
    let settings = Settings {
        ingest_grace: Duration::from_secs(3600),
        ..test_settings()
    };
    let writer =
        InProcessWriter::start(Replicator::new(db.pool.clone(), store.clone(), settings), 2);
    for i in 0..IDENTITIES {
        let key = format!("stormEnv_u{i}");
        if edge_keys.contains(&key.as_str()) {
            continue;
        }
        wait::until(
            &format!("{key} with the storm's change"),
            MERGE_DEADLINE,
            || async {
                let doc = document_of(&identity_item(&tables, &key).await?);
                (edge::trait_of(&doc, "plan") == Some(&json!("platinum"))).then_some(())
            },
        )
        .await;
    }
    wait::until(
        "the edge's identities to wait for ingestion (not replaced by the storm)",
        MERGE_DEADLINE,
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM edge.document WHERE foreign_state = 'awaiting_ingestion'",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            (waiting == edge_keys.len() as i64).then_some(())
        },
    )
    .await;
    writer.stop().await;
    for key in edge_keys {
        let item = identity_item(&tables, key).await.unwrap();
        assert!(
            !item.contains_key(ATTR_VERSION),
            "{key}: the edge's item was replaced"
        );
        assert_eq!(&document_of(&item), &edge_puts[key], "{key}");
    }
    assert!(
        store.transactions() >= 2,
        "the storm went out in transactions ({} sent)",
        store.transactions()
    );
    db.drop_db().await;
}

fn record(
    seq: &str,
    new: Option<&Value>,
    old: Option<&Value>,
    composite_key: &str,
) -> Result<ChangeRecord, Malformed> {
    let item =
        |v: &Value| -> Item { serde_dynamo::aws_sdk_dynamodb_1::to_item(v.clone()).unwrap() };
    Ok(ChangeRecord {
        sequence: seq.into(),
        table: TableKind::Identities,
        keys: [(
            "composite_key".to_string(),
            AttributeValue::S(composite_key.to_string()),
        )]
        .into(),
        new: new.map(item),
        old: old.map(item),
        created_at: Some(chrono::Utc::now()),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_identities_reach_core_typed_once_and_poison_items_are_parked() {
    let (db, tables, core) = edge_tests::setup().await;
    let (_, project, _) = basic_project(&core, "ingEnv").await;
    let flag = core
        .create_feature(project, "flag", "STANDARD", false, Val::str("default"))
        .await;
    let (_, off_project, _) = basic_project(&core, "offEnv").await;
    edge_ingest::switch::set(&db.pool, project, Some(true))
        .await
        .unwrap();
    edge_ingest::switch::set(&db.pool, off_project, Some(false))
        .await
        .unwrap();
    let consumer = Consumer::new(
        "a",
        DynamoLedger::new(tables.client.clone(), tables.names.acks.clone()),
        Invalidation::none(),
    )
    .with_ingestion(Ingestion::from_pool(db.pool.clone(), Role::Home));

    let mut carol = edge::new_identity(
        "ingEnv",
        "carol",
        &[
            ("age", json!(41)),
            ("score", json!(2.5)),
            ("beta", json!(true)),
            ("plan", json!("gold")),
            ("big", json!(3_000_000_000i64)),
        ],
    );
    edge::set_override(&mut carol, flag.into(), "flag", true, json!("edge"));
    let dave = edge::new_identity("ingEnv", "dave", &[("bad", json!([1, 2]))]);
    let long = "l".repeat(1025);
    let too_long = edge::new_identity("ingEnv", &long, &[]);
    let erin = edge::new_identity("ingEnv", "erin", &[("x", json!(1))]);
    let frank = edge::new_identity("offEnv", "frank", &[("x", json!(1))]);
    let batch = || {
        vec![
            record("1", Some(&carol), None, "ingEnv_carol"),
            record("2", Some(&dave), None, "ingEnv_dave"),
            record("3", Some(&too_long), None, &format!("ingEnv_{long}")),
            record("4", Some(&erin), None, "ingEnv_erin"),
            record("5", Some(&frank), None, "offEnv_frank"),
        ]
    };
    let report = consumer.handle(batch()).await;
    assert!(report.failure.is_none(), "{:?}", report.failure);
    // carol and erin applied, frank's left alone by his project's switch; dave and the
    // too-long identifier parked.
    assert_eq!(
        (report.ingested, report.ingest_parked),
        (3, 2),
        "{report:?}"
    );

    // carol and erin exist in core, with the edge's identity_uuid; frank's project does not
    // ingest.
    let id_of = |identifier: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i32>(
                "SELECT id FROM environments_identity WHERE identifier = $1",
            )
            .bind(identifier)
            .fetch_optional(&pool)
            .await
            .unwrap()
        }
    };
    let carol_id = id_of("carol").await.expect("carol created in core");
    assert!(id_of("erin").await.is_some());
    assert!(
        id_of("frank").await.is_none(),
        "ingestion is off for frank's project"
    );
    let uuid: uuid::Uuid =
        sqlx::query_scalar("SELECT identity_uuid FROM edge.identity_uuid WHERE identity_id = $1")
            .bind(carol_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(uuid.to_string(), carol["identity_uuid"].as_str().unwrap());
    // Traits with core's types.
    for (key, t, v) in [
        ("age", "int", json!(41)),
        ("score", "float", json!(2.5)),
        ("beta", "bool", json!(true)),
        ("plan", "unicode", json!("gold")),
        ("big", "float", json!(3_000_000_000i64)),
    ] {
        assert_eq!(
            core_trait(&db, carol_id, key).await,
            Some((t.to_string(), v)),
            "trait {key}"
        );
    }
    let value: Option<String> = sqlx::query_scalar(
        r#"SELECT v.string_value FROM features_featurestate fs
           JOIN features_featurestatevalue v ON v.feature_state_id = fs.id
           WHERE fs.identity_id = $1 AND fs.feature_id = $2 AND fs.enabled"#,
    )
    .bind(carol_id)
    .bind(flag)
    .fetch_optional(&db.pool)
    .await
    .unwrap();
    assert_eq!(value.as_deref(), Some("edge"), "carol's override");
    // The poison items are parked with their key and reason.
    let parked: Vec<(String, String)> =
        sqlx::query_as("SELECT item_key, error FROM edge.ingest_dead_letter ORDER BY item_key")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(parked.len(), 2, "{parked:?}");
    assert!(
        parked
            .iter()
            .any(|(k, e)| k == "ingEnv_dave" && e.contains("a list")),
        "{parked:?}"
    );
    assert!(
        parked
            .iter()
            .any(|(k, e)| k.starts_with("ingEnv_lll") && e.contains("1025 bytes")),
        "{parked:?}"
    );

    // A redelivered batch changes nothing in core.
    let state = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, String>(
            r#"SELECT (SELECT count(*) FROM edge.change_log)::text || '/' ||
                      (SELECT string_agg(t.id::text || t.trait_key || COALESCE(t.string_value, '')
                              || COALESCE(t.integer_value::text, ''), ',' ORDER BY t.id)
                       FROM environments_trait t) || '/' ||
                      (SELECT count(*) FROM features_featurestate)::text"#,
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let before = state(db.pool.clone()).await;
    let again = consumer.handle(batch()).await;
    assert!(again.failure.is_none(), "{:?}", again.failure);
    assert_eq!(
        state(db.pool.clone()).await,
        before,
        "redelivery changed core"
    );

    // An edge delete deletes in core.
    let report = consumer
        .handle(vec![record("6", None, Some(&carol), "ingEnv_carol")])
        .await;
    assert!(report.failure.is_none(), "{:?}", report.failure);
    assert_eq!(report.ingested, 1, "{report:?}");
    assert!(
        id_of("carol").await.is_none(),
        "the edge delete reached core"
    );
    let left: i64 = db
        .scalar_i64(&format!(
            "SELECT (SELECT count(*) FROM environments_trait WHERE identity_id = {carol_id})
                  + (SELECT count(*) FROM features_featurestate WHERE identity_id = {carol_id})"
        ))
        .await;
    assert_eq!(left, 0);

    // The writer writes erin, whom only the edge knew, under the edge's identity_uuid.
    let writer = patient_writer(&db, &tables);
    let erin_item = wait::until("erin written", MERGE_DEADLINE, || async {
        identity_item(&tables, "ingEnv_erin").await
    })
    .await;
    assert!(erin_item.contains_key(ATTR_VERSION));
    assert_eq!(
        document_of(&erin_item)["identity_uuid"],
        erin["identity_uuid"]
    );
    writer.stop().await;
    db.drop_db().await;
}

/// `writer verify` of both regions; returns (exit code, stdout).
async fn verify_both(db: &TestDb, regions: &TwoRegions) -> (i32, String) {
    let out = writer_command(&db.url, &regions.a)
        .arg("verify")
        .arg(format!("--region={HOME}={}", regions.a.endpoint))
        .arg(format!("--region={OTHER}={}", regions.b.endpoint))
        .arg("--recheck-after-secs=1")
        .arg("--ack-deadline-secs=3600")
        .output()
        .await
        .expect("run writer verify");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    (out.status.code().unwrap_or(-1), stdout)
}

/// A small deterministic generator (no shared state between the tasks).
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }

    /// Half the picks among the first `HOT` identities, so both sides often meet.
    fn pick(&mut self, n: usize) -> usize {
        if self.below(2) == 0 {
            self.below(HOT.min(n))
        } else {
            self.below(n)
        }
    }
}

const HOT: usize = 20;

/// How long the race test's 1000 identities may take to reach both regions before the race.
const SETUP_DEADLINE: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edge_and_core_writing_the_same_identities_at_once_lose_nothing_in_any_region() {
    edge_tests::init_logging();
    let db = TestDb::new().await;
    let core = edge_tests::core::Core::new(db.pool.clone());
    let regions = TwoRegions::start_with(|_| Invalidation::none(), Some(db.pool.clone())).await;
    let (_, project, env) = basic_project(&core, "raceEnv").await;
    let flag = core
        .create_feature(project, "flag", "STANDARD", false, Val::str("default"))
        .await;
    edge_ingest::switch::set(&db.pool, project, Some(true))
        .await
        .unwrap();
    const N: i64 = 1000;
    sqlx::query(
        r#"INSERT INTO environments_identity (identifier, created_date, environment_id, system_traits)
           SELECT 'user-' || g, now(), $1, '{}'::jsonb FROM generate_series(1, $2) AS g"#,
    )
    .bind(env)
    .bind(N)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        r#"INSERT INTO environments_trait (trait_key, value_type, integer_value, created_date, identity_id)
           SELECT 'core_n', 'int', 0, now(), id FROM environments_identity WHERE environment_id = $1"#,
    )
    .bind(env)
    .execute(&db.pool)
    .await
    .unwrap();
    let identities: Vec<(i32, String)> = sqlx::query_as(
        "SELECT id, identifier FROM environments_identity WHERE environment_id = $1 ORDER BY id",
    )
    .bind(env)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let writer = InProcessWriter::start_on(&db.pool, &regions.a, 4);
    // The setup: 1000 identities through one writer and the relay. On a saturated 2-core
    // machine (a million-identity benchmark beside the suite) this took over 120 s.
    wait::until("every identity in region b", SETUP_DEADLINE, || async {
        (regions.b.scan(TableKind::Identities).await.len() as i64 >= N).then_some(())
    })
    .await;

    // For a while, the edge (region b, as Flagsmith's EdgeIdentity.save: read, change, put
    // back whole) and core change the same identities: the edge its trait `edge_n` (and, on
    // every tenth identity, an override it keeps setting on every edit), core its trait
    // `core_n`. Half the picks go to a few
    // hot identities, and the edge goes on a little after core stops: its puts then carry
    // core_n values read before core's last changes reached region b, which must not undo
    // them.
    let run_for = Duration::from_secs(12);
    let edge_task = {
        let b = regions.b.clone();
        let identities = identities.clone();
        tokio::spawn(async move {
            let mut last: HashMap<String, i64> = HashMap::new();
            let mut overridden: Vec<String> = Vec::new();
            let mut rng = Lcg(7);
            let mut pace = tokio::time::interval(Duration::from_millis(25));
            let until = Instant::now() + run_for + Duration::from_secs(3);
            while Instant::now() < until {
                pace.tick().await;
                let i = rng.pick(identities.len());
                let identifier = &identities[i].1;
                let n = last.get(identifier).copied().unwrap_or(0) + 1;
                let with_override = i % 10 == 0;
                edge::edit_identity(&b, &format!("raceEnv_{identifier}"), |doc| {
                    edge::set_trait(doc, "edge_n", Some(json!(n)));
                    if with_override {
                        edge::set_override(doc, flag.into(), "flag", true, json!(identifier));
                    }
                })
                .await;
                if with_override && n == 1 {
                    overridden.push(identifier.clone());
                }
                last.insert(identifier.clone(), n);
            }
            (last, overridden)
        })
    };
    let core_task = {
        let core = edge_tests::core::Core::new(db.pool.clone());
        let identities = identities.clone();
        tokio::spawn(async move {
            let mut last: HashMap<String, i64> = HashMap::new();
            let mut rng = Lcg(11);
            let mut pace = tokio::time::interval(Duration::from_millis(25));
            let until = Instant::now() + run_for;
            while Instant::now() < until {
                pace.tick().await;
                let (id, identifier) = &identities[rng.pick(identities.len())];
                let n = last.get(identifier).copied().unwrap_or(0) + 1;
                core.set_trait(*id, "core_n", TraitVal::Int(n as i32)).await;
                last.insert(identifier.clone(), n);
            }
            last
        })
    };
    let (edge_last, overridden) = edge_task.await.unwrap();
    let core_last = core_task.await.unwrap();
    assert!(
        edge_last.len() > 50 && core_last.len() > 50,
        "both sides wrote"
    );

    // Core ends with every side's last write of every identity.
    let converge = Duration::from_secs(
        std::env::var("EDGE_TEST_CONVERGE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300),
    );
    wait::until_ok("core to hold each side's last write", converge, || async {
        let rows: Vec<(String, String, i32)> = sqlx::query_as(
            r#"SELECT i.identifier, t.trait_key, t.integer_value FROM environments_trait t
               JOIN environments_identity i ON i.id = t.identity_id
               WHERE i.environment_id = $1 AND t.trait_key IN ('edge_n', 'core_n')"#,
        )
        .bind(env)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        let got: HashMap<(String, String), i64> = rows
            .into_iter()
            .map(|(i, k, v)| ((i, k), i64::from(v)))
            .collect();
        let with_override: Vec<String> = sqlx::query_scalar(
            r#"SELECT i.identifier FROM features_featurestate fs
               JOIN environments_identity i ON i.id = fs.identity_id
               WHERE fs.feature_id = $1 AND fs.enabled"#,
        )
        .bind(flag)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        let mismatches: Vec<String> = edge_last
            .iter()
            .map(|(i, n)| (i, "edge_n", n))
            .chain(core_last.iter().map(|(i, n)| (i, "core_n", n)))
            .filter_map(|(i, k, n)| {
                let have = got.get(&(i.clone(), k.to_string())).copied();
                (have != Some(*n)).then(|| format!("{i} {k}: core has {have:?}, last written {n}"))
            })
            .chain(
                overridden
                    .iter()
                    .filter(|i| !with_override.contains(i))
                    .map(|i| format!("{i}: the edge's override is not in core")),
            )
            .collect();
        if mismatches.is_empty() {
            Ok(())
        } else {
            Err(format!("{} lost: {mismatches:?}", mismatches.len()))
        }
    })
    .await;
    // Every region holds core's projection of every identity: verify is clean, with nothing
    // pending ingestion.
    let out = wait::until("both regions to verify clean", converge, || async {
        let (code, out) = verify_both(&db, &regions).await;
        (code == 0 && out.contains(" 0 pending ingestion")).then_some(out)
    })
    .await;
    assert!(out.contains("expected"), "{out}");
    let failures: Vec<_> = regions
        .failures()
        .into_iter()
        .filter(|(_, e)| !e.contains("ingest"))
        .collect();
    assert!(failures.is_empty(), "verification failures: {failures:?}");
    writer.stop().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_consumer_the_writer_ingests_the_edge_item_itself_and_leaves_it_when_ingestion_is_off(
) {
    let (db, tables, core) = edge_tests::setup().await;
    let (_, project, env) = basic_project(&core, "soloEnv").await;
    let (_, off_project, off_env) = basic_project(&core, "offSolo").await;
    edge_ingest::switch::set(&db.pool, project, Some(true))
        .await
        .unwrap();
    edge_ingest::switch::set(&db.pool, off_project, Some(false))
        .await
        .unwrap();
    let gina = core.create_identity(env, "gina").await;
    core.set_trait(gina, "age", TraitVal::Int(20)).await;
    let ivy = core.create_identity(env, "ivy").await;
    core.set_trait(ivy, "age", TraitVal::Int(30)).await;
    let hal = core.create_identity(off_env, "hal").await;
    core.set_trait(hal, "age", TraitVal::Int(40)).await;
    // No consumer runs; the writer waits one second before ingesting an edge item itself.
    let settings = Settings {
        ingest_grace: Duration::from_secs(1),
        ..test_settings()
    };
    let writer = InProcessWriter::start(
        Replicator::new(db.pool.clone(), tables.store(), settings),
        2,
    );
    for key in ["soloEnv_gina", "soloEnv_ivy", "offSolo_hal"] {
        wait::until(&format!("{key} written"), MERGE_DEADLINE, || async {
            identity_item(&tables, key).await
        })
        .await;
    }
    edge::edit_identity(&tables, "soloEnv_gina", |doc| {
        edge::set_trait(doc, "plan", Some(json!("pro")));
    })
    .await;
    let hal_put = edge::edit_identity(&tables, "offSolo_hal", |doc| {
        edge::set_trait(doc, "plan", Some(json!("edge")));
    })
    .await;
    // ivy: the edge wrote an item core cannot take (a trait whose value is a list).
    let ivy_put = edge::edit_identity(&tables, "soloEnv_ivy", |doc| {
        edge::set_trait(doc, "tags", Some(json!(["a", "b"])));
    })
    .await;
    core.set_trait(gina, "age", TraitVal::Int(21)).await;
    core.set_trait(ivy, "age", TraitVal::Int(31)).await;
    core.set_trait(hal, "age", TraitVal::Int(41)).await;

    // gina: the writer ingested the edge's item itself after the grace, then merged.
    let merged = wait::until("gina merged by the writer", MERGE_DEADLINE, || async {
        let item = identity_item(&tables, "soloEnv_gina").await?;
        item.contains_key(ATTR_VERSION).then(|| document_of(&item))
    })
    .await;
    assert_eq!(edge::trait_of(&merged, "plan"), Some(&json!("pro")));
    assert_eq!(edge::trait_of(&merged, "age"), Some(&json!(21)));
    assert_eq!(
        core_trait(&db, gina, "plan").await,
        Some(("unicode".into(), json!("pro")))
    );
    // ivy: the writer's own ingestion refuses the item; it is parked with its key and
    // reason, the document is left to the edge (not retried), and the item is not replaced.
    let reason = wait::until("ivy's item parked", MERGE_DEADLINE, || async {
        sqlx::query_scalar::<_, String>(
            "SELECT error FROM edge.ingest_dead_letter WHERE item_key = 'soloEnv_ivy'",
        )
        .fetch_optional(&db.pool)
        .await
        .unwrap()
    })
    .await;
    assert!(reason.contains("a list"), "{reason}");
    // hal: ingestion is off for his project, so the edge owns the item; it is left alone.
    wait::until("hal left to the edge", MERGE_DEADLINE, || async {
        let state: Option<String> =
            sqlx::query_scalar("SELECT foreign_state FROM edge.document WHERE doc_key = $1")
                .bind(format!("identity:{hal}"))
                .fetch_one(&db.pool)
                .await
                .ok()?;
        (state.as_deref() == Some("edge_owned")).then_some(())
    })
    .await;
    wait::writer_idle(&db.pool, MERGE_DEADLINE).await;
    // Each attempt at ivy's document finds the edge's item again and, the grace long past,
    // parks it again; an attempt that found the item changing in between waits a little.
    // Whatever the order, the document ends left to the edge and out of the queue.
    wait::until(
        "ivy left to the edge, not queued",
        MERGE_DEADLINE,
        || async {
            let (state, queued): (Option<String>, bool) = sqlx::query_as(
            "SELECT foreign_state, EXISTS (SELECT 1 FROM edge.pending p WHERE p.doc_key = d.doc_key)
               FROM edge.document d WHERE doc_key = $1",
        )
        .bind(format!("identity:{ivy}"))
        .fetch_one(&db.pool)
        .await
        .ok()?;
            (state.as_deref() == Some("edge_owned") && !queued).then_some(())
        },
    )
    .await;
    let item = identity_item(&tables, "soloEnv_ivy").await.unwrap();
    assert_eq!(
        document_of(&item),
        ivy_put,
        "the parked edge item was replaced"
    );
    assert_eq!(core_trait(&db, ivy, "tags").await, None, "nothing ingested");
    let item = identity_item(&tables, "offSolo_hal").await.unwrap();
    assert_eq!(
        document_of(&item),
        hal_put,
        "the edge-owned item was changed"
    );
    assert_eq!(core_trait(&db, hal, "plan").await, None, "nothing ingested");
    let (code, out) = verify(&db, &tables, &[]).await;
    assert!(
        !out.contains("offSolo_hal"),
        "an edge-owned item is foreign, not drift or pending:\n{out}"
    );
    assert_eq!(code, 0, "{out}");
    writer.stop().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_state_older_than_the_streams_retention_is_pruned() {
    let (db, _tables, _core) = edge_tests::setup().await;
    for sql in [
        "INSERT INTO edge.ingested_image (composite_key, digest, edge_time, ingested_at) VALUES ('k_old', 'd', now(), now() - interval '3 days'), ('k_new', 'd', now(), now())",
        "INSERT INTO edge.trait_clock (identity_id, trait_key, changed_at, origin) VALUES (1, 'old', now() - interval '3 days', 'core'), (1, 'new', now(), 'core')",
        "INSERT INTO edge.identity_tombstone (environment_id, identifier, deleted_at) VALUES (1, 'old', now() - interval '3 days'), (1, 'new', now())",
    ] {
        sqlx::query(sql).execute(&db.pool).await.unwrap();
    }
    assert_eq!(edge_ingest::clock::prune(&db.pool, 100).await.unwrap(), 3);
    let left = db
        .scalar_i64(
            "SELECT (SELECT count(*) FROM edge.ingested_image WHERE composite_key = 'k_new')
                  + (SELECT count(*) FROM edge.trait_clock WHERE trait_key = 'new')
                  + (SELECT count(*) FROM edge.identity_tombstone WHERE identifier = 'new')
                  - (SELECT count(*) FROM edge.ingested_image) - (SELECT count(*) FROM edge.trait_clock)
                  - (SELECT count(*) FROM edge.identity_tombstone)",
        )
        .await;
    assert_eq!(left, 0, "only the recent rows are left");
    assert_eq!(edge_ingest::clock::prune(&db.pool, 100).await.unwrap(), 0);
    db.drop_db().await;
}
