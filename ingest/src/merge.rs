//! The merge rule, without I/O.
//!
//! When core and the edge change the same identity:
//!
//! - **What the edge changed** is the difference between the stream record's old and new
//!   images: a trait whose value differs was set, a trait that disappeared was deleted, and
//!   likewise per overridden feature. Without an old image (a new item, or the writer
//!   adopting an item it found) the new image's traits and overrides are sets and nothing is
//!   deleted. What the edge did not change is left alone, so a trait set on one side and an
//!   override (or another trait) set on the other both survive.
//! - **Per trait, the later write wins** between core and the edge. An edge write's time is
//!   its stream record's creation time; a core change's time is its capture time. Ties go to
//!   the edge. Edge writes among themselves apply in the order they are ingested (the home
//!   region's stream orders the writes of one item; a write made in another region is timed
//!   when it reached the home region, which makes its time later, never earlier).
//! - **Echoes are not edits.** Flagsmith's edge writers read an item, change it and put the
//!   whole item back, without a condition. A put built from a read older than core's latest
//!   change carries the trait's *previous* value (or lacks a trait core just added). Such a
//!   value, equal to one the trait held before a core change less than [`ECHO_WINDOW`] before
//!   the edge write, is taken for an echo of the older read, not for a new edit.
//! - **Overrides**: per feature, the later write wins by the core feature state's
//!   `updated_at` (ingestion stamps it with the edge write's time).
//! - **Identity deletes**: an edge delete deletes in core unless core changed the identity
//!   after it; an edge write older than a core delete does not bring the identity back.

use chrono::{DateTime, Duration, Utc};
use edge_documents::model::TraitValue;
use serde_json::Value;

use crate::edge_item::EdgeOverride;

/// How long after a core change an edge put that carries the trait's earlier value is taken
/// for an echo of a read made before the change reached the edge.
pub const ECHO_WINDOW: Duration = Duration::seconds(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Core,
    Edge,
}

/// The last write of a trait, and the values it had before recent core changes.
#[derive(Debug, Clone, PartialEq)]
pub struct TraitClock {
    pub changed_at: DateTime<Utc>,
    pub origin: Origin,
    /// (time of a core change, the value before it; `None`: the trait did not exist).
    pub recent_core: Vec<(DateTime<Utc>, Option<TraitValue>)>,
}

/// Why an edge change was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// The edge did not change it, or core already has the edge's value.
    Unchanged,
    /// Core changed it after the edge write.
    CoreIsLater,
    /// The edge put carried a value from before a recent core change.
    Echo,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision<T> {
    /// Write this (`None`: delete).
    Apply(Option<T>),
    Keep(Kept),
}

/// Trait values compared as the SDK compares them: numbers by value.
pub fn same_trait(a: Option<&TraitValue>, b: Option<&TraitValue>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => match (number(a), number(b)) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        },
        _ => false,
    }
}

fn number(v: &TraitValue) -> Option<f64> {
    match v {
        TraitValue::Int(i) => Some(*i as f64),
        TraitValue::Float(f) => Some(*f),
        _ => None,
    }
}

/// The decision for one trait key.
///
/// `before`/`after`: the trait in the record's old and new images (`has_base`: there was an
/// old image); `core`: the trait in core now; `clock`: its last recorded write.
pub fn decide_trait(
    before: Option<&TraitValue>,
    after: Option<&TraitValue>,
    has_base: bool,
    core: Option<&TraitValue>,
    clock: Option<&TraitClock>,
    at: DateTime<Utc>,
    echo_window: Duration,
) -> Decision<TraitValue> {
    let edge_changed = if has_base {
        !same_trait(before, after)
    } else {
        after.is_some()
    };
    if !edge_changed || same_trait(core, after) {
        return Decision::Keep(Kept::Unchanged);
    }
    if let Some(c) = clock {
        if c.origin == Origin::Core && c.changed_at > at {
            return Decision::Keep(Kept::CoreIsLater);
        }
        let echo = c
            .recent_core
            .iter()
            .any(|(t, was)| *t <= at && at - *t < echo_window && same_trait(was.as_ref(), after));
        if echo {
            return Decision::Keep(Kept::Echo);
        }
    }
    Decision::Apply(after.cloned())
}

