"""Structured logs: one JSON object per line on stdout (console rendering on a terminal).

Every line passes through the redactor, so a secret's value never reaches an operator's
log, whatever field or exception text carries it; the rendered line is redacted once more,
last. Tracebacks are plain text, without local variables. Log events also feed the
metrics (`flowd.ops.metrics.observe`), whatever the log level.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from flowd.ops import metrics

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR
_METHOD_LEVELS = {**_LEVELS, "warn": logging.WARNING, "exception": logging.ERROR}
_METHOD_LEVELS["critical"] = logging.CRITICAL
# A URL's apikey parameter (websockets and the realtime client put the key there).
_APIKEY = re.compile(r"(apikey=)[^&\s\"']+")
# Libraries that log whole URLs or keys below WARNING.
_NOISY = ("aiohttp", "httpx", "httpcore", "websockets", "asyncpg", "realtime", "hpack")


def _redacting(redact: Callable[[str], str]) -> Processor:
    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            return redact(value)
        if isinstance(value, dict):
            return {key: scrub(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [scrub(item) for item in value]
        return value

    def processor(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        return {key: scrub(value) for key, value in event_dict.items()}

    return processor


def _redacting_line(redact: Callable[[str], str]) -> Callable[[WrappedLogger, str, str], str]:
    """After rendering: whatever escaping or formatting did, the line itself is scrubbed."""

    def processor(_: WrappedLogger, __: str, line: str) -> str:
        return _APIKEY.sub(r"\1***", redact(line))

    return processor


def _at_least(level: int) -> Processor:
    """Drop what is below the configured level, after the metrics have seen it."""

    def processor(_: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        if _METHOD_LEVELS.get(method, logging.INFO) < level:
            raise structlog.DropEvent
        return event_dict

    return processor


def configure(
    *,
    level: str = "info",
    log_format: str | None = None,
    redact: Callable[[str], str] = lambda text: text,
    stream: TextIO | None = None,
) -> None:
    """Set up structlog for the whole process; call again to change redaction or stream."""
    stream = stream or sys.stdout
    if log_format is None:
        log_format = "console" if stream.isatty() else "json"
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
        if log_format == "console"
        else structlog.processors.JSONRenderer(default=str)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            metrics.observe,
            _at_least(_LEVELS[level]),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,  # plain traceback, no local variables
            _redacting(redact),
            renderer,
            # After the renderer: it gets the rendered line, which structlog's type does not know.
            _redacting_line(redact),  # type: ignore[list-item]
        ],
        # Info events reach the processors at any level: they feed the metrics.
        wrapper_class=structlog.make_filtering_bound_logger(min(_LEVELS[level], logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    _route_library_logs()


class _LibraryLogs(logging.Handler):
    """Libraries (realtime, websockets, asyncpg) log through `logging`: same JSON lines."""

    def emit(self, record: logging.LogRecord) -> None:
        get_logger().log(
            record.levelno, "library.log", logger=record.name, message=record.getMessage()
        )


def _route_library_logs() -> None:
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _LibraryLogs)]
    root.addHandler(_LibraryLogs())
    # The realtime client logs every reconnect attempt as an ERROR; flowd's supervisor
    # reports those states itself (realtime.*), so only the library's warnings pass.
    root.setLevel(logging.WARNING)
    for name in _NOISY:  # explicit, in case someone lowers the root level
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("realtime").setLevel(logging.CRITICAL)


def get_logger() -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger("flowd")
    return logger
