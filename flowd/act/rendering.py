"""Render an action's config for one event: every template of it in one call to the
`TemplateSandbox` (in process or in one worker), before the action runs."""

from __future__ import annotations

from typing import Any

from flowd.act.base import ConfigT
from flowd.act.sandbox import TemplateSandbox


async def render_config(
    sandbox: TemplateSandbox, config: ConfigT, context: dict[str, Any]
) -> ConfigT:
    """A copy of `config` with its templates (the fields its model lists as `templated`)
    rendered; PermanentActionError if one fails."""
    parts = {
        name: getattr(config, name)
        for name in config.templated
        if getattr(config, name) is not None
    }
    return config.model_copy(update=await sandbox.render(parts, context))
