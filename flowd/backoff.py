"""Exponential backoff: the pause before the next try, doubling up to a maximum."""

from __future__ import annotations


class Backoff:
    """`next()` is the pause to take now (`initial`, then twice the last, at most `maximum`);
    `reset()` after a success starts again from `initial`."""

    def __init__(self, initial: float, maximum: float, factor: float = 2.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self._pause = initial

    def next(self) -> float:
        pause = self._pause
        self._pause = min(pause * self.factor, self.maximum)
        return pause

    def reset(self) -> None:
        self._pause = self.initial
