//! Reads the core rows of documents: all the rows of a call come from one snapshot
//! ([`snapshot::fetch`]), read in one message: one round trip per call.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::snapshot;

use super::rows::*;

const ENVIRONMENT: &str = r#"
SELECT e.id, e.api_key, e.name, e.updated_at, e.allow_client_traits, e.hide_sensitive_data,
       e.hide_disabled_flags, e.use_mv_v2_evaluation, e.use_v2_feature_versioning,
       e.use_identity_overrides_in_local_eval, e.first_evaluated_at, e.deleted_at,
       p.id AS project_id, p.name AS project_name,
       p.hide_disabled_flags AS project_hide_disabled_flags,
       p.enable_realtime_updates AS project_enable_realtime_updates,
       p.enable_dynamo_db AS project_enable_dynamo_db,
       p.identity_overrides_v2_migration_status AS project_v2_migration_status,
       p.deleted_at AS project_deleted_at,
       o.id AS organisation_id, o.name AS organisation_name,
       o.feature_analytics AS organisation_feature_analytics,
       o.stop_serving_flags AS organisation_stop_serving_flags,
       o.persist_trait_data AS organisation_persist_trait_data,
       o.deleted_at AS organisation_deleted_at
FROM environments_environment e
JOIN projects_project p ON p.id = e.project_id
JOIN organisations_organisation o ON o.id = p.organisation_id
WHERE e.id = $1
"#;

const FEATURES: &str = r#"
SELECT id, name, type, is_server_key_only
FROM features_feature
WHERE project_id = (SELECT project_id FROM environments_environment WHERE id = $1)
  AND deleted_at IS NULL
"#;

const FEATURE_STATES: &str = r#"
SELECT fs.id, fs.uuid, fs.feature_id, fs.feature_segment_id, fs.enabled, fs.version,
       fs.live_from, fs.environment_feature_version_id, fs.mv_hashing_salt,
       v.type AS value_type, v.integer_value, v.string_value, v.boolean_value
FROM features_featurestate fs
LEFT JOIN features_featurestatevalue v ON v.feature_state_id = fs.id AND v.deleted_at IS NULL
WHERE fs.environment_id = $1 AND fs.identity_id IS NULL AND fs.deleted_at IS NULL
"#;

const FEATURE_VERSIONS: &str = r#"
SELECT uuid, feature_id, published_at, live_from, deleted_at
FROM feature_versioning_environmentfeatureversion
WHERE environment_id = $1
"#;

const FEATURE_SEGMENTS: &str = r#"
SELECT id, feature_id, segment_id, priority, environment_feature_version_id
FROM features_featuresegment
WHERE environment_id = $1
"#;

const MULTIVARIATE_VALUES: &str = r#"
SELECT mv.id, mv.uuid, mv.feature_state_id, mv.percentage_allocation,
       o.id AS option_id, o.type AS option_type, o.integer_value AS option_integer_value,
       o.string_value AS option_string_value, o.boolean_value AS option_boolean_value,
       o.key AS option_key
FROM multivariate_multivariatefeaturestatevalue mv
JOIN multivariate_multivariatefeatureoption o ON o.id = mv.multivariate_feature_option_id
JOIN features_featurestate fs ON fs.id = mv.feature_state_id
WHERE fs.environment_id = $1 AND fs.identity_id IS NULL AND fs.deleted_at IS NULL
"#;

/// Live segment versions only (`version_of_id = id`); older rows are revisions.
const SEGMENTS: &str = r#"
SELECT id, name, feature_id
FROM segments_segment
WHERE project_id = (SELECT project_id FROM environments_environment WHERE id = $1)
  AND deleted_at IS NULL AND version_of_id = id
"#;

