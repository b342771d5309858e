-- The writer's own state, in schema `edge` of the core database. The core API owns every
-- table in `public`; this project only adds the triggers of the next migration to them.
--
-- Flow: core row change --(trigger, same transaction)--> edge.change_log
--   --(writer: claim, resolve fan-out)--> edge.pending (one row per document, coalesced)
--   --(writer: lock edge.document row, project, conditional write)--> DynamoDB
--   --> edge.document updated, edge.pending row removed (same transaction as the lock).

CREATE SCHEMA IF NOT EXISTS edge;

-- The transactional outbox. One row per changed core row, inserted by the row triggers in the
-- core API's own transaction, so nothing committed is missed. Rows are removed once resolved
-- into edge.pending. There is no high-water mark: ids are assigned at insert, not at commit,
-- so a lower id can become visible after a higher one; the writer claims whatever is visible.
CREATE TABLE IF NOT EXISTS edge.change_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- core table of the changed row, e.g. 'features_featurestate'
    table_name  text        NOT NULL,
    -- 'INSERT', 'UPDATE' or 'DELETE'
    op          text        NOT NULL,
    -- the key columns of the row (ids that lead to the documents it feeds), from NEW and OLD
    new_keys    jsonb,
    old_keys    jsonb,
    -- when the trigger ran (close to the commit time; used for lag and as the items' source time)
    captured_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Document versions. One sequence for every document, taken by the writer after its snapshot
-- while it holds the document's lock, so a later snapshot always gets a higher version, also
-- across documents (an item key can move from one document to another). It starts at the
-- current time in microseconds, so that versions stay above anything written before even if
-- the edge schema is dropped and created again.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = 'edge' AND c.relname = 'document_version_seq') THEN
        EXECUTE format('CREATE SEQUENCE edge.document_version_seq START WITH %s',
                       (extract(epoch FROM clock_timestamp()) * 1000000)::bigint);
    END IF;
END
$$;

-- Per-document state. The row is also the document's lock: a writer holds it
-- (SELECT ... FOR NO KEY UPDATE) from before its snapshot until its bookkeeping commits.
CREATE TABLE IF NOT EXISTS edge.document (
    -- 'environment:<id>' or 'api_key:<id>'
    doc_key            text PRIMARY KEY,
    -- version of the last write DynamoDB accepted (null: never written)
    version            bigint,
    -- content hash of the last write (null: never written, or deleted)
    content_hash       text,
    -- the last write removed the document's items
    deleted            boolean     NOT NULL DEFAULT false,
    written_at         timestamptz,
    -- capture time of the newest change the last write reflects
    source_time        timestamptz,
    -- earliest future live_from the document depends on (a scheduled re-projection)
    next_projection_at timestamptz
);

-- Items that a document may have in DynamoDB. Recorded before the write (so that an item
-- written by a writer that died before its bookkeeping is still known) and pruned after it,
-- so that items whose key changed (a new api_key) or that stopped being wanted are deleted.
CREATE TABLE IF NOT EXISTS edge.document_item (
    doc_key    text NOT NULL,
    -- edge_documents::tables::TableKind::as_str()
    table_kind text NOT NULL,
    -- the item's primary key attributes as a JSON object
    item_key   jsonb NOT NULL,
    -- when a delete of the item was first applied; the record is kept until a re-check after
    -- the writers' write timeout has passed, so that a late put (from a writer that lost its
    -- lock with a write in flight) cannot resurrect the item unnoticed
    removed_at timestamptz,
    PRIMARY KEY (doc_key, table_kind, item_key)
);

CREATE SEQUENCE IF NOT EXISTS edge.pending_seq;

-- Documents waiting to be projected: the coalesced work queue. Many changes to one document
-- are one row. `seq` changes on every new change, so a writer that finishes removes the row
-- only if nothing arrived since it claimed it.
CREATE TABLE IF NOT EXISTS edge.pending (
    doc_key         text PRIMARY KEY,
    seq             bigint      NOT NULL,
    -- not to be processed before this time (retry backoff, or a scheduled live_from)
    not_before      timestamptz NOT NULL DEFAULT now(),
    -- capture times of the oldest and newest change coalesced into this row
    first_change_at timestamptz,
    last_change_at  timestamptz,
    -- failed attempts since the last success, and the last error
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text
);
CREATE INDEX IF NOT EXISTS pending_not_before_idx ON edge.pending (not_before);

-- Documents that could not be projected or written (bad data in Postgres, an item too large
-- even compressed, or an error that persisted through every retry). Nothing waits behind
-- them. A new change to the document, or a replay, tries it again; success removes the row.
CREATE TABLE IF NOT EXISTS edge.dead_letter (
    doc_key         text PRIMARY KEY,
    -- 'invalid_data', 'too_large' or 'persistent'
    error_kind      text        NOT NULL,
    error           text        NOT NULL,
    attempts        integer     NOT NULL,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at  timestamptz NOT NULL DEFAULT now()
);
