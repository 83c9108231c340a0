"""The one backoff: pauses double up to their cap and start over after a reset."""

from __future__ import annotations

from flowd.backoff import Backoff


def test_pauses_double_up_to_the_maximum_and_stay_there() -> None:
    backoff = Backoff(1.0, 30.0)
    assert [backoff.next() for _ in range(8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_reset_starts_over_at_the_initial_pause() -> None:
    backoff = Backoff(0.2, 1.0)
    assert [backoff.next() for _ in range(4)] == [0.2, 0.4, 0.8, 1.0]
    backoff.reset()
    assert [backoff.next() for _ in range(2)] == [0.2, 0.4]


def test_a_factor_other_than_two() -> None:
    backoff = Backoff(1.0, 100.0, factor=3.0)
    assert [backoff.next() for _ in range(5)] == [1.0, 3.0, 9.0, 27.0, 81.0]


def test_an_initial_pause_above_the_maximum_is_capped() -> None:
    """As the settings allow (FLOWD_REALTIME_BACKOFF_S above its cap): the cap wins."""
    backoff = Backoff(60.0, 30.0)
    assert [backoff.next() for _ in range(2)] == [30.0, 30.0]
