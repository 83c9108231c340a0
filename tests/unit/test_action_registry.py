"""The action registry: a kind registered by name is checked at load and run by the runner.

`NOTE` is a kind of this test only: registering it is the one line a new action type
adds to `flowd.act.registry.KINDS`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp
import pytest

from flowd.act import KINDS, ActionRunner, prepare
from flowd.act.base import ActionConfig, Checked, Done, Step
from flowd.act.sandbox import TemplateSandbox
from flowd.catalog import Catalog
from flowd.config import Settings
from flowd.db import Connection
from flowd.errors import FlowDefinitionError
from flowd.feeds.events import parse_event
from flowd.models import Action, ActionOutcome, Flow
from flowd.outage import Availability
from flowd.policy import TablePolicy
from flowd.secrets import Secrets
from tests.conftest import frame


class NoteConfig(ActionConfig):
    templated: ClassVar[tuple[str, ...]] = ("text",)

    text: str


@dataclass
class Note:
    """Writes its rendered text down; its load-time check refuses the text "no"."""

    journalled_with_write: bool = False
    written: list[str] = field(default_factory=list)
    config_model = NoteConfig
    needs_database = False
    needs_supabase = False

    async def check(
        self, config: NoteConfig, flow: Flow, catalog: Catalog | None, policy: TablePolicy | None
    ) -> Checked:
        return None, ("the note says no" if config.text == "no" else None)

    def settings_problem(self, written: Mapping[str, Any], settings: Settings) -> str | None:
        return None

    async def attempt(self, config: NoteConfig, step: Step) -> Done:
        self.written.append(f"{step.index}:{config.text}")
        return Done()


@dataclass
class MemoryJournal:
    done: tuple[ActionOutcome, ...] = ()
    cause: str = "{}"
    recorded: list[int] = field(default_factory=list)

    async def record(
        self, index: int, outcome: ActionOutcome, connection: Connection | None
    ) -> bool:
        self.recorded.append(index)
        return True


def flow_of(*configs: dict[str, Any], kind: str = "NOTE") -> Flow:
    actions = tuple(
        Action(action_id=number, type=kind, config=config, position=number)
        for number, config in enumerate(configs, start=1)
    )
    return Flow(flow_id=7, name="notes", trigger_table="tasks", actions=actions)


@pytest.fixture
def note(monkeypatch: pytest.MonkeyPatch) -> Note:
    kind = Note()
    monkeypatch.setitem(KINDS, "NOTE", kind)
    return kind


@pytest.fixture
async def runner() -> AsyncIterator[ActionRunner]:
    async def never_away() -> None:
        return None

    async with aiohttp.ClientSession() as session:
        yield ActionRunner(
            settings=Settings(),
            secrets=Secrets({}),
            http_client=session,
            pool=None,
            templates=TemplateSandbox(timeout_s=1.0, memory_mb=64, workers=1),
            available=Availability(never_away),
        )


async def refusal(flow: Flow) -> tuple[str, str]:
    with pytest.raises(FlowDefinitionError) as refused:
        await prepare(flow, None)
    return refused.value.where, refused.value.reason


async def test_an_unknown_type_lists_the_registered_kinds_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    known = "API_CALL, FUNCTION_CALL, DB_UPDATE"
    assert await refusal(flow_of({}, kind="SMS")) == (
        "action 1 (SMS)",
        f"unknown action type (known: {known})",
    )
    monkeypatch.setitem(KINDS, "NOTE", Note())
    assert await refusal(flow_of({}, kind="SMS")) == (
        "action 1 (SMS)",
        f"unknown action type (known: {known}, NOTE)",
    )


async def test_a_registered_kind_checks_its_config_and_its_own_rule(note: Note) -> None:
    where, reason = await refusal(flow_of({"text": "fine"}, {"txt": "typo"}))
    assert where == "action 2 (NOTE)"
    assert "text" in reason
    where, reason = await refusal(flow_of({"text": "{{ new.title"}))
    assert where == "action 1 (NOTE)"
    assert "template" in reason
    assert await refusal(flow_of({"text": "fine"}, {"text": "no"})) == (
        "action 2 (NOTE)",
        "the note says no",
    )


async def test_a_registered_kind_runs_its_rendered_config_in_order(
    note: Note, runner: ActionRunner
) -> None:
    flow = flow_of({"text": "{{ new.title }}"}, {"text": "{{ event.type }}"}, kind="note")
    prepared = await prepare(flow, None)
    assert [p.kind for p in prepared] == [note, note]
    outcomes = await runner.run_flow(flow, prepared, parse_event(frame("insert_event")))
    assert [(o.ok, o.type, o.attempts) for o in outcomes] == [(True, "note", 1)] * 2
    assert note.written == ["0:Write realtime contract", "1:INSERT"]


@pytest.mark.parametrize(("with_write", "recorded"), [(False, [0, 1]), (True, [])])
async def test_the_runner_journals_what_a_kind_does_not_journal_itself(
    note: Note, runner: ActionRunner, with_write: bool, recorded: list[int]
) -> None:
    """Every action but the last is journalled by the runner, unless its kind journals it
    with its own write; the last is recorded with the execution's outcome."""
    note.journalled_with_write = with_write
    flow = flow_of({"text": "a"}, {"text": "b"}, {"text": "c"})
    journal = MemoryJournal()
    event = parse_event(frame("insert_event"))
    outcomes = await runner.run_flow(flow, await prepare(flow, None), event, journal=journal)
    assert [o.ok for o in outcomes] == [True] * 3
    assert journal.recorded == recorded


async def test_a_journal_skips_what_an_earlier_run_finished(
    note: Note, runner: ActionRunner
) -> None:
    flow = flow_of({"text": "a"}, {"text": "b"}, {"text": "c"})
    earlier = ActionOutcome(action_id=1, type="NOTE", ok=True, attempts=1, duration_ms=3)
    journal = MemoryJournal(done=(earlier,))
    event = parse_event(frame("insert_event"))
    outcomes = await runner.run_flow(flow, await prepare(flow, None), event, journal=journal)
    assert outcomes[0] == earlier
    assert note.written == ["1:b", "2:c"]
    assert journal.recorded == [1]
