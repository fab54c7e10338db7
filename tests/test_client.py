"""The client's behaviour around the edges: tokens, rate limits, retries, answers that never come."""

from __future__ import annotations

import asyncio
import random
import ssl
from email.utils import formatdate
from typing import Any, cast

import pytest
from batch_ingest.api import Auth, RateLimiter, SmartStreamClient, parse_retry_after
from batch_ingest.api.secret import Secret
from batch_ingest.emulator import EmulatorConfig, free_port
from batch_ingest.errors import ApiConnectionError, AuthError, RateLimitedError, ServerError

from .helpers import asgi_api, client_for

pytestmark = pytest.mark.anyio


def _max_in_any_window(times: list[float], window: float = 60.0) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


async def test_token_is_renewed_before_it_expires(fake_clock):
    config = EmulatorConfig(rate_limit=0, token_ttl=100)
    async with (
        asgi_api(config, clock=fake_clock) as api,
        api.make_client(static_token=False, auth_clock=fake_clock) as client,
    ):
        await client.list_jobs()
        await fake_clock.sleep(95)  # past 90% of the lifetime, before expiry
        await client.list_jobs()
        assert client.auth.renewals == 2
    stats = api.store.stats()
    assert stats["requests"]["POST auth-token"] == {"200": 2}
    assert stats["requests"]["GET jobs"] == {"200": 2}  # never a 401


async def test_token_is_renewed_once_after_an_unexpected_401(fake_clock):
    config = EmulatorConfig(rate_limit=0, token_ttl=3600, token_revoke_after_s=5)
    async with (
        asgi_api(config, clock=fake_clock) as api,
        api.make_client(static_token=False, auth_clock=fake_clock) as client,
    ):
        await client.list_jobs()
        await fake_clock.sleep(10)
        await asyncio.gather(*(client.list_jobs() for _ in range(4)))  # up to four 401s, one renewal
    stats = api.store.stats()
    assert stats["requests"]["POST auth-token"] == {"200": 2}
    assert 1 <= stats["requests"]["GET jobs"]["401"] <= 4
    assert stats["requests"]["GET jobs"]["200"] == 5


async def test_expired_static_token_is_an_auth_error(fake_clock):
    config = EmulatorConfig(rate_limit=0, static_token_ttl=5)
    async with asgi_api(config, clock=fake_clock) as api, api.make_client() as client:
        await client.list_jobs()
        await fake_clock.sleep(6)
        with pytest.raises(AuthError) as e:
            await client.list_jobs()
    assert e.value.status == 401 and config.token not in str(e.value)


async def _run_180(fake_clock, limiter, config):
    async with asgi_api(config, clock=fake_clock) as api, api.make_client(limiter=limiter) as client:
        queue = list(range(180))

        async def worker():
            while queue:
                queue.pop()
                await client.get_job_profile(100)

        start = fake_clock()
        await asyncio.gather(*(worker() for _ in range(8)))
        elapsed = fake_clock() - start
    return api, elapsed


async def test_rate_limiter_never_exceeds_budget_in_any_window(fake_clock):
    """Without pacing (burst=None) the sliding window alone: a minute's budget at once."""
    config = EmulatorConfig(rate_limit=50)
    limiter = RateLimiter(50, clock=fake_clock, sleep=fake_clock.sleep, burst=None)
    api, elapsed = await _run_180(fake_clock, limiter, config)
    times = api.store.counters.request_times
    assert len(times) == 180
    assert api.store.stats()["rate_limited"] == 0
    assert _max_in_any_window(times) == 50  # the full budget is used, never more
    assert 180 <= elapsed < 181  # 50 at once, then 50 a minute: three more windows


async def test_paced_limiter_never_bursts_and_passes_a_token_bucket(fake_clock):
    """Paced (the default): 3 at once, then one every 60/R s; a token bucket of capacity 5 never says 429."""
    config = EmulatorConfig(rate_limit=50, bucket_capacity=5)
    limiter = RateLimiter(50, clock=fake_clock, sleep=fake_clock.sleep)
    api, elapsed = await _run_180(fake_clock, limiter, config)
    times = api.store.counters.request_times
    assert len(times) == 180
    assert api.store.stats()["rate_limited"] == 0
    assert _max_in_any_window(times) <= 50
    pace = 60.25 / 50  # the window's 0.25 s margin included
    assert (
        _max_in_any_window(times, window=pace * 5) <= 3 + 5
    )  # in any 5 paces: the burst and five more at most
    assert (180 - 3) * pace - 0.01 <= elapsed < (180 - 3) * pace + 1


