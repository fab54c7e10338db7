"""Checking a plan's remote sources before any create is spent on them (`validate --check-sources`).

Each ready URL row gets one `GET` with `Range: bytes=0-0`: never `HEAD`, which a URL presigned for
GET answers 403 and some servers refuse. Redirects are followed by hand, at most `MAX_REDIRECTS`,
a loop being a failure. The answer says what the platform would meet:

    404, 410                        SOURCE_NOT_FOUND
    401, 403                        SOURCE_FORBIDDEN
    DNS, TLS, connect, timeout,     SOURCE_UNREACHABLE
    another status, a redirect loop
    text/html, or 0 bytes           SOURCE_NOT_VIDEO  (a login page, an empty object)

and otherwise the source's size (from `Content-Range`, else `Content-Length`) and content type.
The checks never touch the SmartSTREAM API, so they run outside its rate budget: `concurrency`
at a time in all, at most `per_host` to one host, so that one CDN is not hammered. A URL with a
credential is requested in its real form, which stays in memory; results name only the host.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from urllib.parse import urljoin, urlsplit

import httpx
import polars as pl

from .plan import Plan
from .vocabulary import PlanStatus, SourceType

SOURCE_NOT_FOUND = "SOURCE_NOT_FOUND"
SOURCE_FORBIDDEN = "SOURCE_FORBIDDEN"
SOURCE_UNREACHABLE = "SOURCE_UNREACHABLE"
SOURCE_NOT_VIDEO = "SOURCE_NOT_VIDEO"

CONCURRENCY = 32  # checks in flight in all
PER_HOST = 4  # checks in flight to one host
TIMEOUT_S = 10.0  # connect and each read
MAX_REDIRECTS = 5
_CONTENT_RANGE = re.compile(r"^bytes\s+(?:\d+-\d+|\*)/(\d+)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class SourceCheck:
    """What one source's check found: `code` is None when the source looks like a video to fetch."""

    row: int
    code: str | None
    reason: str | None
    status: int | None  # the last HTTP status, None when no answer came
    bytes: int | None
    content_type: str | None
    host: str | None  # the host that answered last (after redirects)
    elapsed_s: float


async def check_url(client: httpx.AsyncClient, row: int, url: str) -> SourceCheck:
    """Check one URL (see the module docstring); never raises for what the server or network does."""
    started = time.monotonic()
    seen = [url]
    status: int | None = None
    host = urlsplit(url).hostname

    def done(
        code: str | None, reason: str | None, *, size: int | None = None, content_type: str | None = None
    ) -> SourceCheck:
        return SourceCheck(
            row=row,
            code=code,
            reason=reason,
            status=status,
            bytes=size,
            content_type=content_type,
            host=host,
            elapsed_s=round(time.monotonic() - started, 3),
        )

    while True:
        try:
            request = client.build_request("GET", url, headers={"Range": "bytes=0-0"})
            response = await client.send(request, stream=True)
            await response.aclose()  # the status and headers are all a check needs
        except httpx.TimeoutException:
            return done(
                SOURCE_UNREACHABLE,
                f"no answer from {host} within {client.timeout.read:g} s: check that the host serves it",
            )
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            return done(
                SOURCE_UNREACHABLE,
                f"cannot reach {host} ({type(exc).__name__}): check the host name and that it is up",
            )
        status = response.status_code
        if status in (301, 302, 303, 307, 308) and "location" in response.headers:
            url = urljoin(url, response.headers["location"])
            host = urlsplit(url).hostname
            if url in seen:
                return done(
                    SOURCE_UNREACHABLE, f"the redirects loop back to {host}: give the video's final URL"
                )
            if len(seen) > MAX_REDIRECTS:
                return done(
                    SOURCE_UNREACHABLE, f"more than {MAX_REDIRECTS} redirects: give the video's final URL"
                )
            if urlsplit(url).scheme not in ("http", "https"):
                return done(
                    SOURCE_UNREACHABLE,
                    f"a redirect leads to {urlsplit(url).scheme}:, not http(s): give an http(s) URL the platform can fetch",
                )
            seen.append(url)
            continue
        break
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower() or None
    size = _size(response)
    if status in (404, 410):
        return done(
            SOURCE_NOT_FOUND,
            f"{host} answered {status}: the source is not there: fix the URL or drop the row",
            content_type=content_type,
        )
    if status in (401, 403):
        return done(
            SOURCE_FORBIDDEN,
            f"{host} answered {status}: the source needs a credential: sign the URL anew or make it readable",
            content_type=content_type,
        )
    if status == 416:  # a range of an empty object cannot be satisfied
        return done(
            SOURCE_NOT_VIDEO,
            f"{host} holds an empty object (416): upload the video again or drop the row",
            size=0,
            content_type=content_type,
        )
    if status not in (200, 206):
        return done(
            SOURCE_UNREACHABLE,
            f"{host} answered {status}: try again later, or check the URL",
            size=size,
            content_type=content_type,
        )
    if content_type == "text/html":
        return done(
            SOURCE_NOT_VIDEO,
            f"{host} answered with a web page (text/html), not a video (a login or error page?): give the video file's own URL",
            size=size,
            content_type=content_type,
        )
    if size == 0:
        return done(
            SOURCE_NOT_VIDEO,
            f"{host} holds an empty object (0 bytes): upload the video again or drop the row",
            size=0,
            content_type=content_type,
        )
    return done(None, None, size=size, content_type=content_type)


