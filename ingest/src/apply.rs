//! One edge write applied to core, in one transaction.
//!
//! 1. The item is read ([`crate::edge_item::parse`]); what core cannot hold is refused with
//!    the reason ([`IngestError::Invalid`]: the caller parks it and carries on).
//! 2. In one READ COMMITTED transaction, with `edge.origin = 'edge'` (the capture triggers
//!    mark what it changes as edge changes):
//!    - the item's `edge.ingested` row is locked: ingestions of one identity (two regions'
//!      consumers, a redelivery, the writer adopting an item) run one at a time, and an image
//!      already ingested at that time is a no-op;
//!    - the identity row (`FOR NO KEY UPDATE`) and its trait and override rows (`FOR UPDATE`)
//!      are locked before the clocks are read, so a core change committing meanwhile is
//!      either seen (its capture row) or ordered after this transaction;
//!    - traits and overrides are merged by [`crate::merge`]; the identity is created (with
//!      the edge's `identity_uuid`) or deleted as the rule says;
//!    - the image's digest is recorded in `edge.ingested` and the identity document is queued,
//!      so the writer re-projects the merged document and may then replace the edge's item.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use edge_documents::item::{Item, ATTR_VERSION};
use edge_documents::model::{FlagValue, TraitValue};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::clock;
use crate::edge_item::{self, EdgeIdentity, EdgeOverride};
use crate::merge::{decide_override, decide_trait, Decision, Kept};
use crate::switch;

/// The digest recorded for an edge delete.
pub const DELETED_DIGEST: &str = "deleted";

/// An edge write of one identity item, from a stream record (or an item the writer found).
#[derive(Debug, Clone, Copy)]
pub struct EdgeWrite<'a> {
    /// The item's `composite_key`.
    pub composite_key: &'a str,
    /// The item after the write; `None`: deleted.
    pub new: Option<&'a Item>,
    /// The item before the write, when known: what the edge changed is the difference.
    pub old: Option<&'a Item>,
    /// When the edge wrote it (the stream record's creation time).
    pub at: DateTime<Utc>,
    /// How much `at` may be rounded down: DynamoDB Streams round creation times down to the
    /// second (DynamoDB Local to the minute). The write is taken to be at the end of that
    /// interval (or now, if earlier): ties with a core change go to the edge.
    pub precision: chrono::Duration,
}

impl EdgeWrite<'_> {
    /// The edge write's time under the merge rule.
    pub fn time(&self) -> DateTime<Utc> {
        (self.at + self.precision).min(Utc::now()).max(self.at)
    }
}

/// What an ingestion changed in core.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub identity_id: Option<i32>,
    pub created: bool,
    pub deleted: bool,
    pub traits_set: usize,
    pub traits_deleted: usize,
    pub overrides_set: usize,
    pub overrides_deleted: usize,
    /// Edge changes not applied because core (or a later edge write) changed it later.
    pub kept_later: usize,
    /// Edge values taken for echoes of a read older than core's latest change.
    pub kept_echo: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum Ingested {
    Applied(Applied),
    /// This image was ingested before (a redelivery): nothing changed.
    AlreadyIngested,
    /// Not ingested, with the reason (ingestion off for the project, an unknown
    /// environment, an identity core deleted after this write).
    Skipped {
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The item cannot become core rows: park it with the reason.
    #[error("edge item {composite_key}: {reason}")]
    Invalid {
        composite_key: String,
        reason: String,
    },
    /// Postgres failed: retry.
    #[error("edge item {composite_key}: core database: {source}")]
    Db {
        composite_key: String,
        #[source]
        source: sqlx::Error,
    },
}

impl IngestError {
    pub fn is_invalid(&self) -> bool {
        matches!(self, IngestError::Invalid { .. })
    }
}

/// Whether an image is one the writer wrote (it carries the replication attributes, which
/// the edge's whole-item puts drop).
pub fn written_by_writer(item: &Item) -> bool {
    item.contains_key(ATTR_VERSION)
}

/// Applies one edge write to core. See the module documentation.
pub async fn ingest(pool: &PgPool, w: &EdgeWrite<'_>) -> Result<Ingested, IngestError> {
    let invalid = |reason: String| IngestError::Invalid {
        composite_key: w.composite_key.to_string(),
        reason,
    };
    let new = match w.new {
        Some(item) => Some(edge_item::parse(item).map_err(|e| invalid(e.0))?),
        None => None,
    };
    // An old image that cannot be read only loses the base of the difference.
    let old = w.old.and_then(|item| edge_item::parse(item).ok());
    let db = |source: sqlx::Error| {
        if is_data_error(&source) {
            invalid(format!("core refused the values: {source}"))
        } else {
            IngestError::Db {
                composite_key: w.composite_key.to_string(),
                source,
            }
        }
    };
    let mut tx = pool.begin().await.map_err(db)?;
    let result = apply(&mut tx, w, new.as_ref(), old.as_ref()).await;
    match result {
        Ok(Ingested::Applied(a)) => {
            tx.commit().await.map_err(db)?;
            Ok(Ingested::Applied(a))
        }
        Ok(other) => {
            // Nothing to keep, except an already-ingested marker update, which is harmless
            // to lose.
            tx.commit().await.map_err(db)?;
            Ok(other)
        }
        Err(Step::Invalid(reason)) => Err(invalid(reason)),
        Err(Step::Db(e)) => Err(db(e)),
    }
}

enum Step {
    Invalid(String),
    Db(sqlx::Error),
}

impl From<sqlx::Error> for Step {
    fn from(e: sqlx::Error) -> Self {
        Step::Db(e)
    }
}

/// SQLSTATE class 22 (data exception): values core cannot hold.
fn is_data_error(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("22")))
}

