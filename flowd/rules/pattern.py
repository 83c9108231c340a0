"""MATCHES patterns, compiled for RE2: matching takes time linear in the text, whatever
the pattern, so that no flow can stall the (synchronous) classifier with backtracking.

RE2 refuses what it cannot match in linear time (backreferences, lookaround); such a
pattern is a definition error, reported by `flowd validate` and refused at load.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any, Final

import re2

from flowd.rules.limits import PATTERN

Search = Callable[[str], bool]
"""A compiled pattern's test: whether it is found in a text."""

# The binding's own RE2 object: `re2.compile(...).search` builds a match object through
# a Python generator, some twenty times the cost of the match (a classifier of 10,000
# flows ran at half its speed); a test needs only whether the first span is set.
_RE2: Final[Any] = importlib.import_module("re2._re2").RE2
_UNANCHORED: Final = _RE2.Anchor.UNANCHORED
_NO_MATCH: Final = (-1, -1)
_SURROGATE: Final = re.compile("[\ud800-\udfff]")  # one character class: linear time
_OPTIONS: Final = re2.Options()
_OPTIONS.log_errors = False  # a refused pattern is reported once, as a flow refusal


class PatternRefused(ValueError):
    """A MATCHES pattern cannot be used; the message is the one-line reason."""


def compile_search(pattern: str) -> Search:
    """The test of `pattern`: found anywhere in the text, case-sensitive (as Python's
    `re.search`); PatternRefused when the pattern is too long or RE2 refuses it."""
    if (reason := PATTERN.refusal(len(pattern))) is not None:
        raise PatternRefused(reason)
    regexp = _RE2(_utf8(pattern), _OPTIONS)
    if not regexp.ok():
        cause = regexp.error()
        text = cause.decode(errors="replace") if isinstance(cause, bytes) else str(cause)
        raise PatternRefused(
            f"the regular expression {pattern!r} does not compile: {text}"
            " (MATCHES uses RE2 syntax: no backreferences, no lookaround)"
        )
    match = regexp.Match

    def search(text: str) -> bool:
        encoded = _utf8(text)
        return bool(match(_UNANCHORED, encoded, 0, len(encoded))[0] != _NO_MATCH)

    return search


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate (JSON's "\ud800") has no UTF-8 form
        return _SURROGATE.sub("\ufffd", text).encode()
