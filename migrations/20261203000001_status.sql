-- What `writer status` reads and nothing kept before: recent writes (for the replication lag
-- over the last minutes, and for the writes whose acknowledgements it checks) and the last
-- runs of `writer verify`. Both are read by a separate process, so they live here, not in
-- the daemon's memory.

-- One row per document write (a conditional write the writer made and recorded), appended in
-- the write's bookkeeping statement. Kept for an hour: the daemon prunes older rows once a
-- minute. The identity migration job's bulk writes are not logged here.
CREATE TABLE IF NOT EXISTS edge.write_log (
    -- when the write was recorded (after DynamoDB accepted it)
    written_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    doc_key         text        NOT NULL,
    -- the document's version of this write
    version         bigint      NOT NULL,
    -- the write put the document's items at `version` (false: it only deleted items no longer
    -- wanted; the remaining items keep their older versions)
    put_items       boolean     NOT NULL,
    -- capture time of the oldest change the write covered, when it replicated queued changes
    -- (null for backfills, syncs, replays and repairs): the replication lag is
    -- written_at - first_change_at, as `writer_lag_seconds` measures it
    first_change_at timestamptz
);
CREATE INDEX IF NOT EXISTS write_log_written_at_idx ON edge.write_log (written_at);

-- Runs of `writer verify`, newest last (the last 100 are kept).
CREATE TABLE IF NOT EXISTS edge.verify_run (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL DEFAULT now(),
    -- 'clean' (no drift), 'drift' (drift found), 'repaired' (drift found and every drifting
    -- document re-written) or 'failed' (verify could not run: `error`)
    outcome         text        NOT NULL,
    -- the regions compared, as given with --region (names only)
    regions         text[]      NOT NULL,
    repair          boolean     NOT NULL,
    expected_items  bigint      NOT NULL DEFAULT 0,
    -- persisting drift by kind, e.g. {"missing": 2, "unconfirmed": 1}
    drift_counts    jsonb       NOT NULL DEFAULT '{}',
    unprojectable   bigint      NOT NULL DEFAULT 0,
    repair_failures bigint      NOT NULL DEFAULT 0,
    error           text
);
