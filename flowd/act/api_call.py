"""API_CALL: a request to any URL (a webhook), the webhook payload as its default body.

Its URL's origin (scheme, host, port) comes from the flow and secrets only, never from
the event (`flowd.act.templates.origin_refusal`); `flowd validate` also reports a literal
URL whose host is a refused address (`flowd.act.addresses`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field, field_validator

from flowd.act import http
from flowd.act.addresses import refused_url_reason
from flowd.act.base import Checked, Done, Step
from flowd.act.templates import origin_refusal
from flowd.catalog import Catalog
from flowd.config import Settings
from flowd.models import ChangeEvent, Flow
from flowd.policy import TablePolicy

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


class ApiCallConfig(http.HttpConfig):
    templated: ClassVar[tuple[str, ...]] = ("url", "headers", "body")  # `url` renders as a URL

    url: str = Field(min_length=1)
    method: str = "POST"
    body: http.JsonBody = None

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        if method.upper() not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}")
        return method.upper()


def api_call_request(config: ApiCallConfig, event: ChangeEvent, flow: Flow) -> http.HttpRequest:
    """The request of an API_CALL whose config was rendered (`flowd.act.rendering`)."""
    return http.build_request(config.method, config.url, config.headers, config.body, event, flow)


class ApiCall:
    """The API_CALL kind (`flowd.act.base.ActionKind`)."""

    config_model = ApiCallConfig
    needs_database = False
    needs_supabase = False
    journalled_with_write = False

    async def check(
        self, config: ApiCallConfig, flow: Flow, catalog: Catalog | None, policy: TablePolicy | None
    ) -> Checked:
        refusal = origin_refusal(config.url)
        return None, (f"url: {refusal}" if refusal else None)

    def settings_problem(self, written: Mapping[str, Any], settings: Settings) -> str | None:
        url = written.get("url")
        if not isinstance(url, str):
            return None
        reason = refused_url_reason(url, settings)
        return f"url: {reason}" if reason else None

    async def attempt(self, config: ApiCallConfig, step: Step) -> Done:
        return await http.deliver(api_call_request(config, step.event, step.flow), config, step)
