//! Capture inside someone else's database: the kill switch and the gap backfill, the roles,
//! installing the triggers without stalling the core, and waking an idle writer. Real
//! Postgres (roles included), real DynamoDB Local, the real `writer` binary for the commands.

use std::time::Duration;

use edge_tests::core::{basic_project, Core, TraitVal, Val};
use edge_tests::dynamo::{document_of, TestTables};
use edge_tests::identities::{assert_same_items, expected_identity_items, stored_identity_items};
use edge_tests::pg::TestDb;
use edge_tests::wait;
use edge_tests::writer::{writer_command, InProcessWriter, WriterProcess};
use edge_writer::capture::control::{self, LockPolicy};
use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgPool};

use edge_tests::setup;

async fn flag(tables: &TestTables, api_key: &str, feature: &str) -> Option<(bool, Value)> {
    let doc = document_of(&tables.environment(api_key).await?);
    let fs = doc["feature_states"]
        .as_array()?
        .iter()
        .find(|fs| fs["feature"]["name"] == feature)?
        .clone();
    Some((fs["enabled"].as_bool()?, fs["feature_state_value"].clone()))
}

async fn wait_flag(tables: &TestTables, api_key: &str, feature: &str, want: (bool, Value)) {
    wait::until(
        &format!("{api_key}.{feature} == {want:?}"),
        wait::DEFAULT,
        || async { (flag(tables, api_key, feature).await? == want).then_some(()) },
    )
    .await
}

