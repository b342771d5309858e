//! Several statements sent as one simple-protocol message (one round trip; Postgres plans
//! each at every execution unless it executes a prepared one), and their rows, a set per
//! statement.

use futures::future::BoxFuture;
use futures::TryStreamExt;
use sqlx::postgres::PgRow;
use sqlx::{Either, FromRow, PgConnection, Postgres, Row};

/// Runs `statements` (one or more, `;`-separated) as one message; the rows of each, in order.
/// Boxed, so that the future's `Send` is proven here, once, rather than inferred through
/// every caller (the stream's lifetimes otherwise defeat the inference in spawned tasks).
pub fn sets<'c>(
    conn: &'c mut PgConnection,
    statements: &'c str,
) -> BoxFuture<'c, Result<ResultSets, sqlx::Error>> {
    Box::pin(async move {
        let mut sets = std::collections::VecDeque::new();
        let mut current = vec![];
        let mut stream = sqlx::raw_sql(statements).fetch_many(conn);
        while let Some(step) = stream.try_next().await? {
            match step {
                // The end of one statement.
                Either::Left(_done) => sets.push_back(std::mem::take(&mut current)),
                Either::Right(row) => current.push(row),
            }
        }
        Ok(ResultSets(sets))
    })
}

/// The rows of the statements of one message, a set per statement, taken in order.
pub struct ResultSets(pub(crate) std::collections::VecDeque<Vec<PgRow>>);

impl ResultSets {
    /// Every row of every statement, in order.
    pub fn into_rows(self) -> Vec<PgRow> {
        self.0.into_iter().flatten().collect()
    }

    fn rows(&mut self) -> Result<Vec<PgRow>, sqlx::Error> {
        self.0.pop_front().ok_or_else(|| {
            sqlx::Error::Protocol("a statement of the message returned no result".into())
        })
    }

    /// The next statement's rows, decoded.
    pub fn take<T: for<'r> FromRow<'r, PgRow>>(&mut self) -> Result<Vec<T>, sqlx::Error> {
        self.rows()?.iter().map(T::from_row).collect()
    }

    /// The next statement's single value (first column of its first row).
    pub fn scalar<T>(&mut self) -> Result<T, sqlx::Error>
    where
        T: for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
    {
        self.rows()?
            .first()
            .ok_or(sqlx::Error::RowNotFound)?
            .try_get(0)
    }
}
