"""The retry policy, written out in one place.

- Retry: `TransientApiError` only (connection errors and timeouts, 429, 5xx): each may pass.
- Never retry: `PermanentApiError` (other 4xx): the same request gets the same answer.
- Backoff: exponential from 1 s, doubling, capped at 30 s, plus up to 1 s of jitter so
  workers that failed together do not come back together.
- After a 429 no extra wait: the shared `RateLimiter` already pauses every request for
  `Retry-After` (or its own backoff), and waiting twice would waste the budget.
- Attempts: 1 + `retries` (the `--retries` option, default 5). With `wait_for_budget` (the
  submitter's rows) a 429 is not counted: it says the request was refused for now, not that it
  failed, and waiting for the budget is the tool's job, so a row never ends (or uses up its
  retries) because of the rate limit; only a limit the user set (a stop) ends a row that waits.

The first attempt runs outside tenacity: nearly every call succeeds at once, and a tenacity
iteration costs tens of microseconds, a visible share of a request's own cost in a large run.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from ..errors import RateLimitedError, TransientApiError

T = TypeVar("T")
BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 30.0
BACKOFF_JITTER_S = 1.0


def backoff_s(failures: int, exc: BaseException | None) -> float:
    """The wait after the `failures`-th consecutive transient failure (1-based)."""
    if isinstance(exc, RateLimitedError):
        return 0.0
    return min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2 ** (failures - 1) + random.uniform(0, BACKOFF_JITTER_S))


class _Backoff(wait_base):
    """`backoff_s` for tenacity, counting the failure that happened before tenacity took over."""

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        return backoff_s(retry_state.attempt_number + 1, outcome.exception() if outcome else None)


class _StopAfterFailures(stop_base):
    """Stop once more than `retries` attempts failed (429s not counted when waiting for the budget)."""

    def __init__(self, retries: int, failures: int, wait_for_budget: bool) -> None:
        self.retries = retries
        self.failures = failures
        self.wait_for_budget = wait_for_budget

    def __call__(self, retry_state: RetryCallState) -> bool:
        outcome = retry_state.outcome
        refused = outcome is not None and isinstance(outcome.exception(), RateLimitedError)
        if not (refused and self.wait_for_budget):
            self.failures += 1
        return self.failures > self.retries


async def call_with_retries(
    fn: Callable[[], Awaitable[T]],
    retries: int,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    wait_for_budget: bool = False,
) -> T:
    """`await fn()`, retrying transient API errors until `retries` of them (429s not counted) failed;
    the last error is re-raised."""
    try:
        return await fn()
    except TransientApiError as exc:
        failures = 0 if wait_for_budget and isinstance(exc, RateLimitedError) else 1
        if failures > retries:
            raise
        await sleep(backoff_s(1, exc))
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(TransientApiError),
        stop=_StopAfterFailures(retries, failures, wait_for_budget),
        wait=_Backoff(),
        sleep=sleep,
        reraise=True,
    ):
        with attempt:
            return await fn()
    raise AssertionError("unreachable")  # reraise=True: tenacity raised the last error
