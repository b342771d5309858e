//! `writer verify`'s staging: what Postgres expects, what a region holds and the ledger, each
//! reduced to a few dozen bytes per item and kept in temporary tables of one session, so that
//! the comparison is a join in Postgres streamed back key by key, and the writer's memory does
//! not grow with the number of items.
//!
//! The session is the stage's own (detached from the pool): its temporary tables vanish with
//! it, and two runs never see each other's. The queued documents and the write times of
//! `edge.*` are copied when the stage opens, so that the whole run compares against one
//! moment of them, as the scans are.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::{Connection, PgConnection, PgPool};

/// One expected item: (item key, document, content digest).
pub type ExpectedRow = (Box<str>, Box<str>, [u8; 32]);

/// One stored item, reduced: (item key, version, owner, content digest, why corrupted).
pub type ObservedRow = (
    Box<str>,
    Option<i64>,
    Option<Box<str>>,
    Option<[u8; 32]>,
    Option<Box<str>>,
);

/// One ledger entry: (item key, region, version, removed, recorded at (ms), owner).
pub type LedgerRow = (Box<str>, Box<str>, i64, bool, i64, Box<str>);

/// Everything staged about one item key, for one region.
#[derive(Debug, sqlx::FromRow)]
pub struct StagedKey {
    pub item_key: String,
    pub expected_doc: Option<String>,
    pub expected_hash: Option<Vec<u8>>,
    pub observed: bool,
    pub observed_version: Option<i64>,
    pub observed_doc: Option<String>,
    pub observed_hash: Option<Vec<u8>>,
    pub observed_corrupted: Option<String>,
    /// This region's ledger entry.
    pub ack: Option<i64>,
    /// The newest version any region acknowledged as present.
    pub newest_ack: Option<i64>,
    pub intent_version: Option<i64>,
    pub intent_recorded_at_ms: Option<i64>,
    pub intent_doc: Option<String>,
    pub expected_in_flight: bool,
    pub owner_in_flight: bool,
    pub written_at: Option<DateTime<Utc>>,
}

pub struct Stage {
    conn: PgConnection,
}

const CREATE: [&str; 6] = [
    // The comparison is one statement that streams every key: its time grows with the
    // tables, and this session runs nothing else.
    "SET statement_timeout = 0",
    "CREATE TEMPORARY TABLE verify_expected (
         item_key text PRIMARY KEY, doc_key text NOT NULL, hash bytea NOT NULL)",
    "CREATE TEMPORARY TABLE verify_observed (
         item_key text PRIMARY KEY, version bigint, doc_key text, hash bytea, corrupted text)",
    "CREATE TEMPORARY TABLE verify_ledger (
         item_key text NOT NULL, region text NOT NULL, version bigint NOT NULL,
         removed boolean NOT NULL, recorded_at_ms bigint NOT NULL, doc_key text NOT NULL,
         PRIMARY KEY (item_key, region))",
    "CREATE TEMPORARY TABLE verify_in_flight AS
         SELECT DISTINCT doc_key FROM edge.pending",
    "CREATE TEMPORARY TABLE verify_written AS
         SELECT doc_key, written_at FROM edge.document WHERE written_at IS NOT NULL",
];

impl Stage {
    /// A session of its own with empty stage tables, and the queued documents and write
    /// times of this moment.
    pub async fn open(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let mut conn = pool.acquire().await?.detach();
        for statement in CREATE {
            sqlx::query(statement).execute(&mut conn).await?;
        }
        sqlx::query("ANALYZE pg_temp.verify_in_flight, pg_temp.verify_written")
            .execute(&mut conn)
            .await?;
        Ok(Self { conn })
    }

    /// A session of its own with empty stage tables, and the given queued documents and write
    /// times rather than those of `edge.*` (to compare a snapshot made elsewhere).
    pub async fn open_given(
        pool: &PgPool,
        in_flight: &[String],
        written: &[(String, DateTime<Utc>)],
    ) -> Result<Self, sqlx::Error> {
        let mut conn = pool.acquire().await?.detach();
        for statement in &CREATE[..4] {
            sqlx::query(statement).execute(&mut conn).await?;
        }
        sqlx::query("CREATE TEMPORARY TABLE verify_in_flight (doc_key text PRIMARY KEY)")
            .execute(&mut conn)
            .await?;
        sqlx::query(
            "CREATE TEMPORARY TABLE verify_written (doc_key text PRIMARY KEY, written_at timestamptz)",
        )
        .execute(&mut conn)
        .await?;
        sqlx::query(
            "INSERT INTO pg_temp.verify_in_flight SELECT DISTINCT * FROM UNNEST($1::text[])",
        )
        .bind(in_flight)
        .execute(&mut conn)
        .await?;
        let (docs, times): (Vec<&str>, Vec<DateTime<Utc>>) =
            written.iter().map(|(d, t)| (d.as_str(), *t)).unzip();
        sqlx::query(
            "INSERT INTO pg_temp.verify_written SELECT * FROM UNNEST($1::text[], $2::timestamptz[])",
        )
        .bind(docs)
        .bind(times)
        .execute(&mut conn)
        .await?;
        Ok(Self { conn })
    }