async fn apply(
    tx: &mut PgConnection,
    w: &EdgeWrite<'_>,
    new: Option<&EdgeIdentity>,
    old: Option<&EdgeIdentity>,
) -> Result<Ingested, Step> {
    let at = w.time();
    let echo_window = crate::merge::ECHO_WINDOW + w.precision;
    // Transaction-local: the capture triggers mark these rows as edge changes.
    sqlx::query(
        "SELECT set_config('edge.origin', 'edge', true), set_config('lock_timeout', '10s', true)",
    )
    .execute(&mut *tx)
    .await?;
    let (api_key, identifier) = match (new, old) {
        (Some(i), _) | (None, Some(i)) => (i.environment_api_key.clone(), i.identifier.clone()),
        (None, None) => match w.composite_key.split_once('_') {
            Some((k, i)) => (k.to_string(), i.to_string()),
            None => {
                return Err(Step::Invalid(format!(
                    "composite_key {:?} names no environment",
                    w.composite_key
                )))
            }
        },
    };
    let Some(env) = switch::environment(tx, &api_key).await? else {
        return Ok(Ingested::Skipped {
            reason: format!("no live environment has the api_key {api_key:?}"),
        });
    };
    if !env.ingestion {
        return Ok(Ingested::Skipped {
            reason: format!("ingestion is off for project {}", env.project_id),
        });
    }
    let digest = new.map_or(DELETED_DIGEST, |n| n.digest.as_str());

    // One ingestion of this item at a time (the upsert locks its row until commit); then, in
    // a statement that sees what a concurrent ingestion committed, an image already ingested
    // at this time is a no-op.
    sqlx::query(
        r#"INSERT INTO edge.ingested AS i (composite_key, digest, edge_time)
           VALUES ($1, '', '-infinity')
           ON CONFLICT (composite_key) DO UPDATE SET digest = i.digest"#,
    )
    .bind(w.composite_key)
    .execute(&mut *tx)
    .await?;
    let seen: bool = sqlx::query_scalar(
        r#"SELECT EXISTS (SELECT 1 FROM edge.ingested_image
                          WHERE composite_key = $1 AND digest = $2 AND edge_time = $3)"#,
    )
    .bind(w.composite_key)
    .bind(digest)
    .bind(at)
    .fetch_one(&mut *tx)
    .await?;
    if seen {
        return Ok(Ingested::AlreadyIngested);
    }

    let identity: Option<i32> = sqlx::query_scalar(
        r#"SELECT id FROM environments_identity WHERE environment_id = $1 AND identifier = $2
           FOR NO KEY UPDATE"#,
    )
    .bind(env.environment_id)
    .bind(&identifier)
    .fetch_optional(&mut *tx)
    .await?;

    let mut applied = Applied::default();
    match (new, identity) {
        (None, None) => {}
        (None, Some(id)) => {
            applied.identity_id = Some(id);
            if core_changed_after(tx, id, at).await? {
                record(tx, w.composite_key, digest, at).await?;
                enqueue(tx, id, at).await?;
                return Ok(Ingested::Skipped {
                    reason: "core changed the identity after the edge deleted it".into(),
                });
            }
            delete_identity(tx, id).await?;
            applied.deleted = true;
        }
        (Some(new), found) => {
            let id = match found {
                Some(id) => id,
                None => {
                    if let Some(deleted_at) =
                        clock::tombstone(tx, env.environment_id, &identifier).await?
                    {
                        if deleted_at > at {
                            record(tx, w.composite_key, digest, at).await?;
                            return Ok(Ingested::Skipped {
                                reason: format!(
                                    "core deleted the identity at {deleted_at}, after this edge write"
                                ),
                            });
                        }
                    }
                    applied.created = true;
                    create_identity(tx, env.environment_id, new, at).await?
                }
            };
            applied.identity_id = Some(id);
            merge_traits(tx, id, new, old, at, echo_window, &mut applied).await?;
            merge_overrides(
                tx,
                id,
                env.environment_id,
                env.project_id,
                new,
                old,
                at,
                &mut applied,
            )
            .await?;
            enqueue(tx, id, at).await?;
        }
    }
    record(tx, w.composite_key, digest, at).await?;
    Ok(Ingested::Applied(applied))
}