/// The decision for one overridden feature. `core`: core's live override of the feature
/// (as the edge would show it) and its `updated_at`.
pub fn decide_override(
    before: Option<&EdgeOverride>,
    after: Option<&EdgeOverride>,
    has_base: bool,
    core: Option<(&EdgeOverride, DateTime<Utc>)>,
    at: DateTime<Utc>,
) -> Decision<EdgeOverride> {
    let same = |a: Option<&EdgeOverride>, b: Option<&EdgeOverride>| match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.same_as(b),
        _ => false,
    };
    let edge_changed = if has_base {
        !same(before, after)
    } else {
        after.is_some()
    };
    if !edge_changed || same(core.map(|c| c.0), after) {
        return Decision::Keep(Kept::Unchanged);
    }
    if let Some((_, updated_at)) = core {
        if updated_at > at {
            return Decision::Keep(Kept::CoreIsLater);
        }
    }
    Decision::Apply(after.cloned())
}

/// A trait value as JSON (the clocks' `recent` entries).
pub fn trait_json(v: Option<&TraitValue>) -> Value {
    match v {
        None => Value::Null,
        Some(v) => serde_json::to_value(v).unwrap_or(Value::Null),
    }
}

/// The inverse of [`trait_json`].
pub fn trait_from_json(v: &Value) -> Option<TraitValue> {
    match v {
        Value::Null => None,
        v => serde_json::from_value(v.clone()).ok(),
    }
}

