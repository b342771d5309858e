-- Row triggers on the core tables that feed environment and API key documents.
--
-- Each trigger appends one row to edge.change_log in the core API's own transaction: the
-- table, the operation, and the row's key columns from NEW and OLD (listed per table below),
-- nothing else. No lookups, no fan-out: resolving a change to the documents it touches is the
-- writer's job, after the commit. UPDATEs that change nothing are skipped. A NOTIFY (one per
-- transaction: identical notifications are merged) wakes the writer; it also polls, since
-- notifications sent while it is away are lost.
--
-- Key columns are chosen so that the documents can still be found when a parent row is gone:
-- a hard delete in the core API deletes children before their parent, in one transaction, and
-- each deleted row records its own parent ids (an environment feature state records its
-- environment, a segment its project).

CREATE OR REPLACE FUNCTION edge.capture_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    new_row  jsonb;
    old_row  jsonb;
    new_keys jsonb;
    old_keys jsonb;
BEGIN
    IF TG_OP <> 'DELETE' THEN
        new_row := to_jsonb(NEW);
    END IF;
    IF TG_OP <> 'INSERT' THEN
        old_row := to_jsonb(OLD);
    END IF;
    IF TG_OP = 'UPDATE' AND new_row = old_row THEN
        RETURN NULL;
    END IF;
    IF new_row IS NOT NULL THEN
        SELECT jsonb_object_agg(k, new_row -> k) INTO new_keys FROM unnest(TG_ARGV) AS k;
    END IF;
    IF old_row IS NOT NULL THEN
        SELECT jsonb_object_agg(k, old_row -> k) INTO old_keys FROM unnest(TG_ARGV) AS k;
        IF old_keys = new_keys THEN
            old_keys := NULL;
        END IF;
    END IF;
    INSERT INTO edge.change_log (table_name, op, new_keys, old_keys)
    VALUES (TG_TABLE_NAME, TG_OP, new_keys, old_keys);
    PERFORM pg_notify('edge_change_log', '');
    RETURN NULL;
END
$$;

DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT * FROM (VALUES
            ('organisations_organisation',                  ARRAY['id']),
            ('projects_project',                            ARRAY['id', 'organisation_id']),
            ('environments_environment',                    ARRAY['id', 'project_id']),
            ('environments_environmentapikey',              ARRAY['id', 'environment_id']),
            ('features_feature',                            ARRAY['id', 'project_id']),
            ('features_featurestate',                       ARRAY['id', 'environment_id', 'feature_id', 'identity_id', 'feature_segment_id']),
            ('features_featurestatevalue',                  ARRAY['id', 'feature_state_id']),
            ('features_featuresegment',                     ARRAY['id', 'environment_id', 'feature_id', 'segment_id']),
            ('feature_versioning_environmentfeatureversion', ARRAY['uuid', 'environment_id', 'feature_id']),
            ('multivariate_multivariatefeatureoption',      ARRAY['id', 'feature_id']),
            ('multivariate_multivariatefeaturestatevalue',  ARRAY['id', 'feature_state_id']),
            ('segments_segment',                            ARRAY['id', 'project_id']),
            ('segments_segmentrule',                        ARRAY['id', 'segment_id', 'rule_id']),
            ('segments_condition',                          ARRAY['id', 'rule_id']),
            ('amplitude_amplitudeconfiguration',            ARRAY['id', 'environment_id']),
            ('heap_heapconfiguration',                      ARRAY['id', 'environment_id']),
            ('mixpanel_mixpanelconfiguration',              ARRAY['id', 'environment_id']),
            ('rudderstack_rudderstackconfiguration',        ARRAY['id', 'environment_id']),
            ('segment_segmentconfiguration',                ARRAY['id', 'environment_id']),
            ('webhook_webhookconfiguration',                ARRAY['id', 'environment_id'])
        ) AS v(tbl, cols)
    LOOP
        IF to_regclass(format('public.%I', t.tbl)) IS NULL THEN
            RAISE EXCEPTION 'core table public.% does not exist: the writer''s migrations must run on Flagsmith''s core database', t.tbl;
        END IF;
        EXECUTE format('DROP TRIGGER IF EXISTS edge_capture ON public.%I', t.tbl);
        EXECUTE format(
            'CREATE TRIGGER edge_capture AFTER INSERT OR UPDATE OR DELETE ON public.%I '
            'FOR EACH ROW EXECUTE FUNCTION edge.capture_change(%s)',
            t.tbl,
            (SELECT string_agg(quote_literal(c), ', ') FROM unnest(t.cols) AS c));
    END LOOP;
END
$$;
