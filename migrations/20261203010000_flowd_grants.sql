-- Grants and the capture trigger's trust, for new and existing installs.
--
-- 1. Supabase's default privileges grant `anon` and `authenticated` everything on every new
--    table, sequence and function in `public`, and Postgres grants EXECUTE on functions to
--    PUBLIC. The earlier files revoked the API roles on the flow tables only: `anon` could
--    TRUNCATE flowd_migrations (TRUNCATE ignores RLS), setval the identity sequences, and
--    EXECUTE the SECURITY DEFINER flowd_capture() (attaching it to a table of its own).
--    flowd_revoke_api_access() revokes all of that on the objects it is given; this file
--    calls it for what exists now, and `flowd migrate` calls it after every run with what
--    the migration files create, so later files are covered too.
-- 2. Any session may set a `flowd.*` setting: an application that set `flowd.cause` before
--    its INSERT made the capture believe flowd wrote the row, and the flows did not run.
--    The capture now believes `flowd.cause` only beside `flowd.cause_token` equal to this
--    install's random token, which only flowd's role can read (flowd's DB_UPDATE sets both).

CREATE FUNCTION flowd_revoke_api_access(tables text[], functions text[]) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    api_roles text := 'PUBLIC';
    api_role text;
    object_name text;
BEGIN
    -- Plain Postgres has no Supabase roles: revoke from those that exist.
    FOREACH api_role IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = api_role) THEN
            api_roles := api_roles || ', ' || quote_ident(api_role);
        END IF;
    END LOOP;
    FOR object_name IN
        SELECT c.oid::regclass::text FROM pg_class c
        WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p')
          AND c.relname = ANY (tables)
    LOOP
        EXECUTE format('REVOKE ALL ON TABLE %s FROM %s', object_name, api_roles);
    END LOOP;
    -- Their sequences: identity columns' (dependency 'i') and serial ones' ('a').
    FOR object_name IN
        SELECT DISTINCT s.oid::regclass::text FROM pg_class s
        JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid
                        AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('i', 'a')
        JOIN pg_class t ON t.oid = d.refobjid
        WHERE s.relkind = 'S' AND t.relnamespace = current_schema()::regnamespace
          AND t.relname = ANY (tables)
    LOOP
        EXECUTE format('REVOKE ALL ON SEQUENCE %s FROM %s', object_name, api_roles);
    END LOOP;
    FOR object_name IN
        SELECT p.oid::regprocedure::text FROM pg_proc p
        WHERE p.pronamespace = current_schema()::regnamespace AND p.proname = ANY (functions)
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM %s', object_name, api_roles);
    END LOOP;
END
$$;

-- One row: the token. gen_random_uuid() draws from the server's strong random source.
CREATE TABLE flowd_cause_token (
    one   boolean PRIMARY KEY DEFAULT true CHECK (one),
    token text NOT NULL
);
INSERT INTO flowd_cause_token (token)
VALUES (replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''));
ALTER TABLE flowd_cause_token ENABLE ROW LEVEL SECURITY;

CREATE OR REPLACE FUNCTION flowd_capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET TimeZone = 'UTC'  -- to_jsonb renders timestamptz in the session's time zone
AS $$
DECLARE
    new_row jsonb;
    old_row jsonb;
    key_row jsonb;
    row_key text := '';
    cause jsonb;
    column_index integer;
BEGIN
    -- Attached to the event log itself, it would capture its own inserts without end.
    IF TG_RELID = 'flow_events'::regclass THEN
        RETURN NULL;
    END IF;
    new_row := CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END;
    old_row := CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END;
    key_row := coalesce(new_row, old_row);
    FOR column_index IN 0 .. TG_NARGS - 1 LOOP
        row_key := row_key || coalesce((key_row -> TG_ARGV[column_index])::text, 'null') || ',';
    END LOOP;
    IF nullif(current_setting('flowd.cause', true), '') IS NOT NULL
       AND current_setting('flowd.cause_token', true) = (SELECT token FROM flowd_cause_token) THEN
        cause := current_setting('flowd.cause')::jsonb;
    END IF;
    INSERT INTO flow_events (table_oid, schema_name, table_name, type, row_key, record, old_record, cause)
    VALUES (TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP, row_key, new_row, old_row, cause);
    -- A wake-up only: flowd also polls. One transaction sends it once, however many rows.
    PERFORM pg_notify('flowd_events', '');
    RETURN NULL;
END
$$;

DO $$
BEGIN
    -- CREATE OR REPLACE resets the function's settings: pin its search path again.
    EXECUTE format('ALTER FUNCTION flowd_capture() SET search_path = %I, pg_catalog, pg_temp',
                   current_schema());
    EXECUTE format('ALTER FUNCTION flowd_revoke_api_access(text[], text[])'
                   ' SET search_path = %I, pg_catalog, pg_temp', current_schema());
    -- The token is flowd's alone; Supabase's service_role gets table grants by default too.
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        REVOKE ALL ON flowd_cause_token FROM service_role;
    END IF;
END
$$;

SELECT flowd_revoke_api_access(
    ARRAY['flows', 'rules', 'actions', 'flow_executions', 'flow_events', 'flow_ticks',
          'flowd_migrations', 'flowd_cause_token'],
    ARRAY['flowd_capture', 'flowd_flows_changed', 'flowd_revoke_api_access']
);
