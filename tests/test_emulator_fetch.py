"""`emulator --fetch-sources`: the emulator fetches URL sources (and probes uploads) as the platform would.

The emulator runs in-process (httpx.ASGITransport) on a fake clock; its sources come from a small
real HTTP server on 127.0.0.1. Background fetches are awaited (`app.state.fetcher.idle()`), and
emulator time moves only when a test moves the clock: nothing sleeps to wait for time.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from batch_ingest.api.models import format_api_date
from batch_ingest.emulator import EmulatorConfig, create_app, free_port
from batch_ingest.emulator.signed import SignatureInvalid, signed_url_expiry
from batch_ingest.emulator.store import JOB_FIELDS
from starlette.applications import Starlette

from .helpers import FakeClock, run_cli
from .media import make_mp4, make_text_as_mp4, make_truncated

pytestmark = pytest.mark.anyio

QUEUE_S, ENCODE_S = 10.0, 20.0
CONFIG = EmulatorConfig(
    rate_limit=0, queue_seconds=QUEUE_S, encode_seconds=ENCODE_S, jitter=0.0, fetch_sources=True
)
HEADERS = {"X-Streaks-Api-Key": CONFIG.api_key, "Authorization": f"Bearer {CONFIG.token}"}
JOBS = f"/v1/merchants/{CONFIG.merchant_id}/jobs"


# -- a source server on loopback -------------------------------------------------------------------


@dataclass(frozen=True)
class Media:
    """Small real files (tests/media.py): a good MP4, one cut short, a text file named .mp4."""

    good: bytes
    truncated: bytes
    text: bytes


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    folder = tmp_path_factory.mktemp("media")
    return Media(
        good=make_mp4(folder / "good.mp4").read_bytes(),
        truncated=make_truncated(folder / "cut.mp4").read_bytes(),
        text=make_text_as_mp4(folder / "notes.mp4").read_bytes(),
    )


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (the timeout test) is no error here


class Sources:
    """A ThreadingHTTPServer on 127.0.0.1 serving the cases below; it records what it was asked."""

    def __init__(self, media: Media) -> None:
        self.files: dict[str, tuple[bytes, str]] = {
            "/good.mp4": (media.good, "video/mp4"),
            "/cut.mp4": (media.truncated, "video/mp4"),
            "/notes.mp4": (media.text, "application/octet-stream"),
        }
        self.asked: list[tuple[str, str | None]] = []  # (path without query, Range header)
        self.gate = threading.Event()  # /slow.mp4 answers once this is set
        sources = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                sources.asked.append((path, self.headers.get("Range")))
                if path.startswith("/redirect/"):
                    left = int(path.rsplit("/", 1)[1])
                    target = "/good.mp4" if left == 0 else f"/redirect/{left - 1}"
                    return self._answer(302, b"", "text/plain", {"Location": target})
                if path == "/loop":
                    return self._answer(302, b"", "text/plain", {"Location": "/loop"})
                if path == "/missing.mp4":
                    return self._answer(404, b"not found", "text/plain")
                if path == "/forbidden.mp4":
                    return self._answer(403, b"<Error>AccessDenied</Error>", "application/xml")
                if path == "/login.mp4":
                    return self._answer(200, b"<html>sign in</html>", "text/html; charset=utf-8")
                if path == "/empty.mp4":
                    return self._answer(200, b"", "video/mp4")
                if path == "/slow.mp4":
                    sources.gate.wait(30)
                    path = "/good.mp4"
                if path not in sources.files:
                    return self._answer(404, b"", "text/plain")
                body, content_type = sources.files[path]
                ranged = self.headers.get("Range", "")
                if ranged.startswith("bytes=0-"):
                    last = min(int(ranged.removeprefix("bytes=0-")), len(body) - 1)
                    headers = {"Content-Range": f"bytes 0-{last}/{len(body)}"}
                    return self._answer(206, body[: last + 1], content_type, headers)
                return self._answer(200, body, content_type)

            def _answer(
                self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return self.base + path

    def paths(self) -> list[str]:
        return [path for path, _ in self.asked]

    def stop(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sources(media: Media) -> Iterator[Sources]:
    server = Sources(media)
    yield server
    server.stop()


# -- the emulator in-process, on a fake clock -------------------------------------------------------


@dataclass
class Emulator:
    app: Starlette
    http: httpx.AsyncClient
    clock: FakeClock

    async def create(self, url: str) -> dict[str, Any]:
        response = await self.http.post(JOBS, json={"source_url": url, "job_profile_id": 100})
        assert response.status_code == 201, response.text
        return response.json()

    async def upload(self, name: str, data: bytes) -> dict[str, Any]:
        response = await self.http.post(JOBS, files={"source_file": (name, data, "video/mp4")})
        assert response.status_code == 201, response.text
        return response.json()

    async def settled(self) -> None:
        """Wait for every background fetch and probe (none without fetch_sources)."""
        if self.app.state.fetcher is not None:
            await self.app.state.fetcher.idle()

    async def job(self, job_id: str) -> dict[str, Any]:
        """The job as the emulator holds it (with `fail_reason`)."""
        jobs = (await self.http.get("/_emulator/jobs")).json()["jobs"]
        return next(j for j in jobs if j["id"] == job_id)

    async def status(self, job_id: str) -> int:
        """encode_status as the API answers it."""
        return (await self.http.get(f"{JOBS}/{job_id}")).json()["encode_status"]

    async def stats(self) -> dict[str, Any]:
        return (await self.http.get("/_emulator/stats")).json()


@asynccontextmanager
async def emulator(config: EmulatorConfig = CONFIG) -> AsyncIterator[Emulator]:
    clock = FakeClock()
    app = create_app(config, clock=clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://emulator.test", headers=HEADERS
    ) as http:
        emu = Emulator(app, http, clock)
        try:
            yield emu
        finally:
            await emu.settled()


def amz_date(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y%m%dT%H%M%SZ")


# -- URL sources --------------------------------------------------------------------------------


async def test_a_good_source_is_fetched_with_a_bounded_range_and_completes(sources):
    async with emulator(CONFIG.with_changes(fetch_limit_bytes=1000)) as emu:
        job = await emu.create(sources.url("/good.mp4"))
        assert job["encode_status"] == 0  # the create answers at once, queued
        await emu.settled()
        assert sources.asked == [("/good.mp4", "bytes=0-999")]
        assert await emu.status(job["id"]) == 0
        emu.clock.now += QUEUE_S
        assert await emu.status(job["id"]) == 1
        emu.clock.now += ENCODE_S
        assert await emu.status(job["id"]) == 2
        assert (await emu.job(job["id"]))["fail_reason"] is None
        assert (await emu.stats())["fetch"] == {"ok": 1}


@pytest.mark.parametrize(
    ("path", "outcome", "reason"),
    [
        ("/missing.mp4", "http_status", "answered 404"),
        ("/forbidden.mp4", "http_status", "answered 403"),
        ("/login.mp4", "not_video", "text/html"),
        ("/empty.mp4", "empty", "0 bytes"),
        ("/redirect/6", "unreachable", "more than 5 redirects"),
        ("/loop", "unreachable", "more than 5 redirects"),
        ("/cut.mp4", "invalid_media", "not a video the platform can encode"),
        ("/notes.mp4", "invalid_media", "not a video the platform can encode"),
    ],
)
async def test_a_bad_source_fails_its_encode_when_it_leaves_the_queue(sources, path, outcome, reason):
    async with emulator() as emu:
        job = await emu.create(sources.url(path))
        await emu.settled()
        assert await emu.status(job["id"]) == 0  # queued until its planned start
        emu.clock.now += QUEUE_S
        assert await emu.status(job["id"]) == 3
        held = await emu.job(job["id"])
        assert reason in held["fail_reason"]
        assert held["updated_at"] == format_api_date(emu.clock.now)  # failed at created + queue
        assert (await emu.stats())["fetch"] == {outcome: 1}
        # The API's view is the vendor page's: no reason field.
        view = (await emu.http.get(f"{JOBS}/{job['id']}")).json()
        assert set(view) == set(JOB_FIELDS)


async def test_a_short_redirect_chain_is_followed(sources):
    async with emulator() as emu:
        job = await emu.create(sources.url("/redirect/3"))
        await emu.settled()
        emu.clock.now += QUEUE_S + ENCODE_S
        assert await emu.status(job["id"]) == 2
        assert sources.paths() == ["/redirect/3", "/redirect/2", "/redirect/1", "/redirect/0", "/good.mp4"]
        assert all(r == f"bytes=0-{CONFIG.fetch_limit_bytes - 1}" for _, r in sources.asked)


async def test_a_refused_port_fails_the_encode():
    port = free_port()  # free, so nothing listens there
    async with emulator() as emu:
        job = await emu.create(f"http://127.0.0.1:{port}/a.mp4")
        await emu.settled()
        emu.clock.now += QUEUE_S
        held = await emu.job(job["id"])
        assert held["encode_status"] == 3 and "unreachable (ConnectError)" in held["fail_reason"]
        assert (await emu.stats())["fetch"] == {"unreachable": 1}


async def test_a_source_that_does_not_answer_in_time_fails(sources):
    async with emulator(CONFIG.with_changes(fetch_timeout_s=0.2)) as emu:
        job = await emu.create(sources.url("/slow.mp4"))
        await emu.settled()
        sources.gate.set()
        emu.clock.now += QUEUE_S
        held = await emu.job(job["id"])
        assert held["encode_status"] == 3 and "no answer from 127.0.0.1 within 0.2 s" in held["fail_reason"]


async def test_a_verdict_after_the_planned_start_starts_the_encode_then(sources):
    async with emulator() as emu:
        job = await emu.create(sources.url("/slow.mp4"))
        emu.clock.now += 50  # past the planned start (10 s): the source is still being fetched
        assert await emu.status(job["id"]) == 0
        assert (await emu.job(job["id"]))["awaiting_source"] is True
        sources.gate.set()
        await emu.settled()
        held = await emu.job(job["id"])
        assert held["encode_status"] == 1 and held["updated_at"] == format_api_date(emu.clock.now)
        emu.clock.now += ENCODE_S - 1
        assert await emu.status(job["id"]) == 1
        emu.clock.now += 1
        assert await emu.status(job["id"]) == 2


async def test_unreachable_setting_and_invalid_hosts_fail_without_a_fetch(sources):
    async with emulator(CONFIG.with_changes(unreachable=("nope",))) as emu:
        told = await emu.create(sources.url("/good.mp4?nope"))
        invalid = await emu.create("https://media.invalid/a.mp4")
        await emu.settled()
        emu.clock.now += QUEUE_S
        assert await emu.status(told["id"]) == 3 and await emu.status(invalid["id"]) == 3
        assert "unreachable" in (await emu.job(told["id"]))["fail_reason"]
        assert sources.asked == []
        assert (await emu.stats())["fetch"] == {"unreachable": 2}


async def test_without_fetch_sources_nothing_is_fetched_and_a_404_source_completes(sources):
    config = CONFIG.with_changes(fetch_sources=False)
    async with emulator(config) as emu:
        assert emu.app.state.fetcher is None
        job = await emu.create(sources.url("/missing.mp4"))
        emu.clock.now += QUEUE_S
        assert await emu.status(job["id"]) == 1
        emu.clock.now += ENCODE_S
        assert await emu.status(job["id"]) == 2
        assert sources.asked == []
        assert (await emu.stats())["fetch"] == {}
        upload = await emu.upload("broken.mp4", b"not a video at all")
        emu.clock.now += QUEUE_S + ENCODE_S
        assert await emu.status(upload["id"]) == 2


# -- uploads ------------------------------------------------------------------------------------


async def test_a_good_upload_is_probed_and_completes(media):
    async with emulator() as emu:
        job = await emu.upload("talk.mp4", media.good)
        await emu.settled()
        emu.clock.now += QUEUE_S
        assert await emu.status(job["id"]) == 1
        emu.clock.now += ENCODE_S
        held = await emu.job(job["id"])
        assert held["encode_status"] == 2 and held["upload_size"] == len(media.good)
        assert (await emu.stats())["fetch"] == {"ok": 1}


@pytest.mark.parametrize("kind", ["truncated", "text"])
async def test_a_corrupt_upload_fails_because_it_is_corrupt(media, kind):
    async with emulator() as emu:
        job = await emu.upload("talk.mp4", getattr(media, kind))  # a good name: only the bytes are bad
        await emu.settled()
        emu.clock.now += QUEUE_S
        held = await emu.job(job["id"])
        assert held["encode_status"] == 3
        assert held["fail_reason"].startswith("the source is not a video the platform can encode: ")
        assert (await emu.stats())["fetch"] == {"invalid_media": 1}


# -- signed URLs --------------------------------------------------------------------------------


def _amz(clock: FakeClock, valid_for_after_create: float) -> str:
    signed = clock.now - 3600
    return (
        f"?x-amz-algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20261127&X-AMZ-DATE={amz_date(signed)}"
        f"&X-Amz-Expires={int(3600 + valid_for_after_create)}&X-Amz-SignedHeaders=host&X-Amz-Signature=deadbeef"
    )


def _goog(clock: FakeClock, valid_for_after_create: float) -> str:
    signed = clock.now - 60
    return (
        f"?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Date={amz_date(signed)}"
        f"&x-goog-expires={int(60 + valid_for_after_create)}&X-Goog-Signature=cafe"
    )


def _azure(clock: FakeClock, valid_for_after_create: float) -> str:
    se = datetime.fromtimestamp(clock.now + valid_for_after_create, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"?sv=2022-11-02&sr=b&sp=r&se={se.replace(':', '%3A')}&SIG=c2lnbmF0dXJl"


def _sigv2(clock: FakeClock, valid_for_after_create: float) -> str:
    return f"?AWSAccessKeyId=AKIA&Expires={int(clock.now + valid_for_after_create)}&Signature=abc%3D"


@pytest.mark.parametrize("sign", [_amz, _goog, _azure, _sigv2])
async def test_a_signed_url_expired_when_the_job_leaves_the_queue_fails_unfetched(sources, sign):
    async with emulator() as emu:
        expired = await emu.create(sources.url("/good.mp4") + sign(emu.clock, QUEUE_S - 5))
        valid = await emu.create(sources.url("/good.mp4") + sign(emu.clock, QUEUE_S + 100))
        assert expired["source_url"].endswith(sign(emu.clock, QUEUE_S - 5))  # echoed as sent
        await emu.settled()
        assert sources.paths() == ["/good.mp4"]  # only the valid one was fetched
        emu.clock.now += QUEUE_S
        held = await emu.job(expired["id"])
        assert held["encode_status"] == 3 and "signed source URL expired" in held["fail_reason"]
        emu.clock.now += ENCODE_S
        assert await emu.status(valid["id"]) == 2
        stats = await emu.stats()
        assert stats["fetch"] == {"expired": 1, "ok": 1}
        # The stats and the reasons never carry a signature or any query string.
        assert "?" not in json.dumps(stats) and "?" not in held["fail_reason"]


async def test_a_signed_url_valid_at_the_planned_start_but_not_when_the_fetch_ends_fails(sources):
    async with emulator() as emu:
        job = await emu.create(sources.url("/slow.mp4") + _amz(emu.clock, QUEUE_S + 20))
        emu.clock.now += 40  # the fetch is slow: by its end the signature has expired
        sources.gate.set()
        await emu.settled()
        held = await emu.job(job["id"])
        assert held["encode_status"] == 3 and "expired" in held["fail_reason"]


async def test_a_v4_signature_valid_for_more_than_a_week_is_refused(sources):
    async with emulator() as emu:
        job = await emu.create(sources.url("/good.mp4") + _amz(emu.clock, 8 * 24 * 3600))
        await emu.settled()
        emu.clock.now += QUEUE_S
        held = await emu.job(job["id"])
        assert held["encode_status"] == 3 and "X-Amz-Expires over" in held["fail_reason"]
        assert sources.asked == []


def test_signed_url_expiry_forms():
    base = "https://b.example/v.mp4"
    assert signed_url_expiry(base) is None
    assert signed_url_expiry(base + "?se=2026-01-01") is None  # no sig: not a SAS
    assert signed_url_expiry(base + "?Expires=5") is None  # no Signature: not signed
    assert signed_url_expiry(base + "?X-Amz-Date=20261127T200452Z&X-Amz-Expires=60") == (
        datetime(2026, 11, 27, 20, 5, 52, tzinfo=UTC).timestamp()
    )
    assert signed_url_expiry(base + "?se=2026-11-27&sig=x") == datetime(2026, 11, 27, tzinfo=UTC).timestamp()
    assert signed_url_expiry(base + "?se=2026-11-27T20:04:52.1234567Z&sig=x") == pytest.approx(
        datetime(2026, 11, 27, 20, 4, 52, 123456, tzinfo=UTC).timestamp()
    )
    # Several forms: the earliest wins.
    assert signed_url_expiry(base + "?Expires=100&Signature=s&se=2026-11-27&sig=x") == 100.0
    for bad in ("?X-Amz-Date=yesterday&X-Amz-Expires=60", "?x-goog-date=20261127T200452Z&x-goog-expires=-1"):
        with pytest.raises(SignatureInvalid):
            signed_url_expiry(base + bad)


# -- the server on a socket, and the CLI ----------------------------------------------------------


def test_emulator_server_fetches_on_its_own_loop(emulator_server, sources):
    server = emulator_server(CONFIG.with_changes(queue_seconds=0.0, encode_seconds=0.0))
    for path in ("/good.mp4", "/missing.mp4"):
        response = httpx.post(
            f"{server.url}{JOBS}",
            json={"source_url": sources.url(path), "job_profile_id": 100},
            headers=HEADERS,
            trust_env=False,
        )
        assert response.status_code == 201
    assert server.wait_for_sources(timeout=30)
    assert [j["encode_status"] for j in server.jobs()] == [2, 3]
    assert server.stats()["fetch"] == {"ok": 1, "http_status": 1}


def test_emulator_help_lists_fetch_sources():
    result = run_cli(["emulator", "--help"])
    assert result.exit_code == 0 and "--fetch-sources" in result.output
