-- Durable delivery (FLOWD_DELIVERY=durable): every change of a watched table is written to
-- flow_events in the same transaction as the change, and flowd claims it from there.
-- flowd attaches the capture trigger to each trigger table of an enabled flow itself:
--   CREATE TRIGGER flowd_capture AFTER INSERT OR UPDATE OR DELETE ON <table>
--     FOR EACH ROW EXECUTE FUNCTION flowd_capture(<primary key column>, ...);

CREATE TABLE flow_events (
    event_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_oid    oid NOT NULL,
    schema_name  text NOT NULL,
    table_name   text NOT NULL,
    type         text NOT NULL,
    -- The changed row's primary key values: events of one row are handled in event_id
    -- order, which is their commit order (the row lock is held from the change to commit).
    row_key      text NOT NULL,
    record       jsonb,
    old_record   jsonb,
    -- Set when flowd's own DB_UPDATE made the change: {"depth": n, "flows": [ids]}.
    cause        jsonb,
    committed_at timestamptz NOT NULL DEFAULT now(),
    worker       text,
    lease_until  timestamptz,
    claims       integer NOT NULL DEFAULT 0,
    handled_at   timestamptz,
    CONSTRAINT flow_events_type_check CHECK (type IN ('INSERT', 'UPDATE', 'DELETE'))
);
-- The claim walks pending events in order and probes each one's row for an earlier one.
CREATE INDEX flow_events_pending_idx ON flow_events (event_id) WHERE handled_at IS NULL;
CREATE INDEX flow_events_pending_row_idx ON flow_events (table_oid, row_key, event_id)
    WHERE handled_at IS NULL;
-- Retention deletes handled events oldest first.
CREATE INDEX flow_events_handled_idx ON flow_events (handled_at) WHERE handled_at IS NOT NULL;

ALTER TABLE flow_events ENABLE ROW LEVEL SECURITY;

-- SECURITY DEFINER: whoever changes a watched row (an API role, say) may not write
-- flow_events itself; the function, owned by flowd's role, does it for them.
CREATE FUNCTION flowd_capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET TimeZone = 'UTC'  -- to_jsonb renders timestamptz in the session's time zone
AS $$
DECLARE
    new_row jsonb := CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END;
    old_row jsonb := CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END;
    key_row jsonb := coalesce(new_row, old_row);
    row_key text := '';
    column_index integer;
BEGIN
    FOR column_index IN 0 .. TG_NARGS - 1 LOOP
        row_key := row_key || coalesce((key_row -> TG_ARGV[column_index])::text, 'null') || ',';
    END LOOP;
    INSERT INTO flow_events (table_oid, schema_name, table_name, type, row_key, record, old_record, cause)
    VALUES (TG_RELID, TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP, row_key, new_row, old_row,
            nullif(current_setting('flowd.cause', true), '')::jsonb);
    -- A wake-up only: flowd also polls. One transaction sends it once, however many rows.
    PERFORM pg_notify('flowd_events', '');
    RETURN NULL;
END
$$;

-- Flow definitions changed: wake the durable daemon's reload (it also re-reads periodically).
CREATE FUNCTION flowd_flows_changed() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_notify('flowd_flows', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER flowd_flows_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON flows
    FOR EACH STATEMENT EXECUTE FUNCTION flowd_flows_changed();
CREATE TRIGGER flowd_flows_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON rules
    FOR EACH STATEMENT EXECUTE FUNCTION flowd_flows_changed();
CREATE TRIGGER flowd_flows_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON actions
    FOR EACH STATEMENT EXECUTE FUNCTION flowd_flows_changed();

DO $$
DECLARE
    api_role text;
BEGIN
    -- Pin the functions' search path to flowd's schema (pg_temp last, so a session's temporary
    -- table cannot stand in for flow_events).
    EXECUTE format('ALTER FUNCTION flowd_capture() SET search_path = %I, pg_catalog, pg_temp',
                   current_schema());
    EXECUTE format('ALTER FUNCTION flowd_flows_changed() SET search_path = %I, pg_catalog, pg_temp',
                   current_schema());
    REVOKE ALL ON FUNCTION flowd_capture() FROM PUBLIC;
    FOREACH api_role IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = api_role) THEN
            EXECUTE format('REVOKE ALL ON flow_events FROM %I', api_role);
        END IF;
    END LOOP;
END
$$;
