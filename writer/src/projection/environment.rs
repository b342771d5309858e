//! Environment document from core rows: pure, no I/O.
//!
//! Which rows count follows Flagsmith core (`api/util/mappers/engine.py`, the feature,
//! segment and versioning models): soft-deleted rows do not exist, only live segment
//! versions count, feature states are live by versioning v1 (`version`, `live_from`) or v2
//! (published environment feature versions), `django_id` is the multivariate bucketing seed.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use edge_documents::model::{
    isoformat, EnvironmentDocument, Feature, FeatureSegment, FeatureState, FlagValue,
    IntegrationConfig, MultivariateFeatureOption, MultivariateFeatureStateValue, Organisation,
    Project, Segment, SegmentCondition, SegmentRule, WebhookConfig,
};
use uuid::Uuid;

use super::rows::*;
use super::ProjectionError;

pub const FEATURE_TYPES: [&str; 2] = ["STANDARD", "MULTIVARIATE"];
pub const RULE_TYPES: [&str; 3] = ["ALL", "ANY", "NONE"];
pub const OPERATORS: [&str; 14] = [
    "EQUAL",
    "NOT_EQUAL",
    "GREATER_THAN",
    "GREATER_THAN_INCLUSIVE",
    "LESS_THAN",
    "LESS_THAN_INCLUSIVE",
    "CONTAINS",
    "NOT_CONTAINS",
    "REGEX",
    "IN",
    "PERCENTAGE_SPLIT",
    "MODULO",
    "IS_SET",
    "IS_NOT_SET",
];

/// The v2 migration statuses for which the environments_v2 `_META` item is written.
pub const V2_META_STATUSES: [&str; 2] = ["COMPLETE", "INCOMPLETE"];

/// What an environment projects to.
#[derive(Debug, Clone, PartialEq)]
pub enum EnvironmentProjection {
    /// The environment is deleted, or its project is not on the edge: no items.
    Absent,
    Present {
        document: Box<EnvironmentDocument>,
        /// Whether the environments_v2 `_META` item is written too.
        write_v2_meta: bool,
        /// Earliest future `live_from` this document depends on.
        next_change_at: Option<DateTime<Utc>>,
    },
}

/// Whether the environment's documents exist at all on the edge.
pub fn is_on_edge(env: &EnvironmentRow) -> bool {
    env.deleted_at.is_none()
        && env.project_deleted_at.is_none()
        && env.organisation_deleted_at.is_none()
        && env.project_enable_dynamo_db
}

