//! Identity documents from core rows, without I/O.
//!
//! An identity projects to its `flagsmith_identities` item and, when its project's
//! identity-overrides v2 migration is `COMPLETE`, one environments_v2 identity-override
//! item per overridden feature. Nothing is written for an identity whose environment is not
//! on the edge.
//!
//! `identity_uuid`: core identities have none, so one is derived from the environment id and
//! the core id (SHA-256, formatted as a version 4 UUID, which Flagsmith's legacy model
//! requires). It survives re-writes, backfills, re-migrations and a change of the
//! environment's api_key, so override items keyed by it never multiply.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use edge_documents::model::{IdentityDocument, IdentityOverrideItem, Trait, TraitValue};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::environment::{feature_state, iso, FEATURE_TYPES};
use super::rows::*;
use super::ProjectionError;

/// DynamoDB's limit on a sort key (the identifier is the range key of the
/// `environment_api_key-identifier-index`). Flagsmith's core skips longer identifiers.
pub const MAX_IDENTIFIER_BYTES: usize = 1024;
/// Flagsmith's limit on a stored trait string.
pub const MAX_TRAIT_STRING_CHARS: usize = 2000;
/// The v2 migration status for which identity-override items are written.
pub const V2_OVERRIDES_STATUS: &str = "COMPLETE";

#[derive(Debug, Clone, PartialEq)]
pub enum IdentityProjection {
    /// The identity's environment is not on the edge: no items.
    Absent,
    Present {
        document: Box<IdentityDocument>,
        /// environments_v2 identity-override items (empty unless the v2 status is COMPLETE).
        overrides: Vec<IdentityOverrideItem>,
        next_change_at: Option<DateTime<Utc>>,
    },
}

/// Whether the identity's environment is on the edge.
pub fn is_on_edge(i: &IdentityRow) -> bool {
    i.environment_deleted_at.is_none()
        && i.project_deleted_at.is_none()
        && i.organisation_deleted_at.is_none()
        && i.project_enable_dynamo_db
}