/// Runs a `writer` subcommand; returns (exit code, stdout + stderr).
async fn writer_cli(db: &TestDb, tables: &TestTables, args: &[&str]) -> (i32, String) {
    let out = writer_command(&db.url, tables)
        .args(args)
        .output()
        .await
        .expect("run the writer binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Item 1: Flagsmith goes on writing while capture is paused (even with the capture path
/// broken for its role), the writer reports the gap, and `writer backfill --gap` after
/// resuming restores every document, including a change whose transaction was still open
/// when capture resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_capture_lets_flagsmith_write_and_the_gap_backfill_restores_every_document() {
    let (db, tables, core) = setup().await;
    let (_, project, env) = basic_project(&core, "envPause").await;
    let feature = core
        .create_feature(project, "banner", "STANDARD", false, Val::str("old"))
        .await;
    let alice = core.create_identity(env, "alice").await;
    core.set_trait(alice, "plan", TraitVal::Str("free".into()))
        .await;
    let writer = InProcessWriter::start_on(&db.pool, &tables, 2);
    wait_flag(&tables, "envPause", "banner", (false, Value::from("old"))).await;
    wait::writer_idle(&db.pool, wait::DEFAULT).await;

    // The capture path breaks for Flagsmith's role: without the pause, its writes fail.
    let app = Role::create(&db, "flagsmith_app").await;
    app.grant_core_dml(&db).await;
    let app_pool = app.pool(&db).await;
    let refused =
        sqlx::query("UPDATE features_featurestate SET enabled = true WHERE feature_id = $1")
            .bind(feature)
            .execute(&app_pool)
            .await
            .expect_err("a write fires the trigger, which the role may not run");
    assert!(
        refused
            .to_string()
            .contains("permission denied for schema edge"),
        "{refused}"
    );

    let (code, out) = writer_cli(&db, &tables, &["capture", "pause", "--reason", "test"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("capture paused"), "{out}");

    // Flagsmith-shaped writes, by the role the capture path refuses: they go on.
    let log_before = db.scalar_i64("SELECT count(*) FROM edge.change_log").await;
    sqlx::query("UPDATE features_featurestate SET enabled = true WHERE feature_id = $1 AND identity_id IS NULL")
        .bind(feature)
        .execute(&app_pool)
        .await
        .expect("Flagsmith writes while capture is paused");
    sqlx::query(
        "UPDATE features_featurestatevalue SET string_value = 'new'
          WHERE feature_state_id IN (SELECT id FROM features_featurestate WHERE feature_id = $1)",
    )
    .bind(feature)
    .execute(&app_pool)
    .await
    .expect("Flagsmith writes while capture is paused");
    sqlx::query("UPDATE environments_trait SET string_value = 'pro' WHERE identity_id = $1")
        .bind(alice)
        .execute(&app_pool)
        .await
        .expect("Flagsmith writes while capture is paused");
    let bob: i32 = sqlx::query_scalar(
        "INSERT INTO environments_identity (identifier, created_date, environment_id, system_traits)
         VALUES ('bob', now(), $1, '{}') RETURNING id",
    )
    .bind(env)
    .fetch_one(&app_pool)
    .await
    .expect("Flagsmith creates an identity while capture is paused");
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM edge.change_log").await,
        log_before,
        "nothing is captured while paused"
    );

    // The writer says so, and so does the status command (exit code 2).
    let (code, out) = writer_cli(&db, &tables, &["capture", "status"]).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("PAUSED") && out.contains("gap"), "{out}");

    // A transaction that changes a row while paused and commits only after the resume: the
    // gap backfill must wait for it, or its change is in neither the log nor the backfill.
    let mut straggler = db.pool.begin().await.unwrap();
    sqlx::query("UPDATE environments_trait SET string_value = 'enterprise' WHERE identity_id = $1")
        .bind(alice)
        .execute(&mut *straggler)
        .await
        .unwrap();

    let (code, out) = writer_cli(&db, &tables, &["capture", "resume"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("backfill --gap"), "{out}");

    let backfill = {
        let mut cmd = writer_command(&db.url, &tables);
        cmd.args(["backfill", "--gap", "--concurrency=4"]);
        tokio::spawn(async move { cmd.output().await.expect("run writer backfill --gap") })
    };
    // The backfill waits for the straggler: nothing is closed while it is open.
    wait::until_ok("the backfill to wait for the open transaction", wait::DEFAULT, || async {
        let sessions: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT application_name, query FROM pg_stat_activity WHERE datname = current_database()",
        )
        .fetch_all(&db.pool)
        .await
        .map_err(|e| e.to_string())?;
        if backfill.is_finished() {
            return Err("the backfill ended before the transaction did".into());
        }
        sessions
            .iter()
            .any(|(_, q)| q.as_deref().is_some_and(|q| q.contains("open_at_resume")))
            .then_some(())
            .ok_or_else(|| format!("{sessions:?}"))
    })
    .await;
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM edge.capture_gap WHERE backfilled_at IS NOT NULL")
            .await,
        0
    );
    straggler.commit().await.unwrap();
    let out = backfill.await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("capture gaps closed: 1"), "{text}");

    // Every document as core has it now.
    wait_flag(&tables, "envPause", "banner", (true, Value::from("new"))).await;
    wait::writer_idle(&db.pool, wait::DEFAULT).await;
    let expected = expected_identity_items(&db.pool, &[env]).await;
    let stored = stored_identity_items(&tables).await;
    assert_same_items(&stored, &expected);
    let alice_item = stored
        .values()
        .find(|d| d["identifier"] == "alice")
        .expect("alice's item");
    assert_eq!(
        alice_item["identity_traits"][0]["trait_value"],
        "enterprise"
    );
    assert!(
        stored.values().any(|d| d["identifier"] == "bob"),
        "bob (created while paused, id {bob}) reached the edge"
    );

    let (code, out) = writer_cli(&db, &tables, &["capture", "status"]).await;
    assert_eq!(code, 0, "{out}");

    writer.stop().await;
    drop(app_pool);
    app.drop_role(db).await;
}

