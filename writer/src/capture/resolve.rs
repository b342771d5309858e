//! Fan-out: which documents a changed core row touches (`flagsmith-core.md` §4).
//!
//! Each change names its row's keys from NEW and OLD. A change first becomes *anchors*
//! (an environment, a project, a segment rule, ...) without any query; anchors are then
//! resolved in bulk, walking up to environments: rule -> segment -> project -> environments.
//! Soft-deleted environments are included on purpose: their documents must be deleted.
//!
//! When a parent row is already gone (a hard delete), the walk stops there: the core API
//! deletes children with their parent in one transaction, and the parent's own change
//! carries its parent ids (a deleted segment names its project), so the documents are still
//! found through it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;
use sqlx::PgConnection;

use super::{ChangeRow, ChangeSpan};
use crate::doc_key::DocKey;

/// Something a change leads to, before resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Anchor {
    /// The environment document only.
    Environment(i32),
    /// The environment document and its API key documents (they carry `client_api_key`
    /// and depend on the environment, project and organisation being on the edge).
    EnvironmentAndKeys(i32),
    Project(i32),
    ProjectAndKeys(i32),
    OrganisationAndKeys(i32),
    Feature(i32),
    Segment(i32),
    Rule(i32),
    /// A feature state: its environment document, or its identity's when it is an
    /// identity override.
    FeatureState(i32),
    ApiKey(i32),
    Identity(i32),
    /// Every identity of an environment, project or organisation (an api_key change moves
    /// them; the edge switched on or off adds or removes them).
    EnvironmentIdentities(i32),
    ProjectIdentities(i32),
    OrganisationIdentities(i32),
    /// Identities overriding a feature (its name or type changed), or using a
    /// multivariate option (its value changed).
    FeatureIdentities(i32),
    OptionIdentities(i32),
}

fn int(keys: &Value, name: &str) -> Option<i32> {
    keys.get(name)?.as_i64().and_then(|v| i32::try_from(v).ok())
}

/// The anchors of one change (no queries).
pub fn anchors(change: &ChangeRow) -> Vec<Anchor> {
    let mut out = Vec::new();
    for keys in [&change.new_keys, &change.old_keys].into_iter().flatten() {
        anchors_of_keys(&change.table_name, keys, &mut out);
    }
    if let (Some(new), Some(old)) = (&change.new_keys, &change.old_keys) {
        identity_fan_out(&change.table_name, new, old, &mut out);
    }
    out.sort();
    out.dedup();
    out
}

fn anchors_of_keys(table: &str, keys: &Value, out: &mut Vec<Anchor>) {
    use Anchor::*;
    let id = int(keys, "id");
    let env = int(keys, "environment_id");
    match table {
        "organisations_organisation" => out.extend(id.map(OrganisationAndKeys)),
        "projects_project" => out.extend(id.map(ProjectAndKeys)),
        "environments_environment" => out.extend(id.map(EnvironmentAndKeys)),
        "environments_environmentapikey" => out.extend(id.map(ApiKey)),
        "features_feature" => out.extend(int(keys, "project_id").map(Project)),
        "multivariate_multivariatefeatureoption" => {
            out.extend(int(keys, "feature_id").map(Feature))
        }
        "segments_segment" => out.extend(int(keys, "project_id").map(Project)),
        "segments_segmentrule" => {
            out.extend(int(keys, "segment_id").map(Segment));
            out.extend(int(keys, "rule_id").map(Rule));
        }
        "segments_condition" => out.extend(int(keys, "rule_id").map(Rule)),
        // Identity overrides feed identity documents, not the environment document.
        "features_featurestate" => match int(keys, "identity_id") {
            Some(identity) => out.push(Identity(identity)),
            None => out.extend(env.map(Environment)),
        },
        "environments_identity" => out.extend(id.map(Identity)),
        "environments_trait" => out.extend(int(keys, "identity_id").map(Identity)),
        "features_featurestatevalue" | "multivariate_multivariatefeaturestatevalue" => {
            out.extend(int(keys, "feature_state_id").map(FeatureState))
        }
        "features_featuresegment"
        | "feature_versioning_environmentfeatureversion"
        | "amplitude_amplitudeconfiguration"
        | "heap_heapconfiguration"
        | "mixpanel_mixpanelconfiguration"
        | "rudderstack_rudderstackconfiguration"
        | "segment_segmentconfiguration"
        | "webhook_webhookconfiguration" => out.extend(env.map(Environment)),
        _ => {}
    }
}

