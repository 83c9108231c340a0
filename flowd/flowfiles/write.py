"""Writing flows files: deterministic YAML or JSON, so that the same flows give the same bytes.

A flow's fields are written in one order (that of `FlowSpec`), unset optional ones left
out; the keys of an action's config are sorted. In YAML a text of several lines is a
block literal (`|`), so a template reads as it is written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from flowd.errors import ConfigurationError
from flowd.flowfiles.read import SUFFIXES
from flowd.flowfiles.spec import FlowSpec

Format = Literal["yaml", "json"]
FORMATS: tuple[Format, ...] = ("yaml", "json")


class _Dumper(yaml.SafeDumper):
    pass


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None  # PyYAML quotes it instead where `|` cannot hold it
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value


def _plain(spec: FlowSpec) -> dict[str, Any]:
    data = spec.model_dump(exclude_none=True)
    data["rules"] = [spec_rule.model_dump(exclude_none=True) for spec_rule in spec.rules]
    data["actions"] = [{"type": a.type, "config": _sorted(a.config)} for a in spec.actions]
    return data


def dump(flows: FlowSpec | Sequence[FlowSpec], form: Format) -> str:
    """One flow (a mapping) or a list of flows, as the text of a flows file."""
    data = _plain(flows) if isinstance(flows, FlowSpec) else [_plain(flow) for flow in flows]
    if form == "json":
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=float("inf"))


def export(flows: Sequence[FlowSpec], target: Path, form: Format | None) -> list[Path]:
    """Write `flows` to a file (a path ending .yaml, .yml or .json: one list, its format by
    the suffix unless `form` says) or a directory (created; a file per flow named by its
    key). The files written."""
    if target.suffix in SUFFIXES and not target.is_dir():
        form = form or ("json" if target.suffix == ".json" else "yaml")
        _write(target, dump(flows, form))
        return [target]
    form = form or "yaml"
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(f"cannot create directory {target}: {exc.strerror}") from None
    written = [target / f"{flow.key}.{form}" for flow in flows]
    for path, flow in zip(written, flows, strict=True):
        _write(path, dump(flow, form))
    return written


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot write {path}: {exc.strerror}") from None