async fn record(
    tx: &mut PgConnection,
    composite_key: &str,
    digest: &str,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    // The image, the item's last ingestion, and a wake-up for the writer, in one statement.
    sqlx::query(
        r#"WITH last AS (
               UPDATE edge.ingested SET digest = $2, edge_time = GREATEST(edge_time, $3),
                   ingested_at = now()
               WHERE composite_key = $1),
           image AS (
               INSERT INTO edge.ingested_image (composite_key, digest, edge_time)
               VALUES ($1, $2, $3) ON CONFLICT DO NOTHING)
           SELECT pg_notify('edge_change_log', '')"#,
    )
    .bind(composite_key)
    .bind(digest)
    .bind(at)
    .execute(tx)
    .await?;
    Ok(())
}

/// When the last edge image of the item ingested was written (by the merge rule's time).
pub async fn last_ingested_at(
    pool: &PgPool,
    composite_key: &str,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT edge_time FROM edge.ingested WHERE composite_key = $1 AND digest <> ''",
    )
    .bind(composite_key)
    .fetch_optional(pool)
    .await
}

/// Whether an edge image of the item was ever ingested (at any time).
pub async fn was_ingested(
    pool: &PgPool,
    composite_key: &str,
    digest: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM edge.ingested_image WHERE composite_key = $1 AND digest = $2)",
    )
    .bind(composite_key)
    .bind(digest)
    .fetch_one(pool)
    .await
}

/// Queues the identity document, due now (the writer may be waiting for this ingestion), and
/// forgets the content hash the writer last wrote: the stored item is the edge's now, so the
/// next projection is written even if it equals the writer's last one (the merge may have
/// kept every core value).
async fn enqueue(
    tx: &mut PgConnection,
    identity_id: i32,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let doc_key = format!("identity:{identity_id}");
    sqlx::query(
        r#"WITH doc AS (
               INSERT INTO edge.document (doc_key) VALUES ($1)
               ON CONFLICT (doc_key) DO UPDATE SET content_hash = NULL)
           INSERT INTO edge.pending (doc_key, seq, not_before, first_change_at, last_change_at)
           VALUES ($1, nextval('edge.pending_seq'), now(), $2, $2)
           ON CONFLICT (doc_key) DO UPDATE SET
               seq = excluded.seq,
               not_before = LEAST(edge.pending.not_before, now()),
               first_change_at = LEAST(edge.pending.first_change_at, excluded.first_change_at),
               last_change_at = GREATEST(edge.pending.last_change_at, excluded.last_change_at)"#,
    )
    .bind(&doc_key)
    .bind(at)
    .execute(tx)
    .await?;
    Ok(())
}

