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
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

import httpx
import polars as pl

from .errors import ConfigError
from .objects import ObjectError, ObjectStores, head_objects, parse_object_url
from .options import ProbeOptions
from .plan import Plan
from .text import first_few
from .vocabulary import PlanStatus, SourceType

if TYPE_CHECKING:
    from .probe import MediaInfo
    from .settings import Settings

SOURCE_NOT_FOUND = "SOURCE_NOT_FOUND"
SOURCE_FORBIDDEN = "SOURCE_FORBIDDEN"
SOURCE_UNREACHABLE = "SOURCE_UNREACHABLE"
SOURCE_NOT_VIDEO = "SOURCE_NOT_VIDEO"

CONCURRENCY = 32  # checks in flight in all
PER_HOST = 16  # checks in flight to one host
# The first byte, unencoded; a user agent, which some CDNs' firewalls require.
_RANGE = {"Range": "bytes=0-0", "Accept-Encoding": "identity", "User-Agent": "batch-ingest (source check)"}
KEEP_ALIVE_BODY = 64 * 1024  # a body up to this is read, to keep its connection; a larger one is dropped
# Connections are spread over pools of at most this many: httpcore scans a pool's every connection
# for each request, so one pool of 32 costs more CPU than four of 8 (see api/client.py).
CONNECTIONS_PER_POOL = 8
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


async def check_url(
    transport: httpx.AsyncBaseTransport, row: int, url: str, timeout_s: float = TIMEOUT_S
) -> SourceCheck:
    """Check one URL (see the module docstring); never raises for what the server or network does.

    Straight through a transport, not an `httpx.AsyncClient`: a check needs none of a client's cookies,
    auth, hooks or redirects (followed here by hand), which cost a third of its CPU."""
    timeouts = httpx.Timeout(timeout_s).as_dict()
    started = time.monotonic()
    seen = [url]
    status: int | None = None
    host = _host(url)

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
            request = httpx.Request("GET", url, headers=_RANGE, extensions={"timeout": timeouts})
            response = await transport.handle_async_request(request)
            # The status and headers are all a check needs; a small body (the one byte asked for, a
            # redirect's page) is read all the same, so that the connection serves the next check.
            length = response.headers.get("content-length", "")
            if length.isdigit() and int(length) <= KEEP_ALIVE_BODY:
                try:  # raw (never decoded), and within the timeout in all: a trickling body is let go
                    async with asyncio.timeout(timeout_s):
                        async for _ in response.aiter_raw():
                            pass
                except (TimeoutError, httpx.HTTPError, httpx.StreamError):
                    pass  # the answer's head is what counts; the connection is dropped instead of kept
            await response.aclose()
        except httpx.TimeoutException:
            return done(
                SOURCE_UNREACHABLE,
                f"no answer from {host} within {timeout_s:g} s: check that the host serves it",
            )
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            return done(
                SOURCE_UNREACHABLE,
                f"cannot reach {host} ({type(exc).__name__}): check the host name and that it is up",
            )
        except (
            httpx.HTTPError,
            httpx.StreamError,
            ValueError,
            UnicodeError,
        ) as exc:  # a URL httpx cannot ask for
            return done(
                SOURCE_UNREACHABLE,
                f"the URL cannot be requested ({type(exc).__name__}: {str(exc)[:80]}): fix the URL",
            )
        status = response.status_code
        if status in (301, 302, 303, 307, 308) and "location" in response.headers:
            url = urljoin(url, response.headers["location"])
            host = _host(url)
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