/// A trait value from the columns of an `environments_trait` row (as captured keys or a
/// row): typed by `value_type` like the projection does.
pub fn trait_from_columns(
    value_type: Option<&str>,
    string: Option<&str>,
    integer: Option<i64>,
    float: Option<f64>,
    boolean: Option<bool>,
) -> Option<TraitValue> {
    match value_type {
        Some("int") => integer.map(TraitValue::Int),
        Some("float") => float.map(TraitValue::Float),
        Some("bool") => boolean.map(TraitValue::Bool),
        _ => string.map(|s| TraitValue::Str(s.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }
    fn s(v: &str) -> TraitValue {
        TraitValue::Str(v.into())
    }
    fn clock(at: i64, origin: Origin, recent: Vec<(i64, Option<TraitValue>)>) -> TraitClock {
        TraitClock {
            changed_at: t(at),
            origin,
            recent_core: recent.into_iter().map(|(a, v)| (t(a), v)).collect(),
        }
    }

    /// Each row: (before, after, has_base, core, clock, edge time) -> decision.
    #[test]
    fn trait_merge_rule() {
        use Decision::*;
        let a = s("a");
        let b = s("b");
        let c = s("c");
        let cases: Vec<(&str, Decision<TraitValue>, Decision<TraitValue>)> = vec![
            (
                "edge set a new value, no core change: applied",
                decide_trait(Some(&a), Some(&b), true, Some(&a), None, t(10), ECHO_WINDOW),
                Apply(Some(b.clone())),
            ),
            (
                "edge did not touch the trait: core's value stays",
                decide_trait(Some(&a), Some(&a), true, Some(&c), None, t(10), ECHO_WINDOW),
                Keep(Kept::Unchanged),
            ),
            (
                "core changed it after the edge write: core wins",
                decide_trait(
                    Some(&a),
                    Some(&b),
                    true,
                    Some(&c),
                    Some(&clock(11, Origin::Core, vec![(11, Some(a.clone()))])),
                    t(10),
                    ECHO_WINDOW,
                ),
                Keep(Kept::CoreIsLater),
            ),
            (
                "core changed it before the edge write, edge set something new: edge wins",
                decide_trait(
                    Some(&c),
                    Some(&b),
                    true,
                    Some(&c),
                    Some(&clock(5, Origin::Core, vec![(5, Some(a.clone()))])),
                    t(10),
                    ECHO_WINDOW,
                ),
                Apply(Some(b.clone())),
            ),
            (
                "edge put carries the value from before core's change moments ago: an echo",
                decide_trait(
                    Some(&c),
                    Some(&a),
                    true,
                    Some(&c),
                    Some(&clock(8, Origin::Core, vec![(8, Some(a.clone()))])),
                    t(10),
                    ECHO_WINDOW,
                ),
                Keep(Kept::Echo),
            ),
            (
                "edge put lacks a trait core added moments ago: an echo, not a delete",
                decide_trait(
                    Some(&c),
                    None,
                    true,
                    Some(&c),
                    Some(&clock(8, Origin::Core, vec![(8, None)])),
                    t(10),
                    ECHO_WINDOW,
                ),
                Keep(Kept::Echo),
            ),
            (
                "the same value long after core's change: a real edit",
                decide_trait(
                    Some(&c),
                    Some(&a),
                    true,
                    Some(&c),
                    Some(&clock(8, Origin::Core, vec![(8, Some(a.clone()))])),
                    t(100),
                    ECHO_WINDOW,
                ),
                Apply(Some(a.clone())),
            ),
            (
                "edge deleted the trait: deleted in core",
                decide_trait(Some(&a), None, true, Some(&a), None, t(10), ECHO_WINDOW),
                Apply(None),
            ),
            (
                "edge writes apply in the order they are ingested, whatever their times",
                decide_trait(
                    Some(&a),
                    Some(&b),
                    true,
                    Some(&c),
                    Some(&clock(12, Origin::Edge, vec![])),
                    t(10),
                    ECHO_WINDOW,
                ),
                Apply(Some(b.clone())),
            ),
            (
                "redelivery: core already holds the edge's value",
                decide_trait(Some(&a), Some(&b), true, Some(&b), None, t(10), ECHO_WINDOW),
                Keep(Kept::Unchanged),
            ),
            (
                "no old image: values are sets, absence is not a delete",
                decide_trait(None, None, false, Some(&a), None, t(10), ECHO_WINDOW),
                Keep(Kept::Unchanged),
            ),
            (
                "equal time: the edge wins the tie",
                decide_trait(
                    Some(&a),
                    Some(&b),
                    true,
                    Some(&c),
                    Some(&clock(10, Origin::Core, vec![])),
                    t(10),
                    ECHO_WINDOW,
                ),
                Apply(Some(b.clone())),
            ),
            (
                "numbers compare by value",
                decide_trait(
                    Some(&TraitValue::Int(2)),
                    Some(&TraitValue::Float(2.0)),
                    true,
                    Some(&c),
                    None,
                    t(10),
                    ECHO_WINDOW,
                ),
                Keep(Kept::Unchanged),
            ),
        ];
        for (what, got, want) in cases {
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn override_merge_rule() {
        let o = |enabled: bool| EdgeOverride {
            feature_id: 1,
            feature_name: "f".into(),
            enabled,
            value: None,
            multivariate: vec![],
            featurestate_uuid: None,
        };
        let (on, off) = (o(true), o(false));
        assert_eq!(
            decide_override(Some(&off), Some(&on), true, Some((&off, t(5))), t(10)),
            Decision::Apply(Some(on.clone()))
        );
        assert_eq!(
            decide_override(Some(&off), Some(&on), true, Some((&off, t(11))), t(10)),
            Decision::Keep(Kept::CoreIsLater)
        );
        assert_eq!(
            decide_override(Some(&on), None, true, Some((&on, t(5))), t(10)),
            Decision::Apply(None)
        );
        assert_eq!(
            decide_override(None, None, false, Some((&on, t(5))), t(10)),
            Decision::Keep(Kept::Unchanged)
        );
        assert_eq!(
            decide_override(Some(&on), Some(&on), true, Some((&off, t(5))), t(10)),
            Decision::Keep(Kept::Unchanged)
        );
    }
}