/// An UPDATE whose recorded columns changed in a way identity documents see (the columns
/// are listed in the identity capture migration). Inserts and deletes need nothing here:
/// a new parent has no identities yet, and a deleted one deletes its identities (or their
/// feature states and values) in the same transaction, each with its own change.
fn identity_fan_out(table: &str, new: &Value, old: &Value, out: &mut Vec<Anchor>) {
    use Anchor::*;
    let changed = |cols: &[&str]| cols.iter().any(|c| new.get(c) != old.get(c));
    let Some(id) = int(new, "id") else { return };
    match table {
        "environments_environment"
            if changed(&[
                "api_key",
                "deleted_at",
                "use_v2_feature_versioning",
                "project_id",
            ]) =>
        {
            out.push(EnvironmentIdentities(id))
        }
        "projects_project"
            if changed(&[
                "enable_dynamo_db",
                "identity_overrides_v2_migration_status",
                "deleted_at",
            ]) =>
        {
            out.push(ProjectIdentities(id))
        }
        "organisations_organisation" if changed(&["deleted_at"]) => {
            out.push(OrganisationIdentities(id))
        }
        "features_feature" if changed(&["name", "type", "deleted_at"]) => {
            out.push(FeatureIdentities(id))
        }
        "multivariate_multivariatefeatureoption"
            if changed(&[
                "type",
                "integer_value",
                "string_value",
                "boolean_value",
                "key",
            ]) =>
        {
            out.push(OptionIdentities(id))
        }
        _ => {}
    }
}

/// What a batch of changes touches: documents, and identity fan-outs to page through.
#[derive(Debug, Default)]
pub struct Resolved {
    pub docs: BTreeMap<DocKey, ChangeSpan>,
    /// Anchors that stand for many identities (see [`Anchor::is_identity_fan_out`]): not
    /// expanded here but paged by [`super::fanout`].
    pub fan_outs: BTreeMap<Anchor, ChangeSpan>,
}

impl Anchor {
    /// Whether the anchor stands for a set of identities of unbounded size.
    pub fn is_identity_fan_out(&self) -> bool {
        matches!(
            self,
            Anchor::EnvironmentIdentities(_)
                | Anchor::ProjectIdentities(_)
                | Anchor::OrganisationIdentities(_)
                | Anchor::FeatureIdentities(_)
                | Anchor::OptionIdentities(_)
        )
    }
}

fn add_span<K: Ord>(map: &mut BTreeMap<K, ChangeSpan>, key: K, at: chrono::DateTime<chrono::Utc>) {
    map.entry(key)
        .and_modify(|s| s.add(at))
        .or_insert(ChangeSpan {
            first: at,
            last: at,
        });
}

/// Resolves a batch of changes to documents, with the capture span of each document.
pub async fn resolve(
    conn: &mut PgConnection,
    changes: &[ChangeRow],
) -> Result<Resolved, sqlx::Error> {
    let per_change: Vec<(Vec<Anchor>, &ChangeRow)> =
        changes.iter().map(|c| (anchors(c), c)).collect();
    let all: BTreeSet<Anchor> = per_change
        .iter()
        .flat_map(|(a, _)| a.iter().copied())
        .filter(|a| !a.is_identity_fan_out())
        .collect();
    let docs_of = resolve_anchors(conn, &all).await?;

    let mut out = Resolved::default();
    for (anchors, change) in per_change {
        for anchor in anchors {
            if anchor.is_identity_fan_out() {
                add_span(&mut out.fan_outs, anchor, change.captured_at);
                continue;
            }
            for doc in docs_of.get(&anchor).into_iter().flatten() {
                add_span(&mut out.docs, *doc, change.captured_at);
            }
        }
    }
    Ok(out)
}

