//! An identity item as the edge writes it (the Edge API, Flagsmith's `EdgeIdentity.save`),
//! read into what core can store. No I/O.
//!
//! Flagsmith's edge writers put whole items: `composite_key`, `environment_api_key`,
//! `identifier`, `identity_uuid`, `created_date`, `django_id`, `identity_traits` and
//! `identity_features` (plus `system_traits` and `dashboard_alias` when set). Numbers arrive
//! as DynamoDB numbers (Python `Decimal`). Anything core cannot hold is refused with the
//! reason, so the item can be parked instead of blocking the identity's later writes.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use edge_documents::hash::content_hash;
use edge_documents::item::{logical_item, Item};
use edge_documents::model::{FlagValue, TraitValue};
use serde_json::Value;
use uuid::Uuid;

/// DynamoDB's limit on the identifier (range key of the identities table's index).
pub const MAX_IDENTIFIER_BYTES: usize = 1024;
/// `environments_trait.trait_key` is `varchar(200)`.
pub const MAX_TRAIT_KEY_CHARS: usize = 200;
/// `environments_trait.string_value` is `varchar(2000)`.
pub const MAX_TRAIT_STRING_CHARS: usize = 2000;
/// `features_featurestatevalue.string_value` is `varchar(20000)`.
pub const MAX_FLAG_STRING_CHARS: usize = 20_000;
/// Integers beyond this are stored as floats (core's `integer_value` is 32-bit); beyond
/// 2^53 a float cannot hold them exactly and the item is refused.
const MAX_EXACT_FLOAT_INT: i64 = 1 << 53;

/// One identity override as the edge wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeOverride {
    pub feature_id: i32,
    pub feature_name: String,
    pub enabled: bool,
    pub value: Option<FlagValue>,
    /// (multivariate option id, percentage allocation), sorted by option id.
    pub multivariate: Vec<(i32, f64)>,
    pub featurestate_uuid: Option<Uuid>,
}

impl EdgeOverride {
    /// Same flag behaviour (ids and uuids aside).
    pub fn same_as(&self, other: &EdgeOverride) -> bool {
        self.feature_id == other.feature_id
            && self.enabled == other.enabled
            && self.value == other.value
            && self.multivariate == other.multivariate
    }
}

/// An identity item written at the edge.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeIdentity {
    pub composite_key: String,
    pub environment_api_key: String,
    pub identifier: String,
    pub identity_uuid: Option<Uuid>,
    pub created_date: Option<DateTime<Utc>>,
    pub traits: BTreeMap<String, TraitValue>,
    pub overrides: BTreeMap<i32, EdgeOverride>,
    /// Content hash of the item as the writer hashes items (replication attributes aside).
    pub digest: String,
}

/// Why an edge item cannot be ingested.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(what: impl Into<String>) -> Invalid {
    Invalid(what.into())
}

/// The content digest of a stored item, as the writer's `_replication_hash` covers it.
pub fn digest(item: &Item) -> Result<String, Invalid> {
    let logical = logical_item(item).map_err(|e| invalid(format!("unreadable item: {e}")))?;
    Ok(content_hash(&logical))
}