/// The rule tree of the project's live segments. `UNION`, not `UNION ALL`: a cycle of rules
/// (corrupt data) ends when no row is new.
const RULE_TREE: &str = r#"
WITH RECURSIVE tree AS (
    SELECT r.id, r.type, r.segment_id, r.rule_id
    FROM segments_segmentrule r
    WHERE r.deleted_at IS NULL AND r.segment_id IN (
        SELECT s.id FROM segments_segment s
        WHERE s.project_id = (SELECT project_id FROM environments_environment WHERE id = $1)
          AND s.deleted_at IS NULL AND s.version_of_id = s.id)
  UNION
    SELECT c.id, c.type, c.segment_id, c.rule_id
    FROM segments_segmentrule c
    JOIN tree ON c.rule_id = tree.id
    WHERE c.deleted_at IS NULL
)
"#;

const RULES: &str = "SELECT id, type, segment_id, rule_id FROM tree";

const CONDITIONS: &str = r#"
SELECT id, rule_id, operator, property, value
FROM segments_condition
WHERE rule_id IN (SELECT id FROM tree) AND deleted_at IS NULL
"#;

const INTEGRATIONS: &str = r#"
SELECT 'amplitude' AS kind, api_key, base_url, NULL::text AS secret
  FROM amplitude_amplitudeconfiguration WHERE environment_id = $1 AND deleted_at IS NULL
UNION ALL
SELECT 'heap', api_key, base_url, NULL FROM heap_heapconfiguration
  WHERE environment_id = $1 AND deleted_at IS NULL
UNION ALL
SELECT 'mixpanel', api_key, base_url, NULL FROM mixpanel_mixpanelconfiguration
  WHERE environment_id = $1 AND deleted_at IS NULL
UNION ALL
SELECT 'rudderstack', api_key, base_url, NULL FROM rudderstack_rudderstackconfiguration
  WHERE environment_id = $1 AND deleted_at IS NULL
UNION ALL
SELECT 'segment', api_key, base_url, NULL FROM segment_segmentconfiguration
  WHERE environment_id = $1 AND deleted_at IS NULL
UNION ALL
SELECT 'webhook', NULL, url, secret FROM webhook_webhookconfiguration
  WHERE environment_id = $1 AND deleted_at IS NULL
"#;

const API_KEY: &str = r#"
SELECT k.id, k.key, k.name, k.created_at, k.expires_at, k.active,
       e.api_key AS client_api_key, e.deleted_at AS environment_deleted_at,
       p.enable_dynamo_db AS project_enable_dynamo_db, p.deleted_at AS project_deleted_at,
       o.deleted_at AS organisation_deleted_at
FROM environments_environmentapikey k
JOIN environments_environment e ON e.id = k.environment_id
JOIN projects_project p ON p.id = e.project_id
JOIN organisations_organisation o ON o.id = p.organisation_id
WHERE k.id = $1
"#;

/// Every statement of a snapshot read, by name: prepared once per connection
/// ([`snapshot::Prepared`]) and executed by name, so Postgres plans each once per
/// connection rather than on every read.
static STATEMENTS: std::sync::LazyLock<Vec<snapshot::Prepared>> = std::sync::LazyLock::new(|| {
    let env = |name: &'static str, sql: String| snapshot::Prepared {
        name,
        arg_type: "int",
        sql,
    };
    let ids = |name: &'static str, sql: &str| snapshot::Prepared {
        name,
        arg_type: "int[]",
        sql: sql.to_string(),
    };
    vec![
        env("edge_snap_environment", ENVIRONMENT.into()),
        env("edge_snap_features", FEATURES.into()),
        env("edge_snap_feature_states", FEATURE_STATES.into()),
        env("edge_snap_feature_versions", FEATURE_VERSIONS.into()),
        env("edge_snap_feature_segments", FEATURE_SEGMENTS.into()),
        env("edge_snap_multivariate_values", MULTIVARIATE_VALUES.into()),
        env("edge_snap_segments", SEGMENTS.into()),
        env("edge_snap_rules", format!("{RULE_TREE}{RULES}")),
        env("edge_snap_conditions", format!("{RULE_TREE}{CONDITIONS}")),
        env("edge_snap_integrations", INTEGRATIONS.into()),
        env("edge_snap_api_key", API_KEY.into()),
        ids("edge_snap_identities", IDENTITIES),
        ids("edge_snap_traits", TRAITS),
        ids("edge_snap_identity_overrides", IDENTITY_OVERRIDES),
        ids(
            "edge_snap_identity_multivariate_values",
            IDENTITY_MULTIVARIATE_VALUES,
        ),
    ]
});

