"""Reading flows files: YAML or JSON, one file or a directory of them; one line a problem.

A file that cannot be read at all (not there, not UTF-8, a syntax error, nested too
deeply) is a ConfigurationError naming the file and, where the parser gives one, the
line and column. Within a readable file each flow stands alone: an unknown field (with
the nearest known name), a wrong type, a missing or duplicate key is a `FileProblem` of
that flow, and the other flows read on.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
import yaml
from pydantic_core import ErrorDetails

from flowd.errors import ConfigurationError
from flowd.flowfiles.spec import ActionSpec, FlowSpec, RuleSpec

SUFFIXES = (".yaml", ".yml", ".json")
Mark = tuple[int, int]  # line and column, from 1
Where = tuple[str | int, ...]  # a path into the document: keys and list positions
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_PARTS: Mapping[str, type[pydantic.BaseModel]] = {"rules": RuleSpec, "actions": ActionSpec}


class _Loader(yaml.SafeLoader):
    """Safe YAML without aliases (a few lines of them can stand for billions of nodes) and
    without timestamps (a date stays the text it is, as JSON would have it)."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None,
                None,
                "aliases (*name) are not allowed here",
                self.peek_event().start_mark,  # type: ignore[no-untyped-call]  # PyYAML's stubs
            )
        return super().compose_node(parent, index)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _TIMESTAMP]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@dataclass(frozen=True, slots=True)
class FileProblem:
    """What is wrong with one flow of a file, and where."""

    file: str
    mark: Mark | None
    flow: str  # `flow KEY`, or `flow #N` (its place in the file) when it has no key
    field: str | None  # a path such as actions[0].config
    message: str

    @property
    def location(self) -> str:
        return self.file + (f":{self.mark[0]}:{self.mark[1]}" if self.mark else "")

    @property
    def reason(self) -> str:
        return (f"{self.field}: " if self.field else "") + self.message

    def line(self) -> str:
        return f"{self.location}: {self.flow}: {self.reason}"


@dataclass(frozen=True, slots=True)
class ReadFlow:
    spec: FlowSpec
    file: str
    mark: Mark | None


@dataclass(frozen=True, slots=True)
class LegacyFlow:
    """A flow of the older shape: an integer `flow_id` and no key (read as it always was)."""

    entry: dict[str, Any]


Entry = ReadFlow | LegacyFlow | FileProblem


@dataclass
class FlowsRead:
    """Every flow of a path, in order (files in name order, flows in file order)."""

    entries: list[Entry] = field(default_factory=list)

    @property
    def flows(self) -> list[FlowSpec]:
        return [entry.spec for entry in self.entries if isinstance(entry, ReadFlow)]

    @property
    def problems(self) -> list[FileProblem]:
        return [entry for entry in self.entries if isinstance(entry, FileProblem)]


def read_flows(path: Path) -> FlowsRead:
    """The flows of a flows file, or of each flows file of a directory (name order)."""
    files = [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
    read = FlowsRead()
    first_at: dict[str, ReadFlow] = {}
    for file in files:
        document, marks = _parse(file)
        for entry in _entries(str(file), document, marks):
            if isinstance(entry, ReadFlow) and (first := first_at.get(entry.spec.key)):
                entry = _duplicate(entry, first)
            elif isinstance(entry, ReadFlow):
                first_at[entry.spec.key] = entry
            read.entries.append(entry)
    return read


def _duplicate(entry: ReadFlow, first: ReadFlow) -> FileProblem:
    at = first.file + (f":{first.mark[0]}" if first.mark else "")
    message = f"duplicate key {entry.spec.key!r}: {at} has it already"
    return FileProblem(entry.file, entry.mark, f"flow {entry.spec.key}", "key", message)


def _parse(file: Path) -> tuple[Any, dict[Where, Mark]]:
    """The document of a file, and where each of its parts starts (as far as known)."""
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read flows file {file}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"flows file {file} is not UTF-8 text: {exc.reason}") from None
    try:
        if file.suffix == ".json":
            return json.loads(text), _marks_of(text)
        document, node = _load_yaml(text)
        return document, _marks(node, ())
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"flows file {file} is not JSON: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ConfigurationError(f"{file}{at}: YAML syntax error: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{file}: YAML syntax error: {exc}") from None
    except RecursionError:
        raise ConfigurationError(f"flows file {file} is nested too deeply") from None