pub fn project_environment(
    rows: &EnvironmentRows,
) -> Result<EnvironmentProjection, ProjectionError> {
    let env = &rows.environment;
    if !is_on_edge(env) {
        return Ok(EnvironmentProjection::Absent);
    }
    let now = rows.snapshot_time;
    let features: HashMap<i32, &FeatureRow> = rows.features.iter().map(|f| (f.id, f)).collect();
    for f in &rows.features {
        if !FEATURE_TYPES.contains(&f.feature_type.as_str()) {
            return Err(ProjectionError::invalid(format!(
                "feature {} ({:?}) has type {:?}; Flagsmith's edge accepts only STANDARD or MULTIVARIATE",
                f.id, f.name, f.feature_type
            )));
        }
    }
    let mut mv_by_state: HashMap<i32, Vec<&MultivariateValueRow>> = HashMap::new();
    for mv in &rows.multivariate_values {
        mv_by_state.entry(mv.feature_state_id).or_default().push(mv);
    }

    let live = LiveStates::select(rows, &features, now);

    // Environment defaults, one per feature, in feature id order.
    let mut feature_states = Vec::new();
    for (feature_id, state) in &live.defaults {
        let feature = features[feature_id];
        feature_states.push(feature_state(state, feature, None, &mv_by_state)?);
    }
    let server_key_only_feature_ids: Vec<i64> = live
        .defaults
        .keys()
        .filter(|id| features[id].is_server_key_only)
        .map(|id| i64::from(*id))
        .collect();

    // Segment overrides, grouped by segment.
    let feature_segments: HashMap<i32, &FeatureSegmentRow> =
        rows.feature_segments.iter().map(|fs| (fs.id, fs)).collect();
    let mut overrides: BTreeMap<i32, Vec<FeatureState>> = BTreeMap::new();
    for (fs_id, state) in &live.overrides {
        let fseg = feature_segments[fs_id];
        let feature = features[&state.feature_id];
        let fs = feature_state(
            state,
            feature,
            Some(FeatureSegment {
                priority: Some(i64::from(fseg.priority)),
            }),
            &mv_by_state,
        )?;
        overrides.entry(fseg.segment_id).or_default().push(fs);
    }

    let segments = build_segments(rows, &mut overrides)?;

    let integration = |kind: &str| {
        rows.integrations
            .iter()
            .find(|i| i.kind == kind)
            .map(|i| IntegrationConfig {
                api_key: i.api_key.clone(),
                base_url: i.base_url.clone(),
            })
    };
    let webhook_config = rows
        .integrations
        .iter()
        .find(|i| i.kind == "webhook")
        .map(|i| WebhookConfig {
            url: i.base_url.clone().unwrap_or_default(),
            secret: i.secret.clone().unwrap_or_default(),
        });

    let document = EnvironmentDocument {
        api_key: env.api_key.clone(),
        id: i64::from(env.id),
        name: env.name.clone(),
        updated_at: iso(env.updated_at),
        project: Project {
            id: i64::from(env.project_id),
            name: env.project_name.clone(),
            organisation: Organisation {
                id: i64::from(env.organisation_id),
                name: env.organisation_name.clone(),
                feature_analytics: env.organisation_feature_analytics,
                stop_serving_flags: env.organisation_stop_serving_flags,
                persist_trait_data: env.organisation_persist_trait_data,
            },
            segments,
            hide_disabled_flags: env.project_hide_disabled_flags,
            enable_realtime_updates: env.project_enable_realtime_updates,
            server_key_only_feature_ids,
        },
        feature_states,
        allow_client_traits: env.allow_client_traits,
        hide_sensitive_data: env.hide_sensitive_data,
        hide_disabled_flags: env.hide_disabled_flags,
        // Flagsmith core maps this flag from `use_mv_v2_evaluation`.
        use_identity_composite_key_for_hashing: env.use_mv_v2_evaluation,
        use_identity_overrides_in_local_eval: env.use_identity_overrides_in_local_eval,
        onboarding_pending: env.first_evaluated_at.is_none(),
        amplitude_config: integration("amplitude"),
        heap_config: integration("heap"),
        mixpanel_config: integration("mixpanel"),
        rudderstack_config: integration("rudderstack"),
        segment_config: integration("segment"),
        webhook_config,
    };
    Ok(EnvironmentProjection::Present {
        document: Box::new(document),
        write_v2_meta: V2_META_STATUSES.contains(&env.project_v2_migration_status.as_str()),
        next_change_at: live.next_change_at,
    })
}

/// The feature states that are live at the snapshot time.
struct LiveStates<'a> {
    /// feature id -> environment default
    defaults: BTreeMap<i32, &'a FeatureStateRow>,
    /// feature segment id -> segment override
    overrides: BTreeMap<i32, &'a FeatureStateRow>,
    next_change_at: Option<DateTime<Utc>>,
}

impl<'a> LiveStates<'a> {
    fn select(
        rows: &'a EnvironmentRows,
        features: &HashMap<i32, &FeatureRow>,
        now: DateTime<Utc>,
    ) -> LiveStates<'a> {
        let mut next_change_at: Option<DateTime<Utc>> = None;
        let mut note_future = |t: DateTime<Utc>| {
            if t > now && next_change_at.is_none_or(|n| t < n) {
                next_change_at = Some(t);
            }
        };
        let feature_segments: HashMap<i32, &FeatureSegmentRow> =
            rows.feature_segments.iter().map(|fs| (fs.id, fs)).collect();
        let live_segments: HashSet<i32> = rows.segments.iter().map(|s| s.id).collect();
        let counts = |state: &FeatureStateRow| features.contains_key(&state.feature_id);
        let override_counts = |state: &FeatureStateRow, fs_id: i32| {
            feature_segments
                .get(&fs_id)
                .is_some_and(|fseg| live_segments.contains(&fseg.segment_id))
                && counts(state)
        };

        let mut defaults: BTreeMap<i32, &FeatureStateRow> = BTreeMap::new();
        let mut overrides: BTreeMap<i32, &FeatureStateRow> = BTreeMap::new();