/// Reads an identity item.
pub fn parse(item: &Item) -> Result<EdgeIdentity, Invalid> {
    let logical = logical_item(item).map_err(|e| invalid(format!("unreadable item: {e}")))?;
    let digest = content_hash(&logical);
    let obj = logical
        .as_object()
        .ok_or_else(|| invalid("the item is not a map"))?;
    let string = |name: &str| -> Result<String, Invalid> {
        match obj.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            other => Err(invalid(format!(
                "{name} is {}; expected a string",
                describe(other)
            ))),
        }
    };
    let composite_key = string("composite_key")?;
    let environment_api_key = string("environment_api_key")?;
    let identifier = string("identifier")?;
    if identifier.is_empty() {
        return Err(invalid("identifier is empty"));
    }
    if identifier.len() > MAX_IDENTIFIER_BYTES {
        return Err(invalid(format!(
            "identifier is {} bytes, over the {MAX_IDENTIFIER_BYTES}-byte limit",
            identifier.len()
        )));
    }
    if composite_key != format!("{environment_api_key}_{identifier}") {
        return Err(invalid(format!(
            "composite_key {composite_key:?} is not \"{{environment_api_key}}_{{identifier}}\""
        )));
    }
    let identity_uuid = match obj.get("identity_uuid") {
        Some(Value::String(s)) => Uuid::parse_str(s).ok(),
        _ => None,
    };
    let created_date = match obj.get("created_date") {
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        _ => None,
    };

    let mut traits = BTreeMap::new();
    for t in array(obj.get("identity_traits"), "identity_traits")? {
        let key = match t.get("trait_key") {
            Some(Value::String(k)) if !k.is_empty() => k.clone(),
            other => {
                return Err(invalid(format!(
                    "a trait's trait_key is {}; expected a non-empty string",
                    describe(other)
                )))
            }
        };
        if key.chars().count() > MAX_TRAIT_KEY_CHARS {
            return Err(invalid(format!(
                "trait key {:?}… is {} characters, over core's {MAX_TRAIT_KEY_CHARS}",
                key.chars().take(40).collect::<String>(),
                key.chars().count()
            )));
        }
        let value = trait_value(&key, t.get("trait_value"))?;
        traits.insert(key, value);
    }

    let mut overrides = BTreeMap::new();
    for fs in array(obj.get("identity_features"), "identity_features")? {
        let o = edge_override(fs)?;
        overrides.insert(o.feature_id, o);
    }
    Ok(EdgeIdentity {
        composite_key,
        environment_api_key,
        identifier,
        identity_uuid,
        created_date,
        traits,
        overrides,
        digest,
    })
}

fn array<'a>(v: Option<&'a Value>, name: &str) -> Result<&'a [Value], Invalid> {
    match v {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        other => Err(invalid(format!(
            "{name} is {}; expected a list",
            describe(other)
        ))),
    }
}

fn describe(v: Option<&Value>) -> String {
    match v {
        None => "missing".into(),
        Some(Value::Null) => "null".into(),
        Some(Value::Bool(_)) => "a bool".into(),
        Some(Value::Number(_)) => "a number".into(),
        Some(Value::String(_)) => "a string".into(),
        Some(Value::Array(_)) => "a list".into(),
        Some(Value::Object(_)) => "a map".into(),
    }
}

/// A trait value core can store: `int` (32-bit), `float`, `bool` or a string of at most
/// 2,000 characters. Larger integers become floats, as long as a float holds them exactly.
pub fn trait_value(key: &str, v: Option<&Value>) -> Result<TraitValue, Invalid> {
    match v {
        Some(Value::Bool(b)) => Ok(TraitValue::Bool(*b)),
        Some(Value::String(s)) => {
            let n = s.chars().count();
            if n > MAX_TRAIT_STRING_CHARS {
                Err(invalid(format!(
                    "trait {key:?} is a string of {n} characters, over core's {MAX_TRAIT_STRING_CHARS}"
                )))
            } else {
                Ok(TraitValue::Str(s.clone()))
            }
        }
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                if i32::try_from(i).is_ok() {
                    Ok(TraitValue::Int(i))
                } else if i.unsigned_abs() <= MAX_EXACT_FLOAT_INT.unsigned_abs() {
                    Ok(TraitValue::Float(i as f64))
                } else {
                    Err(invalid(format!(
                        "trait {key:?} is the integer {i}, too large for core to store exactly"
                    )))
                }
            } else {
                match n.as_f64() {
                    Some(f) if f.is_finite() => Ok(TraitValue::Float(f)),
                    _ => Err(invalid(format!(
                        "trait {key:?} is the number {n}, which core cannot store"
                    ))),
                }
            }
        }
        other => Err(invalid(format!(
            "trait {key:?} has {} value; expected a string, number or bool",
            match other {
                None => "no".to_string(),
                Some(v) => describe(Some(v)),
            }
        ))),
    }
}

