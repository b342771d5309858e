//! Odd core rows against the real core schema in Postgres and DynamoDB Local: NULLs where a
//! type says a value is, huge strings, any Unicode, NaN and infinite floats. Each committed
//! row is projected with exactly its value, or its document is parked with an error that
//! names it; the writer never panics and never drops a committed change.
//!
//! `ODD_ROW_CASES` sets the number of cases of each kind (default 64). The summary line is
//! printed with `--nocapture`.

use std::sync::atomic::{AtomicUsize, Ordering};

use edge_documents::hash::content_hash;
use edge_documents::item::{logical_item, stored_meta};
use edge_documents::tables::TableKind;
use edge_tests::core::{Core, Val};
use edge_tests::dynamo::TestTables;
use edge_tests::pg::TestDb;
use edge_tests::wait;
use edge_tests::writer::test_settings;
use edge_writer::replicate::Replicator;
use edge_writer::store::DynamoStore;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};

/// DynamoDB's number range: magnitudes from 1e-130 to below 1e126.
fn dynamodb_can_hold(f: f64) -> bool {
    f == 0.0 || (1e-130..1e126).contains(&f.abs())
}

/// Equal values; numbers by value, as DynamoDB keeps them (it has no `-0`, and `1.0` comes
/// back as `1`).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Text Postgres accepts (anything but NUL), of `0..=max` characters.
fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(any::<char>().prop_filter("NUL", |c| *c != '\0'), 0..=max.min(40)),
        1 => prop::collection::vec(any::<char>().prop_filter("NUL", |c| *c != '\0'), max.saturating_sub(8)..=max),
    ]
    .prop_map(|chars| chars.into_iter().collect())
}

fn odd_float() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(-0.0),
            Just(f64::MIN_POSITIVE),
            Just(f64::MAX),
            Just(1e125),
            Just(1.5),
        ],
    ]
}

fn value_type() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        Just("int".to_string()),
        Just("float".to_string()),
        Just("bool".to_string()),
        Just("unicode".to_string()),
        "\\PC{0,10}",
    ])
}

/// A row of `environments_trait` as anything may have left it.
#[derive(Debug, Clone)]
struct TraitRow {
    identifier: String,
    key: String,
    value_type: Option<String>,
    integer: Option<i32>,
    float: Option<f64>,
    boolean: Option<bool>,
    string: Option<String>,
}

fn trait_row() -> impl Strategy<Value = TraitRow> {
    (
        text(1100).prop_filter("an identifier", |s| !s.is_empty()),
        text(200),
        value_type(),
        prop::option::of(any::<i32>()),
        prop::option::of(odd_float()),
        prop::option::of(any::<bool>()),
        prop::option::of(text(2000)),
    )
        .prop_map(
            |(identifier, key, value_type, integer, float, boolean, string)| TraitRow {
                identifier,
                key,
                value_type,
                integer,
                float,
                boolean,
                string,
            },
        )
}

/// A row of `features_featurestatevalue` (and its feature's name).
#[derive(Debug, Clone)]
struct FlagRow {
    feature_name: String,
    value_type: Option<String>,
    integer: Option<i32>,
    boolean: Option<bool>,
    string: Option<String>,
}

fn flag_row() -> impl Strategy<Value = FlagRow> {
    (
        text(200).prop_filter("a name", |s| !s.is_empty()),
        value_type(),
        prop::option::of(any::<i32>()),
        prop::option::of(any::<bool>()),
        prop::option::of(text(20_000)),
    )
        .prop_map(
            |(feature_name, value_type, integer, boolean, string)| FlagRow {
                feature_name,
                value_type,
                integer,
                boolean,
                string,
            },
        )
}

/// What the writer must do with a row.
#[derive(Debug)]
enum Expect {
    /// Project exactly this value.
    Value(Value),
    /// Park the document (core holds something the document cannot carry).
    Park,
    /// Either: DynamoDB may refuse the value (a number beyond its range).
    Either(Value),
}

impl TraitRow {
    fn expect(&self) -> Expect {
        if self.identifier.len() > 1024 {
            return Expect::Park;
        }
        match self.value_type.as_deref() {
            Some("int") => self
                .integer
                .map_or(Expect::Park, |i| Expect::Value(json!(i))),
            Some("float") => match self.float {
                Some(f) if f.is_finite() && dynamodb_can_hold(f) => Expect::Value(json!(f)),
                Some(f) if f.is_finite() => Expect::Either(json!(f)),
                _ => Expect::Park,
            },
            Some("bool") => self
                .boolean
                .map_or(Expect::Park, |b| Expect::Value(json!(b))),
            _ => self
                .string
                .as_ref()
                .map_or(Expect::Park, |s| Expect::Value(json!(s))),
        }
    }
}

