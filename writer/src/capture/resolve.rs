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

type Pairs = Vec<(i32, i32)>;

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

/// Bulk resolution of anchors to the documents they touch.
pub async fn resolve_anchors(
    conn: &mut PgConnection,
    anchors: &BTreeSet<Anchor>,
) -> Result<HashMap<Anchor, Vec<DocKey>>, sqlx::Error> {
    let pick =
        |f: fn(&Anchor) -> Option<i32>| -> Vec<i32> { anchors.iter().filter_map(f).collect() };

    // Walk up: rules -> segments, feature states -> environments, features -> projects.
    let rules = pick(|a| {
        if let Anchor::Rule(i) = a {
            Some(*i)
        } else {
            None
        }
    });
    let rule_segment: Pairs = if rules.is_empty() {
        vec![]
    } else {
        sqlx::query_as(
            r#"WITH RECURSIVE up AS (
                   SELECT id AS start, rule_id, segment_id FROM segments_segmentrule WHERE id = ANY($1)
                 UNION  -- not ALL: a cycle of rules (corrupt data) ends when no row is new
                   SELECT up.start, r.rule_id, r.segment_id
                   FROM up JOIN segments_segmentrule r ON r.id = up.rule_id
                   WHERE up.segment_id IS NULL
               )
               SELECT start, segment_id FROM up WHERE segment_id IS NOT NULL"#,
        )
        .bind(&rules)
        .fetch_all(&mut *conn)
        .await?
    };
    let mut segments = pick(|a| {
        if let Anchor::Segment(i) = a {
            Some(*i)
        } else {
            None
        }
    });
    segments.extend(rule_segment.iter().map(|(_, s)| *s));
    let segment_project: Pairs = query_pairs(
        conn,
        "SELECT id, project_id FROM segments_segment WHERE id = ANY($1)",
        &segments,
    )
    .await?;
    let features = pick(|a| {
        if let Anchor::Feature(i) = a {
            Some(*i)
        } else {
            None
        }
    });
    let feature_project: Pairs = query_pairs(
        conn,
        "SELECT id, project_id FROM features_feature WHERE id = ANY($1)",
        &features,
    )
    .await?;
    let states = pick(|a| {
        if let Anchor::FeatureState(i) = a {
            Some(*i)
        } else {
            None
        }
    });
    let state_environment: Pairs = query_pairs(
        conn,
        "SELECT id, environment_id FROM features_featurestate
         WHERE id = ANY($1) AND identity_id IS NULL AND environment_id IS NOT NULL",
        &states,
    )
    .await?;
    let state_identity: Pairs = query_pairs(
        conn,
        "SELECT id, identity_id FROM features_featurestate
         WHERE id = ANY($1) AND identity_id IS NOT NULL",
        &states,
    )
    .await?;

    // Projects and organisations -> environments.
    let mut projects: Vec<i32> = anchors
        .iter()
        .filter_map(|a| match a {
            Anchor::Project(i) | Anchor::ProjectAndKeys(i) => Some(*i),
            _ => None,
        })
        .collect();
    projects.extend(segment_project.iter().map(|(_, p)| *p));
    projects.extend(feature_project.iter().map(|(_, p)| *p));
    let project_environments: Pairs = query_pairs(
        conn,
        "SELECT project_id, id FROM environments_environment WHERE project_id = ANY($1)",
        &projects,
    )
    .await?;
    let orgs = pick(|a| {
        if let Anchor::OrganisationAndKeys(i) = a {
            Some(*i)
        } else {
            None
        }
    });
    let org_environments: Pairs = query_pairs(
        conn,
        "SELECT p.organisation_id, e.id FROM environments_environment e
         JOIN projects_project p ON p.id = e.project_id WHERE p.organisation_id = ANY($1)",
        &orgs,
    )
    .await?;

    // Environments whose API key documents are touched too.
    let mut keyed_envs: Vec<i32> = pick(|a| {
        if let Anchor::EnvironmentAndKeys(i) = a {
            Some(*i)
        } else {
            None
        }
    });
    let keyed_projects: BTreeSet<i32> = anchors
        .iter()
        .filter_map(|a| {
            if let Anchor::ProjectAndKeys(i) = a {
                Some(*i)
            } else {
                None
            }
        })
        .collect();
    keyed_envs.extend(
        project_environments
            .iter()
            .filter(|(p, _)| keyed_projects.contains(p))
            .map(|(_, e)| *e),
    );
    keyed_envs.extend(org_environments.iter().map(|(_, e)| *e));
    let environment_keys: Pairs = query_pairs(
        conn,
        "SELECT environment_id, id FROM environments_environmentapikey WHERE environment_id = ANY($1)",
        &keyed_envs,
    )
    .await?;

    let empty = Vec::new();
    let group = |pairs: &Pairs| -> HashMap<i32, Vec<i32>> {
        let mut m: HashMap<i32, Vec<i32>> = HashMap::new();
        for (k, v) in pairs {
            m.entry(*k).or_default().push(*v);
        }
        m
    };
    let rule_segment = group(&rule_segment);
    let segment_project = group(&segment_project);
    let feature_project = group(&feature_project);
    let state_environment = group(&state_environment);
    let project_environments = group(&project_environments);
    let org_environments = group(&org_environments);
    let environment_keys = group(&environment_keys);
    let state_identity = group(&state_identity);
    let identities = |ids: Option<&Vec<i32>>| -> Vec<DocKey> {
        ids.unwrap_or(&empty)
            .iter()
            .map(|i| DocKey::Identity(*i))
            .collect()
    };

    let envs_of_project = |p: i32| project_environments.get(&p).unwrap_or(&empty).clone();
    let with_keys = |envs: Vec<i32>| -> Vec<DocKey> {
        let mut docs = Vec::new();
        for e in envs {
            docs.push(DocKey::Environment(e));
            for k in environment_keys.get(&e).unwrap_or(&empty) {
                docs.push(DocKey::ApiKey(*k));
            }
        }
        docs
    };
    let envs_only =
        |envs: Vec<i32>| -> Vec<DocKey> { envs.into_iter().map(DocKey::Environment).collect() };
    let envs_of_segment = |s: i32| -> Vec<i32> {
        segment_project
            .get(&s)
            .unwrap_or(&empty)
            .iter()
            .flat_map(|p| envs_of_project(*p))
            .collect()
    };

    let mut out = HashMap::new();
    for anchor in anchors {
        let docs = match *anchor {
            Anchor::Environment(e) => vec![DocKey::Environment(e)],
            Anchor::EnvironmentAndKeys(e) => with_keys(vec![e]),
            Anchor::Project(p) => envs_only(envs_of_project(p)),
            Anchor::ProjectAndKeys(p) => with_keys(envs_of_project(p)),
            Anchor::OrganisationAndKeys(o) => {
                with_keys(org_environments.get(&o).unwrap_or(&empty).clone())
            }
            Anchor::Feature(f) => envs_only(
                feature_project
                    .get(&f)
                    .unwrap_or(&empty)
                    .iter()
                    .flat_map(|p| envs_of_project(*p))
                    .collect(),
            ),
            Anchor::Segment(s) => envs_only(envs_of_segment(s)),
            Anchor::Rule(r) => envs_only(
                rule_segment
                    .get(&r)
                    .unwrap_or(&empty)
                    .iter()
                    .flat_map(|s| envs_of_segment(*s))
                    .collect(),
            ),
            Anchor::FeatureState(fs) => {
                let mut docs = envs_only(state_environment.get(&fs).unwrap_or(&empty).clone());
                docs.extend(identities(state_identity.get(&fs)));
                docs
            }
            Anchor::ApiKey(k) => vec![DocKey::ApiKey(k)],
            Anchor::Identity(i) => vec![DocKey::Identity(i)],
            // Paged by capture::fanout, never expanded in one statement.
            Anchor::EnvironmentIdentities(_)
            | Anchor::ProjectIdentities(_)
            | Anchor::OrganisationIdentities(_)
            | Anchor::FeatureIdentities(_)
            | Anchor::OptionIdentities(_) => Vec::new(),
        };
        out.insert(*anchor, docs);
    }
    Ok(out)
}

async fn query_pairs(
    conn: &mut PgConnection,
    sql: &str,
    ids: &[i32],
) -> Result<Pairs, sqlx::Error> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    sqlx::query_as(sql).bind(ids).fetch_all(conn).await
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