async def test_limiter_slack_is_the_unused_share_of_the_last_window(fake_clock):
    """What the poller asks before polling quickly while rows are still being submitted."""
    assert RateLimiter(0, clock=fake_clock).slack() == 1.0  # no limit: all the room there is
    limiter = RateLimiter(60, clock=fake_clock, sleep=fake_clock.sleep, burst=None)
    assert limiter.slack() == 1.0
    for _ in range(45):
        await limiter.acquire()
    assert limiter.slack() == pytest.approx(0.25)
    fake_clock.now += 61  # a window later, those requests no longer count
    assert limiter.slack() == 1.0
    limiter.on_rate_limited(30.0)  # a 429 pause: no room at all until it ends
    assert limiter.slack() == 0.0


async def test_unpaced_limiter_meets_a_token_bucket_with_429s(fake_clock):
    """The reason for pacing: the same budget sent at once is refused by a small token bucket."""
    config = EmulatorConfig(rate_limit=50, bucket_capacity=5)
    limiter = RateLimiter(50, clock=fake_clock, sleep=fake_clock.sleep, burst=None)
    async with asgi_api(config, clock=fake_clock) as api, api.make_client(limiter=limiter) as client:
        refused = 0
        for _ in range(20):
            try:
                await client.get_job_profile(100)
            except RateLimitedError:
                refused += 1
    assert refused > 0


def test_rate_limiter_window_property_random_arrivals():
    """Any arrival pattern: never more than the budget in a 60 s window."""
    rng = random.Random(7)
    for budget in (1, 7, 50):
        assert _max_in_any_window(_admissions(budget, rng)) <= budget


def _admissions(budget: int, rng: random.Random) -> list[float]:
    """The fake-clock times at which a limiter of `budget` admits 300 random arrivals."""
    now = [0.0]

    async def sleep(dt: float) -> None:
        now[0] += dt

    limiter = RateLimiter(budget, clock=lambda: now[0], sleep=sleep)
    admitted: list[float] = []

    async def run() -> None:
        for _ in range(300):
            now[0] += rng.expovariate(2.0)
            await limiter.acquire()
            admitted.append(now[0])

    asyncio.run(run())
    return admitted


def test_parse_retry_after_both_forms():
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0
    now = 1_800_000_000.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30.0)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0
    for bad in (None, "", "soon", "nan", "inf"):
        assert parse_retry_after(bad) is None


@pytest.mark.parametrize("form", ["seconds", "date"])
async def test_429_retry_after_pauses_the_whole_limiter(form, fake_clock):
    config = EmulatorConfig(rate_limit=2, retry_after=form)
    # The emulator's own clock is real time (an HTTP date is absolute); the limiter's is fake.
    limiter = RateLimiter(0, clock=fake_clock, sleep=fake_clock.sleep)
    async with asgi_api(config) as api, api.make_client(limiter=limiter) as client:
        await client.list_jobs()
        await client.list_jobs()
        with pytest.raises(RateLimitedError) as e:
            await client.list_jobs()
        assert e.value.status == 429
        assert e.value.retry_after is not None and 58 <= e.value.retry_after <= 62
        before = fake_clock()
        await limiter.acquire()  # every caller now waits out Retry-After
        assert fake_clock() - before == pytest.approx(e.value.retry_after)


async def test_429_without_retry_after_backs_off_and_slows_down(fake_clock):
    config = EmulatorConfig(rate_limit=1, retry_after="none")
    limiter = RateLimiter(100, clock=fake_clock, sleep=fake_clock.sleep, rng=random.Random(1))
    async with asgi_api(config) as api, api.make_client(limiter=limiter) as client:
        await client.list_jobs()
        with pytest.raises(RateLimitedError) as e:
            await client.list_jobs()
    assert e.value.retry_after is None
    assert limiter.budget == 80  # slowed down by the 429
    before = fake_clock()
    await limiter.acquire()
    assert 0.5 <= fake_clock() - before <= 1.0  # its own backoff: 1 s with jitter


async def test_gets_retry_transient_errors():
    config = EmulatorConfig(rate_limit=0, error_rate=0.5, seed=3)
    slept: list[float] = []

    async def no_wait(dt: float) -> None:
        slept.append(dt)

    async with asgi_api(config) as api, api.make_client(get_retries=10, sleep=no_wait) as client:
        for _ in range(10):
            await client.get_job_profile(100)
    assert api.store.counters.faults["500"] > 0 and len(slept) == api.store.counters.faults["500"]


async def test_creates_are_not_retried():
    config = EmulatorConfig(rate_limit=0, error_rate=1.0)
    async with asgi_api(config) as api, api.make_client(get_retries=10) as client:
        with pytest.raises(ServerError):
            await client.create_job("https://a.example/x.mp4", 100)
    assert api.store.stats()["requests"]["POST jobs"] == {"500": 1}


async def test_dropped_create_is_in_doubt_and_the_job_exists(api_factory):
    config = EmulatorConfig(rate_limit=0, drop_after_create_rate=1.0)
    async with api_factory(config) as api, api.make_client() as client:
        with pytest.raises(ApiConnectionError) as e:
            await client.create_job("https://a.example/x.mp4", 100, ref_id="lost")
        assert e.value.in_doubt
        assert api.store.stats()["jobs_created"] == 1
        assert (await client.get_job_by_ref("lost")).ref_id == "lost"  # the look-up that settles the doubt


