"""The action kinds by type name, and `prepare`, which checks a flow's actions with them.

A new action type is one module (its config model and an `ActionKind`) and one line here.
"""

from __future__ import annotations

from typing import Any

import pydantic

from flowd.act.api_call import ApiCall
from flowd.act.base import ActionKind, PreparedAction
from flowd.act.db_update import DbUpdate
from flowd.act.function_call import FunctionCall
from flowd.act.templates import check_syntax, strings_in
from flowd.catalog import Catalog
from flowd.errors import FlowDefinitionError, first_problem
from flowd.models import Action, Flow
from flowd.policy import TablePolicy

# In this order in the refusal of an unknown type.
KINDS: dict[str, ActionKind[Any]] = {
    "API_CALL": ApiCall(),
    "FUNCTION_CALL": FunctionCall(),
    "DB_UPDATE": DbUpdate(),
}


def kind_of(action: Action) -> ActionKind[Any] | None:
    """The kind of `action` (its type in any letter case), None for an unknown type."""
    return KINDS.get(action.type.upper())


def _where(action: Action, index: int) -> str:
    return f"action {action.action_id}" if action.action_id is not None else f"action #{index + 1}"


async def prepare(
    flow: Flow, catalog: Catalog | None, policy: TablePolicy | None = None
) -> tuple[PreparedAction[Any], ...]:
    """Parse and check the flow's actions; raise FlowDefinitionError for the first that cannot work.

    Without a catalog (flows from a file, no database) DB_UPDATE targets are checked against
    the `policy` only.
    """
    prepared = []
    for index, action in enumerate(flow.ordered_actions):
        checked = await _prepared(action, flow, catalog, policy)
        if isinstance(checked, str):
            where = f"{_where(action, index)} ({action.type})"
            raise FlowDefinitionError(flow.flow_id, where, checked)
        prepared.append(checked)
    return tuple(prepared)


async def _prepared(
    action: Action, flow: Flow, catalog: Catalog | None, policy: TablePolicy | None
) -> PreparedAction[Any] | str:
    """The action checked and parsed, or why it cannot work."""
    kind = kind_of(action)
    if kind is None:
        return f"unknown action type (known: {', '.join(KINDS)})"
    try:
        config = kind.config_model.model_validate(action.config)
    except pydantic.ValidationError as exc:
        location, reason = first_problem(exc, "config")
        return f"{location}: {reason}"
    for source in strings_in(action.config):
        if (problem := check_syntax(source)) is not None:
            return problem
    table, problem = await kind.check(config, flow, catalog, policy)
    return problem if problem is not None else PreparedAction(action, config, kind, table)
