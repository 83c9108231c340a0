"""`flowd validate`: check every flow against the database and list the problems.

Checks, per flow: its trigger table is not flowd's own nor a system table
(`flowd.policy`); its rules compile; its actions are well-formed, and each DB_UPDATE
writes where FLOWD_DB_UPDATE_SCHEMAS allows; its trigger table exists; each rule's
field is a column and its value reads as that column's type; FUNCTION_CALL has
SUPABASE_URL. With delivery `realtime`: a table whose flows use
`CHANGED*` has REPLICA IDENTITY FULL and the table is in the Realtime publication.
With `durable`: the table carries flowd's capture trigger, unless the flows come from
a file (the event log has the whole old row, so replica identity does not matter).
A SCHEDULE flow: its cron expression and time zone read, its table has a primary key
(ticks page by it); no Realtime or capture check, since no change of its table is watched.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from flowd import act
from flowd.act import template_shape
from flowd.act.templates import strings_in
from flowd.app import open_app
from flowd.catalog import Catalog
from flowd.config import Settings
from flowd.errors import FlowDefinitionError, FlowFileError
from flowd.feeds.eventlog import CaptureTriggers
from flowd.flows import Loaded
from flowd.models import Action, Flow
from flowd.policy import TablePolicy
from flowd.rules import check_rule_against_columns, compile_flow, needs_old_row
from flowd.rules.cron import schedule_of
from flowd.secrets import Secrets


@dataclass(frozen=True, slots=True)
class Problem:
    flow_id: int
    name: str
    text: str
    warning: bool = False  # worth a look, but the flow can run
    key: str | None = None  # named by it, where the flow has one

    def line(self) -> str:
        kind = "warning: " if self.warning else ""
        return f"flow {self.key or self.flow_id} ({self.name}): {kind}{self.text}"


@dataclass(frozen=True, slots=True)
class FileProblem(Problem):
    """A flow of a flows file that cannot be read: its line names the file, flow and field."""

    def line(self) -> str:
        return self.text


def _rule_label(flow: Flow, index: int) -> str:
    rule = flow.rules[index]
    return f"rule {rule.rule_id}" if rule.rule_id is not None else f"rule #{index + 1}"


async def _table_problems(
    flow: Flow,
    catalog: Catalog,
    settings: Settings,
    captured: Mapping[tuple[str, str], tuple[str, ...]] | None,
) -> list[str]:
    schema, name = flow.table_ref
    table = await catalog.table(schema, name)
    if table is None:
        return [f"trigger table {schema}.{name} does not exist"]
    problems = []
    for index, rule in enumerate(flow.rules):
        if (problem := check_rule_against_columns(rule, table.column_types)) is not None:
            problems.append(f"{_rule_label(flow, index)}: {problem}")
    if flow.is_scheduled:
        if not table.primary_key:
            problems.append(f"table {schema}.{name} has no primary key, which ticks page by")
        return problems
    if settings.delivery == "durable":
        if captured is not None and captured.get((schema, name)) != table.primary_key:
            problems.append(
                f"table {schema}.{name} has no capture trigger (or one for an old primary key):"
                " `flowd run` or `flowd --once` attaches it, as the table's owner"
            )
        return problems
    if needs_old_row(flow) and not table.replica_identity_full:
        problems.append(
            f"CHANGED rules need the old row: ALTER TABLE {table.qualified} REPLICA IDENTITY FULL;"
        )
    if problem := await catalog.publication_problem(schema, name):
        problems.append(problem)
    return problems


def _action_label(action: Action, index: int) -> str:
    label = action.action_id if action.action_id is not None else f"#{index + 1}"
    return f"action {label} ({action.type.upper()})"


def template_warnings(flow: Flow) -> list[str]:
    """Templates whose cost may have no bound (`flowd.act.template_shape.warnings`)."""
    found = []
    for index, action in enumerate(flow.ordered_actions):
        for source in strings_in(action.config):
            for warning in template_shape.warnings(source):
                found.append(f"{_action_label(action, index)}: template with {warning}")
    return list(dict.fromkeys(found))


def _settings_problems(flow: Flow, settings: Settings) -> list[str]:
    """Actions that cannot work as written with these settings (`ActionKind.settings_problem`:
    an API_CALL whose literal URL host is a refused address, flowd.act.addresses)."""
    problems = []
    for index, action in enumerate(flow.ordered_actions):
        kind = act.kind_of(action)
        if kind is not None and (problem := kind.settings_problem(action.config, settings)):
            problems.append(f"{_action_label(action, index)}: {problem}")
    return problems


def _supabase_problems(flow: Flow, settings: Settings) -> list[str]:
    """Action types that call Supabase, in a flow that runs without SUPABASE_URL."""
    if settings.supabase_url is not None:
        return []
    needing = (
        action.type.upper()
        for action in flow.actions
        if (kind := act.kind_of(action)) is not None and kind.needs_supabase
    )
    return [
        f"{name} needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY"
        for name in dict.fromkeys(needing)
    ]


async def validate(
    loaded: list[Loaded],
    catalog: Catalog | None,
    settings: Settings,
    captured: Mapping[tuple[str, str], tuple[str, ...]] | None = None,
) -> list[Problem]:
    """Every problem of every flow (disabled ones too), in flow order.

    `captured` (durable delivery): the tables carrying the capture trigger, with its key
    (None: not checked, as for flows from a file, which nothing has attached it for yet).
    A disabled flow's DB_UPDATEs are checked as if it were enabled (its trigger table's
    schema watched).
    """
    policy = TablePolicy.from_settings(settings).watching(
        item for item in loaded if isinstance(item, Flow) and item.is_enabled
    )
    problems: list[Problem] = []
    for item in loaded:
        if isinstance(item, FlowFileError):
            problems.append(FileProblem(item.flow_id, "?", item.line))
            continue
        if isinstance(item, FlowDefinitionError):
            problems.append(Problem(item.flow_id, "?", f"{item.where}: {item.reason}"))
            continue
        texts: list[str] = []
        refusal = policy.trigger_refusal(*item.table_ref)
        if refusal is not None:
            texts.append(f"trigger_table: {refusal}")
        try:
            compile_flow(item)
        except FlowDefinitionError as exc:
            texts.append(f"{exc.where}: {exc.reason}")
        if item.is_scheduled:
            try:
                schedule_of(item)
            except FlowDefinitionError as exc:
                texts.append(f"{exc.where}: {exc.reason}")
        elif item.schedule is not None:
            texts.append("schedule: set, but ignored: trigger_event is not SCHEDULE")
        try:
            await act.prepare(item, catalog, policy.watching([item]))
        except FlowDefinitionError as exc:
            texts.append(f"{exc.where}: {exc.reason}")
        texts += _settings_problems(item, settings)
        if catalog is not None and refusal is None:
            texts += await _table_problems(item, catalog, settings, captured)
        texts += _supabase_problems(item, settings)
        problems += [Problem(item.flow_id, item.name, text, key=item.key) for text in texts]
        problems += [
            Problem(item.flow_id, item.name, text, warning=True, key=item.key)
            for text in template_warnings(item)
        ]
    return problems


async def main(args: argparse.Namespace, settings: Settings, secrets: Secrets) -> int:
    # A flows file is checked against the catalog too, whenever there is a database.
    database = args.flows is None or settings.database_url is not None
    async with open_app(settings, secrets, database=database) as app:
        loaded = await app.flow_definitions(args.flows)
        captured = None
        if settings.delivery == "durable" and app.pool is not None and args.flows is None:
            captured = await CaptureTriggers(app.pool, settings.schema_name).attached()
        problems = await validate(loaded, app.catalog, settings, captured)
    for problem in problems:
        print(problem.line())
    flawed = len({problem.flow_id for problem in problems if not problem.warning})
    print(f"flowd: {len(loaded)} flow(s) checked, {flawed} with problems", file=sys.stderr)
    return 1 if flawed else 0
