"""One account budget shared through a real Redis: the cap, the pace, 429s, losing and finding the store.

Every limiter here runs on one fake clock (the `limits` window's clock too), so a minute passes
without waiting; the store is a real `redis-server` on loopback.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import types

import pytest
from batch_ingest.api.ratelimit import SLOWDOWN_FACTOR
from batch_ingest.api.sharedrate import (
    SHARED_WINDOW_S,
    SharedRateLimiter,
    StoreUnreachable,
    namespace_for,
)

from .helpers import FakeClock
from .redis_server import RedisServer, free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    clock = FakeClock()
    # The `limits` moving window stamps entries with time.time(): the same fake clock for it.
    monkeypatch.setattr("limits.aio.storage.redis.coredis.time", types.SimpleNamespace(time=clock))
    return clock


def limiter(
    url: str, clock: FakeClock, rate: float, *, burst: int | None = None, ns: str = "t"
) -> SharedRateLimiter:
    return SharedRateLimiter(url, rate, namespace=ns, burst=burst, clock=clock, sleep=clock.sleep)


def most_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max(sum(1 for u in times if t <= u < t + window) for t in times)


async def take(limiters: list[SharedRateLimiter], n: int) -> list[float]:
    """n admissions, taken in turn by the limiters (several processes, one after another)."""
    return [await limiters[i % len(limiters)].acquire() for i in range(n)]


async def test_the_cap_holds_for_every_process_together(redis_server: RedisServer, clock: FakeClock) -> None:
    a, b = limiter(redis_server.url, clock, 10), limiter(redis_server.url, clock, 10)
    await a.start()
    await b.start()
    start = clock.now
    times = await take([a, b], 25)
    # No pacing (burst None): a window's budget at once, then a wait for the oldest to leave the window.
    assert times[:10] == [start] * 10
    assert times[10] >= start + SHARED_WINDOW_S
    assert most_in_any_window(times, SHARED_WINDOW_S) == 10
    assert a.members_seen == b.members_seen == 2
    await a.aclose()
    await b.aclose()


async def test_the_pace_spans_processes(redis_server: RedisServer, clock: FakeClock) -> None:
    a, b, c = (limiter(redis_server.url, clock, 60, burst=1) for _ in range(3))
    times = await take([a, b, c], 9)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # One request every 61/60 s for all three together, never three at once.
    assert min(gaps) == pytest.approx(SHARED_WINDOW_S / 60, rel=1e-6)
    for each in (a, b, c):
        await each.aclose()


async def test_a_burst_is_the_burst_of_all_processes_not_of_each(
    redis_server: RedisServer, clock: FakeClock
) -> None:
    limiters = [limiter(redis_server.url, clock, 60, burst=3) for _ in range(4)]
    times = await take(limiters, 8)
    assert times.count(times[0]) == 3  # 3 at once in all, not 3 per process


async def test_a_429_pauses_every_process_and_lowers_the_shared_budget(
    redis_server: RedisServer, clock: FakeClock
) -> None:
    a, b = limiter(redis_server.url, clock, 50, burst=3), limiter(redis_server.url, clock, 50, burst=3)
    sent = await a.acquire()
    pause = a.on_rate_limited(30.0, sent)
    assert pause == 30.0
    await asyncio.gather(*a._tasks)  # the store has heard of it
    told = clock.now
    admitted = await b.acquire()
    assert admitted >= told + 30.0  # b never saw the 429 itself
    assert b.budget == math.floor(50 * SLOWDOWN_FACTOR)
    # A 429 for a request admitted before that pause belongs to the same wave: nothing lowers again.
    b.on_rate_limited(30.0, sent)
    await asyncio.gather(*b._tasks)
    await a.acquire()
    assert a.budget == math.floor(50 * SLOWDOWN_FACTOR)
    # The budget climbs back with time: after ten minutes it is whole again.
    clock.now += 600
    await a.acquire()
    assert a.budget == 50
    await a.aclose()
    await b.aclose()


async def test_a_lost_store_means_the_share_of_the_processes_last_seen_then_rejoining(
    redis_server: RedisServer, clock: FakeClock
) -> None:
    notices: list[str] = []
    a, b = limiter(redis_server.url, clock, 60, burst=1), limiter(redis_server.url, clock, 60, burst=1)
    a.on_notice = notices.append
    await a.start()
    await b.start()
    await a.start()
    assert a.members_seen == 2
    redis_server.stop()
    before = clock.now
    times = [await a.acquire() for _ in range(4)]
    assert a.fallen_back and a.per_minute == 30  # 60 shared by the two processes last seen
    assert "stopped answering" in notices[0] and "30 requests per minute" in notices[0]
    # Alone at 30/min: one every 2 s (the window's margin aside), never above the share.
    assert times[-1] - before >= 3 * 60.25 / 30 - 1e-6
    redis_server.start()
    clock.now += 6  # past the next try of the store
    await a.acquire()
    assert not a.fallen_back and "answers again" in notices[-1]
    assert a.fallbacks == 1
    await a.aclose()
    await b.aclose()


async def test_processes_that_leave_are_no_longer_counted(
    redis_server: RedisServer, clock: FakeClock
) -> None:
    a, b = limiter(redis_server.url, clock, 60), limiter(redis_server.url, clock, 60)
    await a.start()
    await b.start()
    await b.aclose()
    await a.start()
    assert a.members_seen == 1
    # One that vanished without leaving (kill -9) is forgotten after three minutes.
    c = limiter(redis_server.url, clock, 60)
    await c.start()
    await a.start()
    assert a.members_seen == 2
    clock.now += 181
    await a.start()
    assert a.members_seen == 1
    await a.aclose()


async def test_budgets_of_different_accounts_are_apart(redis_server: RedisServer, clock: FakeClock) -> None:
    a = limiter(redis_server.url, clock, 2, ns=namespace_for("http://127.0.0.1:1/v1", "m1"))
    b = limiter(redis_server.url, clock, 2, ns=namespace_for("http://127.0.0.1:1/v1", "m2"))
    start = clock.now
    assert await take([a, a, b, b], 4) == [start] * 4
    assert namespace_for("https://u:p@API.example.com/", "m") == "batch-ingest:api.example.com:m"


async def test_a_store_unreachable_at_the_start_names_it_without_its_password(clock: FakeClock) -> None:
    url = f"redis://:sekrit-pw@127.0.0.1:{free_port()}/0"
    with pytest.raises(StoreUnreachable) as caught:
        await limiter(url, clock, 60).start()
    assert "127.0.0.1" in str(caught.value) and "sekrit-pw" not in str(caught.value)


async def test_the_cap_still_counts_what_was_sent_before_a_429_lowered_the_budget(
    redis_server: RedisServer, clock: FakeClock
) -> None:
    a = limiter(redis_server.url, clock, 10)
    start = clock.now
    sent = [await a.acquire() for _ in range(5)]
    clock.now += 30
    sent += [await a.acquire() for _ in range(5)]  # the window holds 10: 5 at 0 s, 5 at 30 s
    a.on_rate_limited(1.0, sent[-1])  # the budget is 8 now
    await asyncio.gather(*a._tasks)
    later = [await a.acquire() for _ in range(6)]
    # Once the first five leave the window (61 s), the five of 30 s are still in it: 3 more, not 8.
    assert sum(1 for t in later if t < start + 30 + SHARED_WINDOW_S) == 3, [t - start for t in later]
    assert most_in_any_window(sent + later, SHARED_WINDOW_S) <= 10
    await a.aclose()
