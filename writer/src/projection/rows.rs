//! Core rows as the projection reads them: one struct per query of [`super::load`].
//!
//! Rows are read as they are in Postgres (soft-deleted rows included where the projection
//! needs to see them), and the pure code in [`super::environment`] decides what counts.

use chrono::{DateTime, Utc};
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EnvironmentRow {
    pub id: i32,
    pub api_key: String,
    pub name: String,
    pub updated_at: DateTime<Utc>,
    pub allow_client_traits: bool,
    pub hide_sensitive_data: bool,
    pub hide_disabled_flags: Option<bool>,
    pub use_mv_v2_evaluation: bool,
    pub use_v2_feature_versioning: bool,
    pub use_identity_overrides_in_local_eval: bool,
    pub first_evaluated_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub project_id: i32,
    pub project_name: String,
    pub project_hide_disabled_flags: bool,
    pub project_enable_realtime_updates: bool,
    pub project_enable_dynamo_db: bool,
    pub project_v2_migration_status: String,
    pub project_deleted_at: Option<DateTime<Utc>>,
    pub organisation_id: i32,
    pub organisation_name: String,
    pub organisation_feature_analytics: bool,
    pub organisation_stop_serving_flags: bool,
    pub organisation_persist_trait_data: bool,
    pub organisation_deleted_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FeatureRow {
    pub id: i32,
    pub name: String,
    #[sqlx(rename = "type")]
    pub feature_type: String,
    pub is_server_key_only: bool,
}

/// A feature state of the environment that is not an identity override, with its value.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FeatureStateRow {
    pub id: i32,
    pub uuid: Uuid,
    pub feature_id: i32,
    pub feature_segment_id: Option<i32>,
    pub enabled: bool,
    pub version: Option<i32>,
    pub live_from: Option<DateTime<Utc>>,
    pub environment_feature_version_id: Option<Uuid>,
    pub mv_hashing_salt: Option<i32>,
    pub value_type: Option<String>,
    pub integer_value: Option<i32>,
    pub string_value: Option<String>,
    pub boolean_value: Option<bool>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FeatureVersionRow {
    pub uuid: Uuid,
    pub feature_id: i32,
    pub published_at: Option<DateTime<Utc>>,
    pub live_from: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FeatureSegmentRow {
    pub id: i32,
    pub feature_id: i32,
    pub segment_id: i32,
    pub priority: i32,
    pub environment_feature_version_id: Option<Uuid>,
}

/// A multivariate value of one of the environment's feature states, with its option.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MultivariateValueRow {
    pub id: i32,
    pub uuid: Uuid,
    pub feature_state_id: i32,
    pub percentage_allocation: f64,
    pub option_id: i32,
    pub option_type: Option<String>,
    pub option_integer_value: Option<i32>,
    pub option_string_value: Option<String>,
    pub option_boolean_value: Option<bool>,
    pub option_key: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SegmentRow {
    pub id: i32,
    pub name: String,
    pub feature_id: Option<i32>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RuleRow {
    pub id: i32,
    #[sqlx(rename = "type")]
    pub rule_type: String,
    pub segment_id: Option<i32>,
    pub rule_id: Option<i32>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConditionRow {
    pub id: i32,
    pub rule_id: i32,
    pub operator: String,
    pub property: Option<String>,
    pub value: Option<String>,
}

/// One live integration configuration of the environment.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct IntegrationRow {
    /// 'amplitude', 'heap', 'mixpanel', 'rudderstack', 'segment' or 'webhook'
    pub kind: String,
    pub api_key: Option<String>,
    pub base_url: Option<String>,
    pub secret: Option<String>,
}

/// Everything an environment document is built from, read in one snapshot.
#[derive(Debug, Clone)]
pub struct EnvironmentRows {
    /// `now()` of the snapshot: what "live" is measured against.
    pub snapshot_time: DateTime<Utc>,
    pub environment: EnvironmentRow,
    pub features: Vec<FeatureRow>,
    pub feature_states: Vec<FeatureStateRow>,
    pub feature_versions: Vec<FeatureVersionRow>,
    pub feature_segments: Vec<FeatureSegmentRow>,
    pub multivariate_values: Vec<MultivariateValueRow>,
    pub segments: Vec<SegmentRow>,
    pub rules: Vec<RuleRow>,
    pub conditions: Vec<ConditionRow>,
    pub integrations: Vec<IntegrationRow>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: i32,
    pub key: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub active: bool,
    pub client_api_key: String,
    pub environment_deleted_at: Option<DateTime<Utc>>,
    pub project_enable_dynamo_db: bool,
    pub project_deleted_at: Option<DateTime<Utc>>,
    pub organisation_deleted_at: Option<DateTime<Utc>>,
}

/// A core identity with what its documents depend on upstream (environment, project,
/// organisation).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct IdentityRow {
    pub id: i32,
    pub identifier: String,
    pub created_date: DateTime<Utc>,
    pub environment_id: i32,
    pub system_traits: serde_json::Value,
    pub environment_api_key: String,
    pub environment_deleted_at: Option<DateTime<Utc>>,
    pub environment_use_v2_feature_versioning: bool,
    pub project_enable_dynamo_db: bool,
    pub project_v2_migration_status: String,
    pub project_deleted_at: Option<DateTime<Utc>>,
    pub organisation_deleted_at: Option<DateTime<Utc>>,
    /// The identity_uuid an identity created at the edge already had (`edge.identity_uuid`);
    /// `None`: derived from the ids.
    pub edge_identity_uuid: Option<Uuid>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TraitRow {
    pub id: i32,
    pub identity_id: i32,
    pub trait_key: String,
    pub value_type: Option<String>,
    pub boolean_value: Option<bool>,
    pub integer_value: Option<i32>,
    pub float_value: Option<f64>,
    pub string_value: Option<String>,
}

/// An identity override: a feature state with `identity_id` set, with its value and its
/// (not deleted) feature.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct IdentityOverrideRow {
    pub identity_id: i32,
    #[sqlx(flatten)]
    pub state: FeatureStateRow,
    /// The override's last change (the v2 override item's `created_date`: Flagsmith stamps
    /// that item when the override is added or changed).
    pub updated_at: DateTime<Utc>,
    pub feature_name: String,
    pub feature_type: String,
}

/// Everything one identity document is built from, read in one snapshot.
#[derive(Debug, Clone)]
pub struct IdentityRows {
    pub snapshot_time: DateTime<Utc>,
    pub identity: IdentityRow,
    pub traits: Vec<TraitRow>,
    pub overrides: Vec<IdentityOverrideRow>,
    pub multivariate_values: Vec<MultivariateValueRow>,
}
