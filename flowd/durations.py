"""Durations as settings and rules write them: `7d`, `12h`, `30m`, `45s`, `3600`.

Pure and on its own, so that reading the settings (`flowd.config`) does not load the
classifier, and the classifier (`flowd.rules.reltime`) does not load the settings.
"""

from __future__ import annotations

import re
from typing import Final

_DURATION: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in `7d`, `12h`, `30m`, `45s` or a plain number of seconds."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError("must be a duration such as 7d, 12h, 30m, 45s or 3600")
    return float(match[1]) * _UNIT_SECONDS[match[2] or "s"]
