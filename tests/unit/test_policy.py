"""Where flows may watch and write (`flowd.policy`): pure rules, no database."""

from __future__ import annotations

import pytest

from flowd.config import load_settings
from flowd.errors import ConfigurationError
from flowd.migrate import own_objects
from flowd.models import Flow, parse_flow
from flowd.policy import TablePolicy


def _flow(trigger_table: str, enabled: bool = True) -> Flow:
    return parse_flow(
        {"flow_id": 1, "name": "f", "trigger_table": trigger_table, "is_enabled": enabled}
    )


def test_the_default_is_public_and_the_watched_schemas_but_not_supabases() -> None:
    """Watching app.orders lets DB_UPDATE write `app`; watching auth.users does not open auth."""
    policy = TablePolicy("public").watching([_flow("app.orders"), _flow("auth.users")])
    assert policy.update_schemas == {"public", "app"}
    assert policy.update_refusal("app", "orders") is None
    refusal = policy.update_refusal("auth", "users")
    assert refusal is not None
    assert "Supabase's own schema auth" in refusal
    assert "FLOWD_DB_UPDATE_SCHEMAS" in refusal
    assert "allowed now: app, public" in refusal


def test_listed_schemas_replace_the_default_but_never_open_flowds_tables_or_the_system() -> None:
    policy = TablePolicy("public", frozenset({"auth"}))
    assert policy.update_refusal("auth", "users") is None
    assert policy.update_refusal("public", "tasks") is not None  # not listed any more
    for own in own_objects().tables:
        assert "flowd's own tables" in (policy.update_refusal("public", own) or "")
    for schema in ("pg_catalog", "pg_toast", "pg_temp_3", "information_schema", "PG_CATALOG"):
        assert "system schema" in (policy.update_refusal(schema, "x") or ""), schema


def test_flowds_own_tables_are_its_own_in_flowds_schema_only() -> None:
    """With FLOWD_SCHEMA=flowd, an application's public.actions is writable and watchable."""
    policy = TablePolicy("flowd")
    assert policy.update_refusal("public", "actions") is None
    assert policy.trigger_refusal("public", "actions") is None
    assert policy.update_refusal("flowd", "actions") is not None
    assert policy.trigger_refusal("flowd", "flow_events") is not None
    assert policy.trigger_refusal("auth", "users") is None
    assert policy.trigger_refusal("pg_catalog", "pg_class") is not None


def test_own_objects_come_from_the_migrations() -> None:
    own = own_objects()
    assert {"flows", "rules", "actions", "flow_executions", "flow_events", "flow_ticks"} <= (
        own.tables
    )
    assert "flowd_migrations" in own.tables
    assert {"flowd_capture", "flowd_flows_changed"} <= own.functions


def test_the_setting_is_read_trimmed_and_refuses_system_schemas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLOWD_DB_UPDATE_SCHEMAS", " public, app ,")
    assert load_settings().db_update_schema_set == frozenset({"public", "app"})
    monkeypatch.setenv("FLOWD_DB_UPDATE_SCHEMAS", "")
    assert load_settings().db_update_schema_set is None
    monkeypatch.setenv("FLOWD_DB_UPDATE_SCHEMAS", "public,information_schema")
    with pytest.raises(ConfigurationError, match="information_schema is a system schema"):
        load_settings()