const NOW: &str = "SELECT now()";

/// `SELECT now()` and `EXECUTE <name>(<arg>)` of each name; `arg` is an integer or an
/// array literal of integers, made here from integers.
fn executions(names: &[&str], arg: &str) -> Vec<String> {
    std::iter::once(NOW.to_string())
        .chain(names.iter().map(|n| format!("EXECUTE {n}({arg})")))
        .collect()
}

/// The statements of an environment document, in the order [`environment`] decodes them.
fn environment_statements(id: i32) -> Vec<String> {
    executions(
        &[
            "edge_snap_environment",
            "edge_snap_features",
            "edge_snap_feature_states",
            "edge_snap_feature_versions",
            "edge_snap_feature_segments",
            "edge_snap_multivariate_values",
            "edge_snap_segments",
            "edge_snap_rules",
            "edge_snap_conditions",
            "edge_snap_integrations",
        ],
        &id.to_string(),
    )
}

/// The snapshot's time and all rows of one environment document (`None` when the
/// environment row is gone), in one round trip: the executions of the prepared statements go
/// in one simple-protocol message; the only value in them is the environment's integer id.
pub async fn environment(
    conn: &mut PgConnection,
    id: i32,
) -> Result<(DateTime<Utc>, Option<EnvironmentRows>), sqlx::Error> {
    let mut sets = snapshot::fetch(conn, &environment_statements(id), &STATEMENTS).await?;
    let snapshot_time = sets.scalar()?;
    let Some(environment) = sets.take::<EnvironmentRow>()?.into_iter().next() else {
        return Ok((snapshot_time, None));
    };
    let rows = EnvironmentRows {
        snapshot_time,
        environment,
        features: sets.take()?,
        feature_states: sets.take()?,
        feature_versions: sets.take()?,
        feature_segments: sets.take()?,
        multivariate_values: sets.take()?,
        segments: sets.take()?,
        rules: sets.take()?,
        conditions: sets.take()?,
        integrations: sets.take()?,
    };
    Ok((snapshot_time, Some(rows)))
}

/// The snapshot's time and the API key's row (`None`: gone), in one round trip.
pub async fn api_key(
    conn: &mut PgConnection,
    id: i32,
) -> Result<(DateTime<Utc>, Option<ApiKeyRow>), sqlx::Error> {
    let statements = executions(&["edge_snap_api_key"], &id.to_string());
    let mut sets = snapshot::fetch(conn, &statements, &STATEMENTS).await?;
    let snapshot_time = sets.scalar()?;
    Ok((snapshot_time, sets.take()?.into_iter().next()))
}

const IDENTITIES: &str = r#"
SELECT i.id, i.identifier, i.created_date, i.environment_id, i.system_traits,
       e.api_key AS environment_api_key, e.deleted_at AS environment_deleted_at,
       e.use_v2_feature_versioning AS environment_use_v2_feature_versioning,
       p.enable_dynamo_db AS project_enable_dynamo_db,
       p.identity_overrides_v2_migration_status AS project_v2_migration_status,
       p.deleted_at AS project_deleted_at, o.deleted_at AS organisation_deleted_at,
       u.identity_uuid AS edge_identity_uuid
FROM environments_identity i
JOIN environments_environment e ON e.id = i.environment_id
JOIN projects_project p ON p.id = e.project_id
JOIN organisations_organisation o ON o.id = p.organisation_id
LEFT JOIN edge.identity_uuid u ON u.identity_id = i.id
WHERE i.id = ANY($1)
"#;

const TRAITS: &str = r#"
SELECT id, identity_id, trait_key, value_type, boolean_value, integer_value, float_value,
       string_value
FROM environments_trait
WHERE identity_id = ANY($1)
ORDER BY identity_id, id
"#;

