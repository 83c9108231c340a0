"""Change events, settings and the DB_UPDATE statement: pure data, no I/O."""

from __future__ import annotations

import copy

import pytest

from flowd.act.db_update import DbUpdateConfig, build_update, check
from flowd.act.rendering import render_config
from flowd.act.sandbox import TemplateSandbox
from flowd.act.templates import template_context
from flowd.catalog import Column, Table
from flowd.config import load_settings
from flowd.errors import ConfigurationError, EventError, PermanentActionError
from flowd.feeds.events import parse_event
from flowd.models import ChangeEvent, Flow
from tests.conftest import frame

FRAMES = [
    "insert_event",
    "update_event",
    "update_event_default_identity",
    "delete_event",
    "delete_event_default_identity",
]
TASKS = Table(
    schema="public",
    name="tasks",
    columns={
        "id": Column("id", "int8", "bigint"),
        "status": Column("status", "text", "text"),
        "estimate": Column("estimate", "numeric", "numeric"),
    },
    primary_key=("id",),
    replica_identity_full=False,
)
FLOW = Flow(flow_id=1, name="f", trigger_table="tasks")


@pytest.mark.parametrize("name", FRAMES)
def test_frames_and_their_data_parse_to_the_same_event(name: str) -> None:
    """A whole frame and its payload.data are the same event, with absent records absent."""
    whole = parse_event(frame(name))
    data = parse_event(frame(name)["payload"]["data"])
    assert whole == data
    assert (whole.record is None) == (whole.type == "DELETE")
    assert (whole.old_record is None) == (whole.type == "INSERT")


def test_event_key_is_stable_and_distinguishes_changes() -> None:
    """The same change always has one key; different changes never share one."""
    keys = {parse_event(frame(name)).key for name in FRAMES}
    assert len(keys) == len(FRAMES)
    assert parse_event(frame("insert_event")).key == parse_event(frame("insert_event")).key
    changed = copy.deepcopy(frame("insert_event"))
    changed["payload"]["data"]["record"]["title"] = "other"
    assert parse_event(changed).key != parse_event(frame("insert_event")).key


def test_event_key_ignores_json_key_order() -> None:
    """Key order is not part of the protocol, so it does not change the key."""
    data = frame("insert_event")["payload"]["data"]
    reordered = dict(reversed(list(data.items())))
    reordered["record"] = dict(reversed(list(data["record"].items())))
    assert parse_event(reordered).key == parse_event(data).key


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([1, 2], "expected a JSON object"),
        ({"schema": "public", "table": "t"}, "type"),
        ({"schema": "public", "table": "t", "type": "TRUNCATE"}, "type"),
        ({"table": "t", "type": "INSERT"}, "schema"),
    ],
)
def test_non_events_are_refused_with_a_reason(raw: object, message: str) -> None:
    """Something that is not a change event raises EventError saying what is wrong."""
    with pytest.raises(EventError, match=message):
        parse_event(raw)


def test_supabase_js_shape_maps_to_wire_shape() -> None:
    """eventType/new/old with {} for an absent record becomes type/record/old_record."""
    event = ChangeEvent.model_validate(
        {"schema": "public", "table": "t", "eventType": "DELETE", "new": {}, "old": {"id": 1}}
    )
    assert (event.type, event.record, event.old_record) == ("DELETE", None, {"id": 1})


def test_settings_defaults_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defaults follow cli.md; a bad value names its variable."""
    for key in list(__import__("os").environ):
        if key.startswith("FLOWD_") and not key.startswith("FLOWD_TEST_"):
            monkeypatch.delenv(key)
    settings = load_settings()
    assert (settings.concurrency, settings.max_attempts, settings.action_timeout_s) == (16, 5, 10)
    assert (settings.shutdown_timeout_s, settings.max_chain_depth) == (25, 3)
    assert (settings.schema_name, settings.delivery, settings.log_level) == (
        "public",
        "realtime",
        "info",
    )
    monkeypatch.setenv("FLOWD_SCHEMA", "bad schema; drop")
    with pytest.raises(ConfigurationError, match="FLOWD_SCHEMA"):
        load_settings()


def test_transaction_pooler_port_turns_the_statement_cache_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Supabase's transaction pooler (port 6543) cannot keep prepared statements."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@aws-0.pooler.supabase.com:6543/postgres")
    assert load_settings().statement_cache_size == 0
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db.example.supabase.co:5432/postgres")
    assert load_settings().statement_cache_size == 100


@pytest.mark.parametrize(
    ("url", "pooled"),
    [
        ("postgresql://u:p@aws-0.pooler.supabase.com:6543/postgres", True),
        ("postgresql://u:p@aws-0.pooler.supabase.com:5432/postgres", False),  # session mode
        ("postgresql://u:p@db.example.supabase.co/postgres", False),
        ("postgresql://u:p@h1:6543,h2:6543/postgres", False),  # several hosts: not Supabase's
    ],
)
def test_only_the_transaction_pooler_port_rules_out_listen(
    monkeypatch: pytest.MonkeyPatch, url: str, pooled: bool
) -> None:
    """Where flowd does not LISTEN for flow edits (and takes them from the re-read)."""
    monkeypatch.setenv("DATABASE_URL", url)
    assert load_settings().through_transaction_pooler is pooled


async def test_db_update_binds_values_and_quotes_catalog_names() -> None:
    """Values are bound text parameters cast to the column type; only changed rows are written."""
    event = parse_event(frame("insert_event"))
    config = DbUpdateConfig.model_validate(
        {"table": "tasks", "set": {"status": "{{ new.title }}'; drop table x; --", "estimate": 2}}
    )
    sandbox = TemplateSandbox(timeout_s=1.0, memory_mb=64, workers=1)
    rendered = await render_config(sandbox, config, template_context(event, FLOW, {}))
    assert isinstance(rendered, DbUpdateConfig)
    update = build_update(rendered, TASKS, event)
    assert update.sql == (
        'UPDATE "public"."tasks" AS flowd_row SET "status" = CAST($1::text AS text),'
        ' "estimate" = CAST($2::text AS numeric) WHERE "id" = CAST($3::text AS bigint)'
        ' AND ("status" IS DISTINCT FROM CAST($1::text AS text)'
        ' OR "estimate" IS DISTINCT FROM CAST($2::text AS numeric))'
        " RETURNING to_jsonb(flowd_row)::text"
    )
    assert update.parameters == ("Write realtime contract'; drop table x; --", "2", "1")


def test_db_update_without_primary_key_in_event_fails() -> None:
    """Without `where`, the triggering row is found by its primary key, which must be present."""
    event = ChangeEvent.model_validate(
        {"schema": "public", "table": "tasks", "type": "INSERT", "record": {"status": "x"}}
    )
    config = DbUpdateConfig.model_validate({"table": "tasks", "field": "status", "value": "y"})
    with pytest.raises(PermanentActionError, match="primary key"):
        build_update(config, TASKS, event)


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"table": "tasks", "set": {"colour": "red"}}, "has no column colour"),
        ({"table": "tasks", "set": {"status": "x"}, "where": {"nope": "1"}}, "has no column nope"),
        ({"table": "projects", "set": {"status": "x"}}, "must be the trigger table"),
    ],
)
def test_db_update_checks_against_the_catalog(config: dict[str, object], problem: str) -> None:
    """Unknown columns, and a foreign table without `where`, are refused."""
    parsed = DbUpdateConfig.model_validate(config)
    table = (
        TASKS
        if parsed.table == "tasks"
        else Table("public", "projects", TASKS.columns, ("id",), False)
    )
    result = check(parsed, FLOW, table)
    assert result is not None
    assert problem in result
