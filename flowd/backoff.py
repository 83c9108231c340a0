"""Backoff: the pause before the next try after a failure, doubled per failure up to a cap."""

from __future__ import annotations


class Backoff:
    """Pauses of `initial`, then `factor` times the last, never above `maximum`.

    `next()` returns the pause to sleep now and grows the one after; `reset()` (after a
    success) starts over at `initial`. Jitter, where wanted, is the caller's: it draws
    from the returned pause.
    """

    def __init__(self, initial: float, maximum: float, factor: float = 2.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self._pause = initial

    def next(self) -> float:
        """The pause to sleep now; the next call returns `factor` times it, up to `maximum`."""
        pause = min(self._pause, self.maximum)
        self._pause = min(pause * self.factor, self.maximum)
        return pause

    def reset(self) -> None:
        """Start over: the next pause is `initial` again."""
        self._pause = self.initial
