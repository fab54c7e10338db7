"""The retry policy, written out in one place.

- Retry: `TransientApiError` only (connection errors and timeouts, 429, 5xx): each may pass.
- Never retry: `PermanentApiError` (other 4xx): the same request gets the same answer.
- Backoff: exponential from 1 s, doubling, capped at 30 s, with jitter so many workers
  that failed together do not come back together.
- After a 429 no extra wait: the shared `RateLimiter` already pauses every request for
  `Retry-After` (or its own backoff), and waiting twice would waste the budget.
- Attempts: 1 + `retries` (the `--retries` option, default 5).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter
from tenacity.wait import wait_base

from ..errors import RateLimitedError, TransientApiError

BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 30.0
BACKOFF_JITTER_S = 1.0


class _Backoff(wait_base):
    """Exponential backoff with jitter, except after a 429 (the limiter waits for us)."""

    def __init__(self) -> None:
        self._exp = wait_exponential_jitter(initial=BACKOFF_INITIAL_S, max=BACKOFF_MAX_S, jitter=BACKOFF_JITTER_S)

    def __call__(self, retry_state) -> float:  # type: ignore[no-untyped-def]
        outcome = retry_state.outcome
        if outcome is not None and isinstance(outcome.exception(), RateLimitedError):
            return 0.0
        return self._exp(retry_state)


def retrying(retries: int, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> AsyncRetrying:
    """An `AsyncRetrying` for transient API errors: 1 + `retries` attempts; the last error re-raised."""
    return AsyncRetrying(
        retry=retry_if_exception_type(TransientApiError),
        stop=stop_after_attempt(retries + 1),
        wait=_Backoff(),
        sleep=sleep,
        reraise=True,
    )