/// Whether core changed the identity (a trait, an override) after `at`.
async fn core_changed_after(
    tx: &mut PgConnection,
    identity_id: i32,
    at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let latest: Option<DateTime<Utc>> = sqlx::query_scalar(
        r#"SELECT GREATEST(
               (SELECT max(changed_at) FROM edge.trait_clock
                WHERE identity_id = $1 AND origin = 'core'),
               (SELECT max(captured_at) FROM edge.change_log
                WHERE origin IS NULL AND table_name IN ('environments_trait', 'features_featurestate')
                  AND (new_keys->>'identity_id' = $1::text OR old_keys->>'identity_id' = $1::text)),
               (SELECT max(updated_at) FROM features_featurestate
                WHERE identity_id = $1 AND deleted_at IS NULL))"#,
    )
    .bind(identity_id)
    .fetch_one(tx)
    .await?;
    Ok(latest.is_some_and(|t| t > at))
}

/// Deletes an identity as Flagsmith's core API does: override values, overrides, traits,
/// then the row.
async fn delete_identity(tx: &mut PgConnection, id: i32) -> Result<(), sqlx::Error> {
    for sql in [
        "DELETE FROM features_featurestatevalue WHERE feature_state_id IN (SELECT id FROM features_featurestate WHERE identity_id = $1)",
        "DELETE FROM multivariate_multivariatefeaturestatevalue WHERE feature_state_id IN (SELECT id FROM features_featurestate WHERE identity_id = $1)",
        "DELETE FROM features_featurestate WHERE identity_id = $1",
        "DELETE FROM environments_trait WHERE identity_id = $1",
        "DELETE FROM environments_identity WHERE id = $1",
        "DELETE FROM edge.identity_uuid WHERE identity_id = $1",
    ] {
        sqlx::query(sql).bind(id).execute(&mut *tx).await?;
    }
    Ok(())
}

