"""One rate limiter for every request a process makes.

A sliding-window log rather than a token bucket: a token bucket of capacity B and rate R
admits up to B + R requests in some 60-second window, which a server counting a rolling
minute answers with 429. The log admits a request only when fewer than R requests were
admitted in the last 60 seconds (plus a small margin for the network's jitter), so no
60-second window ever holds more than R, while a full R per minute stays usable.

Within that cap, requests are *paced* (GCRA, the leaky bucket as a meter): one every 60/R
seconds, with at most `burst` at once. A platform that enforces its limit as a token bucket
with a small capacity, or per second, answers a minute's budget sent at once with 429s; an
even pace never meets them, and costs nothing against a rolling-minute limit.

After a 429 the limiter pauses every caller for `Retry-After` (or its own backoff when the
server gave none) and lowers its budget, then climbs back as requests succeed; after a pause
it resumes at the paced rate, never with a burst.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import parsedate_to_datetime
from typing import Any

from .defaults import BURST as DEFAULT_BURST

WINDOW_S = 60.0
# Requests take time to reach the server; keep this much slack so our window and the
# server's never disagree. 0.25 s is under 0.5% of a minute.
DEFAULT_MARGIN_S = 0.25
BACKOFF_START_S = 1.0  # first pause after a 429 without Retry-After
BACKOFF_CAP_S = 60.0  # one window: after that the server's count has surely reset
SLOWDOWN_FACTOR = 0.8  # budget multiplier after each 429
MIN_FACTOR = 0.25
RECOVERY_STEP = 0.01  # budget fraction regained per successful request
RETRY_AFTER_CEILING_S = 300.0  # a longer Retry-After is taken as this: the server is wrong or hostile


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date. None if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
            if when is None:
                return None
            now = time.time() if now is None else now
            return max(0.0, when.timestamp() - now)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


class RateLimiter:
    """Admit at most `per_minute` requests in any 60-second window; `per_minute=0` means no limit."""

    def __init__(
        self,
        per_minute: float,
        *,
        margin: float = DEFAULT_MARGIN_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        burst: int | None = DEFAULT_BURST,
    ) -> None:
        self.per_minute = per_minute
        self.burst = burst  # None: no pacing, the sliding window alone (a minute's budget at once)
        self._tat = float("-inf")  # GCRA: the theoretical arrival time of the next request
        self._window = WINDOW_S + margin
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._admitted: deque[float] = deque()
        self._lock = asyncio.Lock()
        self._paused_until = 0.0
        self._pause_started = float("-inf")
        self._factor = 1.0
        self._backoff = BACKOFF_START_S
        self.rate_limited_total = 0
        self.on_notice: Callable[[str], Any] = lambda text: None  # what the user should hear of

    async def start(self) -> None:
        """Before the first request (a shared limiter joins its store here)."""

    async def aclose(self) -> None:
        """After the last request (a shared limiter leaves its store here)."""

    @property
    def budget(self) -> int:
        """Requests currently allowed per window (lowered after 429s). 0 means unlimited."""
        if self.per_minute <= 0:
            return 0
        return max(1, math.floor(self.per_minute * self._factor))

    def slack(self) -> float:
        """The share of the budget the last window left unused (1.0 without a limit): how much room
        there is for requests that only improve latency, such as frequent polls."""
        budget = self.budget
        if budget == 0:
            return 1.0
        now = self._clock()
        if self._paused_until > now:
            return 0.0
        used = sum(1 for t in self._admitted if t > now - self._window)
        return max(0.0, 1.0 - used / budget)

    def _wait_needed(self, now: float) -> float:
        if self._paused_until > now:
            return self._paused_until - now
        budget = self.budget
        if budget == 0:
            return 0.0
        admitted = self._admitted
        while admitted and admitted[0] <= now - self._window:
            admitted.popleft()
        window_wait = 0.0 if len(admitted) < budget else admitted[-budget] + self._window - now
        pace_wait = 0.0
        if self.burst is not None:
            # GCRA: admit when the theoretical arrival time is less than `burst` intervals ahead.
            interval = self._window / budget  # the window's margin too: a hair under the rate
            pace_wait = max(0.0, self._tat - (self.burst - 1) * interval - now)
        return max(window_wait, pace_wait)

    async def acquire(self) -> float:
        """Wait until one more request may be sent, count it as sent; return its admission time."""
        async with self._lock:
            while True:
                now = self._clock()
                wait = self._wait_needed(now)
                if wait <= 0:
                    if self.per_minute > 0:
                        self._admitted.append(now)
                        if self.burst is not None:
                            self._tat = max(self._tat, now) + self._window / self.budget
                    return now
                await self._sleep(wait)

    def on_rate_limited(self, retry_after: float | None, sent_at: float | None = None) -> float:
        """Record a 429 for a request admitted at `sent_at`: pause everyone and lower the budget.

        A 429 for a request admitted before the latest pause began belongs to the wave that
        pause already answers: it neither escalates the backoff nor lowers the budget again.
        Returns the pause in seconds.
        """
        self.rate_limited_total += 1
        if sent_at is not None and sent_at <= self._pause_started:
            return max(0.0, self._paused_until - self._clock())
        self._pause_started = self._clock()
        if retry_after is None:
            # No hint: exponential backoff with full jitter on the upper half, capped at one window.
            pause = self._backoff * (0.5 + self._rng.random() / 2)
            self._backoff = min(BACKOFF_CAP_S, self._backoff * 2)
        else:
            pause = min(retry_after, RETRY_AFTER_CEILING_S)
        self._paused_until = max(self._paused_until, self._clock() + pause)
        # Resume at the pace, not with a burst: the first request after the pause goes alone.
        self._tat = max(
            self._tat,
            self._paused_until + (self.burst - 1 if self.burst else 0) * self._window / max(1, self.budget),
        )
        self._factor = max(MIN_FACTOR, self._factor * SLOWDOWN_FACTOR)
        return pause

    def on_success(self) -> None:
        """Record an answered request: the budget climbs back toward the configured rate."""
        self._backoff = BACKOFF_START_S
        if self._factor < 1.0:
            self._factor = min(1.0, self._factor + RECOVERY_STEP)


class ByteRate:
    """Paces bytes (all uploads of a run share one): at most `per_second` on average, chunk by chunk."""

    def __init__(
        self,
        per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.per_second = per_second
        self._clock = clock
        self._sleep = sleep
        self._next = float("-inf")  # when the budget is free again

    async def take(self, n: int) -> None:
        """Wait until `n` more bytes may leave."""
        if self.per_second <= 0:
            return
        now = self._clock()
        start = max(self._next, now)
        self._next = start + n / self.per_second
        if start > now:
            await self._sleep(start - now)


_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_bandwidth(text: str) -> float:
    """Bytes per second from rclone's syntax: `10M` is 10 MiB/s; `0` or `off` means no limit."""
    value = (
        str(text).strip().upper().removesuffix("/S").removesuffix("IB").removesuffix("B")
        if str(text).strip()
        else ""
    )
    if value in ("", "0", "OFF"):
        return 0.0
    number, unit = value[:-1] if value[-1] in _UNITS else value, value[-1] if value[-1] in _UNITS else ""
    rate = float(number) * _UNITS[unit]
    if not math.isfinite(rate) or rate < 0:
        raise ValueError(f"not a bandwidth: {text!r}")
    return rate
