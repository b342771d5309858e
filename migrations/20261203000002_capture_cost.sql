-- Capture a little cheaper for the core API's updates: an UPDATE that leaves a table's key
-- columns as they were (a flag toggled, a value changed) records only the new keys, and the
-- trigger no longer builds the old keys to find that out. The keys are compared as a row
-- (`IS DISTINCT FROM`, column by column) before any JSON is built. The change log holds what
-- it held before (old_keys is NULL exactly when the key columns did not change).
--
-- The capture functions are generated again, live or paused as edge.capture_state says.

CREATE OR REPLACE FUNCTION edge.capture_function_body(tbl text, cols text[], live boolean)
RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $f$
DECLARE
    new_keys text;
    old_keys text;
    new_row  text;
    old_row  text;
BEGIN
    IF NOT live THEN
        RETURN E'BEGIN\n    -- capture is paused (writer capture pause)\n    RETURN NULL;\nEND';
    END IF;
    SELECT 'jsonb_build_object(' || string_agg(format('%L, NEW.%I', c, c), ', ' ORDER BY o) || ')',
           'jsonb_build_object(' || string_agg(format('%L, OLD.%I', c, c), ', ' ORDER BY o) || ')',
           'ROW(' || string_agg(format('NEW.%I', c), ', ' ORDER BY o) || ')',
           'ROW(' || string_agg(format('OLD.%I', c), ', ' ORDER BY o) || ')'
      INTO new_keys, old_keys, new_row, old_row
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
        -- the old keys only when they differ from the new ones
        IF %5$s IS DISTINCT FROM %4$s THEN
            old_keys := %3$s;
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
END$body$, tbl, new_keys, old_keys, new_row, old_row);
END
$f$;

DO $$
DECLARE
    t text;
    live boolean;
BEGIN
    SELECT enabled INTO live FROM edge.capture_state;
    FOR t IN SELECT table_name FROM edge.capture_table LOOP
        PERFORM edge.write_capture_function(t, coalesce(live, true));
    END LOOP;
END
$$;