def _host(url: str) -> str | None:
    """The URL's host, or None when it has none that can be read (a malformed IPv6 literal)."""
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


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
    """Check (row, url) pairs, `concurrency` at a time and at most `per_host` to one host; in row order.

    `concurrency` workers take turns over the hosts that have work and a free slot, so a manifest
    sorted by host keeps every host busy, not one host at a time; only `concurrency` checks (and
    their coroutines) exist at once, whatever the manifest's size."""
    queues: dict[str, deque[tuple[int, str]]] = {}
    for row, url in urls:
        queues.setdefault(_host(url) or "", deque()).append((row, url))
    waiting = sum(len(q) for q in queues.values())  # not yet taken by a worker
    busy: Counter[str] = Counter()
    turns = deque(queues)  # hosts with work and a free slot, each once, in turn
    in_turns = set(queues)
    turn_freed = asyncio.Event()
    found: list[SourceCheck] = []
    limits = httpx.Limits(
        max_connections=CONNECTIONS_PER_POOL, max_keepalive_connections=CONNECTIONS_PER_POOL
    )
    pools = 1 if transport is not None else -(-concurrency // CONNECTIONS_PER_POOL)
    context = httpx.create_ssl_context(trust_env=False)  # one for every pool: each costs ~40 ms of CPU
    transports: list[httpx.AsyncBaseTransport] = (
        [transport]
        if transport is not None
        else [httpx.AsyncHTTPTransport(verify=context, limits=limits) for _ in range(pools)]
    )

    def offer(host: str) -> None:
        if host not in in_turns and queues[host] and busy[host] < per_host:
            turns.append(host)
            in_turns.add(host)
            turn_freed.set()

    async def worker(through: httpx.AsyncBaseTransport) -> None:
        nonlocal waiting
        while waiting:
            if not turns:  # every host with work is at its cap: wait for a check to end
                turn_freed.clear()
                await turn_freed.wait()
                continue
            host = turns.popleft()
            in_turns.discard(host)
            row, url = queues[host].popleft()
            waiting -= 1
            busy[host] += 1
            offer(host)
            try:
                found.append(await check_url(through, row, url, timeout_s))
            finally:
                busy[host] -= 1
                offer(host)
        turn_freed.set()  # the others may be waiting for a turn that will never come: let them end

    try:
        async with asyncio.TaskGroup() as group:
            for i in range(min(concurrency, waiting)):
                group.create_task(worker(transports[i % pools]))  # at most CONNECTIONS_PER_POOL per pool
    finally:
        if transport is None:  # a caller's own transport is the caller's to close
            for own in transports:
                await own.aclose()
    return sorted(found, key=lambda c: c.row)


async def check_plan_sources(
    plan: Plan,
    *,
    concurrency: int = CONCURRENCY,
    per_host: int = PER_HOST,
    timeout_s: float = TIMEOUT_S,
    transport: httpx.AsyncBaseTransport | None = None,
    objects: ObjectStores | None = None,
) -> list[SourceCheck]:
    """Check every ready URL row of `plan` (a credential-bearing URL in its real form, from memory) and
    ask the store of every ready object row for the object's size; in row order."""
    ready = plan.ready.select("row", "source", "source_type")
    urls = [
        (row, plan.secrets.get(row, source))
        for row, source, kind in ready.iter_rows()
        if kind == SourceType.URL
    ]
    blobs = [(row, source) for row, source, kind in ready.iter_rows() if kind == SourceType.OBJECT]
    url_checks, object_checks = await asyncio.gather(
        check_urls(
            urls, concurrency=concurrency, per_host=per_host, timeout_s=timeout_s, transport=transport
        ),
        check_objects(objects or ObjectStores(), blobs, concurrency=concurrency),
    )
    return sorted([*url_checks, *object_checks], key=lambda c: c.row)


async def check_objects(
    stores: ObjectStores, sources: list[tuple[int, str]], *, concurrency: int = CONCURRENCY
) -> list[SourceCheck]:
    """Existence and size of each object, asked of its store (never through a signed URL)."""
    if not sources:
        return []
    found = await head_objects(stores, sources, concurrency=concurrency)
    buckets = dict(sources)
    checks = []
    for row, size, error, elapsed in found:
        bucket = parse_object_url(buckets[row]).bucket
        code: str | None = None
        reason: str | None = None
        if error is not None:
            code, reason = error.code, error.reason
        elif size == 0:
            code, reason = (
                SOURCE_NOT_VIDEO,
                f"{buckets[row]} is empty (0 bytes): upload the video again or drop the row",
            )
        checks.append(SourceCheck(row, code, reason, None, size, None, bucket, elapsed))
    return checks


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
        f"sources checked: {len(checks)} remote source(s), {len(checks) - len(failed)} fine, "
        f"{fetched:,} bytes for the platform to fetch"
    )
    if failed:
        note += "; failed: " + ", ".join(f"{code} {n}" for code, n in sorted(by_code.items()))
    notes = [*plan.notes, note]
    if failed and reject:
        frame = _rejected(frame, {row: (c.code or "", c.reason or "") for row, c in failed.items()})
    elif failed:
        notes.append(f"--check-sources=warn: {len(failed)} row(s) would have been rejected; they are kept")
    return replace(plan, frame=frame, notes=notes)


@dataclass(frozen=True)
class ProbeResult:
    """What the media probe found of one row: `info`, or `reason` when it is not a video to ingest."""

    row: int
    info: MediaInfo | None
    reason: str | None
    code: str | None = None  # when it failed for another cause than the media (MEDIA_INVALID)


