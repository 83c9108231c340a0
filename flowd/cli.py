"""The command line: parse flags, run a command, map its errors to exit codes.

Exit 0: all went well. Exit 1: something ran and failed. Exit 2: flowd could not
start; one line on stderr says what to fix (the traceback only with -v). Exit 75:
`flowd run` could not reach the database at start, an outage worth restarting for
(systemd's `RestartPreventExitStatus=2` keeps a bad configuration from looping).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import NoReturn

from flowd import flowfiles
from flowd.app import configure_logging, load_secrets
from flowd.commands import executions, flows, migrate, once, run, validate
from flowd.config import Settings, env_names, load_settings
from flowd.errors import ConfigurationError, DatabaseUnreachable, NotFound
from flowd.logs import get_logger
from flowd.secrets import Secrets

COMMANDS = ("run", "migrate", "validate", "demo", "flows", "executions")
EXIT_TEMPFAIL = 75  # sysexits EX_TEMPFAIL
MAX_LIMIT = 100_000  # `executions list --limit`
log = get_logger()


class _RetryLater(ConfigurationError):
    exit_code = EXIT_TEMPFAIL


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigurationError(f"{message} (see flowd --help)")


def _iso_instant(text: str) -> datetime:
    try:
        instant = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 instant: {text!r}") from None
    return instant if instant.tzinfo else instant.replace(tzinfo=UTC)


def _limit(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"not a count from 1 to {MAX_LIMIT}: {text!r}")
    return int(text)


def _add_executions(commands: argparse._SubParsersAction[_Parser]) -> list[_Parser]:
    history = commands.add_parser("executions", help="list, show or follow flow executions")
    actions = history.add_subparsers(dest="action", required=True, parser_class=_Parser)
    listing = actions.add_parser("list", help="executions, newest first")
    listing.add_argument("--flow", metavar="KEY", help="of this flow (its key or id)")
    listing.add_argument(
        "--status", type=str.upper, choices=("RUNNING", "SUCCESS", "FAILURE"), help="with it"
    )
    listing.add_argument("--since", type=_iso_instant, metavar="ISO", help="triggered from then")
    listing.add_argument("--limit", type=_limit, default=50, metavar="N", help="at most N (50)")
    show = actions.add_parser("show", help="one execution: event, changes, actions, log")
    show.add_argument("id", metavar="ID", help="its execution_id")
    tail = actions.add_parser("tail", help="print executions as they finish, until Ctrl-C")
    tail.add_argument("--flow", metavar="KEY", help="of this flow (its key or id)")
    for sub in (listing, show, tail):
        sub.add_argument("--json", action="store_true", help="JSON, one object a line")
    return [listing, show, tail]


def build_parser() -> argparse.ArgumentParser:
    environment = "\n".join(f"  {name:<32}{text}" for name, text in env_names().items())
    parser = _Parser(
        prog="flowd",
        description="Observe database changes, classify them with your flows' rules, act.\n"
        "`flowd` alone is `flowd run`; `flowd --once ...` is `flowd run --once ...`"
        " (see `flowd run --help`).",
        epilog=f"configuration (environment):\n{environment}\n"
        "  FLOWD_SECRET_<NAME>             a secret for templates (secrets.NAME)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = commands.add_parser("run", help="the daemon (default); with --once, replay events")
    run.add_argument("--once", action="store_true", help="replay events, then exit")
    run.add_argument(
        "--events", metavar="FILE", help="events file, one JSON event a line; - is stdin"
    )
    run.add_argument(
        "--dry-run", action="store_true", help="only print the flows each event matches"
    )
    run.add_argument(
        "--flows",
        metavar="PATH",
        help="take flows from this flows file (YAML, JSON) or directory, not the database",
    )
    run.add_argument("--force", action="store_true", help="run flows even where they already ran")
    run.add_argument("--failed", action="store_true", help="re-run executions that ended FAILURE")
    run.add_argument(
        "--since", type=_iso_instant, metavar="ISO", help="with --failed: from then on"
    )
    run.add_argument("--flow", type=int, metavar="ID", help="with --failed: this flow only")
    run.add_argument(
        "--schedule", type=int, metavar="FLOW_ID", help="run one tick of this scheduled flow now"
    )
    run.add_argument("--save-events", metavar="FILE", help="append received events to FILE")
    commands.add_parser(
        "demo", help="run example flows on a throwaway local PostgreSQL (needs no configuration)"
    )
    commands.add_parser("migrate", help="apply flowd's migrations to DATABASE_URL")
    check = commands.add_parser("validate", help="check every flow and list the problems")
    check.add_argument(
        "--flows", metavar="PATH", help="check the flows of this file (or directory) instead"
    )
    _add_flows_commands(commands)
    history = _add_executions(commands)
    for sub in [*commands.choices.values(), *history]:
        sub.add_argument("-v", "--verbose", action="store_true", help="tracebacks on errors")
    return parser


def _add_flows_commands(commands: argparse._SubParsersAction[_Parser]) -> None:
    group = commands.add_parser("flows", help="the database's flows as files, and at a glance")
    flows_commands = group.add_subparsers(dest="flows_command", required=True, parser_class=_Parser)
    export = flows_commands.add_parser("export", help="write every flow of the database")
    export.add_argument(
        "-o",
        "--output",
        metavar="FILE|DIR",
        help="a .yaml/.yml/.json file (one list), else a directory (a file per flow);"
        " stdout without it",
    )
    export.add_argument("--format", choices=flowfiles.FORMATS, help="yaml (default) or json")
    flows_commands.add_parser("list", help="each flow in a line, with its last 24 h")
    for verb in ("enable", "disable"):
        switch = flows_commands.add_parser(verb, help=f"{verb} a flow (a running flowd reloads)")
        switch.add_argument("key", metavar="KEY", help="the flow's key (or its numeric id)")
    for sub in flows_commands.choices.values():
        sub.add_argument("-v", "--verbose", action="store_true", help="tracebacks on errors")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    argv = list(argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "run")
    args = build_parser().parse_args(argv)
    if args.command == "run":
        _check_run_flags(args)
    return args


def _check_run_flags(args: argparse.Namespace) -> None:
    if not args.once:
        once_only = ["events", "dry_run", "flows", "force", "failed", "since", "flow", "schedule"]
        used = [name for name in once_only if getattr(args, name) not in (None, False)]
        if used:
            flag = "--" + used[0].replace("_", "-")
            raise ConfigurationError(f"{flag} needs --once (see flowd --help)")
        return
    if args.events and args.failed:
        raise ConfigurationError("--once takes either --events FILE or --failed, not both")
    if args.schedule is not None and (args.events or args.failed):
        raise ConfigurationError("--schedule FLOW_ID does not go with --events or --failed")
    if (args.since or args.flow is not None) and not args.failed:
        raise ConfigurationError("--since and --flow go with --failed")
    if args.failed and (args.dry_run or args.flows or args.force):
        raise ConfigurationError("--failed does not go with --dry-run, --flows or --force")
    if not args.events and (args.dry_run or args.flows or args.force):
        raise ConfigurationError("--dry-run, --flows and --force go with --events FILE")
    if args.save_events:
        raise ConfigurationError("--save-events is for the daemon, not --once")


async def _dispatch(args: argparse.Namespace, settings: Settings, secrets: Secrets) -> int:
    if args.command == "demo":
        # Imported here: the demo's local PostgreSQL and HTTP receiver are no daemon's concern.
        from flowd.commands.demo import run_demo

        return await run_demo()
    if args.command == "migrate":
        return await migrate.main(settings, secrets)
    if args.command == "validate":
        return await validate.main(args, settings, secrets)
    if args.command == "flows":
        return await flows.main(args, settings, secrets)
    if args.command == "executions":
        return await executions.main(args, settings, secrets)
    if args.once:
        return await once.main(args, settings, secrets)
    try:
        return await run.main(args, settings, secrets)
    except DatabaseUnreachable as exc:
        raise _RetryLater(str(exc)) from None


def run_cli(argv: Sequence[str]) -> int:
    verbose = "-v" in argv or "--verbose" in argv
    try:
        args = parse_args(argv)
        settings = load_settings()
        dry_run = args.command == "run" and args.dry_run
        if args.command == "demo":  # the demo tells its own story; only problems are logged
            settings = settings.model_copy(update={"log_level": "warning"})
        secrets = load_secrets(settings)
        # Results own stdout (--dry-run, flows files, executions): logs go to stderr, never mixed.
        to_stderr = dry_run or args.command in ("demo", "flows", "executions")
        configure_logging(settings, secrets, to_stderr=to_stderr)
        return asyncio.run(_dispatch(args, settings, secrets))
    except (ConfigurationError, NotFound) as exc:
        if verbose:
            traceback.print_exc()
        print(f"flowd: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def main() -> NoReturn:
    sys.exit(run_cli(sys.argv[1:]))
