-- Capture that is cheap for the core API, can be paused without a deploy and installs without
-- stalling it.
--
-- 1. One trigger function per captured table, generated from `edge.capture_table` (the table
--    and the key columns it records). It reads the key columns directly (no `to_jsonb` of the
--    whole row), and UPDATEs that change nothing are filtered by the trigger's WHEN clause in
--    the executor, without calling the function at all. Every function pins `search_path`.
-- 2. A kill switch. `edge.set_capture(false)` replaces every capture function's body with one
--    that returns at once (CREATE OR REPLACE FUNCTION: no lock on any core table, effective for
--    the next row of every session) and records a gap in `edge.capture_gap`; the changes made
--    while paused are not captured, so the writer reports the gap until a backfill that started
--    after every transaction of the pause had ended has replayed every document.
-- 3. Installation per table. `edge.install_capture_trigger(table)` (re)creates one table's
--    triggers in its caller's transaction; `writer migrate` calls it once per table, each in a
--    short transaction with a lock timeout, so at most one core table is locked at a time and
--    never for long. It does nothing when the table's triggers are already as wanted.

CREATE TABLE IF NOT EXISTS edge.capture_table (
    table_name  text PRIMARY KEY,
    -- the columns recorded in change_log.new_keys / old_keys
    key_columns text[] NOT NULL
);

INSERT INTO edge.capture_table (table_name, key_columns) VALUES
    ('organisations_organisation',                   ARRAY['id', 'deleted_at']),
    ('projects_project',                             ARRAY['id', 'organisation_id', 'enable_dynamo_db', 'identity_overrides_v2_migration_status', 'deleted_at']),
    ('environments_environment',                     ARRAY['id', 'project_id', 'api_key', 'deleted_at', 'use_v2_feature_versioning']),
    ('environments_environmentapikey',               ARRAY['id', 'environment_id']),
    ('features_feature',                             ARRAY['id', 'project_id', 'name', 'type', 'deleted_at']),
    ('features_featurestate',                        ARRAY['id', 'environment_id', 'feature_id', 'identity_id', 'feature_segment_id']),
    ('features_featurestatevalue',                   ARRAY['id', 'feature_state_id']),
    ('features_featuresegment',                      ARRAY['id', 'environment_id', 'feature_id', 'segment_id']),
    ('feature_versioning_environmentfeatureversion', ARRAY['uuid', 'environment_id', 'feature_id']),
    ('multivariate_multivariatefeatureoption',       ARRAY['id', 'feature_id', 'type', 'integer_value', 'string_value', 'boolean_value', 'key']),
    ('multivariate_multivariatefeaturestatevalue',   ARRAY['id', 'feature_state_id']),
    ('segments_segment',                             ARRAY['id', 'project_id']),
    ('segments_segmentrule',                         ARRAY['id', 'segment_id', 'rule_id']),
    ('segments_condition',                           ARRAY['id', 'rule_id']),
    ('amplitude_amplitudeconfiguration',             ARRAY['id', 'environment_id']),
    ('heap_heapconfiguration',                       ARRAY['id', 'environment_id']),
    ('mixpanel_mixpanelconfiguration',               ARRAY['id', 'environment_id']),
    ('rudderstack_rudderstackconfiguration',         ARRAY['id', 'environment_id']),
    ('segment_segmentconfiguration',                 ARRAY['id', 'environment_id']),
    ('webhook_webhookconfiguration',                 ARRAY['id', 'environment_id']),
    ('environments_identity',                        ARRAY['id', 'environment_id', 'identifier']),
    ('environments_trait',                           ARRAY['id', 'identity_id', 'trait_key', 'value_type', 'string_value', 'integer_value', 'float_value', 'boolean_value'])
ON CONFLICT (table_name) DO UPDATE SET key_columns = EXCLUDED.key_columns;

