//! What capture costs Flagsmith's own transactions: pgbench against the core schema, each
//! transaction shaped like one of Flagsmith's hottest paths, with the capture triggers and
//! without them (`session_replication_role = replica` disables them for the session), in the
//! same run, alternating in rounds so that both sides see the same machine, caches and
//! table sizes. The change log is emptied before every run (no writer runs).
//!
//! - `identify`: an identify call that changes 4 traits (Flagsmith saves each changed trait
//!   with its own UPDATE of the whole row, `Identity.update_traits`).
//! - `toggle`: a flag toggled in the dashboard (one feature state UPDATE).
//!
//! Modes: `off` (triggers disabled), `on` (capture as deployed with a busy or absent writer:
//! the triggers do not NOTIFY), `on+idle-writer` (a session holds the wake lock the way an
//! idle writer does, so every transaction NOTIFYs: the worst case, which lasts only until
//! the writer wakes). Two floors put `on` in proportion: `paused` (the kill switch: the
//! triggers fire and their functions return at once, the cost of any row trigger at all) and
//! `insert-only` (each function inserts one constant change row and nothing else, the cost of
//! any capture that records a row per change).
//!
//! Run with `infra/local/bench.sh capture [--rounds N] [--seconds N] [--clients N]`.

use std::process::Command;

use edge_tests::core::{basic_project, Core, TraitVal, Val};
use edge_tests::pg::TestDb;

const IDENTITIES: i32 = 1_000;

struct Options {
    rounds: usize,
    seconds: u64,
    clients: usize,
}

fn options() -> Options {
    let mut o = Options {
        rounds: 4,
        seconds: 10,
        clients: 4,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args
            .get(i + 1)
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|v| *v > 0);
        let Some(value) = value else {
            eprintln!(
                "usage: bench_capture [--rounds N] [--seconds N] [--clients N] (positive integers)"
            );
            std::process::exit(2);
        };
        match args[i].as_str() {
            "--rounds" => o.rounds = value as usize,
            "--seconds" => o.seconds = value,
            "--clients" => o.clients = value as usize,
            other => {
                eprintln!("unknown option {other}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    o
}

const IDENTIFY: &str = r#"\set i random(1, 1000)
\set v random(1, 1000000)
BEGIN;
UPDATE environments_trait SET string_value = :v::text, value_type = 'unicode' WHERE identity_id = :i AND trait_key = 't1';
UPDATE environments_trait SET string_value = :v::text, value_type = 'unicode' WHERE identity_id = :i AND trait_key = 't2';
UPDATE environments_trait SET string_value = :v::text, value_type = 'unicode' WHERE identity_id = :i AND trait_key = 't3';
UPDATE environments_trait SET string_value = :v::text, value_type = 'unicode' WHERE identity_id = :i AND trait_key = 't4';
COMMIT;
"#;

/// The core tables each script writes (their capture functions are swapped by the floor modes).
const TABLES: [&str; 2] = ["environments_trait", "features_featurestate"];

/// Puts the capture functions of [`TABLES`] in the state a mode measures, and back (`live`).
async fn set_functions(pool: &sqlx::PgPool, mode: Mode) {
    for table in TABLES {
        let sql = match mode {
            Mode::Paused => format!("SELECT edge.write_capture_function('{table}', false)"),
            Mode::InsertOnly => format!(
                "CREATE OR REPLACE FUNCTION edge.capture_{table}() RETURNS trigger LANGUAGE plpgsql \
                 SET search_path = pg_catalog, pg_temp AS $$ BEGIN \
                 INSERT INTO edge.change_log (table_name, op) VALUES ('{table}', TG_OP); \
                 RETURN NULL; END $$"
            ),
            _ => format!("SELECT edge.write_capture_function('{table}', true)"),
        };
        sqlx::query(&sql).execute(pool).await.unwrap();
    }
}

const TOGGLE: &str = r#"\set f random(1, 20)
BEGIN;
UPDATE features_featurestate SET enabled = NOT enabled, updated_at = now()
 WHERE id = (SELECT min(id) FROM features_featurestate) + :f - 1;
COMMIT;
"#;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Off,
    Paused,
    InsertOnly,
    On,
    OnIdleWriter,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Paused => "paused",
            Mode::InsertOnly => "insert-only",
            Mode::On => "on",
            Mode::OnIdleWriter => "on+idle-writer",
        }
    }
}

