"""Render an action's config for one event: every template of it in one call to the
`TemplateSandbox` (in process or in one worker), before the action runs."""

from __future__ import annotations

from typing import Any

from flowd.act import db_update, http
from flowd.act.sandbox import TemplateSandbox

Config = http.ApiCallConfig | http.FunctionCallConfig | db_update.DbUpdateConfig

# The config fields that hold templates; an API_CALL's `url` renders as a URL.
_TEMPLATED: dict[type[Any], tuple[str, ...]] = {
    http.ApiCallConfig: ("url", "headers", "body"),
    http.FunctionCallConfig: ("headers", "params"),
    db_update.DbUpdateConfig: ("value", "set_", "where"),
}


async def render_config(
    sandbox: TemplateSandbox, config: Config, context: dict[str, Any]
) -> Config:
    """A copy of `config` with its templates rendered; PermanentActionError if one fails."""
    parts = {
        name: getattr(config, name)
        for name in _TEMPLATED[type(config)]
        if getattr(config, name) is not None
    }
    return config.model_copy(update=await sandbox.render(parts, context))
