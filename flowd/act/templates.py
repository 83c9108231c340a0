"""Templates: render `{{ … }}` in action configs in a sandboxed Jinja2 environment.

A template sees `new`, `old` (`record`, `old_record`), `event`, `flow`, `secrets` and `now`.
It cannot reach Python internals (the sandbox), cannot build huge values (bounded
`*` and `**`), and fails loudly on an undefined name. Any failure is a
`PermanentActionError`: a template that fails once fails every time. An API_CALL's URL
renders with `render_url`: its origin from the flow and secrets only, event values
percent-encoded in its path and query. What bounds a render's time and memory is the
caller's (`flowd.act.sandbox`); a worker runs `render_action`, the same code as in process.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import SandboxedEnvironment

from flowd.errors import PermanentActionError, describe
from flowd.models import ChangeEvent, Flow

MAX_RENDERED_CHARS = 1_000_000
_MAX_REPEAT = 100_000
_MAX_EXPONENT = 1_000


class _RuntimeOnly(CodeGenerator):
    """Compiles without evaluating anything: Jinja folds constant output and `autoescape`
    values while compiling, which would run `'x'|center(2000000000)` when a flow is loaded,
    in the daemon, outside any budget (`flowd.act.sandbox`)."""

    def _output_child_to_const(self, node: nodes.Expr, frame: Frame, finalize: Any) -> str:
        if not isinstance(node, nodes.TemplateData):
            raise nodes.Impossible()
        return super()._output_child_to_const(node, frame, finalize)

    def visit_EvalContextModifier(self, node: nodes.EvalContextModifier, frame: Frame) -> None:
        frame.eval_ctx.volatile = True  # evaluated when rendering, like any other value
        for keyword in node.options:
            self.writeline(f"context.eval_ctx.{keyword.key} = ")
            self.visit(keyword.value, frame)


class _BoundedSandbox(SandboxedEnvironment):
    """The sandbox, with `*` and `**` bounded so a template cannot exhaust memory or CPU."""

    intercepted_binops = frozenset({"*", "**"})
    code_generator_class = _RuntimeOnly

    def call_binop(self, context: jinja2.runtime.Context, op: str, left: Any, right: Any) -> Any:
        if op == "**":
            if isinstance(right, int | float) and abs(right) > _MAX_EXPONENT:
                raise jinja2.exceptions.SecurityError("exponent too large")
            return operator.pow(left, right)
        sized = (str, bytes, list, tuple)
        if isinstance(left, sized) or isinstance(right, sized):
            size = len(left) if isinstance(left, sized) else len(right)
            count = right if isinstance(left, sized) else left
            if isinstance(count, int) and size * count > _MAX_REPEAT:
                raise jinja2.exceptions.SecurityError("repetition too large")
        return operator.mul(left, right)


class _Trusted(str):
    """A secret's value in a URL: written as it is (it may hold a path), never encoded."""

    __slots__ = ()


def _percent_encoded(value: Any) -> str:
    return value if isinstance(value, _Trusted) else quote(str(value), safe="")


# Not `optimized`: the optimizer folds constants at compile time too (see _RuntimeOnly).
_environment = _BoundedSandbox(undefined=jinja2.StrictUndefined, autoescape=False, optimized=False)
# A URL's path and query: every value but a secret is percent-encoded where it lands.
_url_environment = _BoundedSandbox(
    undefined=jinja2.StrictUndefined, autoescape=False, optimized=False, finalize=_percent_encoded
)


@functools.lru_cache(maxsize=4096)
def _compile(source: str, in_url: bool = False) -> jinja2.Template:
    return (_url_environment if in_url else _environment).from_string(source)


def check_syntax(source: str) -> str | None:
    """The syntax error in a template, or None; used when flows are validated."""
    try:
        _compile(source)
    except jinja2.TemplateSyntaxError as exc:
        return f"template syntax error: {exc.message} (line {exc.lineno})"
    return None


