"""`SmartStreamClient`: one async method per endpoint of the Ingest API (Video) page.

A client's requests share its connection pools (a few small `httpx.AsyncClient`s, see
`CONNECTIONS_PER_POOL`), one `RateLimiter` and one `Auth`. The client takes plain values; building
one from `Settings` is `Settings.make_client`. httpx errors become ours here and nowhere else (see
`errors.py`); nothing raised carries headers.
Reads (GET) are retried on transient errors; creates are never retried here, because a
create that got no answer may have created the job: the caller looks before sending again.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import ssl
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from .._version import __version__
from ..errors import (
    ApiConnectionError,
    ApiError,
    AuthError,
    EndlessListing,
    MalformedResponse,
    NotFoundError,
    PermanentApiError,
    RateLimitedError,
    ServerError,
    SourceUnreadable,
)
from ..redact import redact_text
from .auth import Auth, expiration_epoch
from .clock import PlatformClock
from .defaults import CONNECT_TIMEOUT_S, GET_RETRIES, READ_TIMEOUT_S
from .models import Job, JobProfile, MalformedRecord, Page
from .ratelimit import RETRY_AFTER_CEILING_S, ByteRate, RateLimiter, parse_retry_after
from .retry import call_with_retries

USER_AGENT = f"batch-ingest/{__version__} httpx/{httpx.__version__}"
UPLOAD_CHUNK = 4 * 1024 * 1024  # bytes read from disk per step of an upload (1 MiB: ~1/3 of the throughput)
# httpcore's pool scans every connection for every queued request on every change
# (`_assign_requests_to_connections`), so one pool of 64 connections spends most of its time
# scanning: measured 140 requests/s at 64 connections against 750 with the same connections
# split over small pools. Connections are therefore spread over pools of at most this size;
# their total still equals the caller's bound.
CONNECTIONS_PER_POOL = 16
# The vendor publishes no page-size limit; we assume a page holds at most 100 items (`limit` <= 100).
MAX_PAGE_SIZE = 100
ANNOUNCE_PAUSE_S = 5.0  # a rate-limit pause longer than this is announced with its reason and end
MAX_ANSWER_BYTES = 8 * 1024 * 1024  # a page of 100 jobs is ~50 KB; anything this large is not an answer
MAX_PAGES = 10_000  # a listing that has not ended by then never will (1,000,000 items)
MAX_POLL_PAGES = 1_000  # one poll reads back to the last change seen: 100,000 changes at most
ProgressCallback = Callable[[int], Any]
AdmittedCallback = Callable[[], Awaitable[None]]

# Errors before a single byte of the request could have left: the server surely saw nothing.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


def _ref_path(value: str | int) -> str:
    """The path segment for `123` or `ref:<ref_id>` (the ref id percent-encoded)."""
    text = str(value)
    if text.startswith("ref:"):
        return "ref:" + quote(text[4:], safe="")
    return quote(text, safe="")


def _quote_filename(name: str) -> str:
    # As browsers do (WHATWG multipart/form-data encoding): escape quote, CR and LF.
    return name.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class SmartStreamClient:
    """Async client for the SmartSTREAM Ingest API. Use as `async with`.

    `max_connections` bounds the connections the client opens itself, spread over pools of at
    most `CONNECTIONS_PER_POOL`. An injected `transport` (httpx.ASGITransport, MockTransport, a
    caller's own AsyncHTTPTransport) keeps its own connections and limits, which a client cannot
    resize: the client then sends everything through that one transport and `max_connections`
    does not apply.
    """

    def __init__(
        self,
        *,
        base_url: str,
        merchant_id: str,
        auth: Auth,
        limiter: RateLimiter | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 8,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        read_timeout: float = READ_TIMEOUT_S,
        get_retries: int = GET_RETRIES,
        bwlimit: float = 0.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._clock = clock
        self.merchant_id = merchant_id
        self.auth = auth
        self.limiter = limiter or RateLimiter(0)
        self.get_retries = get_retries
        self._sleep = sleep
        self.requests_sent = 0
        self.platform_clock = PlatformClock()
        # Bytes per second for every upload of this client together (0: no limit).
        self.bandwidth = ByteRate(bwlimit) if bwlimit > 0 else None
        self._on_notice: Callable[[str], Any] = lambda text: None
        self._announced_until = 0.0
        self._prefix = f"/v1/merchants/{quote(merchant_id, safe='')}"
        timeout = httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout, pool=None)
        # The read timeout is per read: a server trickling a byte at a time would hold a request forever.
        self._deadline = connect_timeout + 2 * read_timeout
        if transport is None:
            count = -(-max_connections // CONNECTIONS_PER_POOL)
            sizes = [
                max_connections // count + (1 if i < max_connections % count else 0) for i in range(count)
            ]
        else:
            # Several clients over one transport would share its one pool (and close it once each):
            # the transport's own limits are the only ones there are.
            count, sizes = 1, [max_connections]
        # One TLS context for every pool (each one built loads the CA bundle: about 50 ms), and for an
        # http:// API only httpx's unverified one, which loads nothing (every request goes to a path
        # under base_url, so such a client never speaks TLS).
        verify: ssl.SSLContext | bool = (
            False
            if transport is not None or self.base_url.lower().startswith("http:")
            else httpx.create_ssl_context(trust_env=False)
        )
        self._pools = [
            httpx.AsyncClient(
                base_url=self.base_url,
                transport=transport,
                limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
                timeout=timeout,
                headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
                follow_redirects=False,
                trust_env=False,
                verify=verify,
            )
            for size in sizes
        ]
        self._sizes = sizes
        self._busy = [0] * count  # requests in flight per pool

    def _pick_pool(self) -> int:
        """The pool with the most free connections."""
        return max(range(len(self._pools)), key=lambda i: self._sizes[i] - self._busy[i])

    @property
    def on_notice(self) -> Callable[[str], Any]:
        """Where long waits and the rate limiter's news are announced."""
        return self._on_notice

    @on_notice.setter
    def on_notice(self, notice: Callable[[str], Any]) -> None:
        self._on_notice = notice
        self.limiter.on_notice = notice

    async def __aenter__(self) -> SmartStreamClient:
        await self.limiter.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pools (and leave a shared rate store)."""
        await self.limiter.aclose()
        for pool in self._pools:
            await pool.aclose()

    # -- the transport boundary --------------------------------------------------------------

    def _url(self, path: str) -> str:
        """The whole URL of a request to `path` (no query), as httpx joins it to the base URL."""
        return self.base_url.rstrip("/") + "/" + path.lstrip("/")

    async def _send_once(self, method: str, path: str, **request: Any) -> httpx.Response:
        """`_send_once_or_raise`, whose errors name the whole URL: a base URL that already ends in /v1
        shows as /v1/v1/..."""
        try:
            return await self._send_once_or_raise(method, path, **request)
        except ApiError as exc:
            if not exc.url:
                exc.url = self._url(path)
                exc.args = (str(exc),)
            raise

    async def _send_once_or_raise(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str],
        params: dict[str, Any] | None = None,
        json: Any = None,
        content: Any = None,
        on_admitted: AdmittedCallback | None = None,
    ) -> httpx.Response:
        admitted_at = await self.limiter.acquire()
        if on_admitted is not None:
            # The request leaves right after this: the caller records that (a create's `sending`).
            await on_admitted()
        self.requests_sent += 1
        pool = self._pick_pool()
        self._busy[pool] += 1
        deadline = self._deadline + (self._upload_allowance(headers) if content is not None else 0.0)
        try:
            async with asyncio.timeout(deadline):
                request = self._pools[pool].build_request(
                    method, path, headers=headers, params=params, json=json, content=content
                )
                streamed = await self._pools[pool].send(request, stream=True)
                try:
                    body = await _read_capped(streamed, MAX_ANSWER_BYTES)
                finally:
                    await streamed.aclose()
        except _NOT_SENT as exc:
            raise ApiConnectionError(
                f"could not connect to {self.base_url}: {type(exc).__name__}",
                in_doubt=False,
                method=method,
                path=path,
            ) from exc
        except (httpx.TimeoutException, TimeoutError) as exc:
            what = (
                "no answer in time"
                if isinstance(exc, httpx.TimeoutException)
                else f"no whole answer within {deadline:.0f} s"
            )
            raise ApiConnectionError(
                f"{what} ({type(exc).__name__})", in_doubt=True, method=method, path=path
            ) from exc
        except httpx.DecodingError as exc:  # a Content-Encoding the body does not have
            raise MalformedResponse(
                f"the answer could not be decoded ({type(exc).__name__})", method=method, path=path
            ) from exc
        except httpx.TransportError as exc:
            raise ApiConnectionError(
                f"connection lost before the answer ({type(exc).__name__})",
                in_doubt=True,
                method=method,
                path=path,
            ) from exc
        finally:
            self._busy[pool] -= 1
        if body is None:
            if 200 <= streamed.status_code < 300:
                raise MalformedResponse(
                    f"the answer is larger than {MAX_ANSWER_BYTES // (1024 * 1024)} MiB",
                    method=method,
                    path=path,
                    status=streamed.status_code,
                )
            body = b""  # an over-long error body: the status says enough
        response = httpx.Response(
            streamed.status_code, headers=streamed.headers, content=body, request=request
        )
        self.platform_clock.observe_date(response.headers.get("Date"), self._clock())
        self._raise_for_status(method, path, response, admitted_at)
        self.limiter.on_success()
        return response

    @staticmethod
    def _upload_allowance(headers: dict[str, str]) -> float:
        """Extra seconds an upload's deadline allows for its body (at a slow but steady 64 KiB/s)."""
        try:
            size = int(headers.get("Content-Length", "0"))
        except ValueError:
            size = 0
        return size / (64 * 1024)

    def _raise_for_status(self, method: str, path: str, response: httpx.Response, admitted_at: float) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        code, message = None, response.reason_phrase or "error"
        try:
            body = response.json()
            if isinstance(body, dict):
                code = body.get("code") if isinstance(body.get("code"), str) else None
                message = str(body.get("message") or message)[:500]
        except (ValueError, RecursionError):
            text = response.text.strip()
            if text:
                message = text[:200]
        message = redact_text(message)  # a server that echoes a source URL must not leak its credential
        where: dict[str, Any] = {"method": method, "path": path, "status": status, "code": code}
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            pause = self.limiter.on_rate_limited(retry_after, admitted_at)
            if pause > ANNOUNCE_PAUSE_S and self._announced_until < self._clock() + pause - 1:
                self._announced_until = self._clock() + pause
                until = time.strftime("%H:%M:%S", time.gmtime(self._announced_until))
                asked = (
                    f"asked for {retry_after:.0f} s (Retry-After, capped at {RETRY_AFTER_CEILING_S:.0f} s)"
                    if retry_after is not None
                    else "gave no Retry-After"
                )
                self.on_notice(
                    f"rate limited (429): the API {asked}; every request waits {pause:.0f} s, until {until} UTC"
                )
            raise RateLimitedError(message, retry_after=retry_after, **where)
        if status >= 500:
            raise ServerError(message, **where)
        if status == 401:
            raise AuthError(message, **where)
        if status == 404:
            raise NotFoundError(message, **where)
        raise PermanentApiError(message, **where)

    async def _fetch_token(self, email: str, password: str) -> tuple[str, float | None]:
        path = f"{self._prefix}/auth-token/"
        response = await self._send_once(
            "POST",
            path,
            headers=self.auth.api_key_header(),
            json={"mail_address": email, "password": password},
        )
        body = self._json(response, "POST", path)
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token or any(not (0x20 < ord(c) < 0x7F) for c in token):
            raise AuthError(
                "the auth-token answer holds no usable token (missing, or not printable ASCII)",
                method="POST",
                path=path,
                status=response.status_code,
            )
        return token, expiration_epoch(body.get("expiration"))

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        body: Callable[[], tuple[dict[str, str], Any]] | None = None,
        on_admitted: AdmittedCallback | None = None,
    ) -> httpx.Response:
        """Send one authenticated request; after a 401, renew the token once and resend.

        `on_admitted` is awaited once the rate limiter admits the request, just before it leaves
        (again before a resend after a 401).
        """
        try:
            return await self._request_renewing(
                method, path, params=params, json=json, body=body, on_admitted=on_admitted
            )
        except AuthError as exc:
            raise self._explained(exc) from None

    async def _request_renewing(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None,
        json: Any,
        body: Callable[[], tuple[dict[str, str], Any]] | None,
        on_admitted: AdmittedCallback | None,
    ) -> httpx.Response:
        for attempt in (1, 2):
            headers, token = await self.auth.headers(self._fetch_token)
            content = None
            if body is not None:
                extra, content = body()
                headers.update(extra)
            try:
                return await self._send_once(
                    method,
                    path,
                    headers=headers,
                    params=params,
                    json=json,
                    content=content,
                    on_admitted=on_admitted,
                )
            except AuthError:
                if attempt == 1 and await self.auth.renew_after_401(self._fetch_token, token):
                    continue
                raise
        raise AssertionError("unreachable")

    def _explained(self, exc: AuthError) -> AuthError:
        """A 401 with what to check: the API answers "Authentication failed" whatever the cause, so the
        hint names what this request carried (the token endpoint: email, password, key; any other:
        key and token), and the merchant id, which is part of every URL."""
        if exc.status != 401:
            return exc
        if exc.path.endswith("/auth-token/"):
            hint = (
                "the auth-token endpoint refused the login: check the email and password "
                "(SMARTSTREAM_EMAIL, SMARTSTREAM_PASSWORD), the API key (SMARTSTREAM_API_KEY) and the "
                "merchant id (SMARTSTREAM_MERCHANT_ID)"
            )
        elif self.auth.can_renew:
            hint = (
                "a token just obtained with the email and password was refused: check the API key "
                "(SMARTSTREAM_API_KEY) and that the merchant id (SMARTSTREAM_MERCHANT_ID) is the account "
                "the email belongs to"
            )
        else:
            hint = (
                "check the token (SMARTSTREAM_TOKEN: it may have expired; --email and --password get "
                "tokens and renew them), the API key (SMARTSTREAM_API_KEY) and the merchant id "
                "(SMARTSTREAM_MERCHANT_ID); the API does not say which one it refused"
            )
        if hint in exc.message:
            return exc
        explained = AuthError(
            f"{exc.message}: {hint}",
            method=exc.method,
            path=exc.path,
            status=exc.status,
            code=exc.code,
            url=exc.url,
        )
        return explained

    @staticmethod
    def _json(response: httpx.Response, method: str, path: str) -> Any:
        try:
            return response.json()
        except (ValueError, RecursionError) as exc:
            # A 2xx without readable JSON: the server did something; treat it as no answer.
            raise MalformedResponse(
                "the answer was not JSON", method=method, path=path, status=response.status_code
            ) from exc

    async def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        async def once() -> Any:
            response = await self._request("GET", path, params=params)
            return self._json(response, "GET", path)

        return await call_with_retries(once, self.get_retries, sleep=self._sleep)

    # -- endpoints ---------------------------------------------------------------------------

    async def auth_token(self, email: str, password: str) -> tuple[str, float | None]:
        """POST auth-token/: a new access token and its expiry (epoch seconds, or None)."""
        return await self._fetch_token(email, password)

    async def create_job(
        self,
        source_url: str,
        job_profile_id: int,
        *,
        ref_id: str | None = None,
        name: str | None = None,
        description: str | None = None,
        on_admitted: AdmittedCallback | None = None,
    ) -> Job:
        """POST jobs (remote asset ingest). Not retried: see the module docstring."""
        path = f"{self._prefix}/jobs"
        payload: dict[str, Any] = {"source_url": source_url, "job_profile_id": int(job_profile_id)}
        for key, value in (("ref_id", ref_id), ("name", name), ("description", description)):
            if value is not None and value != "":
                payload[key] = value
        response = await self._request("POST", path, json=payload, on_admitted=on_admitted)
        return self._created(response, path)

    def _created(self, response: httpx.Response, path: str) -> Job:
        job = _parse(Job, self._json(response, "POST", path), "POST", path)
        self.platform_clock.observe_created(job.created_at, self._clock())
        return job

    async def upload_job(
        self,
        file_path: str | os.PathLike[str],
        *,
        profile_id: int | str | None = None,
        ref_id: str | None = None,
        name: str | None = None,
        description: str | None = None,
        on_progress: ProgressCallback | None = None,
        on_admitted: AdmittedCallback | None = None,
        expected_size: int | None = None,
    ) -> Job:
        """POST jobs (local file ingest), streaming `source_file` from disk. Not retried.

        A file that is gone, unreadable, no longer a regular file, of another size than
        `expected_size`, or that shrinks or grows during the upload raises SourceUnreadable;
        an upload cut short that way never completes its body, so it cannot have created a job.
        """
        file_path = Path(file_path)
        try:
            st = file_path.stat()
        except OSError as exc:
            raise SourceUnreadable(
                f"{file_path}: {exc.strerror}: the file changed since validation"
            ) from None
        if not stat.S_ISREG(st.st_mode):
            raise SourceUnreadable(f"{file_path} is no longer a regular file (it changed since validation)")
        size = st.st_size
        if expected_size is not None and size != expected_size:
            raise SourceUnreadable(
                f"{file_path} changed size since validation ({expected_size} -> {size} bytes): check the file, "
                "then retry the row"
            )
        os.close(_open_regular(file_path))
        fields = {k: v for k, v in (("ref_id", ref_id), ("name", name), ("description", description)) if v}
        path = f"{self._prefix}/jobs"

        def body() -> tuple[dict[str, str], Any]:
            boundary = secrets.token_hex(16)
            head = b""
            for key, value in fields.items():
                head += (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'.encode()
                    + str(value).encode("utf-8")
                    + b"\r\n"
                )
            head += (
                f'--{boundary}\r\nContent-Disposition: form-data; name="source_file"; '
                f'filename="{_quote_filename(file_path.name)}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            tail = f"\r\n--{boundary}--\r\n".encode()
            headers = {
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "Content-Length": str(len(head) + size + len(tail)),
            }
            if profile_id is not None:
                headers["Profile-Id"] = str(profile_id)
            return headers, _stream_file(file_path, size, head, tail, on_progress, self.bandwidth)

        response = await self._request("POST", path, body=body, on_admitted=on_admitted)
        return self._created(response, path)

    async def get_job(self, job_id: str) -> Job:
        """GET jobs/:job_id, or jobs/ref:<ref_id> when `job_id` starts with `ref:`."""
        path = f"{self._prefix}/jobs/{_ref_path(job_id)}"
        return _parse(Job, await self._get(path), "GET", path)

    async def get_job_by_ref(self, ref_id: str) -> Job:
        """GET jobs/ref:<ref_id>."""
        return await self.get_job(f"ref:{ref_id}")

    async def list_jobs(
        self, *, limit: int = MAX_PAGE_SIZE, page: int = 1, sort: str = "updated_at", order: str = "DESC"
    ) -> Page[Job]:
        """GET jobs: one page."""
        body = await self._list("jobs", limit, page, sort, order)
        items = _items(body, "jobs", self._prefix)
        return Page([_parse(Job, j, "GET", f"{self._prefix}/jobs") for j in items], _count(body), page, limit)

    async def list_jobs_raw(
        self, *, limit: int = MAX_PAGE_SIZE, page: int = 1, sort: str = "updated_at", order: str = "DESC"
    ) -> tuple[list[dict[str, Any]], int | None]:
        """GET jobs: one page as the API's dicts (a poller reads many jobs that are not its own), and `count`."""
        body = await self._list("jobs", limit, page, sort, order)
        return _items(body, "jobs", self._prefix), _count(body)

    async def _list(self, what: str, limit: int, page: int, sort: str, order: str) -> Any:
        return await self._get(
            f"{self._prefix}/{what}", {"limit": limit, "page": page, "sort": sort, "order": order}
        )

    def iter_jobs(
        self, *, limit: int = MAX_PAGE_SIZE, sort: str = "updated_at", order: str = "DESC", page: int = 1
    ) -> AsyncIterator[Job]:
        """Every job from `page` on, page by page, ending on the first page shorter than `limit`."""
        return _paginate(self.list_jobs, limit=limit, sort=sort, order=order, page=page)

    async def get_job_profile(self, profile_id: str | int) -> JobProfile:
        """GET job_profiles/:id, or job_profiles/ref:<ref_id>."""
        path = f"{self._prefix}/job_profiles/{_ref_path(profile_id)}"
        return _parse(JobProfile, await self._get(path), "GET", path)

    async def list_job_profiles(
        self, *, limit: int = MAX_PAGE_SIZE, page: int = 1, sort: str = "updated_at", order: str = "DESC"
    ) -> Page[JobProfile]:
        """GET job_profiles: one page."""
        body = await self._list("job_profiles", limit, page, sort, order)
        items = _items(body, "job_profiles", self._prefix)
        path = f"{self._prefix}/job_profiles"
        return Page([_parse(JobProfile, p, "GET", path) for p in items], _count(body), page, limit)

    def iter_job_profiles(
        self, *, limit: int = MAX_PAGE_SIZE, sort: str = "updated_at", order: str = "DESC"
    ) -> AsyncIterator[JobProfile]:
        """Every job profile, page by page, ending on the first short page."""
        return _paginate(self.list_job_profiles, limit=limit, sort=sort, order=order)


async def _paginate(list_page: Callable[..., Awaitable[Page[Any]]], *, limit: int, page: int = 1, **kw: Any):
    """Items of every page from `page` on; never trusts `count` to end paging, stops at a page shorter
    than `limit`. A listing that goes on past every bound (`count`, when it is larger than one page, or
    MAX_PAGES) or repeats a page raises MalformedResponse instead of running forever."""
    first = page
    previous: list[str] | None = None
    while True:
        result = await list_page(limit=limit, page=page, **kw)
        ids = [str(getattr(item, "id", "")) for item in result.items]
        if previous is not None and ids and ids == previous:
            raise EndlessListing(
                f"page {page} of the listing repeats page {page - 1}: the API pages without end"
            )
        for item in result.items:
            yield item
        if len(result.items) < limit:
            return
        read = (page - first + 1) * limit
        if result.count is not None and result.count > limit and read >= result.count + limit:
            raise EndlessListing(
                f"the listing said it holds {result.count} items but page {page} still was full: it pages without end"
            )
        if page - first + 1 >= MAX_PAGES:
            raise EndlessListing(f"the listing did not end within {MAX_PAGES} pages")
        previous = ids
        page += 1


def _parse(record: Any, body: Any, method: str, path: str) -> Any:
    """`record.from_api(body)`, a malformed body raising MalformedResponse with the endpoint named."""
    try:
        return record.from_api(body)
    except MalformedRecord as exc:
        raise MalformedResponse(
            f"malformed {record.__name__.lower()} in the answer: {exc}", method=method, path=path
        ) from None


def _items(body: Any, key: str, prefix: str) -> list[dict[str, Any]]:
    items = body.get(key) if isinstance(body, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise MalformedResponse(
            f"the answer holds no list of objects under {key!r}", method="GET", path=f"{prefix}/{key}"
        )
    return items


def _count(body: Any) -> int | None:
    count = body.get("count") if isinstance(body, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) else None


async def _read_capped(response: httpx.Response, cap: int) -> bytes | None:
    """The body, or None once it passes `cap` bytes (the rest is never read)."""
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _open_regular(path: Path) -> int:
    """A descriptor of `path` read-only, refusing anything but a regular file without ever blocking
    (a file swapped for a FIFO would block an ordinary open, and with it the whole event loop)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SourceUnreadable(f"{path}: {exc.strerror}: the file changed since validation") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SourceUnreadable(f"{path} is no longer a regular file (it changed since validation)")
    return fd


async def _stream_file(
    path: Path,
    size: int,
    head: bytes,
    tail: bytes,
    on_progress: ProgressCallback | None,
    bandwidth: ByteRate | None,
) -> AsyncIterator[bytes]:
    """The multipart body: head, the file in chunks read off the event loop, tail; paced by `bandwidth`."""
    yield head
    sent = 0
    try:
        with os.fdopen(_open_regular(path), "rb") as f:  # reads happen in a worker thread below
            while sent < size:
                chunk = await asyncio.to_thread(f.read, min(UPLOAD_CHUNK, size - sent))
                if not chunk:
                    raise SourceUnreadable(
                        f"{path} shrank while it was being uploaded ({sent} of {size} bytes)"
                    )
                sent += len(chunk)
                if bandwidth is not None:
                    await bandwidth.take(len(chunk))
                if on_progress is not None:
                    on_progress(len(chunk))
                yield chunk
            if await asyncio.to_thread(f.read, 1):
                raise SourceUnreadable(f"{path} grew while it was being uploaded (past {size} bytes)")
    except OSError as exc:
        raise SourceUnreadable(f"{path}: {exc.strerror} while it was being uploaded") from None
    yield tail
