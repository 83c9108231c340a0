"""MATCHES patterns, compiled for RE2: matching takes time linear in the text, whatever
the pattern, so that no flow can stall the (synchronous) classifier with backtracking.

RE2 refuses what it cannot match in linear time (backreferences, lookaround); such a
pattern is a definition error, reported by `flowd validate` and refused at load.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

import re2

from flowd import limits

Search = Callable[[str], bool]
"""A compiled pattern's test: whether it is found in a text."""

_SURROGATE: Final = re.compile("[\ud800-\udfff]")  # one character class: linear time
_OPTIONS: Final = re2.Options()
_OPTIONS.log_errors = False  # a refused pattern is reported once, as a flow refusal


class PatternRefused(ValueError):
    """A MATCHES pattern cannot be used; the message is the one-line reason."""


def compile_search(pattern: str) -> Search:
    """The search function of `pattern` (found anywhere in the text, case-sensitive, as
    Python's `re.search`); PatternRefused when it is too long or RE2 refuses it."""
    if (reason := limits.PATTERN.refusal(len(pattern))) is not None:
        raise PatternRefused(reason)
    try:
        compiled = re2.compile(pattern, _OPTIONS)
    except re2.error as error:
        cause = error.args[0] if error.args else "invalid"
        text = cause.decode(errors="replace") if isinstance(cause, bytes) else str(cause)
        raise PatternRefused(
            f"the regular expression {pattern!r} does not compile: {text}"
            " (MATCHES uses RE2 syntax: no backreferences, no lookaround)"
        ) from None

    def search(text: str) -> bool:
        try:
            return compiled.search(text) is not None
        except UnicodeEncodeError:  # a lone surrogate (JSON's "\ud800") has no UTF-8 form
            return compiled.search(_SURROGATE.sub("\ufffd", text)) is not None

    return search
