"""The one backoff: pauses double from the first up to the maximum; a reset starts over."""

from __future__ import annotations

from flowd.backoff import Backoff


def test_pauses_double_up_to_the_maximum_and_a_reset_starts_again() -> None:
    backoff = Backoff(initial=1.0, maximum=30.0)
    assert [backoff.next() for _ in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    backoff.reset()
    assert backoff.next() == 1.0