impl FlagRow {
    fn expect(&self) -> Value {
        match self.value_type.as_deref() {
            Some("int") => json!(self.integer),
            Some("bool") => json!(self.boolean),
            _ => json!(self.string),
        }
    }
}

struct World {
    db: TestDb,
    tables: TestTables,
    core: Core,
    org: i32,
    replicator: Replicator<DynamoStore>,
}

#[derive(Default)]
struct Tally {
    cases: AtomicUsize,
    projected: AtomicUsize,
    parked: AtomicUsize,
}

/// How one document ended: its item (projected) or its dead letter (kind, error).
enum Settled {
    Projected(Value),
    Parked(String, String),
}

impl World {
    /// Captures and replicates until the document has left the queue (projected or parked).
    async fn settle(&self, doc_key: &str, item_key: &[(&str, &str)], table: TableKind) -> Settled {
        let pool = &self.db.pool;
        wait::until_ok(
            &format!("{doc_key} projected or parked"),
            wait::DEFAULT,
            || async {
                edge_writer::capture::drain_all(pool, 1000)
                    .await
                    .map_err(|e| e.to_string())?;
                while self
                    .replicator
                    .replicate_next()
                    .await
                    .map_err(|e| e.to_string())?
                    .is_some()
                {}
                let queued: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM edge.pending WHERE doc_key = $1")
                        .bind(doc_key)
                        .fetch_one(pool)
                        .await
                        .map_err(|e| e.to_string())?;
                if queued > 0 {
                    return Err(format!("{doc_key} still queued"));
                }
                Ok(())
            },
        )
        .await;
        let parked: Option<(String, String)> =
            sqlx::query_as("SELECT error_kind, error FROM edge.dead_letter WHERE doc_key = $1")
                .bind(doc_key)
                .fetch_optional(pool)
                .await
                .unwrap();
        if let Some((kind, error)) = parked {
            return Settled::Parked(kind, error);
        }
        let item = self
            .tables
            .get(table, item_key)
            .await
            .unwrap_or_else(|| panic!("{doc_key}: neither written nor parked"));
        // The item carries the recorded version, and its hash is what a stream consumer
        // recomputes from it as DynamoDB stored it.
        let meta = stored_meta(&item).unwrap();
        let logical = logical_item(&item).unwrap();
        assert_eq!(meta.hash, content_hash(&logical), "{doc_key}: stored hash");
        let recorded: Option<i64> =
            sqlx::query_scalar("SELECT version FROM edge.document WHERE doc_key = $1")
                .bind(doc_key)
                .fetch_one(pool)
                .await
                .unwrap();
        assert_eq!(recorded, Some(meta.version), "{doc_key}: recorded version");
        Settled::Projected(logical)
    }

