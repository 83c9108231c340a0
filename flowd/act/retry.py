"""Retries: the policy as frozen data, applied to an action attempt with tenacity.

Attempt n (n ≥ 1) that fails with a `TransientActionError` is followed, after a
pause, by attempt n+1, up to `max_attempts`. The pause is

    Retry-After, when the answer carried one, capped at `max_delay_s`;
    else  uniform(0, min(max_delay_s, backoff_s * 2**(n-1)))   ("full jitter")

A `PermanentActionError` (or anything else) ends the action at once.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from flowd.errors import TransientActionError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    backoff_s: float = 1.0
    max_delay_s: float = 60.0

    def delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (see the module docstring)."""
        if retry_after_s is not None:
            return max(0.0, min(retry_after_s, self.max_delay_s))
        ceiling = min(self.max_delay_s, self.backoff_s * 2 ** (attempt - 1))
        return random.uniform(0, ceiling)

    def with_max_attempts(self, max_attempts: int | None) -> RetryPolicy:
        if max_attempts is None:
            return self
        return RetryPolicy(max_attempts, self.backoff_s, self.max_delay_s)


def _wait(policy: RetryPolicy) -> Callable[[RetryCallState], float]:
    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        retry_after = error.retry_after_s if isinstance(error, TransientActionError) else None
        return policy.delay(state.attempt_number, retry_after)

    return wait


async def call_with_retries(
    policy: RetryPolicy,
    attempt: Callable[[int], Awaitable[T]],
    on_retry: Callable[[int, BaseException, float], None],
) -> T:
    """Run `attempt(n)` for n = 1, 2, … until it returns, per `policy`; re-raise the last error.

    `on_retry(n, error, pause_s)` is called before each pause.
    """

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        pause = state.next_action.sleep if state.next_action else 0.0
        if error is not None:
            on_retry(state.attempt_number, error, pause)

    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.max_attempts),
        wait=_wait(policy),
        retry=retry_if_exception_type(TransientActionError),
        before_sleep=before_sleep,
        reraise=True,
    )
    async for attempt_state in retrying:
        with attempt_state:
            return await attempt(attempt_state.retry_state.attempt_number)
    raise AssertionError("unreachable: tenacity either returns or re-raises")
