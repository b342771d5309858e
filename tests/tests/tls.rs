//! TLS to Postgres: the writer connects with `sslmode=verify-full` and a CA bundle (as to
//! RDS, with its CA bundle), and refuses a server whose certificate another CA issued or
//! that names another host.

use edge_tests::dynamo::TestTables;
use edge_tests::pg::{admin_url, TestDb};
use edge_tests::pg_tls::TlsFront;
use edge_tests::writer::writer_command;
use sqlx::postgres::PgConnectOptions;

async fn run(url: &str, tables: &TestTables, args: &[&str]) -> (i32, String) {
    let out = writer_command(url, tables)
        .args(args)
        .output()
        .await
        .expect("run the writer binary");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_connects_with_verify_full_and_refuses_a_server_it_cannot_verify() {
    let db = TestDb::new().await;
    let tables = TestTables::new().await;
    let admin: PgConnectOptions = admin_url().parse().unwrap();
    let front = TlsFront::start(format!("{}:{}", admin.get_host(), admin.get_port())).await;
    let user = admin.get_username();
    let url = |host: &str, mode: &str, ca: &std::path::Path| {
        format!(
            "postgres://{user}@{host}:{}/{}?sslmode={mode}&sslrootcert={}",
            front.port,
            db.name,
            ca.display()
        )
    };

    // Verified: the CA issued the certificate, and it names the host connected to.
    let (code, out) = run(
        &url("localhost", "verify-full", &front.ca),
        &tables,
        &["migrate"],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(
        &url("localhost", "verify-full", &front.ca),
        &tables,
        &["capture", "status"],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("capture: on"), "{out}");

    // Another CA: refused, and the error says why.
    let (code, out) = run(
        &url("localhost", "verify-full", &front.other_ca),
        &tables,
        &["capture", "status"],
    )
    .await;
    assert_ne!(code, 0, "{out}");
    assert!(
        out.to_lowercase().contains("certificate"),
        "the error names the certificate: {out}"
    );

    // The right CA but another name than the certificate's: refused under verify-full.
    let (code, out) = run(
        &url("127.0.0.1", "verify-full", &front.ca),
        &tables,
        &["capture", "status"],
    )
    .await;
    assert_ne!(code, 0, "{out}");

    // The front speaks TLS only: without it, nothing connects (so the runs above used TLS).
    let (code, out) = run(
        &url("localhost", "disable", &front.ca),
        &tables,
        &["capture", "status"],
    )
    .await;
    assert_ne!(code, 0, "{out}");
    drop(front);
    db.drop_db().await;
}
