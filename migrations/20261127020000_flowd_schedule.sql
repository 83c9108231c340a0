-- Scheduled flows: trigger_event 'SCHEDULE' runs a flow over the rows of its trigger table
-- at the instants of a cron expression, instead of on their changes.

ALTER TABLE flows
    ADD COLUMN schedule    text,  -- five-field cron expression, e.g. '0 8 * * *'
    ADD COLUMN schedule_tz text;  -- IANA time zone the expression is read in; NULL is UTC
ALTER TABLE flows DROP CONSTRAINT flows_trigger_event_check;
ALTER TABLE flows ADD CONSTRAINT flows_trigger_event_check
    CHECK (upper(trigger_event) IN ('INSERT', 'UPDATE', 'DELETE', '*', 'SCHEDULE'));

-- One row per tick a worker claimed: the claim (only one replica works a tick), the lease
-- that lets another take over from a dead worker, and the keyset position to resume from.
-- The latest row of a flow tells a starting flowd which ticks it missed.
CREATE TABLE flow_ticks (
    flow_id       bigint NOT NULL REFERENCES flows (flow_id) ON DELETE CASCADE,
    scheduled_for timestamptz NOT NULL,
    worker        text NOT NULL,
    lease_until   timestamptz NOT NULL,
    claims        integer NOT NULL DEFAULT 1,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    last_key      text[],  -- primary key values (as text) of the last row done; NULL: none yet
    rows_done     integer NOT NULL DEFAULT 0,  -- rows read and classified
    rows_matched  integer NOT NULL DEFAULT 0,  -- rows the flow ran for
    stopped       text,  -- why a finished tick did not read every row (FLOWD_SCHEDULE_MAX_ROWS)
    PRIMARY KEY (flow_id, scheduled_for)
);

ALTER TABLE flow_ticks ENABLE ROW LEVEL SECURITY;

DO $$
DECLARE
    api_role text;
BEGIN
    FOREACH api_role IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = api_role) THEN
            EXECUTE format('REVOKE ALL ON flow_ticks FROM %I', api_role);
        END IF;
    END LOOP;
END
$$;