/// Item 2: Flagsmith's role needs only `--core-role`'s grants to write, and the writer
/// replicates running as a role that owns no core table (so cannot alter one).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_writer_runs_as_its_own_role_and_flagsmiths_role_gets_only_what_capture_needs() {
    let (db, tables, _core) = setup().await;
    let app = Role::create(&db, "flagsmith_app").await;
    app.grant_core_dml(&db).await;
    let writer_role = Role::create(&db, "edge_writer").await;
    let (code, out) = writer_cli(
        &db,
        &tables,
        &[
            "migrate",
            &format!("--core-role={}", app.name),
            &format!("--writer-role={}", writer_role.name),
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");

    // Flagsmith, as its own role, writes core rows.
    let app_pool = app.pool(&db).await;
    let app_core = Core::new(app_pool.clone());
    let (_, project, env) = basic_project(&app_core, "envRoles").await;
    let feature = app_core
        .create_feature(project, "dark", "STANDARD", true, Val::str("a"))
        .await;
    let carol = app_core.create_identity(env, "carol").await;
    app_core.set_trait(carol, "tier", TraitVal::Int(3)).await;
    // ... and can neither read nor change the writer's state.
    for sql in [
        "SELECT count(*) FROM edge.change_log",
        "SELECT count(*) FROM edge.document",
        "DELETE FROM edge.pending",
    ] {
        let e = sqlx::query(sql)
            .execute(&app_pool)
            .await
            .expect_err("Flagsmith's role has no business in the writer's state");
        assert!(e.to_string().contains("permission denied"), "{sql}: {e}");
    }

    // The writer daemon, as its role.
    let writer_url = writer_role.url(&db);
    let writer = WriterProcess::spawn(&writer_url, &tables, &[]);
    wait_flag(&tables, "envRoles", "dark", (true, Value::from("a"))).await;
    app_core.set_flag(env, feature, false, Val::str("b")).await;
    wait_flag(&tables, "envRoles", "dark", (false, Value::from("b"))).await;
    wait::until("carol's identity item", wait::DEFAULT, || async {
        let stored = stored_identity_items(&tables).await;
        stored
            .values()
            .any(|d| d["identifier"] == "carol" && d["identity_traits"][0]["trait_value"] == 3)
            .then_some(())
    })
    .await;

    // The writer's role cannot alter, drop or re-trigger a core table.
    let writer_pool = writer_role.pool(&db).await;
    for sql in [
        "ALTER TABLE public.features_feature ADD COLUMN x int",
        "DROP TRIGGER edge_capture ON public.features_feature",
        "TRUNCATE public.features_feature",
    ] {
        let e = sqlx::query(sql)
            .execute(&writer_pool)
            .await
            .expect_err("the writer's role owns no core table");
        let text = e.to_string();
        assert!(
            text.contains("must be owner") || text.contains("permission denied"),
            "{sql}: {text}"
        );
    }
    writer.terminate().await;
    drop(writer_pool);
    drop(app_pool);
    let (app_name, writer_name) = (app.name.clone(), writer_role.name.clone());
    let admin = admin_pool().await;
    db.drop_db().await;
    for name in [app_name, writer_name] {
        sqlx::query(&format!("DROP ROLE IF EXISTS {name}"))
            .execute(&admin)
            .await
            .unwrap();
    }
}

/// Item 3: installing the triggers never queues Flagsmith's writes behind a lock for longer
/// than the lock timeout, and a busy table is retried and then reported with its holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installing_capture_gives_way_to_a_busy_table_and_names_the_holder() {
    let db = TestDb::new().await;
    // Take capture off one table, then hold a write lock on it in an open transaction.
    sqlx::query("DROP TRIGGER edge_capture ON public.features_feature")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut holder = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE features_feature IN ROW EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let holder_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *holder)
        .await
        .unwrap();

    let policy = LockPolicy {
        lock_timeout: Duration::from_millis(100),
        lock_wait: Duration::from_secs(2),
    };
    let err = control::install_all(&db.pool, policy)
        .await
        .expect_err("the table stays locked for longer than the wait");
    let text = err.to_string();
    assert!(text.contains("public.features_feature"), "{text}");
    assert!(text.contains(&format!("pid {holder_pid}")), "{text}");

    // Meanwhile Flagsmith's writes to every other table went on, and the other tables were
    // installed (one table per transaction, never all at once).
    let status = control::status(&db.pool).await.unwrap();
    assert_eq!(
        status.tables_not_installed,
        vec!["features_feature".to_string()]
    );

    holder.commit().await.unwrap();
    let report = control::install_all(&db.pool, policy).await.unwrap();
    assert_eq!(report.installed, vec!["features_feature".to_string()]);
    let status = control::status(&db.pool).await.unwrap();
    assert!(status.tables_not_installed.is_empty());
    db.drop_db().await;
}