async def probe_plan_media(
    plan: Plan,
    options: ProbeOptions,
    *,
    concurrency: int = CONCURRENCY,
    objects: ObjectStores | None = None,
) -> list[ProbeResult]:
    """Open every ready local file as media (and, with `options.remote`, every URL and object, read
    through ranged GETs); in threads, `concurrency` at a time; in row order."""
    from .probe import MediaInvalid, probe_file, probe_url

    kinds = [SourceType.FILE.value] + (
        [SourceType.URL.value, SourceType.OBJECT.value] if options.remote else []
    )
    ready = plan.ready.filter(pl.col("source_type").is_in(kinds)).select(
        "row", "source", "source_type", "source_path"
    )
    stores = objects or ObjectStores()
    gate = asyncio.Semaphore(concurrency)
    found: list[ProbeResult] = []

    async def one(row: int, source: str, kind: str, path: str | None) -> None:
        try:
            if kind == SourceType.FILE:
                info = await asyncio.to_thread(
                    probe_file, path or source, max_size=options.max_size, max_duration=options.max_duration
                )
            else:
                url = (
                    await stores.sign(source) if kind == SourceType.OBJECT else plan.secrets.get(row, source)
                )
                info = await asyncio.to_thread(
                    probe_url, url, max_size=options.max_size, max_duration=options.max_duration
                )
            found.append(ProbeResult(row, info, None))
        except MediaInvalid as exc:
            found.append(ProbeResult(row, None, str(exc)))
        except ObjectError as exc:  # not the media's fault: its own code
            found.append(ProbeResult(row, None, exc.reason, exc.code))
        finally:
            gate.release()

    async with asyncio.TaskGroup() as group:
        for row, source, kind, path in ready.iter_rows():
            await gate.acquire()
            group.create_task(one(row, source, kind, path))
    return sorted(found, key=lambda r: r.row)


def apply_probes(plan: Plan, probes: list[ProbeResult], options: ProbeOptions) -> Plan:
    """The plan with the media columns of every probed row, its failures `rejected` with MEDIA_INVALID
    and the prober's reason, and notes with the total duration and the warnings (moov at the end)."""
    from .probe import MEDIA_INVALID

    infos = {p.row: p.info for p in probes if p.info is not None}
    failed = {p.row: (p.code or MEDIA_INVALID, p.reason or "") for p in probes if p.info is None}

    def column(name: str, attribute: str, dtype: pl.DataType) -> pl.Expr:
        values = {row: getattr(info, attribute) for row, info in infos.items()}
        return pl.col("row").replace_strict(values, default=None, return_dtype=dtype).alias(name)

    frame = plan.frame.with_columns(
        column("media_duration_s", "duration_s", pl.Float64()),
        column("media_format", "format", pl.String()),
        column("video_codec", "video_codec", pl.String()),
        column("width", "width", pl.Int64()),
        column("height", "height", pl.Int64()),
        column("audio_codec", "audio_codec", pl.String()),
    )
    minutes = sum(info.duration_s or 0.0 for info in infos.values()) / 60
    note = f"media probed: {len(probes)} source(s), {len(infos)} fine, {minutes:,.1f} minutes of video"
    if failed:
        by_code = Counter(code for code, _ in failed.values())
        note += "; rejected: " + ", ".join(f"{code} {n}" for code, n in sorted(by_code.items()))
    notes = [*plan.notes, note]
    warned: dict[str, list[int]] = {}
    for row, info in infos.items():
        for warning in info.warnings:
            warned.setdefault(warning, []).append(row)
    notes += [f"{warning} (rows {first_few(sorted(rows))})" for warning, rows in warned.items()]
    if failed:
        frame = _rejected(frame, failed)
    return replace(plan, frame=frame, notes=notes)


def _rejected(frame: pl.DataFrame, rows: dict[int, tuple[str, str]]) -> pl.DataFrame:
    """`frame` with these rows rejected, each with its (code, reason)."""
    hit = pl.col("row").is_in(list(rows))
    codes = {row: code for row, (code, _) in rows.items()}
    reasons = {row: reason for row, (_, reason) in rows.items()}
    return frame.with_columns(
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


async def examine(
    plan: Plan,
    settings: Settings,
    *,
    check: str | None,
    probe: ProbeOptions | None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Plan:
    """The plan after `--check-sources` (`check`: "reject" or "warn") and `--probe`, as `run` and
    `validate` both do them, before a canary chooses its rows. Neither touches the SmartSTREAM API."""
    if check is None and probe is None:
        return plan
    objects = settings.make_object_stores()
    if check is not None:
        checks = await check_plan_sources(
            plan,
            concurrency=settings.check_concurrency,
            per_host=settings.check_per_host,
            transport=transport,
            objects=objects,
        )
        plan = apply_checks(plan, checks, reject=check == "reject")
    if probe is not None:
        probes = await probe_plan_media(plan, probe, concurrency=settings.check_concurrency, objects=objects)
        plan = apply_probes(plan, probes, probe)
    return plan


async def check_signing(plan: Plan, stores: ObjectStores, *, rows: list[int] | None = None) -> None:
    """Sign one URL in each bucket the plan's ready object rows (of `rows`, when given) name, before
    anything is sent: a store that cannot sign here (no credentials) stops the command with exit 2
    and one message, instead of failing every row of the bucket one by one."""
    ready = plan.ready.filter(pl.col("source_type") == SourceType.OBJECT)
    if rows is not None:
        ready = ready.filter(pl.col("row").is_in(rows))
    first: dict[tuple[str, str], str] = {}
    for source in ready["source"].to_list():
        ref = parse_object_url(source)
        first.setdefault((ref.scheme, ref.bucket), source)
    for source in first.values():
        try:
            await stores.sign(source)
        except ObjectError as exc:
            raise ConfigError(f"{exc.reason}; nothing was sent") from None
