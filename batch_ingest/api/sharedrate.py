"""One account budget shared by every process that names the same store (`--rate-store redis://...`).

Shards of one manifest and independent runs (a nightly cron beside a migration) all spend one
account's budget; each process alone cannot know what the others send. Through the store they keep:

- **the cap**: at most `--rate` requests admitted in any moving window, whoever sends them: the
  `limits` package's moving window over Redis (a list of admission times, checked and pushed in one
  Lua script), the same sliding-window meaning as `RateLimiter`. The window is 61 s, not 60: a
  second of slack for the network and for the clocks of several machines. Its storage is used
  directly, under one key whatever the budget: `limits`' strategies key a window by its limit, so
  a budget lowered after a 429 would open a fresh, empty window beside the full one.
- **the pace**: one request every window/budget seconds with at most `burst` at once, for all of
  them together (GCRA, one theoretical arrival time in the store), so N processes do not burst N
  times over.
- **429s**: a 429 seen by one process pauses every process for `Retry-After` (or a backoff), and
  lowers the shared budget by the same factor as `RateLimiter`; from the pause's end the budget
  climbs back with time (as fast as one process regains it at full pace). A 429 for a request admitted before the latest
  pause began belongs to the wave that pause already answers.

Processes share by demand: each takes a slot as soon as one is free, so a run that needs little
leaves the rest to the one that needs much. Every process registers itself in the store (a
heartbeat); if the store stops answering mid-run, the process goes on alone at `--rate` divided by
the processes it last saw there (never more than `--rate`), says so, and rejoins when the store
answers again. A store unreachable when the run starts is a configuration error (exit 2): no run
should start believing it shares a budget it does not.

All times here are the wall clock (`time.time`, as the `limits` window uses): keep the clocks of the
machines that share a store in sync (NTP); the window's extra second absorbs small skews.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import ConfigError
from ..redact import redact_text, redact_url
from .defaults import BURST as DEFAULT_BURST
from .ratelimit import MIN_FACTOR, RECOVERY_STEP, SLOWDOWN_FACTOR, RateLimiter

SHARED_WINDOW_S = 61  # the store's window: the account's minute plus one second of slack
HEARTBEAT_S = 5.0  # how often a process says it is alive
# A process waits for its turn in slices of a heartbeat, so one that is not seen for three minutes
# (past the longest pause, 300 s aside) is gone: killed, or idle and spending nothing.
MEMBER_TTL_S = 180.0
REJOIN_EVERY_S = 5.0  # while fallen back, how often the store is tried again
STORE_TIMEOUT_S = 2.0  # connect and answer: a store slower than this is as good as gone
STATE_TTL_S = 3600  # the shared state outlives any pause (Retry-After is capped at 300 s)
SCHEMES = ("redis", "rediss", "valkey", "valkeys", "redis+unix", "valkey+unix")

# The pace and the pause, checked and (when admitted) advanced in one step for every process.
_PACE = """
local function tostring(x) return string.format('%.17g', x) end
local now = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local recovery = tonumber(ARGV[5])
local s = redis.call('HMGET', KEYS[1], 'tat', 'paused_until', 'factor', 'factor_at')
local tat = tonumber(s[1]) or 0
local paused = tonumber(s[2]) or 0
local factor = tonumber(s[3]) or 1
local fat = tonumber(s[4]) or now
factor = math.min(1, factor + math.max(0, now - fat) * recovery)
local budget = math.max(1, math.floor(rate * factor))
if paused > now then return {tostring(paused - now), budget} end
local interval = window / budget
if burst > 0 then
  local wait = tat - (burst - 1) * interval - now
  if wait > 0 then return {tostring(wait), budget} end
end
redis.call('HSET', KEYS[1], 'tat', tostring(math.max(tat, now) + interval))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
return {'0', budget}
"""

# A 429: pause everyone, lower the budget; a 429 of the wave an earlier pause answers changes nothing.
_RATE_LIMITED = """
local function tostring(x) return string.format('%.17g', x) end
local now = tonumber(ARGV[1])
local sent_at = tonumber(ARGV[2])
local pause = tonumber(ARGV[3])
local rate = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local burst = tonumber(ARGV[6])
local recovery = tonumber(ARGV[7])
local s = redis.call('HMGET', KEYS[1], 'tat', 'paused_until', 'factor', 'factor_at', 'pause_started')
local tat = tonumber(s[1]) or 0
local paused = tonumber(s[2]) or 0
local factor = tonumber(s[3]) or 1
local fat = tonumber(s[4]) or now
local started = tonumber(s[5]) or -1
if sent_at <= started then return {tostring(math.max(0, paused - now)), 0} end
factor = math.min(1, factor + math.max(0, now - fat) * recovery)
factor = math.max(tonumber(ARGV[8]), factor * tonumber(ARGV[9]))
paused = math.max(paused, now + pause)
local budget = math.max(1, math.floor(rate * factor))
if burst > 0 then tat = math.max(tat, paused + (burst - 1) * window / budget) end
redis.call('HSET', KEYS[1], 'tat', tostring(tat), 'paused_until', tostring(paused), 'factor', tostring(factor),
  'factor_at', tostring(paused), 'pause_started', tostring(now))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[10]))