/// The walk from anchors up to environments, and down to API keys and identities, in one
/// statement. Parameters are the anchors' ids by kind (see [`resolve_anchors`]). Each row is
/// an anchor (its kind's name and id) and a document it touches (`environment`, `api_key`
/// or `identity`, and its id).
const RESOLVE: &str = r#"
WITH RECURSIVE up AS (
    SELECT id AS start, rule_id, segment_id FROM segments_segmentrule WHERE id = ANY($1)
  UNION  -- not ALL: a cycle of rules (corrupt data) ends when no row is new
    SELECT up.start, r.rule_id, r.segment_id
    FROM up JOIN segments_segmentrule r ON r.id = up.rule_id
    WHERE up.segment_id IS NULL
),
seg AS (
    SELECT 'rule'::text AS kind, start AS anchor, segment_id AS segment
    FROM up WHERE segment_id IS NOT NULL
  UNION ALL
    SELECT 'segment', s, s FROM unnest($2::int[]) AS s
),
proj AS (
    SELECT seg.kind, seg.anchor, ss.project_id AS project
    FROM seg JOIN segments_segment ss ON ss.id = seg.segment
  UNION ALL
    SELECT 'feature', f.id, f.project_id FROM features_feature f WHERE f.id = ANY($3)
  UNION ALL
    SELECT 'project', p, p FROM unnest($5::int[]) AS p
  UNION ALL
    SELECT 'project_keys', p, p FROM unnest($6::int[]) AS p
),
env AS (
    SELECT proj.kind, proj.anchor, e.id AS environment
    FROM proj JOIN environments_environment e ON e.project_id = proj.project
  UNION ALL
    SELECT 'organisation_keys', p.organisation_id, e.id
    FROM projects_project p JOIN environments_environment e ON e.project_id = p.id
    WHERE p.organisation_id = ANY($7)
  UNION ALL
    -- the environment's document even when its row is gone (it is to be deleted)
    SELECT 'environment_keys', x, x FROM unnest($8::int[]) AS x
  UNION ALL
    SELECT 'feature_state', fs.id, fs.environment_id FROM features_featurestate fs
    WHERE fs.id = ANY($4) AND fs.identity_id IS NULL AND fs.environment_id IS NOT NULL
)
SELECT kind, anchor, 'environment'::text AS doc, environment AS id FROM env
UNION ALL
SELECT env.kind, env.anchor, 'api_key', k.id
FROM env JOIN environments_environmentapikey k ON k.environment_id = env.environment
WHERE env.kind IN ('project_keys', 'organisation_keys', 'environment_keys')
UNION ALL
SELECT 'feature_state', fs.id, 'identity', fs.identity_id FROM features_featurestate fs
WHERE fs.id = ANY($4) AND fs.identity_id IS NOT NULL
"#;

