//! The one way core rows are read: from one snapshot, in one round trip.
//!
//! A document is projected from rows read in one REPEATABLE READ, READ ONLY transaction, so
//! every row comes from one snapshot, taken at the transaction's first statement.
//! [`fetch`] sends the statements of a read in one simple-protocol message (executions of
//! statements prepared once per connection, so Postgres does not plan them each time), wrapped in
//! `BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY` ... `COMMIT` unless the connection is
//! already in a transaction (one begun with [`begin`], for a caller that reads more than one
//! call's worth from one snapshot). The executions carry their one argument inline: callers
//! make it only from integers they hold as integers.

use futures::future::BoxFuture;
use sqlx::{Connection, PgConnection, Postgres, Transaction};

use crate::simple_query::sets as collect;
pub use crate::simple_query::ResultSets;

/// The statement that begins a snapshot transaction.
pub const BEGIN_SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";

/// Begins a snapshot transaction on `conn`, for reads that span several calls. Dropping it
/// rolls back.
pub async fn begin(conn: &mut PgConnection) -> Result<Transaction<'_, Postgres>, sqlx::Error> {
    conn.begin_with(BEGIN_SNAPSHOT).await
}

/// A statement executed by name in snapshot reads (`EXECUTE name(arg)`): prepared on a
/// connection the first time a read there finds it missing, and planned by Postgres once per
/// connection rather than on every read.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub name: &'static str,
    /// The type of its one parameter, `$1`.
    pub arg_type: &'static str,
    pub sql: String,
}

/// Runs `statements` in one message and returns their rows, a set per statement. Outside a
/// transaction, the statements run in a snapshot transaction of their own, begun and
/// committed in the same message. On an error that transaction is rolled back before the
/// error is returned, so the connection goes back to its pool clean. When the connection
/// lacks a statement of `prepared` (its first read, or after a `DISCARD`), they are prepared
/// and the read runs again.
pub fn fetch<'c>(
    conn: &'c mut PgConnection,
    statements: &'c [String],
    prepared: &'c [Prepared],
) -> BoxFuture<'c, Result<ResultSets, sqlx::Error>> {
    Box::pin(async move {
        if conn.is_in_transaction() {
            // A failed statement would abort the caller's transaction: prepare first.
            prepare(&mut *conn, prepared).await?;
            return fetch_once(conn, statements).await;
        }
        match fetch_once(&mut *conn, statements).await {
            Err(e) if is_missing_statement(&e) => {
                prepare(&mut *conn, prepared).await?;
                fetch_once(conn, statements).await
            }
            result => result,
        }
    })
}

/// `26000`: the prepared statement does not exist.
fn is_missing_statement(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("26000"))
}

/// Prepares those of `prepared` the connection lacks.
async fn prepare(conn: &mut PgConnection, prepared: &[Prepared]) -> Result<(), sqlx::Error> {
    let have: Vec<String> = sqlx::query_scalar("SELECT name FROM pg_prepared_statements")
        .fetch_all(&mut *conn)
        .await?;
    let missing: Vec<String> = prepared
        .iter()
        .filter(|p| !have.iter().any(|h| h == p.name))
        .map(|p| format!("PREPARE {}({}) AS {}", p.name, p.arg_type, p.sql))
        .collect();
    if !missing.is_empty() {
        collect(conn, &missing.join(";\n")).await?;
    }
    Ok(())
}

fn fetch_once<'c>(
    conn: &'c mut PgConnection,
    statements: &'c [String],
) -> BoxFuture<'c, Result<ResultSets, sqlx::Error>> {
    Box::pin(async move {
        let pause = crate::failpoint::snapshot_pause();
        let message = if pause.is_zero() {
            statements.join(";\n")
        } else {
            let sleep = format!(";\nSELECT pg_sleep({})\n;", pause.as_secs_f64());
            statements.join(&sleep)
        };
        let in_transaction = conn.is_in_transaction();
        let message = if in_transaction {
            message
        } else {
            format!("{BEGIN_SNAPSHOT};\n{message};\nCOMMIT")
        };
        let mut sets = match collect(&mut *conn, &message).await {
            Ok(sets) => sets,
            Err(e) if !in_transaction => {
                // The message stopped at the failed statement, inside the transaction it
                // began.
                if let Err(rollback) = sqlx::query("ROLLBACK").execute(&mut *conn).await {
                    tracing::debug!(error = %rollback, "rolling back a failed snapshot read");
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if !in_transaction {
            // The sets of BEGIN and COMMIT.
            sets.0.pop_front();
            sets.0.pop_back();
        }
        if !pause.is_zero() {
            // Every other set is a pause's.
            sets.0 = std::mem::take(&mut sets.0).into_iter().step_by(2).collect();
        }
        Ok(sets)
    })
}
