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
  climbs back with time (as fast as one process regains it at full pace).
- **one rate**: every process registers itself with its `--rate` (a heartbeat, in the background);
  the smallest `--rate` of the processes there applies, and a process told a larger one says so.

Processes share by demand: each takes a slot as soon as one is free, so a run that needs little
leaves the rest to the one that needs much.

**Losing the store.** A store that does not answer when a run starts stops it before anything is
sent: exit 75, try again later (a wrong URL or a refused password or script is a configuration
error, exit 2). One that stops answering mid-run (or answers only after `timeout`) is not fatal:
the process says so and goes on alone at `--rate` divided by the processes it last saw there, so
that together they never exceed `--rate`:

- each member publishes the share it would take alone (`--rate` over the members it saw at its
  last heartbeat); a member the others have not heard from for `STALE_S` keeps that share
  reserved in the store (the others' budget shrinks by it), so one process cut off alone (a partial
  partition) and the rest still sharing stay within `--rate`, whoever joined since;
- it waits until the others have noticed and one window has passed (its last heartbeat plus
  `STALE_S` plus the window): the store's window may be full with what everyone sent just before,
  and only the store knew;
- it sends alone for at most `ALONE_MAX_S` after its last heartbeat, then waits for the store: the
  others hold its share for `MEMBER_TTL_S` only (a process killed and never started again must not
  hold it for ever);
- when the store answers again it pushes what it sent alone into the store's window and rejoins,
  and says so.

All times are the wall clock (`time.time`, as the `limits` window uses): keep the clocks of the
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
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from ..errors import EXIT_TRY_AGAIN, BatchIngestError, ConfigError
from ..redact import redact_text, redact_url
from .defaults import BURST as DEFAULT_BURST
from .ratelimit import MIN_FACTOR, RECOVERY_STEP, SLOWDOWN_FACTOR, RateLimiter

SHARED_WINDOW_S = 61  # the store's window: the account's minute plus one second of slack
HEARTBEAT_S = 5.0  # how often a process says it is alive (in the background)
STALE_S = 20.0  # a process not heard from for this long may be cut off: its share stays reserved
MEMBER_TTL_S = 900.0  # one not heard from for this long is gone (killed and not started again)
ALONE_MAX_S = MEMBER_TTL_S - 120.0  # a process cut off sends alone this long after its last heartbeat
REJOIN_EVERY_S = 5.0  # while fallen back, how often the store is tried again
STORE_TIMEOUT_S = 2.0  # each step with the store: slower than this and it is as good as gone
STATE_TTL_S = 3600  # the shared state outlives any pause (Retry-After is capped at 300 s)
SCHEMES = ("redis", "rediss")
UNLIMITED = 1 << 40  # a limit no window reaches: pushing what was sent alone always goes in

_T = TypeVar("_T")

# The pace and the pause, checked and (when admitted) advanced in one step for every process. The
# budget is the smallest declared rate, lowered after 429s, less the share of members gone quiet.
# Both scripts read the shared state the same way: ARGV 1-5 are now, rate, window, burst, recovery.
_STATE = """
local function tostring(x) return string.format('%.17g', x) end
local now = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local recovery = tonumber(ARGV[5])
local s = redis.call('HMGET', KEYS[1], 'tat', 'paused_until', 'factor', 'factor_at', 'pause_started')
local tat = tonumber(s[1]) or 0
local paused = tonumber(s[2]) or 0
local factor = tonumber(s[3]) or 1
local fat = tonumber(s[4]) or now
local started = tonumber(s[5]) or -1
factor = math.min(1, factor + math.max(0, now - fat) * recovery)
"""

