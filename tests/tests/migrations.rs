//! The writer's migrations apply and re-apply cleanly, add only schema `edge` and triggers,
//! and refuse a database without Flagsmith's core tables with a clear error.

use edge_tests::pg::TestDb;

// 20 tables feeding environment and API key documents, plus identities and traits.
const CAPTURED_TABLES: i64 = 22;

async fn trigger_count(db: &TestDb) -> i64 {
    db.scalar_i64("SELECT count(*) FROM pg_trigger WHERE tgname = 'edge_capture'")
        .await
}

#[tokio::test]
async fn migrations_apply_and_reapply_cleanly() {
    let db = TestDb::new().await;
    assert_eq!(trigger_count(&db).await, CAPTURED_TABLES);
    edge_writer::db::migrate(&db.pool)
        .await
        .expect("re-running is a no-op");
    assert_eq!(trigger_count(&db).await, CAPTURED_TABLES);

    // Dropping the writer's schema and migrating again restores it; the core tables are
    // untouched apart from the triggers.
    sqlx::raw_sql("DROP SCHEMA edge CASCADE")
        .execute(&db.pool)
        .await
        .unwrap();
    edge_writer::db::migrate(&db.pool)
        .await
        .expect("migrate after the schema was dropped");
    assert_eq!(trigger_count(&db).await, CAPTURED_TABLES);
    let public_tables = db
        .scalar_i64("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
        .await;
    assert_eq!(
        public_tables, 22,
        "only Flagsmith's core tables live in public"
    );
    let migrations_table = db
        .scalar_i64("SELECT count(*) FROM information_schema.tables WHERE table_name = '_sqlx_migrations' AND table_schema = 'edge'")
        .await;
    assert_eq!(migrations_table, 1);
    db.drop_db().await;
}

#[tokio::test]
async fn a_no_op_update_records_no_change() {
    let db = TestDb::new().await;
    let core = edge_tests::core::Core::new(db.pool.clone());
    let org = core.create_organisation("Acme").await;
    let before = db.scalar_i64("SELECT count(*) FROM edge.change_log").await;
    core.exec(&format!(
        "UPDATE organisations_organisation SET name = name WHERE id = {org}"
    ))
    .await;
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM edge.change_log").await,
        before
    );
    core.exec(&format!(
        "UPDATE organisations_organisation SET name = 'B' WHERE id = {org}"
    ))
    .await;
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM edge.change_log").await,
        before + 1
    );
    db.drop_db().await;
}

#[tokio::test]
async fn migrating_a_database_without_core_tables_fails_clearly() {
    let db = TestDb::new().await;
    sqlx::raw_sql("DROP SCHEMA edge CASCADE; DROP TABLE features_featurestatevalue CASCADE")
        .execute(&db.pool)
        .await
        .unwrap();
    let err = edge_writer::db::migrate(&db.pool)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("public.features_featurestatevalue does not exist"),
        "{err}"
    );
    db.drop_db().await;
}