def _load_yaml(text: str) -> tuple[Any, yaml.Node | None]:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        return (loader.construct_document(node) if node is not None else None), node
    finally:
        loader.dispose()


def _compose(text: str) -> yaml.Node | None:
    loader = _Loader(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def _marks_of(json_text: str) -> dict[Where, Mark]:
    """Where the parts of a JSON document start: JSON is YAML, as far as this goes."""
    try:
        return _marks(_compose(json_text), ())
    except (yaml.YAMLError, RecursionError):
        return {}  # JSON that YAML does not read: its problems name no line


def _marks(node: yaml.Node | None, where: Where) -> dict[Where, Mark]:
    found: dict[Where, Mark] = {}
    pending = [(node, where)] if node is not None else []
    while pending:
        item, at = pending.pop()
        # a field's mark is its name's (set below), a list item's where it starts
        found.setdefault(at, (item.start_mark.line + 1, item.start_mark.column + 1))
        if isinstance(item, yaml.MappingNode):
            for key, value in item.value:
                if isinstance(key, yaml.ScalarNode):
                    pending.append((value, (*at, key.value)))
                    found[(*at, key.value)] = (key.start_mark.line + 1, key.start_mark.column + 1)
        elif isinstance(item, yaml.SequenceNode):
            pending += [(value, (*at, index)) for index, value in enumerate(item.value)]
    return found


def _entries(file: str, document: Any, marks: dict[Where, Mark]) -> Iterator[Entry]:
    """Each flow of a document: a list of flows, one flow, or the older `{"flows": [...]}`."""
    prefix: Where = ()
    if isinstance(document, dict) and "key" not in document and "flows" in document:
        document, prefix = document["flows"], ("flows",)
    if document is None:
        return
    if isinstance(document, dict):
        yield _entry(file, document, 1, prefix, marks)
        return
    if not isinstance(document, list):
        raise ConfigurationError(f"flows file {file} must hold a flow or a list of flows")
    for index, item in enumerate(document):
        yield _entry(file, item, index + 1, (*prefix, index), marks)


def _entry(file: str, item: Any, number: int, where: Where, marks: dict[Where, Mark]) -> Entry:
    mark = marks.get(where)
    if isinstance(item, dict) and "key" not in item and isinstance(item.get("flow_id"), int):
        return LegacyFlow(item)
    if not isinstance(item, dict):
        return FileProblem(file, mark, f"flow #{number}", None, "is not a mapping of fields")
    key = item.get("key")
    label = f"flow {key}" if isinstance(key, str) and key else f"flow #{number}"
    try:
        return ReadFlow(FlowSpec.model_validate(item), file, mark)
    except pydantic.ValidationError as exc:
        errors = exc.errors()  # an unknown field first: its nearest name explains the rest
        error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        loc = tuple(error["loc"])
        at = next((marks[w] for w in _prefixes((*where, *loc)) if w in marks), mark)
        return FileProblem(file, at, label, _dotted(loc), _message(error, loc))


def _prefixes(where: Where) -> Iterator[Where]:
    for end in range(len(where), -1, -1):
        yield where[:end]


def _dotted(loc: Where) -> str | None:
    text = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    return text.lstrip(".") or None


def _message(error: ErrorDetails, loc: Where) -> str:
    if error["type"] == "extra_forbidden":
        model = _PARTS.get(str(loc[0])) if len(loc) == 3 else FlowSpec
        known = list(model.model_fields) if model is not None else []
        text = f"unknown field {loc[-1]!r}"
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        return text + (f" (did you mean {close[0]!r}?)" if close else "")
    if error["type"] == "missing":
        return "required, and missing"
    if error["type"] == "string_pattern_mismatch":
        return (
            "not a key: lower-case letters, digits, '-' and '_', at most 63,"
            " starting with a letter or digit"
        )
    if error["type"].endswith("_type"):
        return f"wrong type: {error['msg'][0].lower()}{error['msg'][1:]}"
    return str(error["msg"])
