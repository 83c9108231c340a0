-- The application table of the contract's examples (PROTOCOL.md §0), as a user would have it.
CREATE TABLE public.tasks (
    id       bigint PRIMARY KEY,
    title    text,
    priority text,
    status   text,
    estimate numeric,
    tags     text[],
    meta     jsonb,
    due_at   timestamptz,
    assignee uuid,
    done     boolean
);
CREATE TABLE public.projects (
    id        bigint PRIMARY KEY,
    name      text,
    last_task bigint
);
-- What a Supabase project has, and what `flowd validate` checks tables against.
CREATE PUBLICATION supabase_realtime FOR TABLE public.tasks;
