-- Identities have two writers: core (through this pipeline) and the edge (the Edge API and
-- Flagsmith's edge identity endpoints, which put whole identity items). Edge writes are
-- ingested back into core (edge_ingest); this migration adds what that needs.
--
-- 1. The origin of a captured change. Ingestion runs with the transaction-local setting
--    `edge.origin = 'edge'`, so the rows it changes are captured as edge changes: the writer
--    re-projects them (the merged document) without taking them for new core changes.
-- 2. The trait and identity columns the merge rule needs in the captured keys: a trait's key
--    and value (OLD holds the value before a core change), an identity's identifier (a core
--    delete leaves a tombstone by environment and identifier).
-- 3. The merge state: per-trait clocks, identity tombstones, the last ingested edge image of
--    each identity item, the identity_uuid of identities created at the edge, poison edge
--    items, and the per-project switch.

ALTER TABLE edge.change_log ADD COLUMN IF NOT EXISTS origin text;

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
    INSERT INTO edge.change_log (table_name, op, new_keys, old_keys, origin)
    VALUES (TG_TABLE_NAME, TG_OP, new_keys, old_keys,
            NULLIF(current_setting('edge.origin', true), ''));
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
            ('environments_identity', ARRAY['id', 'environment_id', 'identifier']),
            ('environments_trait',    ARRAY['id', 'identity_id', 'trait_key', 'value_type', 'string_value', 'integer_value', 'float_value', 'boolean_value'])
        ) AS v(tbl, cols)
    LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS edge_capture ON public.%I', t.tbl);
        EXECUTE format(
            'CREATE TRIGGER edge_capture AFTER INSERT OR UPDATE OR DELETE ON public.%I '
            'FOR EACH ROW EXECUTE FUNCTION edge.capture_change(%s)',
            t.tbl,
            (SELECT string_agg(quote_literal(c), ', ') FROM unnest(t.cols) AS c));
    END LOOP;
END
$$;

-- The last write of each trait, from either side. Core changes are recorded by the writer
-- when it resolves the change log (capture time, and the value the trait had before:
-- `recent` keeps those of the last minutes, so that an edge put built from a read older than
-- core's change is recognised as an echo, not as a new edit). Ingested edge changes are
-- recorded by ingestion (the stream record's creation time).
CREATE TABLE IF NOT EXISTS edge.trait_clock (
    identity_id integer     NOT NULL,
    trait_key   text        NOT NULL,
    changed_at  timestamptz NOT NULL,
    -- 'core' or 'edge'
    origin      text        NOT NULL,
    -- [{"at": <time>, "before": <value or null>}] of recent core changes
    recent      jsonb       NOT NULL DEFAULT '[]',
    PRIMARY KEY (identity_id, trait_key)
);

-- Identities deleted in core (not by ingestion): an edge write older than the delete does
-- not bring the identity back.
CREATE TABLE IF NOT EXISTS edge.identity_tombstone (
    environment_id integer     NOT NULL,
    identifier     text        NOT NULL,
    deleted_at     timestamptz NOT NULL,
    PRIMARY KEY (environment_id, identifier)
);

-- The identity_uuid of identities that were created at the edge: core has no such column,
-- and both sides must name the identity alike (the v2 override items are keyed by it).
CREATE TABLE IF NOT EXISTS edge.identity_uuid (
    identity_id   integer PRIMARY KEY,
    identity_uuid uuid    NOT NULL UNIQUE
);

-- The last edge image of each identity item that was ingested: its content digest (as the
-- writer hashes items) and the edge write's time. The writer overwrites an item it does not
-- own only when the item is exactly that ingested image (and conditional on it being
-- unchanged), so an edge write is never lost before it reached core.
CREATE TABLE IF NOT EXISTS edge.ingested (
    composite_key text PRIMARY KEY,
    digest        text        NOT NULL,
    edge_time     timestamptz NOT NULL,
    ingested_at   timestamptz NOT NULL DEFAULT now()
);

-- Every edge image ingested, with the edge write's time: a redelivered record is a no-op,
-- and a replica region's consumer can tell whether an edge image the writer's item replaced
-- there was ever ingested (see the stream consumer's ingestion roles).
CREATE TABLE IF NOT EXISTS edge.ingested_image (
    composite_key text        NOT NULL,
    digest        text        NOT NULL,
    edge_time     timestamptz NOT NULL,
    ingested_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (composite_key, digest, edge_time)
);

-- Edge items that cannot be ingested (a trait of an unknown type, an oversized value, an
-- override of a feature core does not have): parked with their key and reason; later edge
-- writes of the identity carry on.
CREATE TABLE IF NOT EXISTS edge.ingest_dead_letter (
    item_key        text PRIMARY KEY,
    error           text        NOT NULL,
    item            jsonb,
    attempts        integer     NOT NULL DEFAULT 1,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at  timestamptz NOT NULL DEFAULT now()
);

-- Per-project switch of edge -> core ingestion. Without a row, ingestion runs for projects
-- whose identity migration is complete (edge.identity_migration, whole project).
CREATE TABLE IF NOT EXISTS edge.ingest_setting (
    project_id integer PRIMARY KEY,
    enabled    boolean     NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- A document whose item the writer found written by someone else: since when, and whether it
-- waits for ingestion ('awaiting_ingestion') or is left to the edge ('edge_owned': ingestion
-- is off for its project).
ALTER TABLE edge.document ADD COLUMN IF NOT EXISTS foreign_since timestamptz;
ALTER TABLE edge.document ADD COLUMN IF NOT EXISTS foreign_state text;
