"""FUNCTION_CALL: a POST to a Supabase Edge Function, with the service role key.

It needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY; without them each attempt fails
permanently, and `flowd validate` reports the flow.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field

from flowd.act import http
from flowd.act.base import Checked, Done, Step
from flowd.catalog import Catalog
from flowd.config import Settings
from flowd.errors import ConfigurationError, PermanentActionError
from flowd.models import ChangeEvent, Flow
from flowd.policy import TablePolicy

FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]+")


class FunctionCallConfig(http.HttpConfig):
    templated: ClassVar[tuple[str, ...]] = ("headers", "params")

    function_name: str = Field(pattern=FUNCTION_NAME.pattern)
    params: http.JsonBody = None


def function_call_request(
    config: FunctionCallConfig,
    event: ChangeEvent,
    flow: Flow,
    *,
    supabase_url: str,
    service_role_key: str,
) -> http.HttpRequest:
    url = f"{supabase_url}/functions/v1/{config.function_name}"
    key = {"Authorization": f"Bearer {service_role_key}"}
    return http.build_request("POST", url, config.headers, config.params, event, flow, key)


class FunctionCall:
    """The FUNCTION_CALL kind (`flowd.act.base.ActionKind`)."""

    config_model = FunctionCallConfig
    needs_database = False
    needs_supabase = True
    journalled_with_write = False

    async def check(
        self,
        config: FunctionCallConfig,
        flow: Flow,
        catalog: Catalog | None,
        policy: TablePolicy | None,
    ) -> Checked:
        return None, None

    def settings_problem(self, written: Mapping[str, Any], settings: Settings) -> str | None:
        return None  # the missing Supabase settings are the flow's problem (`needs_supabase`)

    async def attempt(self, config: FunctionCallConfig, step: Step) -> Done:
        try:
            supabase_url, key = step.tools.settings.require_supabase()
        except ConfigurationError as exc:
            raise PermanentActionError(str(exc)) from None
        request = function_call_request(
            config, step.event, step.flow, supabase_url=supabase_url, service_role_key=key
        )
        return await http.deliver(request, config, step)
