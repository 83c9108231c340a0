"""flowd's exceptions: one root, the docstring is the default message.

    FlowdError
    ├── ConfigurationError        flowd cannot start (exit 2)
    │   └── DatabaseUnavailable   DATABASE_URL set but the server cannot be reached
    │       └── DatabaseUnreachable   no answer (network, down): `flowd run` exits 75
    ├── EventError                an input line is not a change event
    ├── NotFound                  no flow or execution by that key or id (exit 1)
    ├── FlowDefinitionError       a flow cannot work and is refused
    │   └── FlowFileError         a flow of a flows file cannot be read
    ├── ExecutionTakenOver        another process carried on a durable execution
    └── ActionError               an action failed
        ├── PermanentActionError  retrying cannot help (4xx, bad template, bad config)
        └── TransientActionError  worth another attempt (timeout, 5xx, 429, deadlock)

Driver errors (asyncpg, aiohttp, jinja2) are translated once, where they are caught,
with `raise ... from exc`; only the CLI maps these classes to exit codes.
"""

from __future__ import annotations

import pydantic


class FlowdError(Exception):
    """flowd failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


def describe(exc: BaseException) -> str:
    """`Type: message`, the one-line form flowd logs and records an error in."""
    return f"{type(exc).__name__}: {exc}"


def first_problem(exc: pydantic.ValidationError, where: str) -> tuple[str, str]:
    """Where (dotted path, else `where`) and what the first validation error says."""
    error = exc.errors()[0]
    path = ".".join(str(part) for part in error["loc"])
    return path or where, error["msg"]


class ConfigurationError(FlowdError):
    """flowd is not configured correctly."""

    exit_code = 2


class DatabaseUnavailable(ConfigurationError):
    """The database cannot be reached; check DATABASE_URL and that the server is up."""


class DatabaseUnreachable(DatabaseUnavailable):
    """The database did not answer: an outage that may pass, unlike a refused login."""


class EventError(FlowdError):
    """The input is not a change event."""


class NotFound(FlowdError):
    """No flow or execution goes by that key or id."""

    exit_code = 1


class FlowDefinitionError(FlowdError):
    """A flow's definition cannot work; the flow is not run."""

    def __init__(self, flow_id: int, where: str, reason: str) -> None:
        self.flow_id = flow_id
        self.where = where
        self.reason = reason
        super().__init__(f"flow {flow_id}: {where}: {reason}")


class FlowFileError(FlowDefinitionError):
    """A flow of a flows file cannot be read; `line` says where and what, in one line."""

    def __init__(self, flow_id: int, where: str, reason: str, line: str) -> None:
        super().__init__(flow_id, where, reason)
        self.line = line


class ExecutionTakenOver(FlowdError):
    """Another process recorded progress of this execution first; this run stops, unrecorded."""


class ActionError(FlowdError):
    """An action failed."""

    http_status: int | None = None


class PermanentActionError(ActionError):
    """The action failed in a way another attempt cannot fix."""

    def __init__(self, message: str | None = None, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class TransientActionError(ActionError):
    """The action failed in a way another attempt may fix."""

    def __init__(
        self,
        message: str | None = None,
        *,
        http_status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.retry_after_s = retry_after_s
