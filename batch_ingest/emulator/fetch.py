"""`fetch_sources`: the emulator fetches URL sources and probes uploads, as the platform would.

A URL create answers at once (the job is queued); in the background, on the server's loop, the
source is fetched with one `GET` and `Range: bytes=0-{limit-1}` (redirects followed, at most
`MAX_REDIRECTS`; no proxy from the environment). The encode fails when the host cannot be reached
(DNS, connect, TLS, a redirect loop, or no answer within `fetch_timeout_s`), the status is not 200
or 206, the answer is a web page (text/html), or the object is empty; signed URLs that expire before
the job leaves the queue fail in the store (store.py, signed.py). When the whole object came in and
the media prober (`batch_ingest.probe`) can be imported, its bytes are probed too, and an invalid
one fails the encode. An upload, spooled to a temporary file while it arrives, is probed the same way.

Bounds: `fetch_concurrency` fetches and probes at once (the rest wait their turn), at most
`fetch_limit_bytes` read per source, at most `SPOOL_MEMORY` bytes of each in memory (the rest in an
unnamed temporary file, gone when closed); probing runs in a worker thread, so the server keeps
answering. The verdict goes to `Store.settle_source`, which schedules the job's transitions on the
emulator's clock. Reasons name the host only, never a URL's path or query (it may hold a signature).
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import tempfile
import threading
from collections.abc import Callable
from typing import IO, Any
from urllib.parse import urlsplit

import httpx

from .store import Store

MAX_REDIRECTS = 5
SPOOL_MEMORY = 1024 * 1024  # bytes of one source or upload held in memory; the rest goes to disk
_CONTENT_RANGE = re.compile(r"^bytes\s+\d+-\d+/(\d+)\s*$", re.IGNORECASE)

log = logging.getLogger(__name__)

Verdict = tuple[str, str | None]  # (outcome, reason): ("ok", None) or why the source fails


def load_prober() -> tuple[Callable[..., Any], type[Exception]] | None:
    """`(probe_stream, MediaInvalid)` from the media prober, or None when it cannot be imported."""
    try:
        from ..probe import MediaInvalid, probe_stream
    except ImportError:
        return None
    return probe_stream, MediaInvalid


def new_spool() -> IO[bytes]:
    """A temporary file for a source's bytes: in memory up to SPOOL_MEMORY, then unnamed on disk."""
    return tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)