/// Creates an identity known only to the edge, keeping its `identity_uuid`.
async fn create_identity(
    tx: &mut PgConnection,
    environment_id: i32,
    new: &EdgeIdentity,
    at: DateTime<Utc>,
) -> Result<i32, sqlx::Error> {
    let id: i32 = sqlx::query_scalar(
        r#"INSERT INTO environments_identity (identifier, created_date, environment_id, system_traits)
           VALUES ($1, $2, $3, '{}'::jsonb) RETURNING id"#,
    )
    .bind(&new.identifier)
    .bind(new.created_date.unwrap_or(at))
    .bind(environment_id)
    .fetch_one(&mut *tx)
    .await?;
    if let Some(uuid) = new.identity_uuid {
        sqlx::query("INSERT INTO edge.identity_uuid (identity_id, identity_uuid) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(id)
            .bind(uuid)
            .execute(&mut *tx)
            .await?;
    }
    Ok(id)
}

#[derive(sqlx::FromRow)]
struct TraitRow {
    trait_key: String,
    value_type: Option<String>,
    string_value: Option<String>,
    integer_value: Option<i32>,
    float_value: Option<f64>,
    boolean_value: Option<bool>,
}

async fn merge_traits(
    tx: &mut PgConnection,
    id: i32,
    new: &EdgeIdentity,
    old: Option<&EdgeIdentity>,
    at: DateTime<Utc>,
    echo_window: chrono::Duration,
    applied: &mut Applied,
) -> Result<(), sqlx::Error> {
    let rows: Vec<TraitRow> = sqlx::query_as(
        r#"SELECT trait_key, value_type, string_value, integer_value, float_value, boolean_value
           FROM environments_trait WHERE identity_id = $1 ORDER BY id FOR UPDATE"#,
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    let core: HashMap<String, Option<TraitValue>> = rows
        .into_iter()
        .map(|r| {
            let v = crate::merge::trait_from_columns(
                r.value_type.as_deref(),
                r.string_value.as_deref(),
                r.integer_value.map(i64::from),
                r.float_value,
                r.boolean_value,
            );
            (r.trait_key, v)
        })
        .collect();
    let clocks = clock::clocks_of(tx, id).await?;
    let keys: BTreeSet<&String> = new
        .traits
        .keys()
        .chain(old.into_iter().flat_map(|o| o.traits.keys()))
        .collect();
    let mut sets: Vec<(&str, &TraitValue)> = Vec::new();
    let mut deletes: Vec<&str> = Vec::new();
    for key in keys {
        let decision = decide_trait(
            old.and_then(|o| o.traits.get(key)),
            new.traits.get(key),
            old.is_some(),
            core.get(key).and_then(Option::as_ref),
            clocks.get(key),
            at,
            echo_window,
        );
        match decision {
            Decision::Apply(Some(_)) => sets.push((key, &new.traits[key])),
            Decision::Apply(None) => deletes.push(key),
            Decision::Keep(Kept::CoreIsLater) => applied.kept_later += 1,
            Decision::Keep(Kept::Echo) => applied.kept_echo += 1,
            Decision::Keep(Kept::Unchanged) => {}
        }
    }
    if !sets.is_empty() {
        let mut keys = Vec::new();
        let mut types = Vec::new();
        let (mut strs, mut ints, mut floats, mut bools) = (vec![], vec![], vec![], vec![]);
        for (k, v) in &sets {
            keys.push(*k);
            let (t, s, i, f, b): (&str, Option<&str>, Option<i32>, Option<f64>, Option<bool>) =
                match v {
                    TraitValue::Str(s) => ("unicode", Some(s), None, None, None),
                    TraitValue::Int(i) => ("int", None, i32::try_from(*i).ok(), None, None),
                    TraitValue::Float(f) => ("float", None, None, Some(*f), None),
                    TraitValue::Bool(b) => ("bool", None, None, None, Some(*b)),
                };
            types.push(t);
            strs.push(s);
            ints.push(i);
            floats.push(f);
            bools.push(b);
        }
        sqlx::query(
            r#"INSERT INTO environments_trait (trait_key, value_type, string_value, integer_value,
                   float_value, boolean_value, created_date, identity_id)
               SELECT k, t, s, i, f, b, now(), $7
               FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::float8[], $6::bool[])
                   AS u(k, t, s, i, f, b)
               ON CONFLICT (trait_key, identity_id) DO UPDATE SET
                   value_type = excluded.value_type, string_value = excluded.string_value,
                   integer_value = excluded.integer_value, float_value = excluded.float_value,
                   boolean_value = excluded.boolean_value"#,
        )
        .bind(&keys)
        .bind(&types)
        .bind(&strs)
        .bind(&ints)
        .bind(&floats)
        .bind(&bools)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    if !deletes.is_empty() {
        sqlx::query(
            "DELETE FROM environments_trait WHERE identity_id = $1 AND trait_key = ANY($2)",
        )
        .bind(id)
        .bind(&deletes)
        .execute(&mut *tx)
        .await?;
    }
    let written: Vec<&str> = sets
        .iter()
        .map(|(k, _)| *k)
        .chain(deletes.iter().copied())
        .collect();
    clock::record_edge(tx, id, &written, at).await?;
    applied.traits_set += sets.len();
    applied.traits_deleted += deletes.len();
    Ok(())
}

#[derive(sqlx::FromRow)]
struct OverrideRow {
    id: i32,
    feature_id: i32,
    enabled: bool,
    updated_at: DateTime<Utc>,
    value_type: Option<String>,
    string_value: Option<String>,
    integer_value: Option<i32>,
    boolean_value: Option<bool>,
}

fn flag_value(r: &OverrideRow) -> Option<FlagValue> {
    match r.value_type.as_deref() {
        Some("int") => r.integer_value.map(|i| FlagValue::Int(i64::from(i))),
        Some("bool") => r.boolean_value.map(FlagValue::Bool),
        _ => r.string_value.clone().map(FlagValue::Str),
    }
}

#[allow(clippy::too_many_arguments)]
async fn merge_overrides(
    tx: &mut PgConnection,
    id: i32,
    environment_id: i32,
    project_id: i32,
    new: &EdgeIdentity,
    old: Option<&EdgeIdentity>,
    at: DateTime<Utc>,
    applied: &mut Applied,
) -> Result<(), Step> {
    let rows: Vec<OverrideRow> = sqlx::query_as(
        r#"SELECT fs.id, fs.feature_id, fs.enabled, fs.updated_at, v.type AS value_type,
                  v.string_value, v.integer_value, v.boolean_value
           FROM features_featurestate fs
           LEFT JOIN features_featurestatevalue v
               ON v.feature_state_id = fs.id AND v.deleted_at IS NULL
           WHERE fs.identity_id = $1 AND fs.deleted_at IS NULL
           ORDER BY fs.feature_id, fs.live_from NULLS FIRST, fs.version NULLS FIRST, fs.id
           FOR UPDATE OF fs"#,
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    let ids: Vec<i32> = rows.iter().map(|r| r.id).collect();
    let mvs: Vec<(i32, i32, f64)> = sqlx::query_as(
        r#"SELECT feature_state_id, multivariate_feature_option_id, percentage_allocation
           FROM multivariate_multivariatefeaturestatevalue WHERE feature_state_id = ANY($1)"#,
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    // The live override of each feature: the last in the projection's order.
    let mut core: BTreeMap<i32, (i32, EdgeOverride, DateTime<Utc>)> = BTreeMap::new();
    for r in &rows {
        let mut multivariate: Vec<(i32, f64)> = mvs
            .iter()
            .filter(|m| m.0 == r.id)
            .map(|m| (m.1, m.2))
            .collect();
        multivariate.sort_by_key(|m| m.0);
        let o = EdgeOverride {
            feature_id: r.feature_id,
            feature_name: String::new(),
            enabled: r.enabled,
            value: flag_value(r),
            multivariate,
            featurestate_uuid: None,
        };
        core.insert(r.feature_id, (r.id, o, r.updated_at));
    }
    let features: BTreeSet<i32> = new
        .overrides
        .keys()
        .chain(old.into_iter().flat_map(|o| o.overrides.keys()))
        .copied()
        .collect();
    for feature in features {
        let current = core.get(&feature);
        let decision = decide_override(
            old.and_then(|o| o.overrides.get(&feature)),
            new.overrides.get(&feature),
            old.is_some(),
            current.map(|c| (&c.1, c.2)),
            at,
        );
        match decision {
            Decision::Apply(Some(o)) => {
                let fs = match current {
                    Some((fs, _, _)) => {
                        sqlx::query(
                            "UPDATE features_featurestate SET enabled = $2, updated_at = $3 WHERE id = $1",
                        )
                        .bind(fs)
                        .bind(o.enabled)
                        .bind(at)
                        .execute(&mut *tx)
                        .await?;
                        *fs
                    }
                    None => insert_override(tx, id, environment_id, project_id, &o, at).await?,
                };
                write_value(tx, fs, o.value.as_ref()).await?;
                write_multivariate(tx, fs, &o).await?;
                applied.overrides_set += 1;
            }
            Decision::Apply(None) => {
                if let Some((fs, _, _)) = current {
                    for sql in [
                        "DELETE FROM features_featurestatevalue WHERE feature_state_id = $1",
                        "DELETE FROM multivariate_multivariatefeaturestatevalue WHERE feature_state_id = $1",
                        "DELETE FROM features_featurestate WHERE id = $1",
                    ] {
                        sqlx::query(sql).bind(fs).execute(&mut *tx).await?;
                    }
                    applied.overrides_deleted += 1;
                }
            }
            Decision::Keep(Kept::CoreIsLater) => applied.kept_later += 1,
            Decision::Keep(Kept::Echo) => applied.kept_echo += 1,
            Decision::Keep(Kept::Unchanged) => {}
        }
    }
    Ok(())
}

async fn insert_override(
    tx: &mut PgConnection,
    identity_id: i32,
    environment_id: i32,
    project_id: i32,
    o: &EdgeOverride,
    at: DateTime<Utc>,
) -> Result<i32, Step> {
    let known: bool = sqlx::query_scalar(
        r#"SELECT EXISTS (SELECT 1 FROM features_feature
                          WHERE id = $1 AND project_id = $2 AND deleted_at IS NULL)"#,
    )
    .bind(o.feature_id)
    .bind(project_id)
    .fetch_one(&mut *tx)
    .await?;
    if !known {
        return Err(Step::Invalid(format!(
            "an override of feature {} ({:?}), which project {project_id} does not have",
            o.feature_id, o.feature_name
        )));
    }
    // The edge's featurestate_uuid, so both sides name the override alike, unless taken.
    let uuid = match o.featurestate_uuid {
        Some(u) => {
            let taken: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM features_featurestate WHERE uuid = $1)",
            )
            .bind(u)
            .fetch_one(&mut *tx)
            .await?;
            if taken {
                Uuid::new_v4()
            } else {
                u
            }
        }
        None => Uuid::new_v4(),
    };
    let fs: i32 = sqlx::query_scalar(
        r#"INSERT INTO features_featurestate (enabled, environment_id, feature_id, identity_id,
               created_at, live_from, updated_at, version, uuid)
           VALUES ($1, $2, $3, $4, now(), $5, $5, 1, $6) RETURNING id"#,
    )
    .bind(o.enabled)
    .bind(environment_id)
    .bind(o.feature_id)
    .bind(identity_id)
    .bind(at)
    .bind(uuid)
    .fetch_one(&mut *tx)
    .await?;
    Ok(fs)
}