/// The stable `identity_uuid` of a core identity.
pub fn identity_uuid(environment_id: i32, identity_id: i32) -> Uuid {
    let digest = Sha256::new()
        .chain_update(b"flagsmith-edge:identity_uuid:")
        .chain_update(environment_id.to_be_bytes())
        .chain_update(identity_id.to_be_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

pub fn project_identity(rows: &IdentityRows) -> Result<IdentityProjection, ProjectionError> {
    let i = &rows.identity;
    if !is_on_edge(i) {
        return Ok(IdentityProjection::Absent);
    }
    let composite_key = format!("{}_{}", i.environment_api_key, i.identifier);
    let invalid = |what: String| {
        ProjectionError::invalid(format!("identity {} ({composite_key:?}): {what}", i.id))
    };
    if i.identifier.len() > MAX_IDENTIFIER_BYTES {
        return Err(invalid(format!(
            "identifier is {} bytes, over the {MAX_IDENTIFIER_BYTES}-byte key limit of the identities table",
            i.identifier.len()
        )));
    }
    if i.identifier.is_empty() {
        return Err(invalid("identifier is empty".into()));
    }

    let mut traits = Vec::with_capacity(rows.traits.len());
    for t in &rows.traits {
        let value = trait_value(t)
            .map_err(|why| invalid(format!("trait {:?} (id {}): {why}", t.trait_key, t.id)))?;
        traits.push(Trait {
            trait_key: t.trait_key.clone(),
            trait_value: value,
        });
    }
    let system_traits = system_traits(&i.system_traits).map_err(invalid)?;

    let (overrides, next_change_at) = live_overrides(rows);
    let mv_by_state: HashMap<i32, Vec<&MultivariateValueRow>> = rows
        .multivariate_values
        .iter()
        .fold(HashMap::new(), |mut m, mv| {
            m.entry(mv.feature_state_id).or_default().push(mv);
            m
        });
    let mut features = Vec::with_capacity(overrides.len());
    for o in overrides.values() {
        if !FEATURE_TYPES.contains(&o.feature_type.as_str()) {
            return Err(invalid(format!(
                "feature {} ({:?}) has type {:?}; expected one of {FEATURE_TYPES:?}",
                o.state.feature_id, o.feature_name, o.feature_type
            )));
        }
        let feature = FeatureRow {
            id: o.state.feature_id,
            name: o.feature_name.clone(),
            feature_type: o.feature_type.clone(),
            is_server_key_only: false,
        };
        features.push(
            feature_state(&o.state, &feature, None, &mv_by_state)
                .map_err(|e| invalid(e.to_string()))?,
        );
    }

    let uuid = i
        .edge_identity_uuid
        .unwrap_or_else(|| identity_uuid(i.environment_id, i.id))
        .to_string();
    let changed_at: HashMap<i32, DateTime<Utc>> = overrides
        .values()
        .map(|o| (o.state.feature_id, o.updated_at))
        .collect();
    let override_items = if i.project_v2_migration_status == V2_OVERRIDES_STATUS {
        features
            .iter()
            .map(|fs| IdentityOverrideItem {
                created_date: changed_at
                    .get(&(fs.feature.id as i32))
                    .map(|t| iso(*t))
                    .unwrap_or_else(|| iso(rows.snapshot_time)),
                environment_id: i.environment_id.to_string(),
                document_key: format!("identity_override:{}:{uuid}", fs.feature.id),
                environment_api_key: i.environment_api_key.clone(),
                identifier: i.identifier.clone(),
                identity_uuid: uuid.clone(),
                feature_state: fs.clone(),
            })
            .collect()
    } else {
        vec![]
    };
    Ok(IdentityProjection::Present {
        document: Box::new(IdentityDocument {
            composite_key,
            identifier: i.identifier.clone(),
            environment_api_key: i.environment_api_key.clone(),
            identity_uuid: uuid,
            created_date: iso(i.created_date),
            django_id: Some(i64::from(i.id)),
            identity_traits: traits,
            identity_features: features,
            system_traits,
        }),
        overrides: override_items,
        next_change_at,
    })
}

/// The live identity overrides, one per feature (ordered by feature id). Under versioning
/// v2 every override is live; under v1 an override is live once its `live_from` has passed
/// (the later `live_from`, then the higher version, wins).
fn live_overrides(
    rows: &IdentityRows,
) -> (BTreeMap<i32, &IdentityOverrideRow>, Option<DateTime<Utc>>) {
    let now = rows.snapshot_time;
    let v2 = rows.identity.environment_use_v2_feature_versioning;
    let mut next_change_at: Option<DateTime<Utc>> = None;
    let mut live: BTreeMap<i32, &IdentityOverrideRow> = BTreeMap::new();
    for o in &rows.overrides {
        let s = &o.state;
        if !v2 {
            let (Some(_), Some(live_from)) = (s.version, s.live_from) else {
                continue;
            };
            if live_from > now {
                if next_change_at.is_none_or(|n| live_from < n) {
                    next_change_at = Some(live_from);
                }
                continue;
            }
        }
        let key = |r: &IdentityOverrideRow| (r.state.live_from, r.state.version, r.state.id);
        let better = live.get(&s.feature_id).is_none_or(|cur| key(cur) < key(o));
        if better {
            live.insert(s.feature_id, o);
        }
    }
    (live, next_change_at)
}

/// A trait's stored value, typed by `value_type` (`int`, `float`, `bool`, otherwise string).
fn trait_value(t: &TraitRow) -> Result<TraitValue, String> {
    match t.value_type.as_deref() {
        Some("int") => t
            .integer_value
            .map(|v| TraitValue::Int(i64::from(v)))
            .ok_or_else(|| "value_type is int but integer_value is null".into()),
        Some("float") => match t.float_value {
            Some(v) if v.is_finite() => Ok(TraitValue::Float(v)),
            Some(v) => Err(format!("float_value {v} is not a finite number")),
            None => Err("value_type is float but float_value is null".into()),
        },
        Some("bool") => t
            .boolean_value
            .map(TraitValue::Bool)
            .ok_or_else(|| "value_type is bool but boolean_value is null".into()),
        other => match &t.string_value {
            Some(s) if s.chars().count() > MAX_TRAIT_STRING_CHARS => Err(format!(
                "string value is {} characters, over Flagsmith's {MAX_TRAIT_STRING_CHARS}",
                s.chars().count()
            )),
            Some(s) => Ok(TraitValue::Str(s.clone())),
            None => Err(format!("value_type is {other:?} but string_value is null")),
        },
    }
}

/// `system_traits`: an object of scalar values, written only when not empty.
fn system_traits(v: &Value) -> Result<Option<serde_json::Map<String, Value>>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Array(a) if a.is_empty() => Ok(None),
        Value::Object(m) if m.is_empty() => Ok(None),
        Value::Object(m) => {
            for (k, v) in m {
                let ok = match v {
                    Value::Bool(_) | Value::String(_) => true,
                    Value::Number(n) => n.as_f64().is_some_and(f64::is_finite),
                    _ => false,
                };
                if !ok {
                    return Err(format!(
                        "system trait {k:?} has value {v}; expected a number, bool or string"
                    ));
                }
            }
            Ok(Some(m.clone()))
        }
        other => Err(format!("system_traits is {other}; expected an object")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn rows() -> IdentityRows {
        IdentityRows {
            snapshot_time: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            identity: IdentityRow {
                id: 7,
                identifier: "user-7".into(),
                created_date: Utc.with_ymd_and_hms(2025, 3, 4, 10, 15, 30).unwrap(),
                environment_id: 3,
                system_traits: serde_json::json!({}),
                environment_api_key: "envkey".into(),
                environment_deleted_at: None,
                environment_use_v2_feature_versioning: false,
                project_enable_dynamo_db: true,
                project_v2_migration_status: "COMPLETE".into(),
                project_deleted_at: None,
                organisation_deleted_at: None,
                edge_identity_uuid: None,
            },
            traits: vec![TraitRow {
                id: 1,
                identity_id: 7,
                trait_key: "age".into(),
                value_type: Some("int".into()),
                boolean_value: None,
                integer_value: Some(42),
                float_value: None,
                string_value: None,
            }],
            overrides: vec![],
            multivariate_values: vec![],
        }
    }

    #[test]
    fn identity_uuid_is_stable_and_version_4() {
        let a = identity_uuid(3, 7);
        assert_eq!(a, identity_uuid(3, 7));
        assert_ne!(a, identity_uuid(3, 8));
        assert_ne!(a, identity_uuid(4, 7));
        assert_eq!(a.get_version_num(), 4);
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
    }

    #[test]
    fn projects_keys_traits_and_django_id() {
        let IdentityProjection::Present { document, .. } = project_identity(&rows()).unwrap()
        else {
            panic!("absent")
        };
        assert_eq!(document.composite_key, "envkey_user-7");
        assert_eq!(document.django_id, Some(7));
        assert_eq!(document.created_date, "2025-03-04T10:15:30+00:00");
        assert_eq!(document.identity_traits[0].trait_value, TraitValue::Int(42));
        assert!(document.system_traits.is_none());
    }

    #[test]
    fn bad_traits_and_long_identifiers_name_the_identity() {
        let mut r = rows();
        r.traits[0].integer_value = None;
        let err = project_identity(&r).unwrap_err().to_string();
        assert!(
            err.contains("identity 7") && err.contains("envkey_user-7") && err.contains("age"),
            "{err}"
        );
        let mut r = rows();
        r.identity.identifier = "x".repeat(1025);
        let err = project_identity(&r).unwrap_err().to_string();
        assert!(err.contains("1025 bytes"), "{err}");
        let mut r = rows();
        r.identity.project_enable_dynamo_db = false;
        assert_eq!(project_identity(&r).unwrap(), IdentityProjection::Absent);
    }
}