    async fn trait_case(&self, row: &TraitRow) -> Result<Settled, TestCaseError> {
        let (_, env, api_key) = self.environment().await;
        let identity = self.core.create_identity(env, &row.identifier).await;
        sqlx::query(
            r#"INSERT INTO environments_trait (trait_key, value_type, boolean_value, integer_value,
                   string_value, float_value, created_date, identity_id)
               VALUES ($1, $2, $3, $4, $5, $6, now(), $7)"#,
        )
        .bind(&row.key)
        .bind(&row.value_type)
        .bind(row.boolean)
        .bind(row.integer)
        .bind(&row.string)
        .bind(row.float)
        .bind(identity)
        .execute(&self.db.pool)
        .await
        .unwrap();
        let composite_key = format!("{api_key}_{}", row.identifier);
        let settled = self
            .settle(
                &format!("identity:{identity}"),
                &[("composite_key", &composite_key)],
                TableKind::Identities,
            )
            .await;
        let found = |doc: &Value| {
            doc["identity_traits"]
                .as_array()
                .and_then(|ts| ts.iter().find(|t| t["trait_key"] == row.key.as_str()))
                .map(|t| t["trait_value"].clone())
        };
        match (&settled, row.expect()) {
            (Settled::Projected(doc), Expect::Value(v) | Expect::Either(v)) => {
                let got = found(doc);
                prop_assert!(
                    got.as_ref().is_some_and(|g| same_value(g, &v)),
                    "{:?} projected as {:?}",
                    row,
                    got
                );
            }
            (Settled::Parked(kind, error), Expect::Park) => {
                prop_assert!(
                    error.contains(&format!("identity:{identity}")) && kind == "invalid_data",
                    "{}: {}",
                    kind,
                    error
                );
            }
            (Settled::Parked(kind, error), Expect::Either(_)) => {
                prop_assert!(
                    kind == "rejected" || kind == "invalid_data",
                    "{}: {}",
                    kind,
                    error
                );
                prop_assert!(error.contains(&format!("identity:{identity}")), "{}", error);
            }
            (Settled::Projected(doc), Expect::Park) => {
                return Err(TestCaseError::fail(format!(
                    "projected what core cannot mean: {row:?} -> {:?}",
                    found(doc)
                )))
            }
            (Settled::Parked(kind, error), Expect::Value(_)) => {
                return Err(TestCaseError::fail(format!(
                    "parked a storable row {row:?}: {kind}: {error}"
                )))
            }
        }
        Ok(settled)
    }

    async fn flag_case(&self, row: &FlagRow) -> Result<Settled, TestCaseError> {
        let (project, env, api_key) = self.environment().await;
        let feature = self
            .core
            .create_feature(project, &row.feature_name, "STANDARD", true, Val::None)
            .await;
        let fs = self.core.default_state(env, feature).await;
        sqlx::query(
            "UPDATE features_featurestatevalue SET type = $2, integer_value = $3, boolean_value = $4, string_value = $5 WHERE feature_state_id = $1",
        )
        .bind(fs)
        .bind(&row.value_type)
        .bind(row.integer)
        .bind(row.boolean)
        .bind(&row.string)
        .execute(&self.db.pool)
        .await
        .unwrap();
        let settled = self
            .settle(
                &format!("environment:{env}"),
                &[("api_key", &api_key)],
                TableKind::Environments,
            )
            .await;
        match &settled {
            Settled::Projected(doc) => {
                let state = doc["feature_states"].as_array().and_then(|s| {
                    s.iter()
                        .find(|s| s["feature"]["name"] == row.feature_name.as_str())
                });
                prop_assert!(
                    state.is_some(),
                    "{:?} not in the document",
                    row.feature_name
                );
                prop_assert_eq!(
                    &state.unwrap()["feature_state_value"],
                    &row.expect(),
                    "{:?}",
                    row
                );
            }
            Settled::Parked(kind, error) => {
                return Err(TestCaseError::fail(format!(
                    "parked a storable flag {row:?}: {kind}: {error}"
                )))
            }
        }
        Ok(settled)
    }

    /// A fresh project with one environment: a parked case leaves no other case waiting.
    async fn environment(&self) -> (i32, i32, String) {
        let api_key = format!("odd{}", uuid::Uuid::new_v4().simple());
        let project = self
            .core
            .create_project(self.org, "P", true, "COMPLETE")
            .await;
        let env = self.core.create_environment(project, "E", &api_key).await;
        (project, env, api_key)
    }
}

fn run_cases<T: std::fmt::Debug + Clone>(
    strategy: impl Strategy<Value = T>,
    tally: &Tally,
    case: impl Fn(T) -> Result<Settled, TestCaseError>,
) {
    let cases = std::env::var("ODD_ROW_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(64);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, |row| {
        let settled = case(row)?;
        tally.cases.fetch_add(1, Ordering::SeqCst);
        match settled {
            Settled::Projected(_) => tally.projected.fetch_add(1, Ordering::SeqCst),
            Settled::Parked(..) => tally.parked.fetch_add(1, Ordering::SeqCst),
        };
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn odd_core_rows_are_projected_or_parked_never_panicking_never_lost() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let world = rt.block_on(async {
        let (db, tables, core) = edge_tests::setup().await;
        let org = core.create_organisation("Odd").await;
        let replicator = Replicator::new(db.pool.clone(), tables.store(), test_settings());
        World {
            db,
            tables,
            core,
            org,
            replicator,
        }
    });
    let (traits, flags) = (Tally::default(), Tally::default());
    run_cases(trait_row(), &traits, |row| {
        rt.block_on(world.trait_case(&row))
    });
    run_cases(flag_row(), &flags, |row| rt.block_on(world.flag_case(&row)));

    // Nothing committed was dropped: every document is written at its recorded version or
    // parked, and nothing is left in the queue.
    rt.block_on(async {
        let db = &world.db;
        assert_eq!(db.scalar_i64("SELECT count(*) FROM edge.pending").await, 0);
        assert_eq!(
            db.scalar_i64("SELECT count(*) FROM edge.change_log").await,
            0
        );
        let unaccounted = db
            .scalar_i64(
                "SELECT count(*) FROM edge.document d WHERE d.version IS NULL
                   AND NOT EXISTS (SELECT 1 FROM edge.dead_letter l WHERE l.doc_key = d.doc_key)",
            )
            .await;
        assert_eq!(unaccounted, 0, "documents neither written nor parked");
    });
    let n = |a: &AtomicUsize| a.load(Ordering::SeqCst);
    println!(
        "odd core rows: {} trait rows ({} projected, {} parked) and {} flag rows ({} projected, {} parked); no panic, no committed change lost",
        n(&traits.cases),
        n(&traits.projected),
        n(&traits.parked),
        n(&flags.cases),
        n(&flags.projected),
        n(&flags.parked),
    );
    rt.block_on(world.db.drop_db());
}