async def test_create_that_times_out_is_in_doubt(emulator_server):
    server = emulator_server(EmulatorConfig(rate_limit=0, hang_rate=1.0, hang_s=2.0))
    async with client_for(server.url, server.config, read_timeout=0.3) as client:
        with pytest.raises(ApiConnectionError) as e:
            await client.create_job("https://a.example/x.mp4", 100)
    assert e.value.in_doubt
    assert server.stats()["jobs_created"] == 1


async def test_refused_connection_is_not_in_doubt():
    port = free_port()
    async with client_for(f"http://127.0.0.1:{port}", EmulatorConfig()) as client:
        with pytest.raises(ApiConnectionError) as e:
            await client.create_job("https://a.example/x.mp4", 100)
    assert not e.value.in_doubt
    assert "emulator-token" not in str(e.value) and "emulator-api-key" not in str(e.value)


async def test_user_agent_names_package_and_version(emulator_server):
    import httpx
    from batch_ingest import __version__

    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["user-agent"])
        return httpx.Response(200, json={"count": 0, "jobs": []})

    async with client_for(
        "http://x.test", EmulatorConfig(), transport=httpx.MockTransport(handler)
    ) as client:
        await client.list_jobs()
    assert seen[0].startswith(f"batch-ingest/{__version__} ")


async def test_a_wave_of_429s_escalates_the_backoff_once(fake_clock):
    limiter = RateLimiter(100, clock=fake_clock, sleep=fake_clock.sleep, rng=random.Random(1))
    tickets = [await limiter.acquire() for _ in range(8)]  # eight requests in flight together
    pauses = [limiter.on_rate_limited(None, t) for t in tickets]  # all eight answered 429
    assert max(pauses) <= 1.0 and limiter.budget == 80
    ticket = await limiter.acquire()  # after the pause: a new wave may escalate
    assert limiter.on_rate_limited(None, ticket) > 1.0 and limiter.budget == 64


def test_connections_are_split_over_small_pools_totalling_the_bound():
    from batch_ingest.api.client import CONNECTIONS_PER_POOL

    for bound in (1, 9, 16, 17, 33, 65):
        client = client_for("http://x.test", EmulatorConfig(), max_connections=bound)
        assert sum(client._sizes) == bound
        assert max(client._sizes) <= CONNECTIONS_PER_POOL and max(client._sizes) - min(client._sizes) <= 1
        assert [cast(Any, p._transport)._pool._max_connections for p in client._pools] == client._sizes
        asyncio.run(client.aclose())


async def test_byte_rate_paces_uploads_chunk_by_chunk(fake_clock):
    from batch_ingest.api.ratelimit import ByteRate, parse_bandwidth

    rate = ByteRate(parse_bandwidth("2M"), clock=fake_clock, sleep=fake_clock.sleep)
    start = fake_clock()
    for _ in range(4):
        await rate.take(1024 * 1024)
    assert fake_clock() - start == pytest.approx(1.5)  # the first chunk leaves at once, then 0.5 s each
    assert parse_bandwidth("500K") == 500 * 1024 and parse_bandwidth("off") == 0


def test_every_pool_shares_one_tls_context_and_an_http_api_builds_none():
    """Building a TLS context loads the CA bundle (about 50 ms): once per client, never for http://."""
    secure = SmartStreamClient(
        base_url="https://api.example.test", merchant_id="m", auth=Auth(Secret("k")), max_connections=40
    )
    contexts = {id(cast(Any, p._transport)._pool._ssl_context) for p in secure._pools}
    assert len(secure._pools) == 3 and len(contexts) == 1
    context = cast(Any, secure._pools[0]._transport)._pool._ssl_context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    plain = SmartStreamClient(
        base_url="http://127.0.0.1:9", merchant_id="m", auth=Auth(Secret("k")), max_connections=40
    )
    assert all(cast(Any, p._transport)._pool._ssl_context.verify_mode == ssl.CERT_NONE for p in plain._pools)
    asyncio.run(secure.aclose())
    asyncio.run(plain.aclose())


def test_the_tls_context_ignores_ssl_environment_variables(monkeypatch):
    """As every request ignores proxies and the like (trust_env=False), the CA bundle is certifi's,
    whatever SSL_CERT_FILE or SSL_CERT_DIR say: a stray variable neither breaks nor widens trust."""
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent/ca.pem")
    monkeypatch.setenv("SSL_CERT_DIR", "/nonexistent")
    client = SmartStreamClient(base_url="https://api.example.test", merchant_id="m", auth=Auth(Secret("k")))
    context = cast(Any, client._pools[0]._transport)._pool._ssl_context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.cert_store_stats()["x509_ca"] > 50
    asyncio.run(client.aclose())