/// Bulk resolution of anchors to the documents they touch: one statement ([`RESOLVE`]) for
/// any number of anchors of any kinds, none when no anchor needs a lookup.
pub async fn resolve_anchors(
    conn: &mut PgConnection,
    anchors: &BTreeSet<Anchor>,
) -> Result<HashMap<Anchor, Vec<DocKey>>, sqlx::Error> {
    // The statement's parameters: ids by kind, and the kind's name in its rows.
    const KINDS: [&str; 8] = [
        "rule",
        "segment",
        "feature",
        "feature_state",
        "project",
        "project_keys",
        "organisation_keys",
        "environment_keys",
    ];
    let slot = |a: &Anchor| -> Option<(usize, i32)> {
        Some(match *a {
            Anchor::Rule(i) => (0, i),
            Anchor::Segment(i) => (1, i),
            Anchor::Feature(i) => (2, i),
            Anchor::FeatureState(i) => (3, i),
            Anchor::Project(i) => (4, i),
            Anchor::ProjectAndKeys(i) => (5, i),
            Anchor::OrganisationAndKeys(i) => (6, i),
            Anchor::EnvironmentAndKeys(i) => (7, i),
            _ => return None,
        })
    };
    let mut ids: [Vec<i32>; 8] = Default::default();
    for (kind, id) in anchors.iter().filter_map(slot) {
        ids[kind].push(id);
    }
    let rows: Vec<(String, i32, String, i32)> = if ids.iter().all(Vec::is_empty) {
        Vec::new()
    } else {
        let mut query = sqlx::query_as(RESOLVE);
        for kind in &ids {
            query = query.bind(kind);
        }
        query.fetch_all(&mut *conn).await?
    };
    let mut found: HashMap<(&str, i32), Vec<DocKey>> = HashMap::new();
    for (kind, anchor, doc, id) in &rows {
        let Some(kind) = KINDS.iter().find(|k| **k == kind.as_str()) else {
            continue;
        };
        let doc = match doc.as_str() {
            "environment" => DocKey::Environment(*id),
            "api_key" => DocKey::ApiKey(*id),
            "identity" => DocKey::Identity(*id),
            _ => continue,
        };
        found.entry((*kind, *anchor)).or_default().push(doc);
    }

    let mut out = HashMap::new();
    for anchor in anchors {
        let docs = match (*anchor, slot(anchor)) {
            (_, Some((kind, id))) => found.remove(&(KINDS[kind], id)).unwrap_or_default(),
            (Anchor::Environment(e), None) => vec![DocKey::Environment(e)],
            (Anchor::ApiKey(k), None) => vec![DocKey::ApiKey(k)],
            (Anchor::Identity(i), None) => vec![DocKey::Identity(i)],
            // Paged by capture::fanout, never expanded in one statement.
            _ => Vec::new(),
        };
        out.insert(*anchor, docs);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use serde_json::json;

    fn change(table: &str, new: Value, old: Option<Value>) -> ChangeRow {
        ChangeRow {
            id: 1,
            table_name: table.into(),
            op: "UPDATE".into(),
            new_keys: Some(new),
            old_keys: old,
            captured_at: Utc::now(),
            origin: None,
        }
    }

    #[test]
    fn identity_overrides_touch_their_identity_not_the_environment_document() {
        let c = change(
            "features_featurestate",
            json!({"id": 1, "environment_id": 2, "identity_id": 9, "feature_id": 3}),
            None,
        );
        assert_eq!(anchors(&c), vec![Anchor::Identity(9)]);
        let c = change(
            "features_featurestate",
            json!({"id": 1, "environment_id": 2, "identity_id": null, "feature_id": 3}),
            None,
        );
        assert_eq!(anchors(&c), vec![Anchor::Environment(2)]);
    }

    #[test]
    fn identities_are_touched_only_by_the_columns_they_see() {
        let env = |api_key: &str, name_only: bool| {
            change(
                "environments_environment",
                json!({"id": 5, "project_id": 1, "api_key": api_key, "deleted_at": null,
                       "use_v2_feature_versioning": false}),
                (!name_only).then(|| {
                    json!({"id": 5, "project_id": 1, "api_key": "old", "deleted_at": null,
                           "use_v2_feature_versioning": false})
                }),
            )
        };
        assert_eq!(
            anchors(&env("new", false)),
            vec![
                Anchor::EnvironmentAndKeys(5),
                Anchor::EnvironmentIdentities(5)
            ]
        );
        // A rename records no old keys: the environment document only.
        assert_eq!(
            anchors(&env("old", true)),
            vec![Anchor::EnvironmentAndKeys(5)]
        );
        let trait_change = change(
            "environments_trait",
            json!({"id": 1, "identity_id": 4}),
            None,
        );
        assert_eq!(anchors(&trait_change), vec![Anchor::Identity(4)]);
    }

    #[test]
    fn moves_touch_both_old_and_new_parents() {
        let c = change(
            "environments_environment",
            json!({"id": 5, "project_id": 2}),
            Some(json!({"id": 5, "project_id": 1})),
        );
        // Another project may be on the edge or not: the identities follow too.
        assert_eq!(
            anchors(&c),
            vec![
                Anchor::EnvironmentAndKeys(5),
                Anchor::EnvironmentIdentities(5)
            ]
        );
        let c = change(
            "segments_segmentrule",
            json!({"id": 7, "segment_id": null, "rule_id": 6}),
            None,
        );
        assert_eq!(anchors(&c), vec![Anchor::Rule(6)]);
    }
}