fn edge_override(fs: &Value) -> Result<EdgeOverride, Invalid> {
    let feature = fs
        .get("feature")
        .ok_or_else(|| invalid("an identity override has no feature"))?;
    let feature_id = feature
        .get("id")
        .and_then(Value::as_i64)
        .and_then(|i| i32::try_from(i).ok())
        .ok_or_else(|| invalid("an identity override's feature has no integer id"))?;
    let feature_name = feature
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let enabled = fs.get("enabled").and_then(Value::as_bool).ok_or_else(|| {
        invalid(format!(
            "the override of feature {feature_id} has no boolean enabled"
        ))
    })?;
    let value = flag_value(feature_id, fs.get("feature_state_value"))?;
    let mut multivariate = Vec::new();
    for mv in array(
        fs.get("multivariate_feature_state_values"),
        "multivariate_feature_state_values",
    )? {
        let option = mv
            .get("multivariate_feature_option")
            .and_then(|o| o.get("id"))
            .and_then(Value::as_i64)
            .and_then(|i| i32::try_from(i).ok())
            .ok_or_else(|| {
                invalid(format!(
                    "a multivariate value of the override of feature {feature_id} names no option id"
                ))
            })?;
        let pct = mv
            .get("percentage_allocation")
            .and_then(Value::as_f64)
            .filter(|p| (0.0..=100.0).contains(p))
            .ok_or_else(|| {
                invalid(format!(
                    "a multivariate value of the override of feature {feature_id} has no percentage_allocation within 0-100"
                ))
            })?;
        multivariate.push((option, pct));
    }
    multivariate.sort_by_key(|(o, _)| *o);
    let featurestate_uuid = fs
        .get("featurestate_uuid")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok());
    Ok(EdgeOverride {
        feature_id,
        feature_name,
        enabled,
        value,
        multivariate,
        featurestate_uuid,
    })
}

