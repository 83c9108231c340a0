-- Flows as code: a stable, human-chosen key per flow (a slug, unique in this schema), the
-- name a flows file and `flowd flows` / `flowd executions --flow KEY` know it by. Flows
-- written before have none until `flowd flows export` derives one from the name.
ALTER TABLE flows ADD COLUMN key text;
ALTER TABLE flows ADD CONSTRAINT flows_key_format CHECK (key ~ '^[a-z0-9][a-z0-9_-]{0,62}$');
CREATE UNIQUE INDEX flows_key_idx ON flows (key);
