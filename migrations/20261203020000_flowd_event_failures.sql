-- Poison events set aside. An event of the log that flowd cannot read (nested too deep, a
-- number too long) or cannot record gets a try counted in `tries` and its lease given back;
-- after flowd's limit of tries it is set aside: `failed_at` and `failure` (the reason) are
-- written, and `handled_at` too, so that it is claimed no more and no longer holds back the
-- later events of its row. `flowd --once --failed` lists set-aside events and the backlog
-- log line counts them; retention keeps them until a person deletes them (or clears
-- `failed_at`, `handled_at` and `tries` to have them tried again).

ALTER TABLE flow_events
    ADD COLUMN tries     integer NOT NULL DEFAULT 0,
    ADD COLUMN failed_at timestamptz,
    ADD COLUMN failure   text;

CREATE INDEX flow_events_failed_idx ON flow_events (failed_at) WHERE failed_at IS NOT NULL;