_PACE = (
    _STATE
    + """
local stale_s = tonumber(ARGV[7])
local dry = ARGV[8] == '1'
local reserved = 0
if stale_s > 0 then
  local quiet = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - stale_s)
  if #quiet > 0 then
    local shares = redis.call('HMGET', KEYS[3], unpack(quiet))
    for i = 1, #quiet do reserved = reserved + (tonumber(shares[i]) or rate) end
  end
end
local budget = math.max(1, math.floor(rate * factor - reserved))
if dry then return {'0', budget} end
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
)

# A 429: pause everyone, lower the budget; a 429 of the wave an earlier pause answers changes nothing.
_RATE_LIMITED = (
    _STATE
    + """
local sent_at = tonumber(ARGV[6])
local pause = tonumber(ARGV[7])
if sent_at <= started then return {tostring(math.max(0, paused - now)), 0} end
factor = math.max(tonumber(ARGV[8]), factor * tonumber(ARGV[9]))
paused = math.max(paused, now + pause)
local budget = math.max(1, math.floor(rate * factor))
if burst > 0 then tat = math.max(tat, paused + (burst - 1) * window / budget) end
redis.call('HSET', KEYS[1], 'tat', tostring(tat), 'paused_until', tostring(paused), 'factor', tostring(factor),
  'factor_at', tostring(paused), 'pause_started', tostring(now))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[10]))
