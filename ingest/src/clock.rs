//! Trait clocks and identity tombstones (`edge.trait_clock`, `edge.identity_tombstone`): the
//! time of the last write of each trait from either side, which the merge rule compares.
//!
//! Core changes are recorded by the writer when it resolves the change log (the capture
//! transaction), from the captured key columns of `environments_trait` and
//! `environments_identity`; changes that ingestion made (origin `edge`) are not, ingestion
//! records those itself with the edge write's time.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use edge_documents::model::TraitValue;
use serde_json::{json, Value};
use sqlx::PgConnection;

use crate::merge::{trait_from_columns, trait_from_json, trait_json, Origin, TraitClock};

/// How long the values before core changes are kept for echo detection.
const RECENT_KEPT: &str = "10 minutes";

/// A core change of one trait, from a captured `environments_trait` row.
#[derive(Debug, Clone, PartialEq)]
pub struct CoreTraitChange {
    pub identity_id: i32,
    pub trait_key: String,
    pub at: DateTime<Utc>,
    /// The value before the change (`None`: the trait did not exist).
    pub before: Option<TraitValue>,
}

fn int(keys: &Value, name: &str) -> Option<i32> {
    keys.get(name)?.as_i64().and_then(|v| i32::try_from(v).ok())
}

fn value_of(keys: &Value) -> Option<TraitValue> {
    trait_from_columns(
        keys.get("value_type").and_then(Value::as_str),
        keys.get("string_value").and_then(Value::as_str),
        keys.get("integer_value").and_then(Value::as_i64),
        keys.get("float_value").and_then(Value::as_f64),
        keys.get("boolean_value").and_then(Value::as_bool),
    )
}

/// The trait changes of one captured `environments_trait` row (key columns from NEW and OLD;
/// OLD is only recorded when a recorded column changed).
pub fn trait_changes(
    op: &str,
    new_keys: Option<&Value>,
    old_keys: Option<&Value>,
    at: DateTime<Utc>,
) -> Vec<CoreTraitChange> {
    let ident = |k: &Value| {
        Some((
            int(k, "identity_id")?,
            k.get("trait_key")?.as_str()?.to_string(),
        ))
    };
    let mut out = Vec::new();
    match (op, new_keys, old_keys) {
        ("INSERT", Some(new), _) => {
            if let Some((identity_id, trait_key)) = ident(new) {
                out.push(CoreTraitChange {
                    identity_id,
                    trait_key,
                    at,
                    before: None,
                });
            }
        }
        ("DELETE", _, Some(old)) => {
            if let Some((identity_id, trait_key)) = ident(old) {
                out.push(CoreTraitChange {
                    identity_id,
                    trait_key,
                    at,
                    before: value_of(old),
                });
            }
        }
        ("UPDATE", Some(new), Some(old)) => {
            if let (Some(n), Some(o)) = (ident(new), ident(old)) {
                if n == o {
                    out.push(CoreTraitChange {
                        identity_id: n.0,
                        trait_key: n.1,
                        at,
                        before: value_of(old),
                    });
                } else {
                    out.push(CoreTraitChange {
                        identity_id: o.0,
                        trait_key: o.1,
                        at,
                        before: value_of(old),
                    });
                    out.push(CoreTraitChange {
                        identity_id: n.0,
                        trait_key: n.1,
                        at,
                        before: None,
                    });
                }
            }
        }
        _ => {}
    }
    out
}

/// Records core trait changes (one statement; several changes of one trait are merged).
pub async fn record_core_changes(
    conn: &mut PgConnection,
    changes: &[CoreTraitChange],
) -> Result<(), sqlx::Error> {
    if changes.is_empty() {
        return Ok(());
    }
    // (identity, key) -> (newest change, the values before each change)
    type Merged<'a> = BTreeMap<(i32, &'a str), (DateTime<Utc>, Vec<Value>)>;
    let mut merged: Merged = BTreeMap::new();
    for c in changes {
        let e = merged
            .entry((c.identity_id, c.trait_key.as_str()))
            .or_insert((c.at, Vec::new()));
        e.0 = e.0.max(c.at);
        e.1.push(json!({"at": c.at, "before": trait_json(c.before.as_ref())}));
    }
    let ids: Vec<i32> = merged.keys().map(|k| k.0).collect();
    let keys: Vec<&str> = merged.keys().map(|k| k.1).collect();
    let ats: Vec<DateTime<Utc>> = merged.values().map(|v| v.0).collect();
    let recents: Vec<Value> = merged.values().map(|v| Value::Array(v.1.clone())).collect();
    sqlx::query(&format!(
        r#"INSERT INTO edge.trait_clock AS c (identity_id, trait_key, changed_at, origin, recent)
           SELECT i, k, t, 'core', r FROM unnest($1::int[], $2::text[], $3::timestamptz[], $4::jsonb[]) AS u(i, k, t, r)
           ON CONFLICT (identity_id, trait_key) DO UPDATE SET
               origin = CASE WHEN excluded.changed_at >= c.changed_at THEN 'core' ELSE c.origin END,
               changed_at = GREATEST(c.changed_at, excluded.changed_at),
               recent = (SELECT COALESCE(jsonb_agg(e), '[]'::jsonb)
                         FROM jsonb_array_elements(c.recent || excluded.recent) AS e
                         WHERE (e->>'at')::timestamptz > now() - interval '{RECENT_KEPT}')"#
    ))
    .bind(&ids)
    .bind(&keys)
    .bind(&ats)
    .bind(&recents)
    .execute(conn)
    .await?;
    Ok(())
}

