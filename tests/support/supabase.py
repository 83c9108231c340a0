"""Supabase's API roles and the default privileges it sets up, reproduced on a test server.

Supabase grants `anon`, `authenticated` and `service_role` everything created in `public`
(default privileges) before flowd's migrations run; every test database starts that way,
so each attack is tried against the grants a real project has.
"""

from __future__ import annotations

API_ROLES = ("anon", "authenticated")

# Cluster-wide, once per server; an external server may have them already.
ROLES_SQL = """
DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['anon', 'authenticated', 'service_role'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = name) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', name);
        END IF;
    END LOOP;
END
$$;
"""

# Per database, before flowd's migrations.
DEFAULT_PRIVILEGES_SQL = """
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;
"""
