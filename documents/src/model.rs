//! Flagsmith's edge documents as typed values.
//!
//! Field names, optionality and nesting follow `flagsmith_schemas.dynamodb` (flagsmith-common
//! 3.16) and what the Python SDK's `map_environment_document_to_context` reads. Keys that the
//! SDK reads unconditionally (`name`, `updated_at`, `feature_state_value`, a condition's
//! `value`, `rules`/`conditions`, `multivariate_feature_state_values`) are always written,
//! as `null` or `[]` when empty, never left out.

use serde::{Deserialize, Serialize};

/// A feature state value or multivariate option value: Flagsmith stores ints, bools and
/// strings (floats are stored as strings by the core API already).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FlagValue {
    Bool(bool),
    Int(i64),
    Str(String),
}

/// The environment document: table `flagsmith_environments`, key `api_key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentDocument {
    pub api_key: String,
    pub id: i64,
    pub name: String,
    pub updated_at: String,
    pub project: Project,
    pub feature_states: Vec<FeatureState>,
    pub allow_client_traits: bool,
    pub hide_sensitive_data: bool,
    pub hide_disabled_flags: Option<bool>,
    pub use_identity_composite_key_for_hashing: bool,
    pub use_identity_overrides_in_local_eval: bool,
    pub onboarding_pending: bool,
    pub amplitude_config: Option<IntegrationConfig>,
    pub heap_config: Option<IntegrationConfig>,
    pub mixpanel_config: Option<IntegrationConfig>,
    pub rudderstack_config: Option<IntegrationConfig>,
    pub segment_config: Option<IntegrationConfig>,
    pub webhook_config: Option<WebhookConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntegrationConfig {
    pub api_key: Option<String>,
    pub base_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookConfig {
    pub url: String,
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Project {
    pub id: i64,
    pub name: String,
    pub organisation: Organisation,
    pub segments: Vec<Segment>,
    pub hide_disabled_flags: bool,
    pub enable_realtime_updates: bool,
    pub server_key_only_feature_ids: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Organisation {
    pub id: i64,
    pub name: String,
    pub feature_analytics: bool,
    pub stop_serving_flags: bool,
    pub persist_trait_data: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub id: i64,
    pub name: String,
    pub rules: Vec<SegmentRule>,
    /// Segment overrides of this environment.
    pub feature_states: Vec<FeatureState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentRule {
    #[serde(rename = "type")]
    pub rule_type: String,
    pub rules: Vec<SegmentRule>,
    pub conditions: Vec<SegmentCondition>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentCondition {
    pub operator: String,
    pub property_: Option<String>,
    /// Always present, `null` for IS_SET / IS_NOT_SET: the SDK reads `condition["value"]`.
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    pub id: i64,
    pub name: String,
    #[serde(rename = "type")]
    pub feature_type: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSegment {
    pub priority: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureState {
    pub feature: Feature,
    pub enabled: bool,
    /// Always present (the SDK does not default it).
    pub feature_state_value: Option<FlagValue>,
    /// The multivariate bucketing seed: `COALESCE(mv_hashing_salt, id)` of the core row.
    pub django_id: Option<i64>,
    pub featurestate_uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_segment: Option<FeatureSegment>,
    pub multivariate_feature_state_values: Vec<MultivariateFeatureStateValue>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultivariateFeatureStateValue {
    pub id: Option<i64>,
    pub mv_fs_value_uuid: Option<String>,
    pub percentage_allocation: f64,
    pub multivariate_feature_option: MultivariateFeatureOption,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultivariateFeatureOption {
    pub id: Option<i64>,
    pub value: Option<FlagValue>,
    pub key: Option<String>,
}

/// Environment API key document: table `flagsmith_environment_api_key`, key `key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentApiKeyDocument {
    pub key: String,
    pub id: i64,
    pub created_at: String,
    pub name: String,
    pub client_api_key: String,
    pub expires_at: Option<String>,
    pub active: bool,
}

/// Identity document: table `flagsmith_identities`, key `composite_key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentityDocument {
    /// Exactly `"{environment_api_key}_{identifier}"`.
    pub composite_key: String,
    pub identifier: String,
    pub environment_api_key: String,
    pub identity_uuid: String,
    pub created_date: String,
    /// The core identity's id: the multivariate bucketing key of core evaluation.
    pub django_id: Option<i64>,
    pub identity_traits: Vec<Trait>,
    /// Identity overrides, each feature at most once, ordered by feature id.
    pub identity_features: Vec<FeatureState>,
    /// Written only when the identity has system traits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_traits: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trait {
    pub trait_key: String,
    pub trait_value: TraitValue,
}

/// A stored trait value: never null, never a list or an object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TraitValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

/// An environments_v2 identity-override item (`EnvironmentV2IdentityOverride`): one per
/// identity and overridden feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdentityOverrideItem {
    /// The environment's id, as a string.
    pub environment_id: String,
    /// `"identity_override:{feature id}:{identity_uuid}"`.
    pub document_key: String,
    pub environment_api_key: String,
    pub identifier: String,
    pub identity_uuid: String,
    pub feature_state: FeatureState,
    /// When the override was added or last changed (Flagsmith stamps the item on every
    /// add or change), isoformat.
    pub created_date: String,
}

/// Formats a timestamp the way Flagsmith's core API does (Python `isoformat()` of an aware
/// UTC datetime): `2025-03-04T10:15:30.123456+00:00`, microseconds left out when zero.
pub fn isoformat(micros_since_epoch: i64) -> String {
    let secs = micros_since_epoch.div_euclid(1_000_000);
    let micros = micros_since_epoch.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    if micros == 0 {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}+00:00")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{micros:06}+00:00")
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isoformat_matches_python() {
        // datetime(2025, 3, 4, 10, 15, 30, 123456, tzinfo=UTC).timestamp() == 1741083330.123456
        assert_eq!(
            isoformat(1_741_083_330_123_456),
            "2025-03-04T10:15:30.123456+00:00"
        );
        assert_eq!(
            isoformat(1_741_083_330_000_000),
            "2025-03-04T10:15:30+00:00"
        );
        assert_eq!(isoformat(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(
            isoformat(951_782_400_000_001),
            "2000-02-29T00:00:00.000001+00:00"
        );
    }

    #[test]
    fn flag_values_round_trip_untagged() {
        let v: Vec<Option<FlagValue>> = serde_json::from_str(r#"[true, 3, "x", null]"#).unwrap();
        assert_eq!(
            v,
            vec![
                Some(FlagValue::Bool(true)),
                Some(FlagValue::Int(3)),
                Some(FlagValue::Str("x".into())),
                None
            ]
        );
    }
}