/// An identity deleted in core: `(environment_id, identifier, when)`, from a captured
/// `environments_identity` DELETE.
pub fn identity_delete(
    op: &str,
    old_keys: Option<&Value>,
    at: DateTime<Utc>,
) -> Option<(i32, String, DateTime<Utc>)> {
    if op != "DELETE" {
        return None;
    }
    let old = old_keys?;
    Some((
        int(old, "environment_id")?,
        old.get("identifier")?.as_str()?.to_string(),
        at,
    ))
}

pub async fn record_identity_deletes(
    conn: &mut PgConnection,
    deletes: &[(i32, String, DateTime<Utc>)],
) -> Result<(), sqlx::Error> {
    if deletes.is_empty() {
        return Ok(());
    }
    let mut merged: BTreeMap<(i32, &str), DateTime<Utc>> = BTreeMap::new();
    for (e, i, t) in deletes {
        let at = merged.entry((*e, i.as_str())).or_insert(*t);
        *at = (*at).max(*t);
    }
    let envs: Vec<i32> = merged.keys().map(|k| k.0).collect();
    let idents: Vec<&str> = merged.keys().map(|k| k.1).collect();
    let ats: Vec<DateTime<Utc>> = merged.values().copied().collect();
    sqlx::query(
        r#"INSERT INTO edge.identity_tombstone AS t (environment_id, identifier, deleted_at)
           SELECT * FROM unnest($1::int[], $2::text[], $3::timestamptz[])
           ON CONFLICT (environment_id, identifier) DO UPDATE
           SET deleted_at = GREATEST(t.deleted_at, excluded.deleted_at)"#,
    )
    .bind(&envs)
    .bind(&idents)
    .bind(&ats)
    .execute(conn)
    .await?;
    Ok(())
}

/// A recorded clock (key, time, origin, recent) or a pending change (time, op, keys).
type ClockRow = (
    Option<String>,
    Option<DateTime<Utc>>,
    Option<String>,
    Option<Value>,
    Option<String>,
    Option<Value>,
    Option<Value>,
);

/// The clocks of an identity's traits: the recorded ones, and the core changes still in the
/// change log (captured, not yet resolved by a writer), read in one statement.
pub async fn clocks_of(
    conn: &mut PgConnection,
    identity_id: i32,
) -> Result<HashMap<String, TraitClock>, sqlx::Error> {
    let rows: Vec<ClockRow> = sqlx::query_as(
        r#"SELECT trait_key, changed_at, origin, recent, NULL::text, NULL::jsonb, NULL::jsonb
               FROM edge.trait_clock WHERE identity_id = $1
               UNION ALL
               SELECT NULL, captured_at, NULL, NULL, op, new_keys, old_keys
               FROM edge.change_log
               WHERE table_name = 'environments_trait' AND origin IS NULL
                 AND (new_keys->>'identity_id' = $1::text OR old_keys->>'identity_id' = $1::text)"#,
    )
    .bind(identity_id)
    .fetch_all(conn)
    .await?;
    let mut clocks: HashMap<String, TraitClock> = HashMap::new();
    let mut pending: Vec<CoreTraitChange> = Vec::new();
    for (key, at, origin, recent, op, new_keys, old_keys) in rows {
        match (key, at, op) {
            (Some(key), Some(at), None) => {
                let recent_core = recent
                    .and_then(|r| r.as_array().cloned())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|e| {
                        let t = e.get("at")?.as_str()?.parse::<DateTime<Utc>>().ok()?;
                        Some((t, trait_from_json(e.get("before").unwrap_or(&Value::Null))))
                    })
                    .collect();
                let origin = if origin.as_deref() == Some("edge") {
                    Origin::Edge
                } else {
                    Origin::Core
                };
                clocks.insert(
                    key,
                    TraitClock {
                        changed_at: at,
                        origin,
                        recent_core,
                    },
                );
            }
            (None, Some(at), Some(op)) => {
                pending.extend(
                    trait_changes(&op, new_keys.as_ref(), old_keys.as_ref(), at)
                        .into_iter()
                        .filter(|c| c.identity_id == identity_id),
                );
            }
            _ => {}
        }
    }
    for c in pending {
        let clock = clocks.entry(c.trait_key.clone()).or_insert(TraitClock {
            changed_at: c.at,
            origin: Origin::Core,
            recent_core: vec![],
        });
        if c.at >= clock.changed_at {
            clock.changed_at = c.at;
            clock.origin = Origin::Core;
        }
        clock.recent_core.push((c.at, c.before));
    }
    Ok(clocks)
}