return {tostring(pause), 1}
"""
)


class StoreUnreachable(BatchIngestError):
    """The rate store did not answer when the run started: nothing was sent; try again later (exit 75)."""

    exit_code = EXIT_TRY_AGAIN


def store_errors() -> tuple[type[BaseException], ...]:
    """What a store that is down, unreachable or too slow raises through coredis and `limits`."""
    import coredis.exceptions
    import limits.errors

    return (coredis.exceptions.RedisError, limits.errors.StorageError, OSError, TimeoutError)


def refusals() -> tuple[type[BaseException], ...]:
    """What a store that answers but refuses us raises: a password, an ACL, a wrong key type."""
    import coredis.exceptions

    return (coredis.exceptions.ResponseError, coredis.exceptions.AuthenticationError)


def namespace_for(api_url: str, merchant_id: str) -> str:
    """The store keys of one account: the API's host (a rehearsal's emulator is another platform) and
    the merchant."""
    from urllib.parse import urlsplit

    host = urlsplit(api_url).netloc.rsplit("@", 1)[-1].lower()
    return f"batch-ingest:{host}:{merchant_id}"


class SharedRateLimiter(RateLimiter):
    """`RateLimiter`'s promises for every process naming the same store and account together.

    While the store answers, the budget, the pace and the pauses are the store's; this object's own
    `RateLimiter` state holds this process's pause (applied at once, before the store hears of it)
    and, after the store fails, the budget of the fall-back share and what was sent alone.
    `background=False` leaves the heartbeat to `acquire` (tests on a fake clock). `member` names the
    run this process works for (one process per run folder, by its lock).
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
        stale_s: float = STALE_S,
        background: bool = True,
        member: str | None = None,
    ) -> None:
        super().__init__(0, clock=clock, sleep=sleep, rng=rng, burst=burst)
        self._window = float(SHARED_WINDOW_S)  # alone after a fall-back, the store's window still holds
        import coredis
        from coredis.retry import NoRetryPolicy
        from limits.aio.storage import RedisStorage

        self.account_rate = per_minute  # this process's --rate
        self.rate = per_minute  # the one that applies: the smallest of the processes on the store
        self.display_url = redact_url(url)
        self._timeout = timeout
        self._stale_s = stale_s
        self._background = background
        # No retries inside the client: a step that does not answer within `timeout` is a lost store.
        options: dict[str, Any] = {
            "connect_timeout": timeout,
            "stream_timeout": timeout,
            "retry_policy": NoRetryPolicy(),
        }
        unusable: tuple[type[BaseException], ...] = (ValueError, TypeError, AssertionError, *store_errors())
        try:
            self._storage = RedisStorage(
                "async+" + url, key_prefix=namespace, wrap_exceptions=True, **options
            )
            self._redis: Any = coredis.Redis.from_url(url, decode_responses=True, **options)
        except unusable as exc:
            raise ConfigError(f"--rate-store {self.display_url} cannot be used: {_reason(exc)}") from None
        self._pace_script: Any = self._redis.register_script(_PACE)
        self._limited_script: Any = self._redis.register_script(_RATE_LIMITED)
        self._state_key = f"{namespace}:state"
        self._members_key = f"{namespace}:members"
        self._shares_key = f"{namespace}:shares"  # member -> the share it takes alone after losing the store
        self._key = "requests"  # the moving window's key, under the namespace prefix
        # Who this process is on the store: the run it works for when it has one (a shard's folder), so
        # that a shard killed and started again takes its own place back at once instead of leaving a
        # silent member whose share stays reserved; else the process. The name carries its --rate:
        # the smallest of the members applies to all.
        who = member or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.member = f"{who}:{per_minute!r}"
        self._errors = store_errors()
        self.members_seen = 1  # processes in the store at the last heartbeat, this one included
        self._heard_at = clock()  # the store's last answer to a heartbeat
        self._next_heartbeat = float("-inf")
        self._shared_budget = max(1, math.floor(per_minute)) if per_minute > 0 else 0
        self._remaining: int | None = None
        self._mine: deque[float] = deque()  # this process's admissions through the store, last window
        self.fallen_back = False
        self._rejoin_at = float("inf")
        self._tasks: set[asyncio.Task[Any]] = set()
        self._heartbeats: asyncio.Task[None] | None = None
        self._told_rate: float | None = None
        self._told_alone_over = False
        self.fallbacks = 0  # how often the store was lost during the run

    # -- what a run sees -----------------------------------------------------------------------------

    @property
    def budget(self) -> int:
        if self.fallen_back:
            return super().budget
        return self._shared_budget

    def slack(self) -> float:
        if self.fallen_back:
            return super().slack()
        if self._remaining is None or self._paused_until > self._clock():
            return 0.0
        return max(0.0, self._remaining / max(1, self._shared_budget))

    async def start(self) -> None:
        """Join the store before the run, and check that it lets us do all we will ask of it.

        StoreUnreachable (exit 75) when it does not answer; ConfigError (exit 2) when it refuses (a
        password, an ACL without EVAL, a key of another type)."""
        if self.account_rate <= 0:
            return
        now = self._clock()
        try:
            await self._step(self._heartbeat(now))
            await self._step(self._pace(now, dry=True))
            await self._step(self._storage.get_moving_window(self._key, self._shared_budget, SHARED_WINDOW_S))
        except refusals() as exc:
            raise ConfigError(f"the rate store {self.display_url} refuses us: {_reason(exc)}") from None
        except self._errors as exc:
            raise StoreUnreachable(
                f"the rate store {self.display_url} does not answer ({_reason(exc)}): nothing was sent; start "
                "the store and run the command again, or fix --rate-store (SMARTSTREAM_RATE_STORE); without a "
                "store each process takes --rate for itself (a shard --rate / N)"
            ) from None
        if self._background:
            self._heartbeats = asyncio.get_running_loop().create_task(self._beat())

    async def aclose(self) -> None:
        """Leave the store (the others' shares grow at once) and close the connections."""
        if self._heartbeats is not None:
            self._heartbeats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeats
        for task in list(self._tasks):
            with contextlib.suppress(*self._errors):
                await self._step(task)
        if not self.fallen_back:
            with contextlib.suppress(*self._errors):
                await self._step(self._redis.zrem(self._members_key, [self.member]))
        with contextlib.suppress(Exception):
            self._redis.connection_pool.disconnect()
        with contextlib.suppress(Exception):
            getattr(self._storage.bridge, "storage").connection_pool.disconnect()  # noqa: B009 - not typed

    async def _step(self, step: Awaitable[_T]) -> _T:
        """One exchange with the store, within the timeout (a store that accepts and never answers is
        as lost as one that refuses the connection)."""
        return await asyncio.wait_for(step, self._timeout)

    # -- admission ------------------------------------------------------------------------------------

    async def acquire(self) -> float:
        if self.account_rate <= 0:
            return self._clock()
        async with self._lock:
            while True:
                now = self._clock()
                if self.fallen_back and now >= self._rejoin_at:
                    await self._try_rejoin()
                    now = self._clock()
                if self.fallen_back:
                    if now >= self._heard_at + ALONE_MAX_S:
                        # The others no longer hold this share: wait for the store, do not overrun it.
                        if not self._told_alone_over:
                            self._told_alone_over = True
                            self.on_notice(
                                f"rate store {self.display_url} still does not answer after {ALONE_MAX_S / 60:.0f} "
                                "minutes alone: waiting for it (the others no longer hold this process's share)"
                            )
                        await self._sleep(max(0.05, self._rejoin_at - now))
                        continue
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
                        await self._step(self._heartbeat(now))
                    # Our own pause first (a 429, before the store has it; the wait after a fall-back).
                    wait = (
                        self._paused_until - now if self._paused_until > now else await self._try_shared(now)
                    )
                except self._errors as exc:
                    self._fall_back(exc)
                    continue
                if wait <= 0:
                    return now
                await self._sleep(min(wait, HEARTBEAT_S))  # a process waiting its turn is alive

    async def _try_shared(self, now: float) -> float:
        """0 when a request was admitted through the store, else the seconds to wait before trying again."""
        # The cap first: a pace slot taken in vain would delay everyone.
        oldest, count = await self._step(
            self._storage.get_moving_window(self._key, self._shared_budget, SHARED_WINDOW_S)
        )
        if count >= self._shared_budget:
            return max(0.01, oldest + SHARED_WINDOW_S - now) + self._rng.random() * 0.05
        wait = await self._step(self._pace(now))
        if wait > 0:
            return wait
        if not await self._step(self._storage.acquire_entry(self._key, self._shared_budget, SHARED_WINDOW_S)):
            return 0.01 + self._rng.random() * 0.05  # another process took the last slot meanwhile
        self._remaining = max(0, self._shared_budget - count - 1)  # for slack(): the poller's hint
        self._mine.append(now)
        while self._mine and self._mine[0] <= now - SHARED_WINDOW_S:
            self._mine.popleft()
        return 0.0

    async def _pace(self, now: float, *, dry: bool = False) -> float:
        wait_text, budget = await self._pace_script(
            keys=[self._state_key, self._members_key, self._shares_key],
            args=[
                *self._state_args(now),
                str(STATE_TTL_S),
                repr(self._stale_s),
                "1" if dry else "0",
            ],
        )
        self._shared_budget = int(budget)
        return float(wait_text)

    def _state_args(self, now: float) -> list[str]:
        """ARGV 1-5 of both scripts, as `_STATE` reads them."""
        return [
            repr(now),
            repr(float(self.rate)),
            str(SHARED_WINDOW_S),
            str(self.burst or 0),
            repr(self._recovery_per_s),
        ]

    @property
    def _recovery_per_s(self) -> float:
        # One process regains RECOVERY_STEP per request; at the full pace that is this much per second.
        return RECOVERY_STEP * self.rate / 60.0

    async def _heartbeat(self, now: float) -> None:
        self._next_heartbeat = now + HEARTBEAT_S
        await self._redis.zadd(self._members_key, {self.member: now})
        await self._redis.zremrangebyscore(self._members_key, "-inf", now - MEMBER_TTL_S)
        await self._redis.expire(self._members_key, int(MEMBER_TTL_S * 2))
        members = await self._redis.zrange(self._members_key, 0, -1)
        self.members_seen = max(1, len(members))
        self._heard_at = now
        rates = [_rate_of(m) for m in members]
        self.rate = min([self.account_rate, *(r for r in rates if r is not None and r > 0)])
        if self.rate < self.account_rate and self._told_rate != self.rate:
            self._told_rate = self.rate
            self.on_notice(
                f"another process on the rate store {self.display_url} names --rate {self.rate:g}, less than "
                f"this one's {self.account_rate:g}: the smallest applies to every process sharing it"
            )
        # What this process would take alone if it lost the store now: the others reserve it while it is quiet.
        await self._redis.hset(self._shares_key, {self.member: repr(self.rate / self.members_seen)})
        await self._redis.expire(self._shares_key, int(MEMBER_TTL_S * 2))

    async def _beat(self) -> None:
        """The heartbeat, in the background: a process that waits on its poller or an upload is alive
        too, and must not have its share reserved as if it were cut off."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            if not self.fallen_back:
                with contextlib.suppress(*self._errors):
                    await self._step(self._heartbeat(self._clock()))

    # -- losing and finding the store -----------------------------------------------------------------

    def _fall_back(self, exc: BaseException) -> None:
        now = self._clock()
        self.fallen_back = True
        self.fallbacks += 1
        self._rejoin_at = now + REJOIN_EVERY_S
        # Alone, at the share it published (the others reserve it once they miss it): together never
        # more than the account's rate.
        self.per_minute = self.rate / max(1, self.members_seen)
        self._factor = 1.0
        self._admitted = deque(t for t in self._mine if t > now - SHARED_WINDOW_S)
        # Once the others have noticed (STALE_S after its last heartbeat) and the window they may have
        # filled just before has passed.
        self._paused_until = max(self._paused_until, self._heard_at + self._stale_s + SHARED_WINDOW_S)
        self._tat = max(self._tat, self._paused_until)
        self.on_notice(
            f"rate store {self.display_url} stopped answering ({_reason(exc)}): going on alone at "
            f"{self.per_minute:g} requests per minute (--rate {self.rate:g} shared by the "
            f"{self.members_seen} process(es) last seen there) from "
            f"{time.strftime('%H:%M:%S', time.gmtime(self._paused_until))} UTC (once the others reserve this "
            f"share and their last window has passed), for at most {ALONE_MAX_S / 60:.0f} minutes; trying the "
            f"store again every {REJOIN_EVERY_S:.0f} s"
        )

    async def _try_rejoin(self) -> None:
        now = self._clock()
        try:
            sent_alone = sum(1 for t in self._admitted if t > now - SHARED_WINDOW_S)
            if sent_alone:
                # What was sent alone goes into the store's window (stamped now: on the safe side).
                await self._step(
                    self._storage.acquire_entry(self._key, UNLIMITED, SHARED_WINDOW_S, amount=sent_alone)
                )
                self._mine.extend([now] * sent_alone)  # the store holds them now, stamped now
            await self._step(self._heartbeat(now))
        except self._errors:
            self._rejoin_at = self._clock() + REJOIN_EVERY_S
            return
        self.fallen_back = False
        self._told_alone_over = False
        self.per_minute = 0
        self._rejoin_at = float("inf")
        self.on_notice(
            f"rate store {self.display_url} answers again: sharing --rate {self.rate:g} "
            f"with {self.members_seen - 1} other process(es) again"
        )

    # -- 429 ------------------------------------------------------------------------------------------

    def on_rate_limited(self, retry_after: float | None, sent_at: float | None = None) -> float:
        pause = super().on_rate_limited(retry_after, sent_at)
        if not self.fallen_back and self.account_rate > 0 and pause > 0:
            # Every process pauses too: told through the store, without holding up this answer.
            self._spawn(self._publish(sent_at, pause))
        return pause

    def _spawn(self, step: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(step)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, sent_at: float | None, pause: float) -> None:
        now = self._clock()
        try:
            await self._step(
                self._limited_script(
                    keys=[self._state_key],
                    args=[
                        *self._state_args(now),
                        repr(now if sent_at is None else sent_at),
                        repr(pause),
                        repr(MIN_FACTOR),
                        repr(SLOWDOWN_FACTOR),
                        str(STATE_TTL_S),
                    ],
                )
            )
        except self._errors as exc:
            if not self.fallen_back:
                self._fall_back(exc)


def _rate_of(member: str) -> float | None:
    try:
        return float(member.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None


def _reason(exc: BaseException) -> str:
    text = redact_text(str(exc).strip())
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__