const IDENTITY_OVERRIDES: &str = r#"
SELECT fs.identity_id, fs.id, fs.uuid, fs.feature_id, fs.feature_segment_id, fs.enabled, fs.updated_at,
       fs.version, fs.live_from, fs.environment_feature_version_id, fs.mv_hashing_salt,
       v.type AS value_type, v.integer_value, v.string_value, v.boolean_value,
       f.name AS feature_name, f.type AS feature_type
FROM features_featurestate fs
JOIN features_feature f ON f.id = fs.feature_id AND f.deleted_at IS NULL
LEFT JOIN features_featurestatevalue v ON v.feature_state_id = fs.id AND v.deleted_at IS NULL
WHERE fs.identity_id = ANY($1) AND fs.deleted_at IS NULL
"#;

const IDENTITY_MULTIVARIATE_VALUES: &str = r#"
SELECT mv.id, mv.uuid, mv.feature_state_id, mv.percentage_allocation,
       o.id AS option_id, o.type AS option_type, o.integer_value AS option_integer_value,
       o.string_value AS option_string_value, o.boolean_value AS option_boolean_value,
       o.key AS option_key
FROM multivariate_multivariatefeaturestatevalue mv
JOIN multivariate_multivariatefeatureoption o ON o.id = mv.multivariate_feature_option_id
WHERE mv.feature_state_id IN (
    SELECT fs.id FROM features_featurestate fs
    JOIN features_feature f ON f.id = fs.feature_id AND f.deleted_at IS NULL
    WHERE fs.identity_id = ANY($1) AND fs.deleted_at IS NULL)
"#;

/// The statements of [`identities`].
fn identity_statements(ids: &[i32]) -> Vec<String> {
    let list: Vec<String> = ids.iter().map(ToString::to_string).collect();
    executions(
        &[
            "edge_snap_identities",
            "edge_snap_traits",
            "edge_snap_identity_overrides",
            "edge_snap_identity_multivariate_values",
        ],
        &format!("'{{{}}}'::int[]", list.join(",")),
    )
}

/// The rows of many identity documents in one round trip (the migration job reads a page at
/// a time; the live path a page of one). Identities whose row is gone are left out.
pub async fn identities(
    conn: &mut PgConnection,
    ids: &[i32],
) -> Result<Vec<IdentityRows>, sqlx::Error> {
    Ok(identities_at(conn, ids).await?.1)
}

/// [`identities`] with the snapshot's time (which the rows carry too, when there are any).
pub async fn identities_at(
    conn: &mut PgConnection,
    ids: &[i32],
) -> Result<(DateTime<Utc>, Vec<IdentityRows>), sqlx::Error> {
    let mut sets = snapshot::fetch(conn, &identity_statements(ids), &STATEMENTS).await?;
    let snapshot_time = sets.scalar()?;
    let identities: Vec<IdentityRow> = sets.take()?;
    let traits: Vec<TraitRow> = sets.take()?;
    let overrides: Vec<IdentityOverrideRow> = sets.take()?;
    let multivariate_values: Vec<MultivariateValueRow> = sets.take()?;

    let mut traits_of: std::collections::HashMap<i32, Vec<TraitRow>> = Default::default();
    for t in traits {
        traits_of.entry(t.identity_id).or_default().push(t);
    }
    let mut overrides_of: std::collections::HashMap<i32, Vec<IdentityOverrideRow>> =
        Default::default();
    for o in overrides {
        overrides_of.entry(o.identity_id).or_default().push(o);
    }
    let mut mv_of: std::collections::HashMap<i32, Vec<MultivariateValueRow>> = Default::default();
    for mv in multivariate_values {
        mv_of.entry(mv.feature_state_id).or_default().push(mv);
    }
    let rows = identities
        .into_iter()
        .map(|identity| {
            let overrides = overrides_of.remove(&identity.id).unwrap_or_default();
            let multivariate_values = overrides
                .iter()
                .flat_map(|o| mv_of.remove(&o.state.id).unwrap_or_default())
                .collect();
            IdentityRows {
                snapshot_time,
                traits: traits_of.remove(&identity.id).unwrap_or_default(),
                overrides,
                multivariate_values,
                identity,
            }
        })
        .collect();
    Ok((snapshot_time, rows))
}