async fn write_value(
    tx: &mut PgConnection,
    fs: i32,
    value: Option<&FlagValue>,
) -> Result<(), sqlx::Error> {
    let (t, s, i, b): (&str, Option<&str>, Option<i32>, Option<bool>) = match value {
        None => ("unicode", None, None, None),
        Some(FlagValue::Str(s)) => ("unicode", Some(s), None, None),
        Some(FlagValue::Int(i)) => ("int", None, i32::try_from(*i).ok(), None),
        Some(FlagValue::Bool(b)) => ("bool", None, None, Some(*b)),
    };
    let updated = sqlx::query(
        r#"UPDATE features_featurestatevalue SET type = $2, string_value = $3, integer_value = $4,
               boolean_value = $5
           WHERE feature_state_id = $1 AND deleted_at IS NULL"#,
    )
    .bind(fs)
    .bind(t)
    .bind(s)
    .bind(i)
    .bind(b)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        sqlx::query(
            r#"INSERT INTO features_featurestatevalue (type, string_value, integer_value,
                   boolean_value, feature_state_id, uuid)
               VALUES ($2, $3, $4, $5, $1, $6)"#,
        )
        .bind(fs)
        .bind(t)
        .bind(s)
        .bind(i)
        .bind(b)
        .bind(Uuid::new_v4())
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

