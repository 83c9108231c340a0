-- `flowd executions tail` LISTENs on 'flowd_executions' for executions as they finish (and
-- polls besides, which is all it does through a transaction-mode pooler). A statement
-- trigger, not a row trigger: the recorder writes outcomes in groups (one UPDATE for many
-- executions), so one notice covers a group, and a transaction sends it once however many
-- statements it runs. Only statements that can finish an execution send it: an INSERT (a
-- flow without actions is written finished) and an UPDATE of `status` or `finished_at`
-- (outcomes, abandoning at shutdown), not the per-action progress, which writes `actions`.
-- `tail` asks for the executions finished since its last look: by `finished_at`.

CREATE INDEX flow_executions_finished_at_idx ON flow_executions (finished_at);

CREATE FUNCTION flowd_executions_changed() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_notify('flowd_executions', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER flowd_executions_changed AFTER INSERT OR UPDATE OF status, finished_at
    ON flow_executions FOR EACH STATEMENT EXECUTE FUNCTION flowd_executions_changed();

DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION flowd_executions_changed() SET search_path = %I, pg_catalog, pg_temp',
                   current_schema());
END
$$;

-- Installs that apply these files with the Supabase CLI get no `flowd migrate` revoke run.
SELECT flowd_revoke_api_access(ARRAY[]::text[], ARRAY['flowd_executions_changed']);