def _size(response: httpx.Response) -> int | None:
    """The whole source's size: from Content-Range on a 206, Content-Length on a 200."""
    if response.status_code == 206:
        match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
        return int(match.group(1)) if match else None
    length = response.headers.get("content-length", "")
    return int(length) if length.isdigit() else None


async def check_urls(
    urls: Iterable[tuple[int, str]],
    *,
    concurrency: int = CONCURRENCY,
    per_host: int = PER_HOST,
    timeout_s: float = TIMEOUT_S,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[SourceCheck]:
    """Check (row, url) pairs, `concurrency` at a time and at most `per_host` to one host; in row order."""
    todo = list(urls)
    everyone = asyncio.Semaphore(concurrency)
    hosts: defaultdict[str, asyncio.Semaphore] = defaultdict(lambda: asyncio.Semaphore(per_host))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(timeout_s)
    async with httpx.AsyncClient(
        transport=transport, limits=limits, timeout=timeout, follow_redirects=False, trust_env=False
    ) as client:

        async def one(row: int, url: str) -> None:
            try:
                async with hosts[urlsplit(url).hostname or ""]:
                    found.append(await check_url(client, row, url))
            finally:
                everyone.release()

        found: list[SourceCheck] = []
        async with asyncio.TaskGroup() as group:
            for row, url in todo:
                # A slot before the task exists: a 200,000-row manifest never holds more than
                # `concurrency` checks (and their coroutines) at once.
                await everyone.acquire()
                group.create_task(one(row, url))
    return sorted(found, key=lambda c: c.row)


async def check_plan_sources(
    plan: Plan,
    *,
    concurrency: int = CONCURRENCY,
    per_host: int = PER_HOST,
    timeout_s: float = TIMEOUT_S,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[SourceCheck]:
    """Check every ready URL row of `plan` (a credential-bearing URL in its real form, from memory)."""
    ready = plan.ready.filter(pl.col("source_type") == SourceType.URL).select("row", "source")
    urls = [(row, plan.secrets.get(row, source)) for row, source in ready.iter_rows()]
    return await check_urls(
        urls, concurrency=concurrency, per_host=per_host, timeout_s=timeout_s, transport=transport
    )


def apply_checks(plan: Plan, checks: list[SourceCheck], *, reject: bool) -> Plan:
    """The plan with what the checks found: the columns `source_status`, `source_bytes` and
    `source_content_type` (the report's, from the plan the run keeps: a resume never checks again), a
    note with the totals, and, with `reject`, the rows that failed `rejected` with their code and reason
    (without it, a note counts them and they stay ready)."""
    failed = {c.row: c for c in checks if c.code is not None}
    sizes = {c.row: c.bytes for c in checks if c.bytes is not None}
    statuses = {c.row: c.status for c in checks if c.status is not None}
    types = {c.row: c.content_type for c in checks if c.content_type is not None}
    frame = plan.frame.with_columns(
        pl.col("row").replace_strict(statuses, default=None, return_dtype=pl.Int64).alias("source_status"),
        pl.col("row").replace_strict(sizes, default=None, return_dtype=pl.Int64).alias("source_bytes"),
        pl.col("row")
        .replace_strict(types, default=None, return_dtype=pl.String)
        .alias("source_content_type"),
    )
    by_code = Counter(c.code for c in failed.values())
    fetched = sum(size for row, size in sizes.items() if row not in failed and size is not None)
    note = (
        f"sources checked: {len(checks)} URL(s), {len(checks) - len(failed)} fine, "
        f"{fetched:,} bytes for the platform to fetch"
    )
    if failed:
        note += "; failed: " + ", ".join(f"{code} {n}" for code, n in sorted(by_code.items()))
    notes = [*plan.notes, note]
    if failed and reject:
        hit = pl.col("row").is_in(list(failed))
        codes = {row: c.code for row, c in failed.items()}
        reasons = {row: c.reason for row, c in failed.items()}
        frame = frame.with_columns(
            pl.when(hit).then(pl.lit(PlanStatus.REJECTED.value)).otherwise(pl.col("status")).alias("status"),
            # As for every rejected row: the key is the row's, so that a journal could hold it.
            pl.when(hit).then(pl.format("rejected:{}", pl.col("row"))).otherwise(pl.col("key")).alias("key"),
            pl.when(hit)
            .then(pl.col("row").replace_strict(codes, default=None, return_dtype=pl.String))
            .otherwise(pl.col("error_code"))
            .alias("error_code"),
            pl.when(hit)
            .then(pl.col("row").replace_strict(reasons, default=None, return_dtype=pl.String))
            .otherwise(pl.col("reason"))
            .alias("reason"),
        )
    elif failed:
        notes.append(f"--check-sources=warn: {len(failed)} row(s) would have been rejected; they are kept")
    return replace(plan, frame=frame, notes=notes)