/// The wake-lock handshake: an idle writer is woken by the commit (not by its poll, set
/// here far beyond the test's deadline), also for a transaction that was already open when
/// the writer went idle and so did not notify.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_writer_is_woken_by_commits_without_waiting_for_its_poll() {
    let (db, tables, core) = setup().await;
    let (_, project, env) = basic_project(&core, "envWake").await;
    let feature = core
        .create_feature(project, "wake", "STANDARD", false, Val::str("0"))
        .await;

    // A transaction open before any writer runs: it takes the wake lock shared, so it will
    // not notify when it commits.
    let mut open = db.pool.begin().await.unwrap();
    edge_tests::core::update_state(
        &mut open,
        core.default_state(env, feature).await,
        true,
        &Val::str("open"),
    )
    .await;

    let mut cmd = writer_command(&db.url, &tables);
    cmd.args([
        "run",
        "--workers=2",
        "--poll-interval-ms=600000",
        "--http-addr=off",
    ])
    .stdin(std::process::Stdio::null())
    .kill_on_drop(true);
    let mut writer = cmd.spawn().expect("start the writer");

    // The writer's first drain (the project's own changes) and going idle.
    wait_flag(&tables, "envWake", "wake", (false, Value::from("0"))).await;
    open.commit().await.unwrap();
    wait_flag(&tables, "envWake", "wake", (true, Value::from("open"))).await;

    // Idle now, holding the wake lock: a commit notifies.
    wait::until(
        "the writer to hold the wake lock",
        wait::DEFAULT,
        || async {
            let held: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
               AND mode = 'ExclusiveLock' AND classid = 1701078885 AND objid = 1667330164
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .fetch_one(&db.pool)
            .await
            .ok()?;
            (held == 1).then_some(())
        },
    )
    .await;
    core.set_flag(env, feature, false, Val::str("notified"))
        .await;
    wait_flag(&tables, "envWake", "wake", (false, Value::from("notified"))).await;

    writer.kill().await.ok();
    db.drop_db().await;
}

/// A throwaway login role (roles are cluster-wide: unique name, dropped at the end).
struct Role {
    name: String,
}

impl Role {
    async fn create(db: &TestDb, prefix: &str) -> Role {
        let name = format!("{prefix}_{}", &db.name[db.name.len() - 8..]);
        sqlx::query(&format!("CREATE ROLE {name} LOGIN"))
            .execute(&db.pool)
            .await
            .expect("create a role");
        Role { name }
    }

    /// What Flagsmith's application role has on its own tables: reads and writes.
    async fn grant_core_dml(&self, db: &TestDb) {
        for sql in [
            format!("GRANT USAGE ON SCHEMA public TO {}", self.name),
            format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}",
                self.name
            ),
            format!(
                "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}",
                self.name
            ),
        ] {
            sqlx::query(&sql).execute(&db.pool).await.unwrap();
        }
    }

    fn url(&self, db: &TestDb) -> String {
        let options: PgConnectOptions = db.url.parse().unwrap();
        options.username(&self.name).to_url_lossy().to_string()
    }

    async fn pool(&self, db: &TestDb) -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.url(db))
            .await
            .expect("connect as the role")
    }

    async fn drop_role(self, db: TestDb) {
        let admin = admin_pool().await;
        db.drop_db().await;
        sqlx::query(&format!("DROP ROLE IF EXISTS {}", self.name))
            .execute(&admin)
            .await
            .unwrap();
    }
}

async fn admin_pool() -> PgPool {
    let options: PgConnectOptions = edge_tests::pg::admin_url().parse().unwrap();
    let conn = options.clone().connect().await.unwrap();
    conn.close().await.ok();
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap()
}

