//! Reads the core rows of one document. Every function here runs inside the caller's
//! REPEATABLE READ transaction, so all the rows of a document come from one snapshot.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

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
WHERE project_id = $1 AND deleted_at IS NULL
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
WHERE project_id = $1 AND deleted_at IS NULL AND version_of_id = id
"#;

const RULES: &str = r#"
WITH RECURSIVE tree AS (
    SELECT r.id, r.type, r.segment_id, r.rule_id
    FROM segments_segmentrule r
    WHERE r.segment_id = ANY($1) AND r.deleted_at IS NULL
  UNION  -- not ALL: a cycle of rules (corrupt data) ends when no row is new
    SELECT c.id, c.type, c.segment_id, c.rule_id
    FROM segments_segmentrule c
    JOIN tree ON c.rule_id = tree.id
    WHERE c.deleted_at IS NULL
)
SELECT id, type, segment_id, rule_id FROM tree
"#;

const CONDITIONS: &str = r#"
SELECT id, rule_id, operator, property, value
FROM segments_condition
WHERE rule_id = ANY($1) AND deleted_at IS NULL
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

/// `now()` of the current transaction: the snapshot's clock.
pub async fn snapshot_time(conn: &mut PgConnection) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar("SELECT now()").fetch_one(conn).await
}

/// All rows of one environment document, or `None` when the environment row is gone.
pub async fn environment(
    conn: &mut PgConnection,
    id: i32,
) -> Result<Option<EnvironmentRows>, sqlx::Error> {
    let snapshot_time = snapshot_time(conn).await?;
    let Some(environment) = sqlx::query_as::<_, EnvironmentRow>(ENVIRONMENT)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let project_id = environment.project_id;
    let features = sqlx::query_as(FEATURES)
        .bind(project_id)
        .fetch_all(&mut *conn)
        .await?;
    let feature_states = sqlx::query_as(FEATURE_STATES)
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
    let feature_versions = sqlx::query_as(FEATURE_VERSIONS)
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
    let feature_segments = sqlx::query_as(FEATURE_SEGMENTS)
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
    let multivariate_values = sqlx::query_as(MULTIVARIATE_VALUES)
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
    let segments: Vec<SegmentRow> = sqlx::query_as(SEGMENTS)
        .bind(project_id)
        .fetch_all(&mut *conn)
        .await?;
    let segment_ids: Vec<i32> = segments.iter().map(|s| s.id).collect();
    let rules: Vec<RuleRow> = sqlx::query_as(RULES)
        .bind(&segment_ids)
        .fetch_all(&mut *conn)
        .await?;
    let rule_ids: Vec<i32> = rules.iter().map(|r| r.id).collect();
    let conditions = sqlx::query_as(CONDITIONS)
        .bind(&rule_ids)
        .fetch_all(&mut *conn)
        .await?;
    let integrations = sqlx::query_as(INTEGRATIONS)
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
    Ok(Some(EnvironmentRows {
        snapshot_time,
        environment,
        features,
        feature_states,
        feature_versions,
        feature_segments,
        multivariate_values,
        segments,
        rules,
        conditions,
        integrations,
    }))
}

pub async fn api_key(conn: &mut PgConnection, id: i32) -> Result<Option<ApiKeyRow>, sqlx::Error> {
    sqlx::query_as(API_KEY).bind(id).fetch_optional(conn).await
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
WHERE mv.feature_state_id = ANY($1)
"#;

/// The rows of many identity documents in four queries (the migration job reads a page at
/// a time; the live path a page of one). Identities whose row is gone are left out.
pub async fn identities(
    conn: &mut PgConnection,
    ids: &[i32],
) -> Result<Vec<IdentityRows>, sqlx::Error> {
    let snapshot_time = snapshot_time(conn).await?;
    let identities: Vec<IdentityRow> = sqlx::query_as(IDENTITIES)
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?;
    if identities.is_empty() {
        return Ok(vec![]);
    }
    let found: Vec<i32> = identities.iter().map(|i| i.id).collect();
    let traits: Vec<TraitRow> = sqlx::query_as(TRAITS)
        .bind(&found)
        .fetch_all(&mut *conn)
        .await?;
    let overrides: Vec<IdentityOverrideRow> = sqlx::query_as(IDENTITY_OVERRIDES)
        .bind(&found)
        .fetch_all(&mut *conn)
        .await?;
    let state_ids: Vec<i32> = overrides.iter().map(|o| o.state.id).collect();
    let multivariate_values: Vec<MultivariateValueRow> = if state_ids.is_empty() {
        vec![]
    } else {
        sqlx::query_as(IDENTITY_MULTIVARIATE_VALUES)
            .bind(&state_ids)
            .fetch_all(&mut *conn)
            .await?
    };

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
    Ok(identities
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
        .collect())
}
