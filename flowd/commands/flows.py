"""`flowd flows export|list|enable|disable`: the flows as files, at a glance, on or off."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flowd import flowfiles
from flowd.app import open_app
from flowd.config import Settings
from flowd.errors import ConfigurationError
from flowd.inventory import FlowSummary, export_flows, set_enabled, summaries
from flowd.secrets import Secrets

_LIST_HEADER = ("KEY", "NAME", "TABLE", "EVENT", "ENABLED", "RULES", "RUNS_24H", "FAILED_24H")


async def main(args: argparse.Namespace, settings: Settings, secrets: Secrets) -> int:
    if args.flows_command == "export":
        return await export(args, settings, secrets)
    if args.flows_command in ("enable", "disable"):
        return await switch(args.key, args.flows_command == "enable", settings, secrets)
    return await list_flows(settings, secrets)


def _format_of(args: argparse.Namespace) -> flowfiles.Format | None:
    output = Path(args.output) if args.output else None
    if output is None or output.suffix not in flowfiles.SUFFIXES or output.is_dir():
        return args.format  # type: ignore[no-any-return]  # argparse's values are Any
    by_suffix: flowfiles.Format = "json" if output.suffix == ".json" else "yaml"
    if args.format is not None and args.format != by_suffix:
        raise ConfigurationError(f"--format {args.format} does not go with {output.name}")
    return by_suffix


async def export(args: argparse.Namespace, settings: Settings, secrets: Secrets) -> int:
    form = _format_of(args)
    async with open_app(settings, secrets, database=True) as app:
        exported = await export_flows(app.database, settings.schema_name)
    for key, flow in exported.derived.items():
        print(
            f"flowd: flow {flow.flow_id} ({flow.name}) has no key: exported as {key}"
            " (the database keeps none until one is set)",
            file=sys.stderr,
        )
    for problem in exported.refused:
        print(f"flowd: flow {problem.flow_id} cannot be exported: {problem}", file=sys.stderr)
    if args.output is None:
        sys.stdout.write(flowfiles.dump(exported.flows, form or "yaml"))
        where = "stdout"
    else:
        flowfiles.export(exported.flows, Path(args.output), form)
        where = args.output
    print(f"flowd: {len(exported.flows)} flow(s) exported to {where}", file=sys.stderr)
    return 1 if exported.refused else 0


def _line(columns: tuple[str, ...], widths: list[int]) -> str:
    return "  ".join(text.ljust(width) for text, width in zip(columns, widths, strict=True))


def _columns(flow: FlowSummary) -> tuple[str, ...]:
    return (
        flow.key or f"(id {flow.flow_id})",
        flow.name,
        flow.trigger_table,
        flow.trigger_event,
        "yes" if flow.is_enabled else "no",
        flow.rules or "(every row)",
        str(flow.executions),
        str(flow.failures),
    )


async def list_flows(settings: Settings, secrets: Secrets) -> int:
    async with open_app(settings, secrets, database=True) as app:
        flows = await summaries(app.database, settings.schema_name)
    rows = [_LIST_HEADER, *(_columns(flow) for flow in flows)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(_LIST_HEADER))]
    for row in rows:
        print(_line(row, widths).rstrip())
    return 0


async def switch(key: str, enabled: bool, settings: Settings, secrets: Secrets) -> int:
    async with open_app(settings, secrets, database=True) as app:
        flow, changed = await set_enabled(app.database, settings.schema_name, key, enabled)
    state = "enabled" if enabled else "disabled"
    named = flow.key or f"{flow.flow_id}"
    print(f"flowd: flow {named} ({flow.name}) {state if changed else 'was already ' + state}")
    return 0
