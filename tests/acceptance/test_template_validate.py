"""`flowd validate` and templates: warnings for unbounded ones, refusal of an event-chosen host."""

from __future__ import annotations

import asyncpg

from tests.support.flowd_cli import run_flowd
from tests.support.flows import add_flow

WARNED = {
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}": (
        "nested loops"
    ),
    "{% for i in range(100000) %}.{% endfor %}": "range() with a large",
    "{{ 'x' * new.estimate }}": "`*` repeats a value",
    "{{ 'x'|center(2000000000) }}": "filter center with a large",
}


async def test_unbounded_templates_are_warned_of_and_still_valid(
    db: asyncpg.Connection, database_url: str
) -> None:
    """Each template that may cost without bound gets a `warning:` line naming what; a
    plain one none; warnings alone leave the exit status 0."""
    flows = {}
    for body, warning in WARNED.items():
        hook = ("API_CALL", {"url": "https://hooks.example/x", "body": body})
        flows[warning] = await add_flow(db, actions=[hook])
    plain = await add_flow(
        db, actions=[("API_CALL", {"url": "https://hooks.example/x", "body": "{{ new.title }}"})]
    )
    result = await run_flowd("validate", env={"DATABASE_URL": database_url})
    assert result.code == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for warning, flow_id in flows.items():
        mine = [line for line in lines if line.startswith(f"flow {flow_id} ")]
        assert any(
            ": warning: action " in line and f"template with {warning}" in line for line in mine
        ), mine
    assert not any(line.startswith(f"flow {plain} ") for line in lines)
    assert f"{len(flows) + 1} flow(s) checked, 0 with problems" in result.stderr


async def test_an_event_value_as_the_host_is_a_problem(
    db: asyncpg.Connection, database_url: str
) -> None:
    """`https://{{ new.owner }}/x` is reported (exit 1); a host from a secret is not."""
    chosen = await add_flow(db, actions=[("API_CALL", {"url": "https://{{ new.owner }}/x"})])
    port = await add_flow(
        db, actions=[("API_CALL", {"url": "https://hooks.example:{{ new.port }}/x"})]
    )
    await add_flow(db, actions=[("API_CALL", {"url": "{{ secrets.HOOK_BASE }}/{{ new.id }}"})])
    result = await run_flowd("validate", env={"DATABASE_URL": database_url})
    assert result.code == 1, result.stdout + result.stderr
    problems = [line for line in result.stdout.splitlines() if line.startswith("flow ")]
    refusal = "url: its scheme, host and port come from the flow and secrets only, not from new"
    assert len(problems) == 2, problems
    for flow_id, line in zip((chosen, port), problems, strict=True):
        assert line.startswith(f"flow {flow_id} (test flow): action "), line
        assert line.endswith(f"(API_CALL): {refusal}"), line