async fn write_multivariate(tx: &mut PgConnection, fs: i32, o: &EdgeOverride) -> Result<(), Step> {
    sqlx::query(
        "DELETE FROM multivariate_multivariatefeaturestatevalue WHERE feature_state_id = $1",
    )
    .bind(fs)
    .execute(&mut *tx)
    .await?;
    if o.multivariate.is_empty() {
        return Ok(());
    }
    let options: Vec<i32> = o.multivariate.iter().map(|m| m.0).collect();
    let pcts: Vec<f64> = o.multivariate.iter().map(|m| m.1).collect();
    let uuids: Vec<Uuid> = o.multivariate.iter().map(|_| Uuid::new_v4()).collect();
    let inserted = sqlx::query(
        r#"INSERT INTO multivariate_multivariatefeaturestatevalue (percentage_allocation,
               feature_state_id, multivariate_feature_option_id, uuid)
           SELECT u.p, $1, u.o, u.id
           FROM unnest($2::int[], $3::float8[], $4::uuid[]) AS u(o, p, id)
           JOIN multivariate_multivariatefeatureoption m ON m.id = u.o AND m.feature_id = $5"#,
    )
    .bind(fs)
    .bind(&options)
    .bind(&pcts)
    .bind(&uuids)
    .bind(o.feature_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted as usize != options.len() {
        return Err(Step::Invalid(format!(
            "the override of feature {} names multivariate options {options:?}, not all of which core has for that feature",
            o.feature_id
        )));
    }
    Ok(())
}