    /// Adds expected items; an item key staged again takes the later document.
    pub async fn add_expected(&mut self, rows: &[ExpectedRow]) -> Result<(), sqlx::Error> {
        let rows = last_of_each(rows, |r| &r.0);
        let keys: Vec<&str> = rows.iter().map(|r| &*r.0).collect();
        let docs: Vec<&str> = rows.iter().map(|r| &*r.1).collect();
        let hashes: Vec<&[u8]> = rows.iter().map(|r| &r.2[..]).collect();
        sqlx::query(
            "INSERT INTO pg_temp.verify_expected (item_key, doc_key, hash)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[])
             ON CONFLICT (item_key) DO UPDATE SET doc_key = EXCLUDED.doc_key, hash = EXCLUDED.hash",
        )
        .bind(keys)
        .bind(docs)
        .bind(hashes)
        .execute(&mut self.conn)
        .await?;
        Ok(())
    }

    /// Adds one region's items (see [`Stage::clear_observed`]).
    pub async fn add_observed(&mut self, rows: &[ObservedRow]) -> Result<(), sqlx::Error> {
        let rows = last_of_each(rows, |r| &r.0);
        let keys: Vec<&str> = rows.iter().map(|r| &*r.0).collect();
        let versions: Vec<Option<i64>> = rows.iter().map(|r| r.1).collect();
        let docs: Vec<Option<&str>> = rows.iter().map(|r| r.2.as_deref()).collect();
        let hashes: Vec<Option<&[u8]>> =
            rows.iter().map(|r| r.3.as_ref().map(|h| &h[..])).collect();
        let corrupted: Vec<Option<&str>> = rows.iter().map(|r| r.4.as_deref()).collect();
        sqlx::query(
            "INSERT INTO pg_temp.verify_observed (item_key, version, doc_key, hash, corrupted)
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::bytea[], $5::text[])
             ON CONFLICT (item_key) DO UPDATE SET version = EXCLUDED.version,
                 doc_key = EXCLUDED.doc_key, hash = EXCLUDED.hash, corrupted = EXCLUDED.corrupted",
        )
        .bind(keys)
        .bind(versions)
        .bind(docs)
        .bind(hashes)
        .bind(corrupted)
        .execute(&mut self.conn)
        .await?;
        Ok(())
    }

    /// Adds ledger entries; one per item and region, the later one kept.
    pub async fn add_ledger(&mut self, rows: &[LedgerRow]) -> Result<(), sqlx::Error> {
        let rows = last_of_each(rows, |r| (&r.0, &r.1));
        let keys: Vec<&str> = rows.iter().map(|r| &*r.0).collect();
        let regions: Vec<&str> = rows.iter().map(|r| &*r.1).collect();
        let versions: Vec<i64> = rows.iter().map(|r| r.2).collect();
        let removed: Vec<bool> = rows.iter().map(|r| r.3).collect();
        let recorded: Vec<i64> = rows.iter().map(|r| r.4).collect();
        let docs: Vec<&str> = rows.iter().map(|r| &*r.5).collect();
        sqlx::query(
            "INSERT INTO pg_temp.verify_ledger
                 (item_key, region, version, removed, recorded_at_ms, doc_key)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::boolean[],
                                  $5::bigint[], $6::text[])
             ON CONFLICT (item_key, region) DO UPDATE SET version = EXCLUDED.version,
                 removed = EXCLUDED.removed, recorded_at_ms = EXCLUDED.recorded_at_ms,
                 doc_key = EXCLUDED.doc_key",
        )
        .bind(keys)
        .bind(regions)
        .bind(versions)
        .bind(removed)
        .bind(recorded)
        .bind(docs)
        .execute(&mut self.conn)
        .await?;
        Ok(())
    }

    /// Distinct expected items staged.
    pub async fn expected_count(&mut self) -> Result<usize, sqlx::Error> {
        self.count("SELECT count(*) FROM pg_temp.verify_expected")
            .await
    }

    /// Items of the region staged.
    pub async fn observed_count(&mut self) -> Result<usize, sqlx::Error> {
        self.count("SELECT count(*) FROM pg_temp.verify_observed")
            .await
    }

    /// Documents queued when the stage opened.
    pub async fn in_flight_count(&mut self) -> Result<usize, sqlx::Error> {
        self.count("SELECT count(*) FROM pg_temp.verify_in_flight")
            .await
    }

    async fn count(&mut self, sql: &str) -> Result<usize, sqlx::Error> {
        let n: i64 = sqlx::query_scalar(sql).fetch_one(&mut self.conn).await?;
        Ok(n as usize)
    }

    /// Empties the region stage, for the next region.
    pub async fn clear_observed(&mut self) -> Result<(), sqlx::Error> {
        sqlx::query("TRUNCATE pg_temp.verify_observed")
            .execute(&mut self.conn)
            .await?;
        Ok(())
    }

    /// Every key expected, held by the staged region or with a delete intent, with all that
    /// is staged about it, handed to `each` in no particular order. `intent_region` is the
    /// ledger's region name of delete intents.
    pub async fn for_each_key(
        &mut self,
        region: &str,
        intent_region: &str,
        mut each: impl FnMut(StagedKey),
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "ANALYZE pg_temp.verify_expected, pg_temp.verify_observed, pg_temp.verify_ledger",
        )
        .execute(&mut self.conn)
        .await?;
        let mut rows = sqlx::query_as::<_, StagedKey>(
            "WITH keys AS (
                 SELECT item_key FROM pg_temp.verify_expected
                 UNION SELECT item_key FROM pg_temp.verify_observed
                 UNION SELECT item_key FROM pg_temp.verify_ledger WHERE region = $2),
             newest AS (
                 SELECT item_key, max(version) AS version FROM pg_temp.verify_ledger
                  WHERE region <> $2 AND NOT removed GROUP BY item_key)
             SELECT k.item_key,
                    e.doc_key AS expected_doc, e.hash AS expected_hash,
                    o.item_key IS NOT NULL AS observed,
                    o.version AS observed_version, o.doc_key AS observed_doc,
                    o.hash AS observed_hash, o.corrupted AS observed_corrupted,
                    a.version AS ack, n.version AS newest_ack,
                    i.version AS intent_version, i.recorded_at_ms AS intent_recorded_at_ms,
                    i.doc_key AS intent_doc,
                    EXISTS (SELECT 1 FROM pg_temp.verify_in_flight f WHERE f.doc_key = e.doc_key)
                        AS expected_in_flight,
                    EXISTS (SELECT 1 FROM pg_temp.verify_in_flight f WHERE f.doc_key = o.doc_key)
                        AS owner_in_flight,
                    w.written_at
               FROM keys k
               LEFT JOIN pg_temp.verify_expected e ON e.item_key = k.item_key
               LEFT JOIN pg_temp.verify_observed o ON o.item_key = k.item_key
               LEFT JOIN pg_temp.verify_ledger a ON a.item_key = k.item_key AND a.region = $1
               LEFT JOIN pg_temp.verify_ledger i ON i.item_key = k.item_key AND i.region = $2
               LEFT JOIN newest n ON n.item_key = k.item_key
               LEFT JOIN pg_temp.verify_written w ON w.doc_key = e.doc_key",
        )
        .bind(region)
        .bind(intent_region)
        .fetch(&mut self.conn);
        while let Some(row) = rows.try_next().await? {
            each(row);
        }
        Ok(())
    }

    /// Ends the session, and its tables with it.
    pub async fn close(self) -> Result<(), sqlx::Error> {
        self.conn.close().await
    }
}

/// The rows with each key once, its last occurrence kept (a later write of the same key wins,
/// as it would in a map).
fn last_of_each<'a, T, K: Eq + std::hash::Hash>(
    rows: &'a [T],
    key: impl Fn(&'a T) -> K,
) -> Vec<&'a T> {
    let mut seen = std::collections::HashSet::with_capacity(rows.len());
    let mut out: Vec<&T> = rows.iter().rev().filter(|r| seen.insert(key(r))).collect();
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::last_of_each;

    #[test]
    fn a_key_staged_twice_in_one_batch_keeps_its_last_row() {
        let rows = [("a", 1), ("b", 2), ("a", 3)];
        let kept: Vec<_> = last_of_each(&rows, |r| r.0).into_iter().copied().collect();
        assert_eq!(kept, vec![("b", 2), ("a", 3)]);
    }
}
