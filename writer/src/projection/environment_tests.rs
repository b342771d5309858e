//! The environment projection from hand-built core rows: which rows count, what each core
//! field becomes, and which data is refused (with the row named).

use chrono::{Duration, TimeZone};

use super::*;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
}

fn uuid(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn environment() -> EnvironmentRow {
    EnvironmentRow {
        id: 10,
        api_key: "env-key".into(),
        name: "Production".into(),
        updated_at: Utc.with_ymd_and_hms(2026, 5, 1, 8, 30, 0).unwrap(),
        allow_client_traits: true,
        hide_sensitive_data: false,
        hide_disabled_flags: None,
        use_mv_v2_evaluation: false,
        use_v2_feature_versioning: false,
        use_identity_overrides_in_local_eval: false,
        first_evaluated_at: Some(t0()),
        deleted_at: None,
        project_id: 20,
        project_name: "Shop".into(),
        project_hide_disabled_flags: false,
        project_enable_realtime_updates: false,
        project_enable_dynamo_db: true,
        project_v2_migration_status: "COMPLETE".into(),
        project_deleted_at: None,
        organisation_id: 30,
        organisation_name: "Acme".into(),
        organisation_feature_analytics: false,
        organisation_stop_serving_flags: false,
        organisation_persist_trait_data: true,
        organisation_deleted_at: None,
    }
}

fn feature(id: i32, name: &str) -> FeatureRow {
    FeatureRow {
        id,
        name: name.into(),
        feature_type: "STANDARD".into(),
        is_server_key_only: false,
    }
}

/// A v1 environment default of `feature_id`, live since an hour before the snapshot.
fn state(id: i32, feature_id: i32) -> FeatureStateRow {
    FeatureStateRow {
        id,
        uuid: uuid(id as u128),
        feature_id,
        feature_segment_id: None,
        enabled: true,
        version: Some(1),
        live_from: Some(t0() - Duration::hours(1)),
        environment_feature_version_id: None,
        mv_hashing_salt: None,
        value_type: Some("unicode".into()),
        integer_value: None,
        string_value: Some(format!("value-{id}")),
        boolean_value: None,
    }
}

fn rows() -> EnvironmentRows {
    EnvironmentRows {
        snapshot_time: t0(),
        environment: environment(),
        features: vec![feature(1, "banner"), feature(2, "checkout")],
        feature_states: vec![state(100, 1), state(200, 2)],
        feature_versions: vec![],
        feature_segments: vec![],
        multivariate_values: vec![],
        segments: vec![],
        rules: vec![],
        conditions: vec![],
        integrations: vec![],
    }
}

fn project(rows: &EnvironmentRows) -> (EnvironmentDocument, bool, Option<DateTime<Utc>>) {
    match project_environment(rows).expect("projects") {
        EnvironmentProjection::Present {
            document,
            write_v2_meta,
            next_change_at,
        } => (*document, write_v2_meta, next_change_at),
        EnvironmentProjection::Absent => panic!("absent"),
    }
}

fn invalid(rows: &EnvironmentRows) -> String {
    match project_environment(rows) {
        Err(ProjectionError::InvalidData(reason)) => reason,
        other => panic!("expected invalid data, got {other:?}"),
    }
}

/// (feature id, feature state id) of the environment defaults, in document order.
fn defaults(doc: &EnvironmentDocument) -> Vec<(i64, Option<i64>)> {
    doc.feature_states
        .iter()
        .map(|fs| (fs.feature.id, fs.django_id))
        .collect()
}

#[test]
fn an_environment_off_the_edge_projects_to_nothing() {
    type Change = fn(&mut EnvironmentRow);
    let cases: [(&str, Change); 4] = [
        ("environment deleted", |e| e.deleted_at = Some(t0())),
        ("project deleted", |e| e.project_deleted_at = Some(t0())),
        ("organisation deleted", |e| {
            e.organisation_deleted_at = Some(t0())
        }),
        ("project not on the edge", |e| {
            e.project_enable_dynamo_db = false
        }),
    ];
    for (case, change) in cases {
        let mut r = rows();
        change(&mut r.environment);
        assert!(!is_on_edge(&r.environment), "{case}");
        assert_eq!(
            project_environment(&r).unwrap(),
            EnvironmentProjection::Absent,
            "{case}"
        );
    }
    assert!(is_on_edge(&rows().environment));
}

#[test]
fn core_fields_map_to_the_document() {
    let mut r = rows();
    r.environment.use_mv_v2_evaluation = true;
    r.environment.hide_disabled_flags = Some(true);
    r.environment.first_evaluated_at = None;
    r.features[1].is_server_key_only = true;
    let (doc, write_v2_meta, next) = project(&r);
    assert_eq!(doc.api_key, "env-key");
    assert_eq!(doc.id, 10);
    assert_eq!(doc.updated_at, "2026-05-01T08:30:00+00:00");
    assert_eq!(doc.project.id, 20);
    assert_eq!(doc.project.organisation.id, 30);
    assert!(doc.project.organisation.persist_trait_data);
    // Flagsmith maps the composite-key hashing flag from `use_mv_v2_evaluation`.
    assert!(doc.use_identity_composite_key_for_hashing);
    assert_eq!(doc.hide_disabled_flags, Some(true));
    // Never evaluated: onboarding is pending.
    assert!(doc.onboarding_pending);
    assert_eq!(doc.project.server_key_only_feature_ids, vec![2]);
    assert!(write_v2_meta);
    assert_eq!(next, None);
    let fs = &doc.feature_states[0];
    assert_eq!(fs.feature.name, "banner");
    assert_eq!(fs.featurestate_uuid, Some(uuid(100).to_string()));
    assert_eq!(
        fs.feature_state_value,
        Some(FlagValue::Str("value-100".into()))
    );
    assert_eq!(fs.feature_segment, None);
}

#[test]
fn the_v2_meta_item_follows_the_projects_migration_status() {
    for (status, expected) in [
        ("COMPLETE", true),
        ("INCOMPLETE", true),
        ("NOT_STARTED", false),
        ("IN_PROGRESS", false),
    ] {
        let mut r = rows();
        r.environment.project_v2_migration_status = status.into();
        assert_eq!(project(&r).1, expected, "{status}");
    }
}

#[test]
fn versioning_v1_takes_the_latest_live_from_then_the_highest_version() {
    let hour = Duration::hours(1);
    let at = |id, version, live_from| FeatureStateRow {
        version,
        live_from,
        ..state(id, 1)
    };
    type Case = (
        &'static str,
        Vec<FeatureStateRow>,
        Option<i64>,
        Option<DateTime<Utc>>,
    );
    let cases: Vec<Case> = vec![
        (
            "later live_from wins over a higher version",
            vec![
                at(1, Some(5), Some(t0() - hour * 2)),
                at(2, Some(1), Some(t0() - hour)),
            ],
            Some(2),
            None,
        ),
        (
            "same live_from: the higher version wins",
            vec![
                at(1, Some(2), Some(t0() - hour)),
                at(2, Some(1), Some(t0() - hour)),
            ],
            Some(1),
            None,
        ),
        (
            "a future live_from is not live yet, and is the next change",
            vec![
                at(1, Some(1), Some(t0() - hour)),
                at(2, Some(2), Some(t0() + hour)),
            ],
            Some(1),
            Some(t0() + hour),
        ),
        (
            "the earliest of several future changes is the next one",
            vec![
                at(1, Some(1), Some(t0() + hour * 3)),
                at(2, Some(2), Some(t0() + hour)),
            ],
            None,
            Some(t0() + hour),
        ),
        (
            "the earliest future change, met first, stays the next one",
            vec![
                at(1, Some(1), Some(t0() + hour)),
                at(2, Some(2), Some(t0() + hour * 3)),
            ],
            None,
            Some(t0() + hour),
        ),
        (
            "no version (a draft) or no live_from: never live",
            vec![at(1, None, Some(t0() - hour)), at(2, Some(1), None)],
            None,
            None,
        ),
        (
            "live exactly at the snapshot time",
            vec![at(1, Some(1), Some(t0()))],
            Some(1),
            None,
        ),
    ];
    for (case, states, live, next) in cases {
        let mut r = rows();
        r.features.truncate(1);
        r.feature_states = states;
        let (doc, _, next_change_at) = project(&r);
        assert_eq!(
            doc.feature_states.first().and_then(|fs| fs.django_id),
            live,
            "{case}"
        );
        assert_eq!(next_change_at, next, "{case}");
    }
}

#[test]
fn versioning_v2_takes_each_features_latest_published_version() {
    let hour = Duration::hours(1);
    let version =
        |n: u128, feature_id, published: bool, live_from, deleted: bool| FeatureVersionRow {
            uuid: uuid(n),
            feature_id,
            published_at: published.then_some(t0() - hour * 5),
            live_from,
            deleted_at: deleted.then_some(t0()),
        };
    let in_version = |id, feature_id, v: u128| FeatureStateRow {
        version: None,
        live_from: None,
        environment_feature_version_id: Some(uuid(v)),
        ..state(id, feature_id)
    };
    let mut r = rows();
    r.environment.use_v2_feature_versioning = true;
    r.feature_versions = vec![
        version(1, 1, true, Some(t0() - hour * 2), false),
        version(2, 1, true, Some(t0() - hour), false), // feature 1: the latest live
        version(3, 1, false, Some(t0() - hour / 2), false), // unpublished
        version(4, 1, true, Some(t0() - hour / 4), true), // deleted
        version(5, 1, true, Some(t0() + hour), false), // scheduled
        version(6, 2, true, Some(t0() - hour), false), // feature 2
        version(7, 3, true, Some(t0()), false),        // feature 3: live exactly now
    ];
    r.feature_states = vec![
        in_version(11, 1, 1),
        in_version(12, 1, 2),
        in_version(13, 1, 3),
        in_version(14, 1, 4),
        in_version(15, 1, 5),
        in_version(21, 2, 6),
        in_version(31, 3, 7),
        // A v1-style row without a version is not part of any version.
        state(99, 2),
    ];
    r.features.push(feature(3, "search"));
    let (doc, _, next) = project(&r);
    assert_eq!(
        defaults(&doc),
        vec![(1, Some(12)), (2, Some(21)), (3, Some(31))]
    );
    assert_eq!(next, Some(t0() + hour));
}

#[test]
fn versioning_v2_overrides_count_only_with_their_own_versions_feature_segment() {
    let mut r = rows();
    r.environment.use_v2_feature_versioning = true;
    r.features.truncate(1);
    r.feature_versions = vec![FeatureVersionRow {
        uuid: uuid(1),
        feature_id: 1,
        published_at: Some(t0()),
        live_from: Some(t0() - Duration::hours(1)),
        deleted_at: None,
    }];
    let segment_state = |id, fs_id| FeatureStateRow {
        version: None,
        live_from: None,
        environment_feature_version_id: Some(uuid(1)),
        feature_segment_id: Some(fs_id),
        ..state(id, 1)
    };
    r.feature_states = vec![
        FeatureStateRow {
            version: None,
            live_from: None,
            environment_feature_version_id: Some(uuid(1)),
            ..state(10, 1)
        },
        segment_state(11, 501),
        segment_state(12, 502),
    ];
    r.feature_segments = vec![
        FeatureSegmentRow {
            id: 501,
            feature_id: 1,
            segment_id: 7,
            priority: 0,
            environment_feature_version_id: Some(uuid(1)),
        },
        // The same segment's feature segment of an older version.
        FeatureSegmentRow {
            id: 502,
            feature_id: 1,
            segment_id: 8,
            priority: 1,
            environment_feature_version_id: Some(uuid(99)),
        },
    ];
    r.segments = vec![segment(7, "beta", None), segment(8, "old", None)];
    let (doc, _, _) = project(&r);
    let overrides: Vec<(i64, Vec<Option<i64>>)> = doc
        .project
        .segments
        .iter()
        .map(|s| (s.id, s.feature_states.iter().map(|f| f.django_id).collect()))
        .collect();
    assert_eq!(overrides, vec![(7, vec![Some(11)]), (8, vec![])]);
}

fn segment(id: i32, name: &str, feature_id: Option<i32>) -> SegmentRow {
    SegmentRow {
        id,
        name: name.into(),
        feature_id,
    }
}

fn rule(id: i32, rule_type: &str, segment_id: Option<i32>, parent: Option<i32>) -> RuleRow {
    RuleRow {
        id,
        rule_type: rule_type.into(),
        segment_id,
        rule_id: parent,
    }
}

fn condition(id: i32, rule_id: i32, operator: &str, value: Option<&str>) -> ConditionRow {
    ConditionRow {
        id,
        rule_id,
        operator: operator.into(),
        property: Some("plan".into()),
        value: value.map(str::to_string),
    }
}

#[test]
fn segment_overrides_are_grouped_by_segment_with_their_priority() {
    let mut r = rows();
    let override_of = |id, feature_id, fs_id| FeatureStateRow {
        feature_segment_id: Some(fs_id),
        ..state(id, feature_id)
    };
    r.feature_states.extend([
        override_of(300, 1, 501),
        override_of(301, 2, 502),
        // Its segment is deleted (not among the live segments): does not count.
        override_of(302, 1, 503),
    ]);
    let fseg = |id, feature_id, segment_id, priority| FeatureSegmentRow {
        id,
        feature_id,
        segment_id,
        priority,
        environment_feature_version_id: None,
    };
    r.feature_segments = vec![fseg(501, 1, 7, 2), fseg(502, 2, 7, 0), fseg(503, 1, 9, 1)];
    r.segments = vec![
        segment(8, "no overrides", None),
        segment(7, "beta", None),
        // Feature-specific and overriding nothing: not in the document.
        segment(6, "feature specific", Some(1)),
    ];
    let (doc, _, _) = project(&r);
    type Overrides = Vec<(i64, Option<i64>)>;
    let segments: Vec<(i64, Overrides)> = doc
        .project
        .segments
        .iter()
        .map(|s| {
            let states = s
                .feature_states
                .iter()
                .map(|f| {
                    (
                        f.feature.id,
                        f.feature_segment.as_ref().and_then(|p| p.priority),
                    )
                })
                .collect();
            (s.id, states)
        })
        .collect();
    // Segments in id order; overrides in feature segment id order; defaults untouched.
    assert_eq!(
        segments,
        vec![(7, vec![(1, Some(2)), (2, Some(0))]), (8, vec![])]
    );
    assert_eq!(defaults(&doc), vec![(1, Some(100)), (2, Some(200))]);
}

#[test]
fn rules_nest_in_id_order_with_their_conditions() {
    let mut r = rows();
    r.segments = vec![segment(7, "beta", None)];
    r.rules = vec![
        rule(41, "ANY", None, Some(40)),
        rule(40, "ALL", Some(7), None),
        rule(43, "NONE", None, Some(40)),
        rule(42, "ALL", None, Some(41)),
        // Neither a segment's rule nor a child: belongs to nothing.
        rule(44, "ALL", None, None),
    ];
    r.conditions = vec![
        condition(2, 42, "IN", Some("pro,team")),
        condition(1, 42, "IS_SET", None),
        condition(3, 40, "EQUAL", Some("x")),
    ];
    let (doc, _, _) = project(&r);
    let root = &doc.project.segments[0].rules;
    assert_eq!(root.len(), 1);
    assert_eq!(root[0].rule_type, "ALL");
    assert_eq!(root[0].conditions[0].value.as_deref(), Some("x"));
    let children: Vec<&str> = root[0].rules.iter().map(|r| r.rule_type.as_str()).collect();
    assert_eq!(children, vec!["ANY", "NONE"]);
    let leaf = &root[0].rules[0].rules[0];
    let ops: Vec<&str> = leaf
        .conditions
        .iter()
        .map(|c| c.operator.as_str())
        .collect();
    assert_eq!(ops, vec!["IS_SET", "IN"]);
    assert_eq!(leaf.conditions[0].property_.as_deref(), Some("plan"));
}

#[test]
fn multivariate_values_are_ordered_typed_and_bounded() {
    let mv = |id, state_id, pct: f64, option_type: &str| MultivariateValueRow {
        id,
        uuid: uuid(1000 + id as u128),
        feature_state_id: state_id,
        percentage_allocation: pct,
        option_id: id * 10,
        option_type: Some(option_type.into()),
        option_integer_value: Some(id),
        option_string_value: Some(format!("s{id}")),
        option_boolean_value: Some(true),
        option_key: None,
    };
    let mut r = rows();
    r.features[0].feature_type = "MULTIVARIATE".into();
    r.feature_states[0].mv_hashing_salt = Some(555);
    r.multivariate_values = vec![mv(3, 100, 30.0, "bool"), mv(2, 100, 70.0, "int")];
    let (doc, _, _) = project(&r);
    let fs = &doc.feature_states[0];
    // The bucketing seed is the state's salt when it has one.
    assert_eq!(fs.django_id, Some(555));
    let values: Vec<(Option<i64>, Option<FlagValue>)> = fs
        .multivariate_feature_state_values
        .iter()
        .map(|v| (v.id, v.multivariate_feature_option.value.clone()))
        .collect();
    assert_eq!(
        values,
        vec![
            (Some(2), Some(FlagValue::Int(2))),
            (Some(3), Some(FlagValue::Bool(true)))
        ]
    );

    let mut over = r.clone();
    over.multivariate_values[0].percentage_allocation = 30.5;
    let reason = invalid(&over);
    assert!(
        reason.contains("feature state 100") && reason.contains("over 100%"),
        "{reason}"
    );
    for pct in [-1.0, 100.5, f64::NAN] {
        let mut bad = r.clone();
        bad.multivariate_values[1].percentage_allocation = pct;
        let reason = invalid(&bad);
        assert!(
            reason.contains("multivariate value 2") && reason.contains("outside 0-100"),
            "{pct}: {reason}"
        );
    }
}

#[test]
fn bad_core_data_is_refused_naming_the_row() {
    type Change = fn(&mut EnvironmentRows);
    let cases: [(&str, Change, &str); 5] = [
        (
            "feature type",
            |r| r.features[1].feature_type = "FLAG".into(),
            "feature 2",
        ),
        (
            "rule type",
            |r| r.rules[0].rule_type = "SOME".into(),
            "segment rule 40",
        ),
        (
            "operator",
            |r| r.conditions[0].operator = "LIKE".into(),
            "condition 1: unknown operator",
        ),
        (
            "a null value where the engine needs one",
            |r| {
                r.conditions[0].operator = "PERCENTAGE_SPLIT".into();
                r.conditions[0].value = None;
            },
            "condition 1: operator PERCENTAGE_SPLIT needs a value",
        ),
        (
            "rules nested deeper than any real segment",
            |r| {
                // A chain of 34 rules under the segment's rule: each row has one parent,
                // so a cycle cannot be reached from a segment; depth is what is bounded.
                for id in 41..75 {
                    r.rules.push(rule(id, "ALL", None, Some(id - 1)));
                }
            },
            "more than 32 deep",
        ),
    ];
    for (case, change, expected) in cases {
        let mut r = rows();
        r.segments = vec![segment(7, "beta", None)];
        r.rules = vec![rule(40, "ALL", Some(7), None)];
        r.conditions = vec![condition(1, 40, "EQUAL", Some("x"))];
        change(&mut r);
        let reason = invalid(&r);
        assert!(reason.contains(expected), "{case}: {reason}");
    }
}

#[test]
fn integrations_map_to_their_configs() {
    let integration = |kind: &str, api_key: Option<&str>, base_url: Option<&str>| IntegrationRow {
        kind: kind.into(),
        api_key: api_key.map(str::to_string),
        base_url: base_url.map(str::to_string),
        secret: Some("s3cret".into()),
    };
    let mut r = rows();
    r.integrations = vec![
        integration("amplitude", Some("amp"), None),
        integration("segment", Some("seg"), Some("https://api.segment.io")),
        integration("webhook", None, Some("https://hooks.example.com")),
    ];
    let (doc, _, _) = project(&r);
    assert_eq!(
        doc.amplitude_config,
        Some(IntegrationConfig {
            api_key: Some("amp".into()),
            base_url: None
        })
    );
    assert_eq!(
        doc.segment_config.and_then(|c| c.base_url).as_deref(),
        Some("https://api.segment.io")
    );
    assert_eq!(
        doc.webhook_config,
        Some(WebhookConfig {
            url: "https://hooks.example.com".into(),
            secret: "s3cret".into()
        })
    );
    assert_eq!(doc.heap_config, None);
    assert_eq!(doc.mixpanel_config, None);
    assert_eq!(doc.rudderstack_config, None);
}

#[test]
fn values_are_typed_by_their_core_type() {
    let cases = [
        (Some("int"), Some(FlagValue::Int(7))),
        (Some("bool"), Some(FlagValue::Bool(false))),
        (Some("unicode"), Some(FlagValue::Str("seven".into()))),
        (None, Some(FlagValue::Str("seven".into()))),
    ];
    for (value_type, expected) in cases {
        assert_eq!(
            typed_value(value_type, Some(7), Some(false), Some("seven")),
            expected,
            "{value_type:?}"
        );
    }
    // The typed column empty: no value (not another column's).
    assert_eq!(typed_value(Some("int"), None, Some(true), Some("1")), None);
    assert_eq!(typed_value(Some("bool"), Some(1), None, Some("true")), None);
}

#[test]
fn features_of_other_projects_or_deleted_do_not_count() {
    // A state whose feature is not among the environment's features (deleted, or another
    // project's) is not in the document, as a default or an override.
    let mut r = rows();
    r.features.truncate(1);
    r.segments = vec![segment(7, "beta", None)];
    r.feature_segments = vec![FeatureSegmentRow {
        id: 501,
        feature_id: 2,
        segment_id: 7,
        priority: 0,
        environment_feature_version_id: None,
    }];
    r.feature_states.push(FeatureStateRow {
        feature_segment_id: Some(501),
        ..state(300, 2)
    });
    let (doc, _, _) = project(&r);
    assert_eq!(defaults(&doc), vec![(1, Some(100))]);
    assert!(doc.project.segments[0].feature_states.is_empty());
}

#[test]
fn rules_may_nest_32_deep_and_no_deeper() {
    // The segment's rule at depth 0, then a chain of children: depth 32 is the deepest that
    // projects (Flagsmith's own segments nest a few levels; deeper is corrupt data).
    let chain = |depth: i32| {
        let mut r = rows();
        r.segments = vec![segment(7, "deep", None)];
        r.rules = vec![rule(100, "ALL", Some(7), None)];
        for d in 1..=depth {
            r.rules.push(rule(100 + d, "ANY", None, Some(100 + d - 1)));
        }
        r
    };
    let (doc, _, _) = project(&chain(32));
    let mut depth = 0;
    let mut rule = &doc.project.segments[0].rules[0];
    while let Some(child) = rule.rules.first() {
        rule = child;
        depth += 1;
    }
    assert_eq!(depth, 32);
    assert!(invalid(&chain(33)).contains("more than 32 deep"));
}