fn pgbench(url: &str, script: &std::path::Path, o: &Options, mode: Mode) -> f64 {
    let mut cmd = Command::new("pgbench");
    cmd.args(["-n", "-c", &o.clients.to_string(), "-j", "2", "-T"])
        .arg(o.seconds.to_string())
        .arg("-f")
        .arg(script)
        .arg(url);
    if mode == Mode::Off {
        cmd.env("PGOPTIONS", "-c session_replication_role=replica");
    }
    let out = cmd.output().unwrap_or_else(|e| {
        eprintln!("cannot run pgbench ({e}); install the PostgreSQL client tools (Debian: postgresql-client or postgresql-contrib)");
        std::process::exit(1);
    });
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        eprintln!(
            "pgbench failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::process::exit(1);
    }
    text.lines()
        .find_map(|l| l.trim().strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench's output: {text}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[tokio::main]
async fn main() {
    let o = options();
    let db = TestDb::new().await;
    let core = Core::new(db.pool.clone());
    let (_, project, env) = basic_project(&core, "benchCapture").await;
    for f in 0..20 {
        core.create_feature(project, &format!("f{f}"), "STANDARD", false, Val::str("v"))
            .await;
    }
    for i in 0..IDENTITIES {
        let id = core.create_identity(env, &format!("user-{i}")).await;
        for k in 1..=4 {
            core.set_trait(id, &format!("t{k}"), TraitVal::Str("0".into()))
                .await;
        }
    }
    // pgbench's ids: identities 1..=1000 in this fresh database.
    let first: i32 = sqlx::query_scalar("SELECT min(id) FROM environments_identity")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(first, 1, "a fresh database numbers identities from 1");
    // A libpq URL (sqlx's carries parameters pgbench does not know).
    let admin: sqlx::postgres::PgConnectOptions =
        edge_tests::pg::admin_url().parse().expect("a database URL");
    let libpq_url = format!(
        "postgres://{}@{}:{}/{}",
        admin.get_username(),
        admin.get_host(),
        admin.get_port(),
        db.name
    );
    let dir = std::env::temp_dir().join(format!("bench_capture_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let scripts = [("identify", IDENTIFY), ("toggle", TOGGLE)];
    for (name, text) in scripts {
        std::fs::write(dir.join(format!("{name}.sql")), text).unwrap();
    }
    println!(
        "machine: {}; {} clients, {} s per run, {} rounds, modes alternating",
        edge_tests::machine(),
        o.clients,
        o.seconds,
        o.rounds
    );
    let modes = [
        Mode::Off,
        Mode::Paused,
        Mode::InsertOnly,
        Mode::On,
        Mode::OnIdleWriter,
    ];
    for (name, _) in scripts {
        let script = dir.join(format!("{name}.sql"));
        // Warm-up of both sides, not counted.
        for mode in [Mode::Off, Mode::On] {
            let short = Options { seconds: 3, ..o };
            pgbench(&libpq_url, &script, &short, mode);
        }
        let mut tps: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
        for round in 0..o.rounds {
            // Alternate the order every round.
            let order: Vec<usize> = if round % 2 == 0 {
                (0..modes.len()).collect()
            } else {
                (0..modes.len()).rev().collect()
            };
            for m in order {
                sqlx::query("TRUNCATE edge.change_log")
                    .execute(&db.pool)
                    .await
                    .unwrap();
                set_functions(&db.pool, modes[m]).await;
                let holder = if modes[m] == Mode::OnIdleWriter {
                    let mut conn = db.pool.acquire().await.unwrap();
                    sqlx::query("SELECT pg_advisory_lock($1, $2)")
                        .bind(edge_writer::capture::listen::WAKE_LOCK.0)
                        .bind(edge_writer::capture::listen::WAKE_LOCK.1)
                        .execute(&mut *conn)
                        .await
                        .unwrap();
                    Some(conn)
                } else {
                    None
                };
                let t = pgbench(&libpq_url, &script, &o, modes[m]);
                set_functions(&db.pool, Mode::On).await;
                if let Some(mut conn) = holder {
                    sqlx::query("SELECT pg_advisory_unlock_all()")
                        .execute(&mut *conn)
                        .await
                        .unwrap();
                }
                tps[m].push(t);
            }
        }
        let off = median(tps[0].clone());
        for (m, mode) in modes.iter().enumerate() {
            let med = median(tps[m].clone());
            println!(
                "{name:9} capture {:15} median {:7.0} tps  (runs: {})  cost vs off: {:.2}x",
                mode.name(),
                med,
                tps[m]
                    .iter()
                    .map(|t| format!("{t:.0}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                off / med
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    db.drop_db().await;
}