-- Whether capture runs. One row.
CREATE TABLE IF NOT EXISTS edge.capture_state (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    enabled    boolean     NOT NULL DEFAULT true,
    reason     text,
    changed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO edge.capture_state DEFAULT VALUES ON CONFLICT DO NOTHING;

-- Periods during which capture was paused: the core changes made then are not in the change
-- log. A gap is closed by a backfill of every document that began after `settled_xid`: every
-- transaction that was running when capture resumed (and so may hold uncaptured changes) had
-- ended by then.
CREATE TABLE IF NOT EXISTS edge.capture_gap (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    paused_at     timestamptz NOT NULL,
    reason        text,
    resumed_at    timestamptz,
    -- pg_snapshot_xmax of the resume transaction's snapshot
    settled_xid   xid8,
    backfilled_at timestamptz
);

-- The name of a table's capture function.
CREATE OR REPLACE FUNCTION edge.capture_function_name(tbl text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'capture_' || tbl
$$;

-- The body of a table's capture function: live (record the change, wake the writer) or paused
-- (return at once).
CREATE OR REPLACE FUNCTION edge.capture_function_body(tbl text, cols text[], live boolean)
RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
    new_keys text;
    old_keys text;
BEGIN
    IF NOT live THEN
        RETURN E'BEGIN\n    -- capture is paused (writer capture pause)\n    RETURN NULL;\nEND';
    END IF;
    SELECT 'jsonb_build_object(' || string_agg(format('%L, NEW.%I', c, c), ', ' ORDER BY o) || ')',
           'jsonb_build_object(' || string_agg(format('%L, OLD.%I', c, c), ', ' ORDER BY o) || ')'
      INTO new_keys, old_keys
      FROM unnest(cols) WITH ORDINALITY AS k(c, o);
    RETURN format($body$
DECLARE
    new_keys jsonb;
    old_keys jsonb;
BEGIN
    IF TG_OP = 'INSERT' THEN
        new_keys := %2$s;
    ELSIF TG_OP = 'DELETE' THEN
        old_keys := %3$s;
    ELSE
        new_keys := %2$s;
        old_keys := %3$s;
        IF old_keys = new_keys THEN
            old_keys := NULL;
        END IF;
    END IF;
    INSERT INTO edge.change_log (table_name, op, new_keys, old_keys, origin)
    VALUES (%1$L, TG_OP, new_keys, old_keys, NULLIF(current_setting('edge.origin', true), ''));
    -- Wake the writer only if one is waiting idle: it then holds the wake lock exclusively.
    -- Otherwise this transaction holds the lock shared until it ends, so a writer about to
    -- go idle waits for it and then sees its changes (edge.capture wake lock, see the writer's
    -- capture/listen.rs). NOTIFY serialises commits; a busy writer needs none.
    IF NOT pg_try_advisory_xact_lock_shared(1701078885, 1667330164) THEN
        PERFORM pg_notify('edge_change_log', '');
    END IF;
    RETURN NULL;
END$body$, tbl, new_keys, old_keys);
END
$f$;

-- (Re)creates a table's capture function with the live or the paused body. Takes no lock on
-- the core table.
CREATE OR REPLACE FUNCTION edge.write_capture_function(tbl text, live boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cols text[];
BEGIN
    SELECT key_columns INTO cols FROM edge.capture_table WHERE table_name = tbl;
    IF cols IS NULL THEN
        RAISE EXCEPTION 'table % is not captured (edge.capture_table)', tbl;
    END IF;
    EXECUTE format(
        'CREATE OR REPLACE FUNCTION edge.%I() RETURNS trigger LANGUAGE plpgsql '
        'SET search_path = pg_catalog, pg_temp AS %L',
        edge.capture_function_name(tbl), edge.capture_function_body(tbl, cols, live));
END
$$;

-- The trigger definitions a captured table should have, as pg_get_triggerdef prints them.
CREATE OR REPLACE FUNCTION edge.wanted_capture_triggers(tbl text) RETURNS text[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ARRAY[
        format('CREATE TRIGGER edge_capture AFTER INSERT OR DELETE ON public.%I FOR EACH ROW EXECUTE FUNCTION edge.%I()',
               tbl, edge.capture_function_name(tbl)),
        format('CREATE TRIGGER edge_capture_update AFTER UPDATE ON public.%I FOR EACH ROW WHEN ((old.* IS DISTINCT FROM new.*)) EXECUTE FUNCTION edge.%I()',
               tbl, edge.capture_function_name(tbl))]
$$;

-- Installs one table's capture: its function (live or paused, as edge.capture_state says) and
-- its two triggers. Returns false when the triggers were already as wanted (no lock taken on
-- the table then). Run it in a short transaction with a lock_timeout: it locks the table
-- (SHARE ROW EXCLUSIVE) while it swaps the triggers.
CREATE OR REPLACE FUNCTION edge.install_capture_trigger(tbl text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    have text[];
    live boolean;
BEGIN
    IF to_regclass(format('public.%I', tbl)) IS NULL THEN
        RAISE EXCEPTION 'core table public.% does not exist: the writer''s migrations must run on Flagsmith''s core database', tbl;
    END IF;
    SELECT enabled INTO live FROM edge.capture_state;
    PERFORM edge.write_capture_function(tbl, coalesce(live, true));
    SELECT array_agg(pg_get_triggerdef(t.oid) ORDER BY t.tgname) INTO have
      FROM pg_trigger t
     WHERE t.tgrelid = format('public.%I', tbl)::regclass AND t.tgname LIKE 'edge\_capture%' AND NOT t.tgisinternal;
    IF have = edge.wanted_capture_triggers(tbl) THEN
        RETURN false;
    END IF;
    EXECUTE format('LOCK TABLE public.%I IN SHARE ROW EXCLUSIVE MODE', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS edge_capture ON public.%I', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS edge_capture_update ON public.%I', tbl);
    EXECUTE (edge.wanted_capture_triggers(tbl))[1];
    EXECUTE (edge.wanted_capture_triggers(tbl))[2];
    RETURN true;
END
$$;

-- Removes one table's capture triggers (writer capture uninstall). Same locking as installing.
CREATE OR REPLACE FUNCTION edge.uninstall_capture_trigger(tbl text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF to_regclass(format('public.%I', tbl)) IS NULL THEN
        RETURN false;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger t
                    WHERE t.tgrelid = format('public.%I', tbl)::regclass
                      AND t.tgname LIKE 'edge\_capture%' AND NOT t.tgisinternal) THEN
        RETURN false;
    END IF;
    EXECUTE format('LOCK TABLE public.%I IN SHARE ROW EXCLUSIVE MODE', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS edge_capture ON public.%I', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS edge_capture_update ON public.%I', tbl);
    RETURN true;
END
$$;

-- The kill switch: pause (live = false) or resume (live = true) every capture function, and
-- record the gap. Takes no lock on any core table. Returns whether the state changed.
CREATE OR REPLACE FUNCTION edge.set_capture(live boolean, why text DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    was boolean;
    t text;
BEGIN
    SELECT enabled INTO was FROM edge.capture_state FOR UPDATE;
    IF was = live THEN
        RETURN false;
    END IF;
    FOR t IN SELECT table_name FROM edge.capture_table ORDER BY table_name LOOP
        PERFORM edge.write_capture_function(t, live);
    END LOOP;
    UPDATE edge.capture_state SET enabled = live, reason = why, changed_at = now();
    IF live THEN
        UPDATE edge.capture_gap
           SET resumed_at = now(), settled_xid = pg_snapshot_xmax(pg_current_snapshot())
         WHERE resumed_at IS NULL;
    ELSE
        INSERT INTO edge.capture_gap (paused_at, reason) VALUES (now(), why);
    END IF;
    RETURN true;
END
$$;

-- The new capture functions, then the old generic one goes once no trigger uses it. The
-- triggers themselves are swapped table by table by `writer migrate` (edge.install_capture_trigger),
-- outside this migration's transaction; until then the old triggers keep capturing.
DO $$
DECLARE
    t text;
BEGIN
    FOR t IN SELECT table_name FROM edge.capture_table LOOP
        PERFORM edge.write_capture_function(t, true);
    END LOOP;
END
$$;