def render(source: str, context: Mapping[str, Any], *, in_url: bool = False) -> str:
    """Render one string; text without `{{`/`{%` is returned as is."""
    if "{" not in source:
        return source
    try:
        rendered = _compile(source, in_url).render(context)
    except jinja2.exceptions.SecurityError as exc:
        raise PermanentActionError(f"template refused by the sandbox: {exc}") from None
    except jinja2.TemplateError as exc:
        raise PermanentActionError(f"template error: {exc}") from None
    except MemoryError:  # over the worker's memory limit: the caller's budget error
        raise
    except Exception as exc:  # a template can raise anything its filters raise (1/0, int('x'))
        raise PermanentActionError(f"template error: {describe(exc)}") from None
    if len(rendered) > MAX_RENDERED_CHARS:
        raise PermanentActionError(f"template output longer than {MAX_RENDERED_CHARS} characters")
    return rendered


def render_tree(value: Any, context: Mapping[str, Any]) -> Any:
    """Render every string leaf of a JSON-like value; other leaves are kept."""
    if isinstance(value, str):
        return render(value, context)
    if isinstance(value, dict):
        return {key: render_tree(item, context) for key, item in value.items()}
    if isinstance(value, list):
        return [render_tree(item, context) for item in value]
    return value


_TAG_ENDS = {"{": "}}", "%": "%}", "#": "#}"}


def split_url(source: str) -> tuple[str, str]:
    """A URL template's origin (scheme, host, port: up to the first `/`, `?` or `#` of its
    own text past `://`) and the rest (path, query, fragment)."""
    index = 0
    while index < len(source):
        if source.startswith(("{{", "{%", "{#"), index):
            end = source.find(_TAG_ENDS[source[index + 1]], index)
            index = len(source) if end < 0 else end + 2
        elif source.startswith("://", index):
            index += 3
        elif source[index] in "/?#":
            return source[:index], source[index:]
        else:
            index += 1
    return source, ""


def origin_refusal(source: str) -> str | None:
    """Why a URL template's scheme, host or port could come from the event, or None:
    only the flow's own text and `secrets` may choose them."""
    origin, _ = split_url(source)
    if "{" not in origin:
        return None
    try:
        names = {node.name for node in _environment.parse(origin).find_all(nodes.Name)}
    except jinja2.TemplateSyntaxError:
        return None  # reported by check_syntax
    if names - {"secrets"}:
        used = ", ".join(sorted(names - {"secrets"}))
        return f"its scheme, host and port come from the flow and secrets only, not from {used}"
    return None


def render_url(source: str, context: Mapping[str, Any]) -> str:
    """The URL: its origin rendered with secrets, its path and query with every value that
    is not a secret percent-encoded (no `../`, `?`, `#` or `@` from the event breaks out)."""
    origin, rest = split_url(source)
    secrets = {name: _Trusted(value) for name, value in context.get("secrets", {}).items()}
    start = render(origin, context)
    url = start + render(rest, {**context, "secrets": secrets}, in_url=True)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PermanentActionError("url must be an absolute http:// or https:// URL")
    if parts.netloc != urlsplit(start + "/").netloc:
        raise PermanentActionError("url: its path or query changed its host")
    if any(unquote(segment) in (".", "..") for segment in parts.path.split("/")):
        raise PermanentActionError("url: a `.` or `..` path segment")
    return url


def render_action(parts: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    """Render an action's templated parts (`url` as a URL, the rest as trees)."""
    return {
        key: render_url(value, context) if key == "url" else render_tree(value, context)
        for key, value in parts.items()
    }


def strings_in(value: Any) -> list[str]:
    """Every string leaf of a JSON-like value: what `render_tree` would render."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in strings_in(item)]
    if isinstance(value, list):
        return [s for item in value for s in strings_in(item)]
    return []


def template_context(event: ChangeEvent, flow: Flow, secrets: Mapping[str, str]) -> dict[str, Any]:
    """What a template sees (actions.md, Templates)."""
    return {
        "new": event.new,
        "old": event.old,
        "record": event.new,
        "old_record": event.old,
        "event": {
            "schema": event.schema_name,
            "table": event.table,
            "type": event.type,
            "commit_timestamp": event.commit_timestamp,
        },
        "flow": {"id": flow.flow_id, "name": flow.name},
        "secrets": dict(secrets),
        "now": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