class SourceFetcher:
    """The background fetches and probes of one emulator (its app's `state.fetcher`).

    Tasks run on the loop that serves the app; `idle()` (on that loop) and `wait_idle()` (from any
    thread) wait until none is left."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots: asyncio.Semaphore | None = None
        self._ssl: ssl.SSLContext | None = None
        self._pending = 0
        self._idle = threading.Condition()

    # -- starting work (from a request handler, on the serving loop) ------------------------------

    def fetch_url(self, job_id: str, url: str) -> None:
        """Fetch `url` in the background, then settle the job's source."""
        self._start(job_id, self._fetch(url))

    def probe_upload(self, job_id: str, spool: IO[bytes], size: int | None) -> None:
        """Probe an uploaded file in the background (this takes `spool` over and closes it)."""
        if self._pending >= self.store.config.fetch_concurrency:
            # It will wait for a slot: to disk with it, so that waiting uploads hold no memory.
            rollover = getattr(spool, "rollover", None)
            if rollover is not None:
                rollover()
        self._start(job_id, self._probe_upload(spool, size))

    def _start(self, job_id: str, work: Any) -> None:
        with self._idle:
            self._pending += 1
        task = asyncio.get_running_loop().create_task(self._settle(job_id, work))
        self._tasks.add(task)  # a reference, so that the task is not collected while it runs
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        with self._idle:
            self._pending -= 1
            if self._pending == 0:
                self._idle.notify_all()

    async def _settle(self, job_id: str, work: Any) -> None:
        outcome, reason = "error", "the emulator failed while fetching the source"
        try:
            if self._slots is None:
                self._slots = asyncio.Semaphore(max(1, self.store.config.fetch_concurrency))
            async with self._slots:
                outcome, reason = await work
        except Exception:
            log.exception("emulator: fetching or probing a source failed")
        finally:
            work.close()  # a coroutine never started (cancelled while waiting for a slot) is closed
            with self.store.lock:
                self.store.settle_source(job_id, outcome, reason)

    # -- waiting --------------------------------------------------------------------------------

    async def idle(self) -> None:
        """Return once no fetch or probe is left (call it on the loop that serves the app)."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    def wait_idle(self, timeout: float | None = None) -> bool:
        """From any thread: wait until no fetch or probe is left; False if `timeout` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    @property
    def pending(self) -> int:
        """Fetches and probes started and not yet settled."""
        return self._pending

    # -- the work -------------------------------------------------------------------------------

    async def _fetch(self, url: str) -> Verdict:
        config = self.store.config
        host = urlsplit(url).hostname or "the source's host"
        prober = load_prober()
        spool = new_spool() if prober is not None else None
        try:
            try:
                async with asyncio.timeout(config.fetch_timeout_s):
                    verdict, size, whole = await self._get(url, spool)
            except (TimeoutError, httpx.TimeoutException):
                return "timeout", (
                    f"cannot fetch the source: no answer from {host} within {config.fetch_timeout_s:g} s"
                )
            except httpx.TooManyRedirects:
                return "unreachable", f"cannot fetch the source: more than {MAX_REDIRECTS} redirects"
            except (httpx.RequestError, httpx.InvalidURL) as exc:
                return "unreachable", f"cannot fetch the source: {host} unreachable ({type(exc).__name__})"
            if verdict is not None:
                return verdict
            if spool is not None and prober is not None and whole:
                return await asyncio.to_thread(_probe, prober, spool, size)
            return "ok", None
        finally:
            if spool is not None:
                spool.close()

    async def _get(self, url: str, spool: IO[bytes] | None) -> tuple[Verdict | None, int | None, bool]:
        """One ranged GET: a failing verdict, or None with the object's size and whether all of it
        came in (written to `spool`)."""
        config = self.store.config
        limit = max(1, config.fetch_limit_bytes)
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        headers = {"Range": f"bytes=0-{limit - 1}", "Accept-Encoding": "identity"}
        async with (
            httpx.AsyncClient(
                verify=self._ssl,
                trust_env=False,
                follow_redirects=True,
                max_redirects=MAX_REDIRECTS,
                timeout=httpx.Timeout(config.fetch_timeout_s),
            ) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            host = response.url.host or "the source's host"
            status = response.status_code
            if status not in (200, 206):
                return ("http_status", f"cannot fetch the source: {host} answered {status}"), None, False
            content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type == "text/html":
                return ("not_video", f"{host} answered with a web page (text/html), not a video"), None, False
            received, truncated = 0, False
            async for chunk in response.aiter_raw():
                room = limit - received
                if len(chunk) > room:  # more than asked for (a server that ignores Range)
                    chunk, truncated = chunk[:room], True
                received += len(chunk)
                if spool is not None:
                    spool.write(chunk)
                if truncated:
                    break
        if status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
            size = int(match.group(1)) if match else None
            whole = size is not None and size == received
        else:
            whole = not truncated
            length = response.headers.get("content-length", "")
            size = received if whole else int(length) if length.isdigit() else None
        if size == 0:
            return ("empty", f"{host} holds an empty object (0 bytes)"), 0, True
        return None, size, whole

    async def _probe_upload(self, spool: IO[bytes], size: int | None) -> Verdict:
        try:
            prober = load_prober()
            if prober is None:
                return "ok", None
            return await asyncio.to_thread(_probe, prober, spool, size)
        finally:
            spool.close()


def _probe(prober: tuple[Callable[..., Any], type[Exception]], spool: IO[bytes], size: int | None) -> Verdict:
    """Probe the bytes in `spool` (in a worker thread): ("ok", None), or why they are no video."""
    probe_stream, media_invalid = prober
    spool.seek(0)
    try:
        probe_stream(spool, size=size)
    except media_invalid as exc:
        return "invalid_media", f"the source is not a video the platform can encode: {exc}"
    except Exception:
        # A fault of the prober, not of the source: never fail an encode the platform might run.
        log.exception("emulator: the media prober failed")
    return "ok", None