        if rows.environment.use_v2_feature_versioning {
            // Versioning v2: per feature, the published version with the latest live_from
            // that is not in the future.
            let mut latest: HashMap<i32, &FeatureVersionRow> = HashMap::new();
            for v in &rows.feature_versions {
                let (Some(_), Some(live_from), None) = (v.published_at, v.live_from, v.deleted_at)
                else {
                    continue;
                };
                if live_from > now {
                    note_future(live_from);
                    continue;
                }
                let better = latest
                    .get(&v.feature_id)
                    .is_none_or(|cur| cur.live_from < v.live_from);
                if better {
                    latest.insert(v.feature_id, v);
                }
            }
            let live_versions: HashSet<Uuid> = latest.values().map(|v| v.uuid).collect();
            for state in &rows.feature_states {
                let Some(version) = state.environment_feature_version_id else {
                    continue;
                };
                if !live_versions.contains(&version) || !counts(state) {
                    continue;
                }
                match state.feature_segment_id {
                    None => {
                        defaults.insert(state.feature_id, state);
                    }
                    Some(fs_id) => {
                        let in_version = feature_segments.get(&fs_id).is_some_and(|fseg| {
                            fseg.environment_feature_version_id == Some(version)
                        });
                        if in_version && override_counts(state, fs_id) {
                            overrides.insert(fs_id, state);
                        }
                    }
                }
            }
        } else {
            // Versioning v1: live when version and live_from are set and live_from has
            // passed; the later live_from wins, then the higher version.
            let key = |s: &FeatureStateRow| (s.live_from, s.version);
            for state in &rows.feature_states {
                let (Some(_), Some(live_from)) = (state.version, state.live_from) else {
                    continue;
                };
                if live_from > now {
                    note_future(live_from);
                    continue;
                }
                if !counts(state) {
                    continue;
                }
                let slot = match state.feature_segment_id {
                    None => defaults.entry(state.feature_id),
                    Some(fs_id) => {
                        if !override_counts(state, fs_id) {
                            continue;
                        }
                        overrides.entry(fs_id)
                    }
                };
                match slot {
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(state);
                    }
                    std::collections::btree_map::Entry::Occupied(mut o) => {
                        if key(state) > key(o.get()) {
                            o.insert(state);
                        }
                    }
                }
            }
        }
        LiveStates {
            defaults,
            overrides,
            next_change_at,
        }
    }
}

pub(crate) fn feature_state(
    state: &FeatureStateRow,
    feature: &FeatureRow,
    feature_segment: Option<FeatureSegment>,
    mv_by_state: &HashMap<i32, Vec<&MultivariateValueRow>>,
) -> Result<FeatureState, ProjectionError> {
    let mut mv_rows: Vec<&MultivariateValueRow> =
        mv_by_state.get(&state.id).cloned().unwrap_or_default();
    mv_rows.sort_by_key(|mv| mv.id);
    let mut total = 0.0;
    let mut values = Vec::with_capacity(mv_rows.len());
    for mv in mv_rows {
        if !(0.0..=100.0).contains(&mv.percentage_allocation) {
            return Err(ProjectionError::invalid(format!(
                "multivariate value {} of feature state {} has percentage_allocation {}, outside 0-100",
                mv.id, state.id, mv.percentage_allocation
            )));
        }
        total += mv.percentage_allocation;
        values.push(MultivariateFeatureStateValue {
            id: Some(i64::from(mv.id)),
            mv_fs_value_uuid: Some(mv.uuid.to_string()),
            percentage_allocation: mv.percentage_allocation,
            multivariate_feature_option: MultivariateFeatureOption {
                id: Some(i64::from(mv.option_id)),
                value: typed_value(
                    mv.option_type.as_deref(),
                    mv.option_integer_value,
                    mv.option_boolean_value,
                    mv.option_string_value.as_deref(),
                ),
                key: mv.option_key.clone(),
            },
        });
    }
    if total > 100.0 + 1e-9 {
        return Err(ProjectionError::invalid(format!(
            "feature state {} (feature {:?}) allocates {total}% to multivariate values, over 100%",
            state.id, feature.name
        )));
    }
    Ok(FeatureState {
        feature: Feature {
            id: i64::from(feature.id),
            name: feature.name.clone(),
            feature_type: feature.feature_type.clone(),
        },
        enabled: state.enabled,
        feature_state_value: typed_value(
            state.value_type.as_deref(),
            state.integer_value,
            state.boolean_value,
            state.string_value.as_deref(),
        ),
        django_id: Some(i64::from(state.mv_hashing_salt.unwrap_or(state.id))),
        featurestate_uuid: Some(state.uuid.to_string()),
        feature_segment,
        multivariate_feature_state_values: values,
    })
}

