"""Bounds on what one rule may hold, so that no flow can make loading or classifying slow.

Each is checked while a flow's rules are compiled, before the work that grows with the
value (splitting an IN list, reading its items, compiling a pattern); a flow over one is
refused with a line naming the bound, and every other flow loads.

`Refused` is how any part of compiling says that a rule cannot work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Bound:
    """At most `limit` `unit` in `what`."""

    what: str
    unit: str
    limit: int

    def refusal(self, size: int) -> str | None:
        """Why a thing of `size` units is refused, or None when it is within the bound."""
        if size <= self.limit:
            return None
        return f"{self.what} has {size:,} {self.unit}, over the limit of {self.limit:,}"


RULE_VALUE: Final = Bound("the rule value", "characters", 256 * 1024)
IN_LIST: Final = Bound("the IN list", "items", 10_000)
PATTERN: Final = Bound("the regular expression", "characters", 1_000)


class Refused(Exception):
    """A rule or flow setting cannot work; `reason` is the sentence users read."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def within(bound: Bound, size: int) -> None:
    """Refused unless a thing of `size` units is within `bound`."""
    if (reason := bound.refusal(size)) is not None:
        raise Refused(reason)
