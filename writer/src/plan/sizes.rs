//! Item sizes of representative documents, measured with the writer's own layout
//! ([`crate::projection::environment_items`]) and encoder ([`edge_documents::item::encode`]),
//! as DynamoDB counts them ([`edge_documents::item::item_size`]).

use edge_documents::acks::{self, Ack};
use edge_documents::item::{self, ReplicationMeta, DEFAULT_COMPRESS_ABOVE_BYTES};
use edge_documents::model::{
    EnvironmentApiKeyDocument, EnvironmentDocument, Feature, FeatureSegment, FeatureState,
    FlagValue, IdentityDocument, Organisation, Project, Segment, SegmentCondition, SegmentRule,
    Trait, TraitValue,
};
use edge_documents::tables::TableKind;
use serde::Serialize;
use serde_json::Value;

use crate::projection::environment_items;

/// The shape of the representative documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Shape {
    /// Feature states of an environment document.
    pub features_per_environment: usize,
    /// Segments of the project, each with one rule of two conditions and one override.
    pub segments_per_project: usize,
    /// Traits of an identity (string values of 16 characters).
    pub traits_per_identity: usize,
}

impl Default for Shape {
    /// 20 feature states: the shape of the writer and consumer benchmarks (README,
    /// "Performance"); 2 segments; 5 traits.
    fn default() -> Self {
        Shape {
            features_per_environment: 20,
            segments_per_project: 2,
            traits_per_identity: 5,
        }
    }
}

/// Bytes per item as DynamoDB counts them (attribute names plus values), replication
/// attributes included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ItemSizes {
    pub environment: usize,
    /// The environments_v2 `_META` item.
    pub meta: usize,
    pub api_key: usize,
    pub identity: usize,
    /// One acknowledgement in the ledger.
    pub ack: usize,
}

const API_KEY: &str = "ZsWbx7pTtLqv3jK8mN2yRd";
const UUID: &str = "5b8f0c1e-3a4d-4e2f-9b6a-7c8d9e0f1a2b";
const TIME: &str = "2026-11-25T10:15:30.123456+00:00";

fn meta(doc_key: &str) -> ReplicationMeta {
    ReplicationMeta {
        version: 1_234_567,
        source_time: TIME.into(),
        doc_key: doc_key.into(),
    }
}

fn encoded_size(body: &Value, doc_key: &str, compressible: bool) -> usize {
    let threshold = compressible.then_some(DEFAULT_COMPRESS_ABOVE_BYTES);
    item::encode(body, &meta(doc_key), threshold)
        .expect("representative documents encode")
        .size
}

fn feature_state(i: usize, segment: bool) -> FeatureState {
    FeatureState {
        feature: Feature {
            id: 1000 + i as i64,
            name: format!("feature_number_{i:03}"),
            feature_type: "STANDARD".into(),
        },
        enabled: i % 2 == 0,
        feature_state_value: Some(FlagValue::Str(format!("value-{i:010}"))),
        django_id: Some(500_000 + i as i64),
        featurestate_uuid: Some(UUID.into()),
        feature_segment: segment.then_some(FeatureSegment { priority: Some(0) }),
        multivariate_feature_state_values: vec![],
    }
}

/// A representative environment document.
pub fn environment(shape: &Shape) -> EnvironmentDocument {
    let segments = (0..shape.segments_per_project)
        .map(|s| Segment {
            id: 200 + s as i64,
            name: format!("segment_{s:03}"),
            rules: vec![SegmentRule {
                rule_type: "ALL".into(),
                rules: vec![SegmentRule {
                    rule_type: "ANY".into(),
                    rules: vec![],
                    conditions: vec![
                        SegmentCondition {
                            operator: "EQUAL".into(),
                            property_: Some("plan".into()),
                            value: Some("enterprise".into()),
                        },
                        SegmentCondition {
                            operator: "PERCENTAGE_SPLIT".into(),
                            property_: None,
                            value: Some("25".into()),
                        },
                    ],
                }],
                conditions: vec![],
            }],
            feature_states: vec![feature_state(s, true)],
        })
        .collect();
    EnvironmentDocument {
        api_key: API_KEY.into(),
        id: 4242,
        name: "Production".into(),
        updated_at: TIME.into(),
        project: Project {
            id: 77,
            name: "Web application".into(),
            organisation: Organisation {
                id: 12,
                name: "Example organisation".into(),
                feature_analytics: false,
                stop_serving_flags: false,
                persist_trait_data: true,
            },
            segments,
            hide_disabled_flags: false,
            enable_realtime_updates: false,
            server_key_only_feature_ids: vec![],
        },
        feature_states: (0..shape.features_per_environment)
            .map(|i| feature_state(i, false))
            .collect(),
        allow_client_traits: true,
        hide_sensitive_data: false,
        hide_disabled_flags: None,
        use_identity_composite_key_for_hashing: true,
        use_identity_overrides_in_local_eval: false,
        onboarding_pending: false,
        amplitude_config: None,
        heap_config: None,
        mixpanel_config: None,
        rudderstack_config: None,
        segment_config: None,
        webhook_config: None,
    }
}

