"""Flows files: the one place that reads and writes them.

A flows file is YAML or JSON (`.yaml`, `.yml`, `.json`) holding one flow or a list of
flows; a directory holds such files, read in name order. Each flow has a `key`, the
stable name that identifies it across databases, and no `flow_id`; its rules and
actions are lists (an action's position is its place in the list). The older shape, a
JSON array (or `{"flows": [...]}`) of flows with an integer `flow_id`, still reads.

`read_flows` parses a path into `FlowSpec`s and one-line `FileProblem`s; `dump` writes
flows back, deterministically, so that export → apply → export gives the same bytes.
"""

from flowd.flowfiles.read import SUFFIXES, FileProblem, FlowsRead, read_flows
from flowd.flowfiles.spec import (
    KEY_PATTERN,
    ActionSpec,
    FlowSpec,
    RuleSpec,
    derive_keys,
    slugify,
    spec_of,
)
from flowd.flowfiles.write import FORMATS, Format, dump, export

__all__ = [
    "FORMATS",
    "KEY_PATTERN",
    "SUFFIXES",
    "ActionSpec",
    "FileProblem",
    "FlowSpec",
    "FlowsRead",
    "Format",
    "RuleSpec",
    "derive_keys",
    "dump",
    "export",
    "read_flows",
    "slugify",
    "spec_of",
]
