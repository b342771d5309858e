-- Identity documents: capture identities and traits, and record the extra columns whose
-- change must re-project identities.
--
-- Identity documents depend on upstream rows in a few ways only: the environment's api_key
-- (part of every composite key), whether the environment, project and organisation are on
-- the edge, the environment's versioning mode, the project's v2 migration status (override
-- items), a feature's name and type, and a multivariate option's value. Those columns are
-- added to the recorded keys of their tables, so the writer sees in old_keys that they
-- changed and fans out to identities only then; any other UPDATE of these rows touches
-- environment documents only, as before.

DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT * FROM (VALUES
            ('organisations_organisation',             ARRAY['id', 'deleted_at']),
            ('projects_project',                       ARRAY['id', 'organisation_id', 'enable_dynamo_db', 'identity_overrides_v2_migration_status', 'deleted_at']),
            ('environments_environment',               ARRAY['id', 'project_id', 'api_key', 'deleted_at', 'use_v2_feature_versioning']),
            ('features_feature',                       ARRAY['id', 'project_id', 'name', 'type', 'deleted_at']),
            ('multivariate_multivariatefeatureoption', ARRAY['id', 'feature_id', 'type', 'integer_value', 'string_value', 'boolean_value', 'key']),
            ('environments_identity',                  ARRAY['id', 'environment_id']),
            ('environments_trait',                     ARRAY['id', 'identity_id'])
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

-- The identity migration job's progress, per project (and optionally one environment).
-- `checkpoint_id` is a low-water mark: every identity with a lower or equal id in scope has
-- been written, so a killed job resumes after it.
CREATE TABLE IF NOT EXISTS edge.identity_migration (
    project_id     integer     NOT NULL,
    -- 0 when the whole project is in scope
    environment_id integer     NOT NULL DEFAULT 0,
    -- 'IN_PROGRESS' or 'COMPLETE'
    status         text        NOT NULL,
    checkpoint_id  integer     NOT NULL DEFAULT 0,
    migrated       bigint      NOT NULL DEFAULT 0,
    unchanged      bigint      NOT NULL DEFAULT 0,
    skipped        bigint      NOT NULL DEFAULT 0,
    deferred       bigint      NOT NULL DEFAULT 0,
    started_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    PRIMARY KEY (project_id, environment_id)
);

-- Backfill runs: a cursor per scope, so a stopped backfill resumes.
CREATE TABLE IF NOT EXISTS edge.backfill_run (
    -- the scope as given, e.g. 'project:3', 'all', 'since:2026-11-01T00:00:00+00:00'
    scope       text PRIMARY KEY,
    -- last document key done, in the run's order
    cursor      text,
    written     bigint      NOT NULL DEFAULT 0,
    unchanged   bigint      NOT NULL DEFAULT 0,
    failed      bigint      NOT NULL DEFAULT 0,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

-- Bulk-write leases. The identity migration job writes with BatchWriteItem, which takes no
-- condition. It holds the documents' locks while it writes, so no other writer can write
-- them meanwhile; but if its lock connection dies with a batch still in flight, another
-- writer could take a lock and write a newer version before the late batch lands. So before
-- writing, the job commits a lease per document (on another connection) that outlasts its
-- longest possible write, and every writer that finds an unexpired lease waits for it to
-- pass. The job removes its leases with its bookkeeping; only a job that died leaves them.
CREATE TABLE IF NOT EXISTS edge.write_lease (
    doc_key text PRIMARY KEY,
    until   timestamptz NOT NULL
);