/// Item 4: the writer's sessions cannot hold Flagsmith's database hostage: a runaway
/// statement is cancelled (and classified as transient, so retried), and a session left
/// idle inside a transaction is ended by the server, releasing its locks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writers_sessions_have_statement_and_idle_transaction_timeouts() {
    use edge_writer::db::{connect, connect_with_limits, SessionLimits};
    use edge_writer::failure_policy::{classify_sqlx, FailureKind};
    let db = TestDb::new().await;
    let defaults = connect(&db.url, 1).await.unwrap();
    let (statement, idle): (String, String) = sqlx::query_as(
        "SELECT current_setting('statement_timeout'), current_setting('idle_in_transaction_session_timeout')",
    )
    .fetch_one(&defaults)
    .await
    .unwrap();
    assert_eq!((statement.as_str(), idle.as_str()), ("1min", "2min"));
    defaults.close().await;

    let limits = SessionLimits {
        statement_timeout: Duration::from_millis(300),
        idle_in_transaction_timeout: Duration::from_millis(500),
    };
    let pool = connect_with_limits(&db.url, 1, limits).await.unwrap();
    let e = sqlx::query("SELECT pg_sleep(30)")
        .execute(&pool)
        .await
        .expect_err("cancelled by statement_timeout");
    assert_eq!(classify_sqlx(&e), FailureKind::Transient, "{e}");

    let mut tx = pool.begin().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    sqlx::query("SELECT 1 FROM features_feature FOR UPDATE")
        .execute(&mut *tx)
        .await
        .unwrap();
    wait::until(
        "the idle transaction's session to be ended",
        wait::DEFAULT,
        || async {
            let alive: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
                    .bind(pid)
                    .fetch_one(&db.pool)
                    .await
                    .ok()?;
            (alive == 0).then_some(())
        },
    )
    .await;
    assert!(sqlx::query("SELECT 1").execute(&mut *tx).await.is_err());
    drop(tx);
    pool.close().await;
    db.drop_db().await;
}

/// What a row trigger records for an UPDATE: the new key columns always, the old ones only
/// when a key column changed (a row that moved leaves documents that must be re-projected;
/// a toggled flag does not), and nothing for an UPDATE that changed nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_record_the_old_keys_only_when_a_key_column_changed() {
    let db = TestDb::new().await;
    let core = Core::new(db.pool.clone());
    let (_, project, env) = basic_project(&core, "oldKeys").await;
    let feature = core
        .create_feature(project, "f", "STANDARD", false, Val::str("v"))
        .await;
    let state = core.default_state(env, feature).await;
    let identity = core.create_identity(env, "alice").await;
    core.exec("TRUNCATE edge.change_log").await;
    for sql in [
        // non-key columns only
        format!("UPDATE features_featurestate SET enabled = NOT enabled WHERE id = {state}"),
        format!("UPDATE environments_identity SET created_date = created_date + interval '1 s' WHERE id = {identity}"),
        // a key column
        format!("UPDATE environments_identity SET identifier = 'bob' WHERE id = {identity}"),
        // nothing at all
        format!("UPDATE features_featurestate SET enabled = enabled WHERE id = {state}"),
    ] {
        core.exec(&sql).await;
    }
    let rows: Vec<(String, Value, Option<Value>)> =
        sqlx::query_as("SELECT table_name, new_keys, old_keys FROM edge.change_log ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        rows.len(),
        3,
        "one row per UPDATE that changed something: {rows:?}"
    );
    assert_eq!(rows[0].0, "features_featurestate");
    assert_eq!(rows[0].1["id"], state);
    assert_eq!(rows[0].2, None, "a toggle moves no key");
    assert_eq!(rows[1].0, "environments_identity");
    assert_eq!(rows[1].2, None, "created_date is not a key column");
    assert_eq!(rows[2].1["identifier"], "bob");
    assert_eq!(
        rows[2].2.as_ref().map(|o| o["identifier"].clone()),
        Some(Value::from("alice")),
        "a renamed identity records its old identifier"
    );
    db.drop_db().await;
}