fn flag_value(feature_id: i32, v: Option<&Value>) -> Result<Option<FlagValue>, Invalid> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(FlagValue::Bool(*b))),
        Some(Value::Number(n)) => match n.as_i64().and_then(|i| i32::try_from(i).ok()) {
            Some(i) => Ok(Some(FlagValue::Int(i64::from(i)))),
            // Core stores other numbers as strings.
            None => Ok(Some(FlagValue::Str(n.to_string()))),
        },
        Some(Value::String(s)) if s.chars().count() <= MAX_FLAG_STRING_CHARS => {
            Ok(Some(FlagValue::Str(s.clone())))
        }
        Some(Value::String(s)) => Err(invalid(format!(
            "the override of feature {feature_id} has a value of {} characters, over core's {MAX_FLAG_STRING_CHARS}",
            s.chars().count()
        ))),
        other => Err(invalid(format!(
            "the override of feature {feature_id} has {} value",
            describe(other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(v: Value) -> Item {
        serde_dynamo::aws_sdk_dynamodb_1::to_item(v).unwrap()
    }

    fn flagsmith_item() -> Value {
        json!({
            "composite_key": "envKey_alice",
            "environment_api_key": "envKey",
            "identifier": "alice",
            "identity_uuid": "0b2b1a8e-7e0f-4a43-9d5c-2f1f1c3f6b11",
            "created_date": "2026-11-30T10:00:00.123456+00:00",
            "django_id": null,
            "identity_traits": [
                {"trait_key": "age", "trait_value": 42},
                {"trait_key": "score", "trait_value": 1.5},
                {"trait_key": "beta", "trait_value": true},
                {"trait_key": "plan", "trait_value": "gold"},
                {"trait_key": "big", "trait_value": 3000000000i64}
            ],
            "identity_features": [{
                "featurestate_uuid": "6f3c8d2a-1b1e-4f7e-9a55-0d3f0b7c1e22",
                "feature": {"id": 7, "name": "flag", "type": "MULTIVARIATE"},
                "enabled": true,
                "feature_state_value": "edge",
                "django_id": null,
                "feature_segment": null,
                "multivariate_feature_state_values": [
                    {"id": null, "mv_fs_value_uuid": "x", "percentage_allocation": 30,
                     "multivariate_feature_option": {"id": 5, "value": "a"}}
                ]
            }]
        })
    }

    #[test]
    fn reads_a_flagsmith_shaped_item_with_typed_traits_and_overrides() {
        let e = parse(&item(flagsmith_item())).unwrap();
        assert_eq!(e.identifier, "alice");
        assert_eq!(e.environment_api_key, "envKey");
        assert_eq!(e.traits["age"], TraitValue::Int(42));
        assert_eq!(e.traits["score"], TraitValue::Float(1.5));
        assert_eq!(e.traits["beta"], TraitValue::Bool(true));
        assert_eq!(e.traits["plan"], TraitValue::Str("gold".into()));
        assert_eq!(e.traits["big"], TraitValue::Float(3e9));
        let o = &e.overrides[&7];
        assert!(o.enabled);
        assert_eq!(o.value, Some(FlagValue::Str("edge".into())));
        assert_eq!(o.multivariate, vec![(5, 30.0)]);
        assert!(e.identity_uuid.is_some() && e.created_date.is_some());
        assert_eq!(e.digest, digest(&item(flagsmith_item())).unwrap());
    }

    #[test]
    fn refuses_what_core_cannot_hold_with_the_reason() {
        let cases = [
            (json!({"trait_key": "t", "trait_value": [1, 2]}), "a list"),
            (json!({"trait_key": "t", "trait_value": {"a": 1}}), "a map"),
            (json!({"trait_key": "t", "trait_value": null}), "null"),
            (
                json!({"trait_key": "t", "trait_value": "x".repeat(2001)}),
                "2001 characters",
            ),
            (json!({"trait_key": "", "trait_value": 1}), "non-empty"),
        ];
        for (t, why) in cases {
            let mut v = flagsmith_item();
            v["identity_traits"] = json!([t]);
            let err = parse(&item(v)).unwrap_err().to_string();
            assert!(err.contains(why), "{err} lacks {why}");
        }
        let mut v = flagsmith_item();
        let long = "i".repeat(1025);
        v["identifier"] = json!(long);
        v["composite_key"] = json!(format!("envKey_{long}"));
        assert!(parse(&item(v))
            .unwrap_err()
            .to_string()
            .contains("1025 bytes"));
        let mut v = flagsmith_item();
        v["composite_key"] = json!("other_alice");
        assert!(parse(&item(v)).is_err());
    }

    /// Found by `reading_any_edge_identity_never_panics`: `i64::MIN.abs()` overflowed (a
    /// panic in debug builds, a wrong acceptance in release ones).
    #[test]
    fn the_smallest_integer_is_refused_not_a_panic() {
        let err = trait_value("t", Some(&json!(i64::MIN))).unwrap_err();
        assert!(
            err.0.contains("too large for core to store exactly"),
            "{err}"
        );
        assert_eq!(
            trait_value("t", Some(&json!(-MAX_EXACT_FLOAT_INT))),
            Ok(TraitValue::Float(-(MAX_EXACT_FLOAT_INT as f64)))
        );
    }
}

/// Property tests: whatever the edge wrote, reading it never panics, and what core can hold
/// reads back unchanged.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Map, Number};

    fn item(v: Value) -> Item {
        serde_dynamo::aws_sdk_dynamodb_1::to_item(v).unwrap()
    }

    fn number() -> impl Strategy<Value = Number> {
        prop_oneof![
            1 => any::<i64>().prop_map(Number::from),
            1 => any::<u64>().prop_map(Number::from),
            1 => any::<f64>().prop_filter_map("finite", Number::from_f64),
            2 => prop_oneof![
                Just(i64::MIN),
                Just(i64::MAX),
                Just(MAX_EXACT_FLOAT_INT),
                Just(-MAX_EXACT_FLOAT_INT - 1),
                Just(i64::from(i32::MIN) - 1),
            ]
            .prop_map(Number::from),
        ]
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            number().prop_map(Value::Number),
            any::<String>().prop_map(Value::String),
            "\\PC{1990,2010}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A trait as the edge may write it: any key, any value.
    fn any_trait() -> impl Strategy<Value = Value> {
        (
            prop_oneof![json(), any::<String>().prop_map(Value::String)],
            prop_oneof![3 => number().prop_map(Value::Number), 1 => json()],
        )
            .prop_map(|(k, v)| json!({"trait_key": k, "trait_value": v}))
    }

    /// An override as the edge may write it: the usual fields, any values.
    fn any_override() -> impl Strategy<Value = Value> {
        (json(), json(), json(), json(), prop::collection::vec((json(), json()), 0..3)).prop_map(
            |(id, enabled, value, uuid, mv)| {
                let mv: Vec<Value> = mv
                    .into_iter()
                    .map(|(option, pct)| {
                        json!({"multivariate_feature_option": {"id": option}, "percentage_allocation": pct})
                    })
                    .collect();
                json!({"feature": {"id": id, "name": "f"}, "enabled": enabled,
                       "feature_state_value": value, "featurestate_uuid": uuid,
                       "multivariate_feature_state_values": mv})
            },
        )
    }

    fn identity(identifier: &str, traits: Value, features: Value) -> Value {
        json!({"composite_key": format!("envKey_{identifier}"), "environment_api_key": "envKey",
               "identifier": identifier, "identity_uuid": "0b2b1a8e-7e0f-4a43-9d5c-2f1f1c3f6b11",
               "created_date": "2026-11-30T10:00:00.123456+00:00",
               "identity_traits": traits, "identity_features": features})
    }

    /// A trait value core can hold, and what it reads back as.
    fn storable() -> impl Strategy<Value = (Value, TraitValue)> {
        prop_oneof![
            any::<i32>().prop_map(|i| (json!(i), TraitValue::Int(i64::from(i)))),
            (-MAX_EXACT_FLOAT_INT..=MAX_EXACT_FLOAT_INT)
                .prop_filter("beyond i32", |i| i32::try_from(*i).is_err())
                .prop_map(|i| (json!(i), TraitValue::Float(i as f64))),
            any::<f64>()
                .prop_filter("finite, not integral", |f| f.is_finite()
                    && f.fract() != 0.0)
                .prop_map(|f| (json!(f), TraitValue::Float(f))),
            any::<bool>().prop_map(|b| (json!(b), TraitValue::Bool(b))),
            "\\PC{0,2000}".prop_map(|s| (json!(s), TraitValue::Str(s))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn reading_any_edge_identity_never_panics(
            identifier in prop_oneof![any::<String>(), "\\PC{1020,1030}"],
            traits in prop_oneof![json(), prop::collection::vec(any_trait(), 0..6).prop_map(Value::Array)],
            features in prop_oneof![json(), prop::collection::vec(any_override(), 0..4).prop_map(Value::Array)],
            extra in prop::collection::btree_map(any::<String>(), json(), 0..4),
        ) {
            let mut v = identity(&identifier, traits, features);
            let object: &mut Map<String, Value> = v.as_object_mut().unwrap();
            for (k, x) in extra {
                object.entry(k).or_insert(x);
            }
            match parse(&item(v)) {
                Ok(e) => prop_assert_eq!(e.identifier, identifier),
                Err(Invalid(reason)) => prop_assert!(!reason.is_empty()),
            }
        }

        #[test]
        fn what_core_can_hold_reads_back_unchanged(
            identifier in "\\PC{1,200}",
            traits in prop::collection::btree_map("\\PC{1,200}", storable(), 0..8),
        ) {
            let listed: Vec<Value> = traits
                .iter()
                .map(|(k, (v, _))| json!({"trait_key": k, "trait_value": v}))
                .collect();
            let parsed = parse(&item(identity(&identifier, json!(listed), json!([])))).unwrap();
            let expected: BTreeMap<String, TraitValue> =
                traits.into_iter().map(|(k, (_, t))| (k, t)).collect();
            prop_assert_eq!(parsed.traits, expected);
            prop_assert_eq!(parsed.identifier, identifier);
        }
    }
}
