"""`validate --check-sources`: every way a source can fail, against a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import polars as pl
import pytest
from batch_ingest.emulator import EmulatorConfig, free_port
from batch_ingest.sources import (
    SOURCE_FORBIDDEN,
    SOURCE_NOT_FOUND,
    SOURCE_NOT_VIDEO,
    SOURCE_UNREACHABLE,
    check_urls,
)

from .helpers import FAST, FLAGS, run_cli, write_manifest

VIDEO_BYTES = 1_000


class Sources(BaseHTTPRequestHandler):
    """One path per case; notes every request and the most in flight at once (each test's server
    gets a subclass of its own, so a handler still running from another test counts nowhere)."""

    base: ClassVar[str]  # the server's URL
    requests: ClassVar[list[tuple[str, str, str | None]]]  # (method, path, Range header)
    lock: ClassVar[threading.Lock]
    in_flight: ClassVar[int]
    most_in_flight: ClassVar[int]

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        try:
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the checker had what it needed (or gave up on a slow answer) and hung up

    def do_HEAD(self) -> None:
        self.requests.append(("HEAD", self.path, self.headers.get("Range")))
        self._answer(403, {})  # as a URL presigned for GET answers HEAD

    def do_GET(self) -> None:
        cls = type(self)
        with cls.lock:
            cls.requests.append(("GET", self.path, self.headers.get("Range")))
            cls.in_flight += 1
            cls.most_in_flight = max(cls.most_in_flight, cls.in_flight)
        try:
            self._route()
        finally:
            with cls.lock:
                cls.in_flight -= 1

    def _route(self) -> None:
        path = self.path.split("?")[0]
        video = {"Content-Type": "video/mp4"}
        if path == "/ranged.mp4":
            self._answer(206, {**video, "Content-Range": f"bytes 0-0/{VIDEO_BYTES}"}, b"\0")
        elif path == "/whole.mp4":  # a server that ignores Range
            self._answer(200, {**video, "Content-Length": "500"}, b"\0" * 500)
        elif path.startswith("/held/"):  # answers after a while: for the per-host cap
            time.sleep(0.05)
            self._answer(206, {**video, "Content-Range": "bytes 0-0/10"}, b"\0")
        elif path == "/redirect":
            self._answer(302, {"Location": "/redirect-2"})
        elif path == "/redirect-2":
            self._answer(307, {"Location": "/ranged.mp4"})
        elif path == "/loop-a":
            self._answer(302, {"Location": "/loop-b"})
        elif path == "/loop-b":
            self._answer(302, {"Location": "/loop-a"})
        elif path.startswith("/chain/"):
            n = int(path.rsplit("/", 1)[1])
            self._answer(302, {"Location": f"/chain/{n + 1}"})
        elif path == "/to-ftp":
            self._answer(302, {"Location": "ftp://files.example/x.mp4"})
        elif path == "/login":
            self._answer(200, {"Content-Type": "text/html; charset=utf-8"}, b"<html>sign in</html>")
        elif path == "/empty.mp4":
            self._answer(200, {**video, "Content-Length": "0"})
        elif path == "/empty-ranged.mp4":
            self._answer(416, {"Content-Range": "bytes */0"})
        elif path == "/slow.mp4":
            time.sleep(1.0)
            self._answer(206, {**video, "Content-Range": "bytes 0-0/10"}, b"\0")
        else:
            status = {"/gone": 410, "/auth": 401, "/forbidden": 403, "/broken": 500}.get(path, 404)
            self._answer(status, {"Content-Type": "application/json"}, b"{}")


class _Server(ThreadingHTTPServer):
    # The standard library's backlog of 5 drops connections when 16 checks connect at once (the
    # default cap per host); a real server's is in the hundreds.
    request_queue_size = 128


@pytest.fixture
def sources() -> Iterator[type[Sources]]:
    """A server of this test's own; its handler class (with `base`, the URL) records the requests."""
    handler: type[Sources] = type(
        "TestSources",
        (Sources,),
        {"requests": [], "lock": threading.Lock(), "in_flight": 0, "most_in_flight": 0},
    )
    server = _Server(("127.0.0.1", free_port()), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield handler
    server.shutdown()
    server.server_close()


def test_every_kind_of_source_gets_its_code(sources):
    """Size from Content-Range or Content-Length; 404/410, 401/403, 5xx, redirects (bounded, loops),
    web pages, empty objects, a slow answer and a refused port each end as documented."""
    refused = f"http://127.0.0.1:{free_port()}/x.mp4"
    cases = {
        "/ranged.mp4": (None, VIDEO_BYTES, 206),
        "/whole.mp4": (None, 500, 200),
        "/redirect": (None, VIDEO_BYTES, 206),
        "/missing": (SOURCE_NOT_FOUND, None, 404),
        "/gone": (SOURCE_NOT_FOUND, None, 410),
        "/auth": (SOURCE_FORBIDDEN, None, 401),
        "/forbidden": (SOURCE_FORBIDDEN, None, 403),
        "/broken": (SOURCE_UNREACHABLE, None, 500),
        "/loop-a": (SOURCE_UNREACHABLE, None, 302),
        "/chain/0": (SOURCE_UNREACHABLE, None, 302),
        "/to-ftp": (SOURCE_UNREACHABLE, None, 302),
        "/login": (SOURCE_NOT_VIDEO, None, 200),
        "/empty.mp4": (SOURCE_NOT_VIDEO, 0, 200),
        "/empty-ranged.mp4": (SOURCE_NOT_VIDEO, 0, 416),
        "/slow.mp4": (SOURCE_UNREACHABLE, None, None),
    }
    urls = [(i, sources.base + path) for i, path in enumerate(cases, start=1)] + [(len(cases) + 1, refused)]
    checks = asyncio.run(check_urls(urls, timeout_s=0.3))
    found = {
        path: (c.code, c.bytes if c.code is None or c.bytes == 0 else None, c.status)
        for path, c in zip(cases, checks, strict=False)
    }
    assert found == cases
    assert (
        checks[-1].row == len(cases) + 1
        and checks[-1].code == SOURCE_UNREACHABLE
        and checks[-1].status is None
    )
    assert [c.row for c in checks] == list(range(1, len(cases) + 2))
    reasons = [c.reason or "" for c in checks]
    assert "loop back" in reasons[8] and "more than 5 redirects" in reasons[9]
    assert "web page" in reasons[11]
    assert checks[0].content_type == "video/mp4" and checks[0].host == "127.0.0.1"
    # Only GETs for the first byte: never HEAD, never the whole object.
    assert {m for m, _, _ in sources.requests} == {"GET"}
    assert {r for _, _, r in sources.requests} == {"bytes=0-0"}


def test_checks_never_put_more_than_the_cap_on_one_host(sources):
    """Twelve sources on one host with a cap of 3: never more than 3 at once, all of them checked."""
    urls = [(i, f"{sources.base}/held/{i}.mp4") for i in range(1, 13)]
    checks = asyncio.run(check_urls(urls, per_host=3, concurrency=32))
    assert [c.code for c in checks] == [None] * 12
    assert len(sources.requests) == 12
    assert 1 < sources.most_in_flight <= 3


def test_checks_never_exceed_the_overall_concurrency(sources):
    """With room on the host but an overall bound of 2: never more than 2 checks at once."""
    urls = [(i, f"{sources.base}/held/{i}.mp4") for i in range(1, 13)]
    checks = asyncio.run(check_urls(urls, per_host=10, concurrency=2))
    assert [c.row for c in checks] == list(range(1, 13)) and all(c.code is None for c in checks)
    assert sources.most_in_flight == 2


def _manifest(tmp_path: Path, base: str) -> Path:
    rows = [
        "source,profile,ref_id",
        f"{base}/ranged.mp4,100,fine",
        f"{base}/missing,100,missing",
        f"{base}/login,100,login",
        f"{base}/ranged.mp4?X-Amz-Signature=abc123secret&X-Amz-Credential=AKIDEXAMPLE,100,signed",
    ]
    return write_manifest(tmp_path, "\n".join(rows) + "\n")


def test_validate_check_sources_rejects_what_the_platform_could_not_fetch(tmp_path, sources):
    """`validate --check-sources`: failing rows are rejected with their code (exit 1), the totals are
    printed, a signed URL is requested in its real form but never shown."""
    manifest = _manifest(tmp_path, sources.base)
    result = run_cli(["validate", str(manifest), "--check-sources", "--json"])
    assert result.exit_code == 1, result.output
    plan = json.loads(result.output)
    assert plan["to_submit"] == 2 and plan["rejected"] == 2
    assert {(r["row"], r["error_code"]) for r in plan["rejected_rows"]} == {
        (2, SOURCE_NOT_FOUND),
        (3, SOURCE_NOT_VIDEO),
    }
    assert any(
        "sources checked: 4 remote source(s), 2 fine, 2,000 bytes" in n and "SOURCE_NOT_FOUND 1" in n
        for n in plan["notes"]
    )
    assert ("GET", "/ranged.mp4?X-Amz-Signature=abc123secret&X-Amz-Credential=AKIDEXAMPLE", "bytes=0-0") in (
        sources.requests
    )
    assert "abc123secret" not in result.output and "AKIDEXAMPLE" not in result.output


def test_validate_check_sources_warn_keeps_the_rows(tmp_path, sources):
    """`--check-sources=warn` reports what failed and keeps every row (exit 0); without the option
    nothing is fetched at all."""
    manifest = _manifest(tmp_path, sources.base)
    result = run_cli(["validate", str(manifest), "--check-sources=warn"])
    assert result.exit_code == 0, result.output
    assert "4 to submit" in result.output
    assert "--check-sources=warn: 2 row(s) would have been rejected" in result.output
    sources.requests.clear()
    plain = run_cli(["validate", str(manifest)])
    assert plain.exit_code == 0 and sources.requests == []


def test_run_check_sources_spends_no_create_on_a_dead_source_and_resume_never_checks_again(
    tmp_path, sources, emulator_server
):
    """`run --check-sources`: failing rows end `rejected` with their code, no job is created for them,
    the report has what the checks found; a resume of the run checks nothing again."""
    server = emulator_server(EmulatorConfig(**FAST))
    manifest = _manifest(tmp_path, sources.base)
    run_dir = tmp_path / "run"
    result = run_cli(
        ["run", str(manifest), "--report-dir", str(run_dir), "--check-sources", *FLAGS], server.env()
    )
    assert result.exit_code == 1, result.output
    report = pl.read_parquet(run_dir / "report.parquet")
    got = report.select(
        "row", "outcome", "error_code", "source_status", "source_bytes", "source_content_type"
    )
    assert got.rows() == [
        (1, "succeeded", None, 206, VIDEO_BYTES, "video/mp4"),
        (2, "rejected", SOURCE_NOT_FOUND, 404, None, "application/json"),
        (3, "rejected", SOURCE_NOT_VIDEO, 200, 20, "text/html"),
        (4, "succeeded", None, 206, VIDEO_BYTES, "video/mp4"),
    ]
    assert server.stats()["jobs_created"] == 2
    checked = len(sources.requests)
    assert checked == 4
    resumed = run_cli(["resume", str(run_dir), *FLAGS], server.env())
    assert resumed.exit_code == 1, resumed.output
    assert len(sources.requests) == checked
    assert server.stats()["jobs_created"] == 2
    text = b"".join(p.read_bytes() for p in run_dir.iterdir() if p.is_file())
    assert b"abc123secret" not in text and b"AKIDEXAMPLE" not in text


class _CountingTransport(httpx.AsyncBaseTransport):
    """Answers every check with one byte after letting the loop run a while (no clock involved), and
    records how many checks were in flight at most, in all and to each host."""

    def __init__(self) -> None:
        self.in_flight: Counter[str] = Counter()
        self.most = 0
        self.most_per_host: Counter[str] = Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.in_flight[host] += 1
        self.most = max(self.most, sum(self.in_flight.values()))
        self.most_per_host[host] = max(self.most_per_host[host], self.in_flight[host])
        for _ in range(50):  # let every other worker take its turn before this answer comes
            await asyncio.sleep(0)
        self.in_flight[host] -= 1
        return httpx.Response(
            206, headers={"Content-Range": "bytes 0-0/100", "Content-Type": "video/mp4"}, content=b"x"
        )


def test_a_manifest_sorted_by_host_keeps_every_host_busy():
    """Rows in blocks by host, a cap of 2 per host, 8 in all: 8 checks run at once, 2 to each host,
    not 2 at a time while the other hosts wait their block's turn."""
    urls = [(i, f"https://cdn{i // 25}.example/v{i}.mp4") for i in range(100)]
    transport = _CountingTransport()
    checks = asyncio.run(check_urls(urls, per_host=2, concurrency=8, transport=transport))
    assert [c.row for c in checks] == list(range(100)) and all(c.code is None for c in checks)
    assert transport.most == 8 and set(transport.most_per_host.values()) == {2}


def test_urls_httpx_cannot_even_ask_for_are_unreachable_rows_not_a_crash():
    """An IDNA-invalid host or a broken IPv6 literal passes the plan's URL rules; its check says
    what is wrong instead of stopping every other check."""
    urls = [(1, "http://xn--zz.com/v.mp4"), (2, "http://[::1/v.mp4"), (3, "https://cdn.example/ok.mp4")]
    checks = asyncio.run(check_urls(urls, transport=_CountingTransport()))
    assert [c.code for c in checks] == [SOURCE_UNREACHABLE, SOURCE_UNREACHABLE, None]
    assert all("fix the URL" in (c.reason or "") or "check the host" in (c.reason or "") for c in checks[:2])