return {tostring(pause), 1}
"""


class StoreUnreachable(ConfigError):
    """The rate store did not answer when the run started (exit 2)."""


def store_errors() -> tuple[type[BaseException], ...]:
    """What a store that is down or unreachable raises through coredis and `limits`."""
    import coredis.exceptions
    import limits.errors

    return (coredis.exceptions.RedisError, limits.errors.StorageError, OSError, TimeoutError)


def namespace_for(api_url: str, merchant_id: str) -> str:
    """The store keys of one account: the API's host (a rehearsal's emulator is another platform) and
    the merchant."""
    from urllib.parse import urlsplit

    host = urlsplit(api_url).netloc.rsplit("@", 1)[-1].lower()
    return f"batch-ingest:{host}:{merchant_id}"


class SharedRateLimiter(RateLimiter):
    """`RateLimiter`'s promises for every process naming the same store and account together.

    While the store answers, the budget, the pace and the pauses are the store's; this object's own
    `RateLimiter` state only holds this process's pause (applied at once, before the store hears of
    it) and, after the store fails, the budget of the fall-back share.
    """

    def __init__(
        self,
        url: str,
        per_minute: float,
        *,
        namespace: str,
        burst: int | None = DEFAULT_BURST,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        timeout: float = STORE_TIMEOUT_S,
    ) -> None:
        super().__init__(0, clock=clock, sleep=sleep, rng=rng, burst=burst)
        import coredis
        from limits.aio.storage import RedisStorage

        self.account_rate = per_minute
        self.display_url = redact_url(url)
        options: dict[str, Any] = {"connect_timeout": timeout, "stream_timeout": timeout}
        self._storage = RedisStorage("async+" + url, key_prefix=namespace, wrap_exceptions=True, **options)
        self._redis: Any = coredis.Redis.from_url(url, decode_responses=True, **options)
        self._pace_script: Any = self._redis.register_script(_PACE)
        self._limited_script: Any = self._redis.register_script(_RATE_LIMITED)
        self._state_key = f"{namespace}:state"
        self._members_key = f"{namespace}:members"
        self._key = "requests"  # the moving window's key, under the namespace prefix
        self.member = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._errors = store_errors()
        self.members_seen = 1  # processes in the store at the last heartbeat, this one included
        self._next_heartbeat = float("-inf")
        self._shared_budget = max(1, math.floor(per_minute)) if per_minute > 0 else 0
        self._remaining: int | None = None
        self.fallen_back = False
        self._rejoin_at = float("inf")
        self._tasks: set[asyncio.Task[None]] = set()
        self.fallbacks = 0  # how often the store was lost during the run

    # -- what a run sees -----------------------------------------------------------------------------

    @property
    def budget(self) -> int:
        if self.fallen_back:
            return super().budget
        return self._shared_budget

    def slack(self) -> float:
        if self.fallen_back or self._remaining is None:
            return super().slack() if self.fallen_back else 0.0
        if self._paused_until > self._clock():
            return 0.0
        return max(0.0, self._remaining / max(1, self._shared_budget))

    async def start(self) -> None:
        """Register with the store before the run: StoreUnreachable if it does not answer; then
        `members_seen` says how many processes share the budget, this one included."""
        try:
            await self._heartbeat(self._clock())
        except self._errors as exc:
            raise StoreUnreachable(
                f"the rate store {self.display_url} does not answer ({_reason(exc)}): start it, or fix "
                "--rate-store (SMARTSTREAM_RATE_STORE); without a store each process takes --rate for itself "
                "(a shard --rate / N)"
            ) from None

    async def aclose(self) -> None:
        """Leave the store (the others' fall-back share grows at once) and close the connections."""
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.TimeoutError, *self._errors):
                await asyncio.wait_for(task, self._timeout_s)
        if not self.fallen_back:
            with contextlib.suppress(asyncio.TimeoutError, *self._errors):
                await asyncio.wait_for(self._redis.zrem(self._members_key, [self.member]), self._timeout_s)
        with contextlib.suppress(Exception):
            self._redis.connection_pool.disconnect()
        with contextlib.suppress(Exception):
            getattr(self._storage.bridge, "storage").connection_pool.disconnect()  # noqa: B009 - not typed

    @property
    def _timeout_s(self) -> float:
        return STORE_TIMEOUT_S

    # -- admission ------------------------------------------------------------------------------------

    async def acquire(self) -> float:
        if self.account_rate <= 0:
            return self._clock()
        async with self._lock:
            while True:
                now = self._clock()
                if self.fallen_back and now >= self._rejoin_at:
                    await self._try_rejoin(now)
                if self.fallen_back:
                    wait = self._wait_needed(now)
                    if wait <= 0:
                        self._admitted.append(now)
                        if self.burst is not None:
                            self._tat = max(self._tat, now) + self._window / self.budget
                        return now
                    await self._sleep(min(wait, max(0.05, self._rejoin_at - now)))
                    continue
                try:
                    if now >= self._next_heartbeat:
                        await self._heartbeat(now)
                    # Our own 429 first, before the store has it; then the store's turn.
                    wait = (
                        self._paused_until - now if self._paused_until > now else await self._try_shared(now)
                    )
                except self._errors as exc:
                    self._fall_back(now, exc)
                    continue
                if wait <= 0:
                    return now
                await self._sleep(min(wait, HEARTBEAT_S))  # a process waiting its turn is alive

    async def _try_shared(self, now: float) -> float:
        """0 when a request was admitted through the store, else the seconds to wait before trying again."""
        # The cap first: a pace slot taken in vain would delay everyone.
        oldest, count = await self._storage.get_moving_window(self._key, self._shared_budget, SHARED_WINDOW_S)
        if count >= self._shared_budget:
            return max(0.01, oldest + SHARED_WINDOW_S - now) + self._rng.random() * 0.05
        wait_text, budget = await self._pace_script(
            keys=[self._state_key],
            args=[
                repr(now),
                repr(float(self.account_rate)),
                str(SHARED_WINDOW_S),
                str(self.burst or 0),
                repr(self._recovery_per_s),
                str(STATE_TTL_S),
            ],
        )
        self._shared_budget = int(budget)
        wait = float(wait_text)
        if wait > 0:
            return wait
        if not await self._storage.acquire_entry(self._key, self._shared_budget, SHARED_WINDOW_S):
            return 0.01 + self._rng.random() * 0.05  # another process took the last slot meanwhile
        self._remaining = max(0, self._shared_budget - count - 1)  # for slack(): the poller's hint
        return 0.0

    @property
    def _recovery_per_s(self) -> float:
        # One process regains RECOVERY_STEP per request; at the full pace that is this much per second.
        return RECOVERY_STEP * self.account_rate / 60.0

    async def _heartbeat(self, now: float) -> None:
        self._next_heartbeat = now + HEARTBEAT_S
        await self._redis.zadd(self._members_key, {self.member: now})
        await self._redis.zremrangebyscore(self._members_key, "-inf", now - MEMBER_TTL_S)
        await self._redis.expire(self._members_key, int(MEMBER_TTL_S * 2))
        self.members_seen = max(1, int(await self._redis.zcard(self._members_key)))

    # -- losing and finding the store -----------------------------------------------------------------

    def _fall_back(self, now: float, exc: BaseException) -> None:
        self.fallen_back = True
        self.fallbacks += 1
        self._rejoin_at = now + REJOIN_EVERY_S
        # Alone, at the share of the processes last seen: together never more than the account's rate.
        self.per_minute = self.account_rate / max(1, self.members_seen)
        self._factor = 1.0
        self.on_notice(
            f"rate store {self.display_url} stopped answering ({_reason(exc)}): going on alone at "
            f"{self.per_minute:g} requests per minute (--rate {self.account_rate:g} shared by the "
            f"{self.members_seen} process(es) last seen there); trying it again every {REJOIN_EVERY_S:.0f} s"
        )

    async def _try_rejoin(self, now: float) -> None:
        try:
            await self._heartbeat(now)
        except self._errors:
            self._rejoin_at = now + REJOIN_EVERY_S
            return
        self.fallen_back = False
        self.per_minute = 0
        self._rejoin_at = float("inf")
        self.on_notice(
            f"rate store {self.display_url} answers again: sharing --rate {self.account_rate:g} "
            f"with {self.members_seen - 1} other process(es) again"
        )

    # -- 429 ------------------------------------------------------------------------------------------

    def on_rate_limited(self, retry_after: float | None, sent_at: float | None = None) -> float:
        pause = super().on_rate_limited(retry_after, sent_at)
        if not self.fallen_back and self.account_rate > 0 and pause > 0:
            # Every process pauses too: told through the store, without holding up this answer.
            task = asyncio.get_running_loop().create_task(self._publish(sent_at, pause))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return pause

    async def _publish(self, sent_at: float | None, pause: float) -> None:
        now = self._clock()
        try:
            await self._limited_script(
                keys=[self._state_key],
                args=[
                    repr(now),
                    repr(now if sent_at is None else sent_at),
                    repr(pause),
                    repr(float(self.account_rate)),
                    str(SHARED_WINDOW_S),
                    str(self.burst or 0),
                    repr(self._recovery_per_s),
                    repr(MIN_FACTOR),
                    repr(SLOWDOWN_FACTOR),
                    str(STATE_TTL_S),
                ],
            )
        except self._errors as exc:
            if not self.fallen_back:
                self._fall_back(self._clock(), exc)


def _reason(exc: BaseException) -> str:
    text = redact_text(str(exc).strip())
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__
