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
    url: str,
    clock: FakeClock,
    rate: float,
    *,
    burst: int | None = None,
    ns: str = "t",
    stale_s: float = 0,
    member: str | None = None,
) -> SharedRateLimiter:
    """A process on the store; its heartbeat is left to `acquire` and `start` (the clock is fake), so
    the reservation of quiet members is off unless a test turns it on."""
    return SharedRateLimiter(
        url,
        rate,
        namespace=ns,
        burst=burst,
        clock=clock,
        sleep=clock.sleep,
        stale_s=stale_s,
        background=False,
        member=member,
    )


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
    # First a window's wait (the store's window may have been full), then alone at 30/min: one every
    # 2 s (the window's margin aside), never above the share.
    assert times[0] >= before + SHARED_WINDOW_S
    assert times[-1] - times[0] >= 3 * 60.25 / 30 - 1e-6
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
    # One that vanished without leaving (kill -9) is forgotten after fifteen minutes.
    c = limiter(redis_server.url, clock, 60)
    await c.start()
    await a.start()
    assert a.members_seen == 2
    clock.now += 901
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


async def test_a_process_cut_off_keeps_its_share_reserved_so_the_others_make_room(
    redis_server: RedisServer, clock: FakeClock
) -> None:
    """c stops talking to the store (a partial partition) and goes on alone at 60/3; a and b, still
    sharing, must make room for it: 40 a window for the two of them."""
    a, b, c = (limiter(redis_server.url, clock, 60, stale_s=20) for _ in range(3))
    for each in (a, b, c):
        await each.start()
    clock.now += 21  # c has not been heard from since
    start = clock.now
    times = await take([a, b], 50)
    assert most_in_any_window(times, SHARED_WINDOW_S) == 40
    assert sum(1 for t in times if t < start + SHARED_WINDOW_S) == 40


async def test_what_was_sent_alone_goes_into_the_store_on_rejoining(
    redis_server: RedisServer, clock: FakeClock
) -> None:
    """The store restarts empty (no persistence): a's sends while alone are pushed into it on rejoining,
    so a newcomer cannot take the whole window beside them."""
    a = limiter(redis_server.url, clock, 20)
    await a.start()
    redis_server.stop()
    sent = [await a.acquire() for _ in range(5)]  # alone at 20/min after the window's wait
    redis_server.start()
    clock.now += 6
    rejoined = await a.acquire()
    assert not a.fallen_back
    b = limiter(redis_server.url, clock, 20)
    later = [await b.acquire() for _ in range(20)]
    assert most_in_any_window([*sent, rejoined, *later], SHARED_WINDOW_S) <= 20 + 1  # +1: one pushed late
    assert sum(1 for t in later if t < rejoined + 1) <= 20 - 6


async def test_the_smallest_rate_of_the_processes_applies_and_is_told(
    redis_server: RedisServer, clock: FakeClock
) -> None:
    notices: list[str] = []
    small, large = limiter(redis_server.url, clock, 10), limiter(redis_server.url, clock, 30)
    large.on_notice = notices.append
    await small.start()
    await large.start()
    start = clock.now
    times = await take([large, small], 40)
    assert sum(1 for t in times if t < start + SHARED_WINDOW_S) == 10
    assert "names --rate 10, less than this one's 30" in notices[0]


async def test_a_store_that_accepts_and_never_answers_is_unreachable_within_the_timeout(
    clock: FakeClock,
) -> None:
    import socket

    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        quiet = SharedRateLimiter(
            url, 60, namespace="t", clock=clock, sleep=clock.sleep, timeout=0.2, background=False
        )
        with pytest.raises(StoreUnreachable, match="does not answer"):
            await quiet.start()


async def test_a_store_that_refuses_our_scripts_is_a_configuration_error(
    redis_server: RedisServer, clock: FakeClock
) -> None:
    from batch_ingest.errors import ConfigError

    redis_server.command("ACL", "SETUSER", "batch", "on", ">pw", "~*", "+@all", "-eval", "-evalsha")
    url = f"redis://batch:pw@127.0.0.1:{redis_server.port}/0"
    with pytest.raises(ConfigError, match="refuses us") as caught:
        await limiter(url, clock, 60).start()
    assert ":pw@" not in str(caught.value)


def cut_off(process: SharedRateLimiter) -> None:
    """A partial partition: this process no longer reaches the store; the others still do."""
    import coredis.exceptions

    async def unreachable(step):
        if hasattr(step, "close"):
            step.close()
        raise coredis.exceptions.ConnectionError("cut off")

    process._step = unreachable  # type: ignore[method-assign]


async def test_a_process_cut_off_after_a_newcomer_joined_stays_within_the_rate_with_it(
    redis_server: RedisServer, clock: FakeClock
) -> None:
    """c was alone at its last heartbeat (it would take all 60 alone); d joins, then c is cut off:
    d must reserve what c published, and c waits until d can have noticed."""
    c = limiter(redis_server.url, clock, 60, stale_s=20, member="c")
    await c.start()
    d = limiter(redis_server.url, clock, 60, stale_s=20, member="d")
    await d.start()
    cut_off(c)
    heard = clock.now
    first = await c.acquire()  # alone at the share it published: all 60, since it saw no one
    assert c.fallen_back and c.per_minute == 60
    assert first >= heard + 20 + SHARED_WINDOW_S  # once d can have noticed, and a window later
    await d.acquire()
    assert d.budget == 1  # d holds c's 60 back: together 61 at most, never 120


async def test_a_process_cut_off_for_long_stops_before_the_others_stop_holding_its_share(
    redis_server: RedisServer, clock: FakeClock
) -> None:
    from batch_ingest.api.sharedrate import ALONE_MAX_S, MEMBER_TTL_S

    a = limiter(redis_server.url, clock, 60, stale_s=20, member="a")
    b = limiter(redis_server.url, clock, 60, stale_s=20, member="b")
    await a.start()
    await b.start()
    cut_off(b)
    start = clock.now
    times_b = [await b.acquire()]
    while times_b[-1] < start + ALONE_MAX_S - 60:
        times_b.append(await b.acquire())
    assert b.fallen_back and max(times_b) < start + ALONE_MAX_S
    clock.now = start + MEMBER_TTL_S + 1  # the others let go of b's share from here on
    late = asyncio.ensure_future(b.acquire())
    for _ in range(50):  # b keeps waiting for the store (its fake sleeps pass time; none admits)
        await asyncio.sleep(0)
    assert not late.done() and b._told_alone_over
    late.cancel()
    times_a = [await a.acquire() for _ in range(60)]  # b's share is free again now: a takes it all
    assert clock.now - times_a[0] < SHARED_WINDOW_S


async def test_a_shard_killed_and_started_again_takes_its_own_place_back(
    redis_server: RedisServer, clock: FakeClock
) -> None:
    """Members are runs: the restarted shard is the member its killed predecessor was, so no share
    stays reserved for a process that is gone."""
    killed = limiter(redis_server.url, clock, 60, stale_s=20, member="/runs/m/shard-1-of-2")
    other = limiter(redis_server.url, clock, 60, stale_s=20, member="/runs/m/shard-0-of-2")
    await killed.start()
    await other.start()
    clock.now += 21  # the first is gone (SIGKILL: it never left), its successor starts
    successor = limiter(redis_server.url, clock, 60, stale_s=20, member="/runs/m/shard-1-of-2")
    await successor.start()
    start = clock.now
    times = [await other.acquire() for _ in range(70)]
    assert sum(1 for t in times if t < start + SHARED_WINDOW_S) == 60  # nothing held back for the dead
