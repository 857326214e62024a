-- Issue 7: idempotent HTTP ingest and the analysts' read-only role. Applied inside the
-- configured schema (search_path is set), in one transaction, under the migration lock.

-- Event ids the HTTP ingest has produced (lendstream/ingest.py). A request claims its ids here
-- in a transaction that stays open while the events are produced, so a concurrent request with
-- the same id waits and then sees it taken; partition and offset are filled in once the broker
-- has acknowledged.
CREATE TABLE ingest_accepted (
    event_id    text        PRIMARY KEY,
    topic       text        NOT NULL,
    partition   integer,
    "offset"    bigint,
    accepted_at timestamptz NOT NULL DEFAULT now()
);

-- `lendstream_reader` (contract §6): SELECT on this schema's tables and views, nothing else.
-- A role is global to the PostgreSQL cluster while schemas are per database, so: create it only
-- if it does not exist (another schema's migration may have, or a DBA), tolerate losing a
-- creation race, and grant per schema. It is created NOLOGIN; a worker with
-- LENDSTREAM_READER_PASSWORD set gives it LOGIN at start-up (lendstream/analysts.py).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'lendstream_reader') THEN
        BEGIN
            CREATE ROLE lendstream_reader NOLOGIN;
            -- Defence in depth: a reader's transactions are read-only unless it asks otherwise.
            ALTER ROLE lendstream_reader SET default_transaction_read_only = on;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- created at the same moment by a migration in another database
        END;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO lendstream_reader', current_schema());
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO lendstream_reader',
                   current_schema());
    -- Tables and views created later in this schema by the migrating role (new read models,
    -- a rebuild's replacement tables) are readable at once.
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO '
                   'lendstream_reader', current_schema());
END
$$;