/// A representative identity document (no overrides).
pub fn identity(shape: &Shape) -> IdentityDocument {
    let identifier = "user-0000123456@example.com";
    IdentityDocument {
        composite_key: format!("{API_KEY}_{identifier}"),
        identifier: identifier.into(),
        environment_api_key: API_KEY.into(),
        identity_uuid: UUID.into(),
        created_date: TIME.into(),
        django_id: Some(98_765_432),
        identity_traits: (0..shape.traits_per_identity)
            .map(|i| Trait {
                trait_key: format!("trait_{i:02}"),
                trait_value: TraitValue::Str(format!("{:016}", i)),
            })
            .collect(),
        identity_features: vec![],
        system_traits: None,
    }
}

fn to_value<T: Serialize>(doc: &T) -> Value {
    serde_json::to_value(doc).expect("documents serialise")
}

/// Measures the representative items of `shape`.
pub fn measure(shape: &Shape) -> ItemSizes {
    let env = environment(shape);
    let items = environment_items(&env, true);
    let size_of = |table: TableKind| {
        let d = items
            .iter()
            .find(|d| d.table == table)
            .expect("environment and _META items");
        encoded_size(&d.body, "environment:4242", d.compressible)
    };
    let api_key = EnvironmentApiKeyDocument {
        key: format!("ser.{API_KEY}"),
        id: 31,
        created_at: TIME.into(),
        name: "server key".into(),
        client_api_key: API_KEY.into(),
        expires_at: None,
        active: true,
    };
    let identity = identity(shape);
    let ack = Ack {
        item_key: acks::item_key_of_json(
            TableKind::Identities,
            to_value(&identity).as_object().expect("an object"),
        )
        .expect("identity key"),
        region: "eu-central-1".into(),
        version: 1_234_567,
        doc_key: "identity:98765432".into(),
        hash: format!("{}{}", edge_documents::hash::HASH_PREFIX, "0".repeat(64)),
        removed: false,
        source_time: TIME.into(),
        recorded_at_ms: 1_764_000_000_000,
        lag_ms: Some(1_234),
    };
    ItemSizes {
        environment: size_of(TableKind::Environments),
        meta: size_of(TableKind::EnvironmentsV2),
        api_key: encoded_size(&to_value(&api_key), "api_key:31", false),
        identity: encoded_size(&to_value(&identity), "identity:98765432", false),
        ack: item::item_size(&ack.to_item()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sizes_are_the_encoders() {
        let shape = Shape::default();
        let sizes = measure(&shape);
        let env = environment(&shape);
        let body = serde_json::to_value(&env).unwrap();
        let encoded = item::encode(
            &body,
            &meta("environment:4242"),
            Some(DEFAULT_COMPRESS_ABOVE_BYTES),
        )
        .unwrap();
        assert_eq!(sizes.environment, encoded.size);
        assert!(!encoded.compressed);
        // _META is the environment item without api_key, plus environment_id,
        // environment_api_key and document_key.
        assert!(sizes.meta > sizes.environment, "{sizes:?}");
        assert!(sizes.meta < sizes.environment + 100, "{sizes:?}");
        assert!(
            sizes.ack < 1024,
            "an acknowledgement is one write unit: {sizes:?}"
        );
        assert!(sizes.identity < 1024, "{sizes:?}");
    }

    #[test]
    fn sizes_grow_with_the_shape() {
        let small = measure(&Shape::default());
        let more_features = measure(&Shape {
            features_per_environment: 40,
            ..Shape::default()
        });
        // Each feature state adds the same bytes (ids and names of the same width).
        let per_feature = (more_features.environment - small.environment) / 20;
        assert_eq!((more_features.environment - small.environment) % 20, 0);
        assert!(
            (150..400).contains(&per_feature),
            "{per_feature} B per feature state"
        );
        let more_traits = measure(&Shape {
            traits_per_identity: 50,
            ..Shape::default()
        });
        assert!(more_traits.identity > small.identity + 45 * 30);
        assert_eq!(more_traits.ack, small.ack);
    }

    #[test]
    fn the_ack_size_is_the_ledger_items() {
        // item_size counts what to_item writes: names plus values.
        let sizes = measure(&Shape::default());
        assert!(sizes.ack > "item_key".len() + "flagsmith_identities|".len());
    }
}