/// A typed core value: `int` -> integer, `bool` -> boolean, anything else -> string.
pub fn typed_value(
    value_type: Option<&str>,
    integer: Option<i32>,
    boolean: Option<bool>,
    string: Option<&str>,
) -> Option<FlagValue> {
    match value_type {
        Some("int") => integer.map(|i| FlagValue::Int(i64::from(i))),
        Some("bool") => boolean.map(FlagValue::Bool),
        _ => string.map(|s| FlagValue::Str(s.to_string())),
    }
}

fn build_segments(
    rows: &EnvironmentRows,
    overrides: &mut BTreeMap<i32, Vec<FeatureState>>,
) -> Result<Vec<Segment>, ProjectionError> {
    let mut children: HashMap<i32, Vec<&RuleRow>> = HashMap::new();
    let mut top: HashMap<i32, Vec<&RuleRow>> = HashMap::new();
    for rule in &rows.rules {
        if !RULE_TYPES.contains(&rule.rule_type.as_str()) {
            return Err(ProjectionError::invalid(format!(
                "segment rule {} has type {:?}; expected ALL, ANY or NONE",
                rule.id, rule.rule_type
            )));
        }
        match (rule.segment_id, rule.rule_id) {
            (Some(segment), _) => top.entry(segment).or_default().push(rule),
            (None, Some(parent)) => children.entry(parent).or_default().push(rule),
            (None, None) => {}
        }
    }
    let mut conditions: HashMap<i32, Vec<&ConditionRow>> = HashMap::new();
    for c in &rows.conditions {
        conditions.entry(c.rule_id).or_default().push(c);
    }

    let mut segments = Vec::new();
    let mut ordered: Vec<&SegmentRow> = rows.segments.iter().collect();
    ordered.sort_by_key(|s| s.id);
    for segment in ordered {
        let feature_states = overrides.remove(&segment.id).unwrap_or_default();
        // A feature-specific segment counts only where it overrides something.
        if segment.feature_id.is_some() && feature_states.is_empty() {
            continue;
        }
        let mut rules = Vec::new();
        let mut roots = top.get(&segment.id).cloned().unwrap_or_default();
        roots.sort_by_key(|r| r.id);
        for root in roots {
            rules.push(build_rule(segment.id, root, &children, &conditions, 0)?);
        }
        segments.push(Segment {
            id: i64::from(segment.id),
            name: segment.name.clone(),
            rules,
            feature_states,
        });
    }
    Ok(segments)
}

fn build_rule(
    segment_id: i32,
    rule: &RuleRow,
    children: &HashMap<i32, Vec<&RuleRow>>,
    conditions: &HashMap<i32, Vec<&ConditionRow>>,
    depth: usize,
) -> Result<SegmentRule, ProjectionError> {
    if depth > 32 {
        return Err(ProjectionError::invalid(format!(
            "segment {segment_id}: rules nest more than 32 deep at rule {} (a cycle?)",
            rule.id
        )));
    }
    let mut sub = children.get(&rule.id).cloned().unwrap_or_default();
    sub.sort_by_key(|r| r.id);
    let mut rules = Vec::with_capacity(sub.len());
    for r in sub {
        rules.push(build_rule(segment_id, r, children, conditions, depth + 1)?);
    }
    let mut conds = conditions.get(&rule.id).cloned().unwrap_or_default();
    conds.sort_by_key(|c| c.id);
    let mut out = Vec::with_capacity(conds.len());
    for c in conds {
        if !OPERATORS.contains(&c.operator.as_str()) {
            return Err(ProjectionError::invalid(format!(
                "segment {segment_id}, condition {}: unknown operator {:?}",
                c.id, c.operator
            )));
        }
        if matches!(c.operator.as_str(), "IN" | "PERCENTAGE_SPLIT" | "MODULO") && c.value.is_none()
        {
            return Err(ProjectionError::invalid(format!(
                "segment {segment_id}, condition {}: operator {} needs a value, and it is null (the flag engine would crash on it)",
                c.id, c.operator
            )));
        }
        out.push(SegmentCondition {
            operator: c.operator.clone(),
            property_: c.property.clone(),
            value: c.value.clone(),
        });
    }
    Ok(SegmentRule {
        rule_type: rule.rule_type.clone(),
        rules,
        conditions: out,
    })
}

pub fn iso(t: DateTime<Utc>) -> String {
    isoformat(t.timestamp_micros())
}

#[cfg(test)]
#[path = "environment_tests.rs"]
mod tests;