/// Records edge writes of traits (the stream record's time).
pub async fn record_edge(
    conn: &mut PgConnection,
    identity_id: i32,
    keys: &[&str],
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query(
        r#"INSERT INTO edge.trait_clock AS c (identity_id, trait_key, changed_at, origin)
           SELECT $1, k, $3, 'edge' FROM unnest($2::text[]) AS k
           ON CONFLICT (identity_id, trait_key) DO UPDATE SET
               origin = CASE WHEN excluded.changed_at >= c.changed_at THEN 'edge' ELSE c.origin END,
               changed_at = GREATEST(c.changed_at, excluded.changed_at)"#,
    )
    .bind(identity_id)
    .bind(keys)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The core delete of an identity, if any.
pub async fn tombstone(
    conn: &mut PgConnection,
    environment_id: i32,
    identifier: &str,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT deleted_at FROM edge.identity_tombstone WHERE environment_id = $1 AND identifier = $2",
    )
    .bind(environment_id)
    .bind(identifier)
    .fetch_optional(conn)
    .await
}

/// How long the merge rule's state is kept: longer than a stream keeps its records (24 h),
/// plus the writer's grace. An edge write that old can no longer arrive.
pub const RETENTION: &str = "2 days";

/// Deletes merge state older than [`RETENTION`] (at most `batch` rows of each table per
/// call): ingested images, trait clocks and identity tombstones. Returns the rows deleted.
pub async fn prune(pool: &sqlx::PgPool, batch: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(&format!(
        r#"WITH images AS (
               DELETE FROM edge.ingested_image WHERE ctid IN (
                   SELECT ctid FROM edge.ingested_image
                   WHERE ingested_at < now() - interval '{RETENTION}' LIMIT $1)
               RETURNING 1),
           clocks AS (
               DELETE FROM edge.trait_clock WHERE ctid IN (
                   SELECT ctid FROM edge.trait_clock
                   WHERE changed_at < now() - interval '{RETENTION}' LIMIT $1)
               RETURNING 1),
           tombstones AS (
               DELETE FROM edge.identity_tombstone WHERE ctid IN (
                   SELECT ctid FROM edge.identity_tombstone
                   WHERE deleted_at < now() - interval '{RETENTION}' LIMIT $1)
               RETURNING 1)
           SELECT (SELECT count(*) FROM images) + (SELECT count(*) FROM clocks)
                  + (SELECT count(*) FROM tombstones)"#
    ))
    .bind(batch)
    .fetch_one(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_trait_rows_become_changes_with_the_value_before() {
        let at = Utc::now();
        let row = |k: &str, v: i64| json!({"id": 1, "identity_id": 7, "trait_key": k, "value_type": "int", "integer_value": v});
        let ins = trait_changes("INSERT", Some(&row("age", 1)), None, at);
        assert_eq!(
            ins,
            vec![CoreTraitChange {
                identity_id: 7,
                trait_key: "age".into(),
                at,
                before: None
            }]
        );
        let upd = trait_changes("UPDATE", Some(&row("age", 2)), Some(&row("age", 1)), at);
        assert_eq!(upd[0].before, Some(TraitValue::Int(1)));
        let del = trait_changes("DELETE", None, Some(&row("age", 2)), at);
        assert_eq!(del[0].before, Some(TraitValue::Int(2)));
        let moved = trait_changes("UPDATE", Some(&row("years", 2)), Some(&row("age", 2)), at);
        assert_eq!(moved.len(), 2);
        assert_eq!(moved[1].before, None);
        assert!(trait_changes("UPDATE", Some(&row("age", 2)), None, at).is_empty());
    }
}
