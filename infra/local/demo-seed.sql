-- A small demo project, inserted the way Flagsmith's core API writes it: an organisation, a
-- project on the edge, one environment with a server key, a few features with their default
-- states, a segment with an override and a multivariate feature.
BEGIN;
INSERT INTO organisations_organisation (id, name, has_requested_features, created_date,
    alerted_over_plan_limit, stop_serving_flags, persist_trait_data, block_access_to_admin,
    feature_analytics, restrict_project_create_to_admin, uuid, force_2fa)
VALUES (1, 'Demo Org', false, now(), false, false, true, false, false, false, gen_random_uuid(), false);

INSERT INTO projects_project (id, name, created_date, organisation_id, hide_disabled_flags,
    enable_dynamo_db, uuid, prevent_flag_defaults, enable_realtime_updates,
    only_allow_lower_case_feature_names, max_features_allowed, max_segments_allowed,
    max_segment_overrides_allowed, identity_overrides_v2_migration_status,
    stale_flags_limit_days, enforce_feature_owners)
VALUES (1, 'Demo Project', now(), 1, false, true, gen_random_uuid(), false, false, true,
    400, 100, 100, 'COMPLETE', 30, false);

INSERT INTO environments_environment (id, name, created_date, api_key, project_id,
    webhooks_enabled, allow_client_traits, updated_at, use_mv_v2_evaluation,
    hide_sensitive_data, use_v2_feature_versioning, use_identity_overrides_in_local_eval,
    is_creating, uuid)
VALUES (1, 'Production', now(), 'demoEnvKey', 1, false, true, now(), false, false, false,
    false, false, gen_random_uuid());

INSERT INTO environments_environmentapikey (key, created_at, name, active, environment_id)
VALUES ('ser.demoServerKey', now(), 'demo server key', true, 1);

INSERT INTO features_feature (id, name, created_date, project_id, default_enabled, type,
    is_archived, uuid, is_server_key_only)
VALUES (1, 'dark_mode', now(), 1, false, 'STANDARD', false, gen_random_uuid(), false),
       (2, 'banner_text', now(), 1, true, 'STANDARD', false, gen_random_uuid(), false),
       (3, 'checkout_flow', now(), 1, true, 'MULTIVARIATE', false, gen_random_uuid(), false);

INSERT INTO features_featurestate (id, enabled, environment_id, feature_id, created_at,
    live_from, updated_at, version, uuid)
VALUES (1, false, 1, 1, now(), now(), now(), 1, gen_random_uuid()),
       (2, true, 1, 2, now(), now(), now(), 1, gen_random_uuid()),
       (3, true, 1, 3, now(), now(), now(), 1, gen_random_uuid());

INSERT INTO features_featurestatevalue (type, boolean_value, integer_value, string_value,
    feature_state_id, uuid)
VALUES ('unicode', NULL, NULL, NULL, 1, gen_random_uuid()),
       ('unicode', NULL, NULL, 'Welcome!', 2, gen_random_uuid()),
       ('unicode', NULL, NULL, 'classic', 3, gen_random_uuid());

INSERT INTO multivariate_multivariatefeatureoption (id, type, string_value,
    default_percentage_allocation, feature_id, uuid, key)
VALUES (1, 'unicode', 'one-page', 50, 3, gen_random_uuid(), 'one-page');
INSERT INTO multivariate_multivariatefeaturestatevalue (percentage_allocation,
    feature_state_id, multivariate_feature_option_id, uuid)
VALUES (50, 3, 1, gen_random_uuid());

INSERT INTO segments_segment (id, name, project_id, uuid, version, created_at, updated_at,
    is_system_segment, managed_by)
VALUES (1, 'beta testers', 1, gen_random_uuid(), 1, now(), now(), false, 'USER');
UPDATE segments_segment SET version_of_id = id WHERE id = 1;
INSERT INTO segments_segmentrule (id, type, segment_id, uuid, created_at, updated_at)
VALUES (1, 'ALL', 1, gen_random_uuid(), now(), now());
INSERT INTO segments_segmentrule (id, type, rule_id, uuid, created_at, updated_at)
VALUES (2, 'ANY', 1, gen_random_uuid(), now(), now());
INSERT INTO segments_condition (operator, property, value, rule_id, uuid,
    created_with_segment, created_at, updated_at)
VALUES ('EQUAL', 'beta', 'true', 2, gen_random_uuid(), true, now(), now());

INSERT INTO features_featuresegment (id, priority, feature_id, segment_id, enabled,
    environment_id, uuid)
VALUES (1, 0, 1, 1, false, 1, gen_random_uuid());
INSERT INTO features_featurestate (id, enabled, environment_id, feature_id,
    feature_segment_id, created_at, live_from, updated_at, version, uuid)
VALUES (4, true, 1, 1, 1, now(), now(), now(), 1, gen_random_uuid());
INSERT INTO features_featurestatevalue (type, feature_state_id, uuid)
VALUES ('unicode', 4, gen_random_uuid());

-- Explicit ids above: move the identity sequences past them, as a dump restore would.
SELECT setval(pg_get_serial_sequence('public.' || t, 'id'), 100)
FROM unnest(ARRAY['organisations_organisation', 'projects_project', 'environments_environment',
    'features_feature', 'features_featurestate', 'multivariate_multivariatefeatureoption',
    'segments_segment', 'segments_segmentrule', 'features_featuresegment']) AS t;
COMMIT;
