"""Telling a monitor how a run ended: its summary POSTed as JSON to `--notify URL`, signed.

The body is the run's summary (summary.json: counts per outcome, requests, 429s, times, abort
reason, masked settings...) with ``schema``, ``event`` (``run.finished``), ``delivery`` and the
process's ``exit_code`` on top, every URL in it redacted (`redact.py`). With a secret, the request
carries a signature made the way Stripe signs its webhooks::

    X-Batch-Ingest-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>

The receiver computes the same HMAC over the raw body it got and compares in constant time
(`verify_signature`, or the standalone copy in docs/notify_receiver.py), and refuses a timestamp
too far from its clock (a replay). ``X-Batch-Ingest-Delivery`` is the same on every try of one
delivery, so a receiver that saw it already can drop a retry.

Retry policy, written out:

- Retry: no answer (connect error, timeout, a dropped connection), 5xx and 429: each may pass.
- Never retry: another 4xx (the same request gets the same answer), nor a 3xx (redirects are not
  followed: the signed summary goes to the URL given, nowhere else).
- Waits: 1 s, then 4 s; a Retry-After (429, 503) instead, capped at 10 s. No jitter: one delivery
  per run, there is no herd to spread.
- Attempts: 3, each bounded to 8 s, the whole to 30 s: a wait that would end past that gives up.
- A retry sends the same body and delivery id, signed again with the time of that try.

Nothing here raises into the run: `send_notification` returns a `NotifyResult` whose `warning` the
caller prints; the run's exit code is the run's, whatever the monitor did.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from ._version import __version__
from .api.ratelimit import parse_retry_after
from .api.secret import Secret
from .errors import ConfigError
from .redact import redact_text

SCHEMA = 1  # the payload's version: raised when a key changes meaning or goes away
EVENT_FINISHED = "run.finished"
SIGNATURE_HEADER = "X-Batch-Ingest-Signature"
EVENT_HEADER = "X-Batch-Ingest-Event"
DELIVERY_HEADER = "X-Batch-Ingest-Delivery"
USER_AGENT = f"batch-ingest/{__version__}"
ATTEMPTS = 3
BACKOFF_S = (1.0, 4.0)  # before the 2nd and the 3rd attempt
RETRY_AFTER_CAP_S = 10.0  # a monitor asking for longer is not waited for: the run has ended
ATTEMPT_TIMEOUT_S = 8.0  # one attempt, connect to last byte (httpx's timeouts are per read)
DEADLINE_S = 30.0  # all attempts and waits: a cron job must not hang on its monitor
TOLERANCE_S = 300  # how far a signature's timestamp may be from the receiver's clock
EXAMPLE_URL = "https://monitor.example.com/batch-ingest"


def check_notify_url(url: str, *, option: str = "--notify") -> str:
    """`url` stripped when it is an http(s) URL with a host, else ConfigError naming `option` and the fix.

    Plain http is allowed to any host: the body is the summary, which holds no secret, and the
    signature does not reveal the signing secret."""
    text = str(url).strip()
    try:
        parts = urlsplit(text)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise ConfigError(
            f"{option} is not a valid URL (got {display_url(text)!r}): give an http(s) URL such as {EXAMPLE_URL}"
        ) from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise ConfigError(f"{option} must be an http(s) URL such as {EXAMPLE_URL}, got {display_url(text)!r}")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ConfigError(f"{option} holds a space or a control character: check the URL")
    return text


def display_url(url: str) -> str:
    """`url` as messages show it: scheme, host and port only. Webhook URLs often carry their credential
    in the path (``/services/T0/B0/XXXX``) or the query, as well as in ``user:password@``."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "(an invalid URL)"
    if not parts.scheme or not host:
        return "(an invalid URL)"
    host = f"[{host}]" if ":" in host else host
    rest = "/…" if parts.path.strip("/") or parts.query or parts.fragment else ""
    return f"{parts.scheme.lower()}://{host}{f':{port}' if port is not None else ''}{rest}"


def build_payload(
    summary: Mapping[str, Any] | None,
    exit_code: int,
    *,
    command: str | None = None,
    error: str | None = None,
    delivery: str | None = None,
    hide: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The JSON body: ``schema``, ``event``, ``delivery``, ``command``, ``exit_code`` (the process's),
    ``error`` (what stopped a command before it had a summary, or None), then the summary's keys.

    Every string in it has its URLs redacted, and each string in `hide` (the notify URL itself)
    replaced by its `display_url`."""
    head: dict[str, Any] = {
        "schema": SCHEMA,
        "event": EVENT_FINISHED,
        "delivery": delivery or str(uuid.uuid4()),
        "command": command,
        "exit_code": int(exit_code),
        "error": error,
    }
    body = {k: v for k, v in (summary or {}).items() if k not in head}
    return _scrub({**head, **body}, tuple(h for h in hide if h))


def _scrub(value: Any, hide: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        for secret in hide:
            value = value.replace(secret, display_url(secret))
        return redact_text(value)
    if isinstance(value, Mapping):
        return {str(k): _scrub(v, hide) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v, hide) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return _scrub(str(value), hide)  # a Path, a datetime...


def _secret_bytes(secret: Secret | str | bytes) -> bytes:
    raw = secret.get() if isinstance(secret, Secret) else secret
    return raw if isinstance(raw, bytes) else raw.encode("utf-8")


def _digest(secret: Secret | str | bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(_secret_bytes(secret), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: Secret | str | bytes, body: bytes, timestamp: int) -> str:
    """The signature header's value for `body` sent at `timestamp`: ``t=<timestamp>,v1=<hex>``."""
    return f"t={int(timestamp)},v1={_digest(secret, int(timestamp), body)}"


def verify_signature(
    secret: Secret | str | bytes,
    header: str | None,
    body: bytes | str,
    *,
    tolerance_s: float | None = TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Whether `header` (``t=...,v1=...``) signs `body`, the raw bytes received, with `secret`, at a
    time within `tolerance_s` of `now` (None: any time). Several ``v1`` are allowed (a secret being
    rotated); each is compared in constant time."""
    if not header:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t" and value.isascii() and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    now = time.time() if now is None else now
    if tolerance_s is not None and abs(now - timestamp) > tolerance_s:
        return False
    raw = body.encode("utf-8") if isinstance(body, str) else body
    expected = _digest(secret, timestamp, raw).encode("ascii")
    found = False
    for candidate in candidates:  # no early exit: every candidate costs the same
        found |= hmac.compare_digest(expected, candidate.encode("utf-8", "replace"))
    return found


@dataclass(frozen=True)
class NotifyResult:
    """How a notification went. `url` is the shown form (`display_url`), never the URL itself."""

    url: str
    delivery: str
    attempts: int
    status: int | None = None  # the last HTTP status, None when no answer came
    error: str | None = None  # None when delivered

    @property
    def ok(self) -> bool:
        """True when the monitor answered 2xx."""
        return self.error is None

    @property
    def warning(self) -> str | None:
        """The line to print on stderr when the notification failed, else None."""
        if self.ok:
            return None
        tries = f" after {self.attempts} attempts" if self.attempts > 1 else ""
        hint = ""
        if self.status in (400, 401, 403):
            # What a receiver that checks signatures answers to an unsigned or wrongly signed request.
            hint = (
                "; if the monitor checks signatures, set SMARTSTREAM_NOTIFY_SECRET (config notify_secret) "
                "to the secret it holds"
            )
        return (
            f"warning: --notify {self.url}: the run's summary was not delivered{tries}: {self.error}{hint} "
            "(the exit code is the run's own)"
        )

    def describe(self) -> str:
        """One line for the log either way."""
        if self.ok:
            return f"--notify {self.url}: delivered (HTTP {self.status}, delivery {self.delivery})"
        return self.warning or ""


class _Failed(Exception):
    """One attempt that did not deliver: why, the status if any, whether to retry, Retry-After."""

    def __init__(
        self, message: str, *, status: int | None = None, retry: bool = True, wait_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry = retry
        self.wait_s = wait_s


async def send_notification_async(
    url: str,
    summary: Mapping[str, Any] | None,
    exit_code: int,
    *,
    secret: Secret | str | None = None,
    command: str | None = None,
    error: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.time,
    attempt_timeout_s: float = ATTEMPT_TIMEOUT_S,
) -> NotifyResult:
    """POST the run's summary to `url` (see the module's docstring); never raises (but cancellation).

    `summary`: the run's summary (`RunResult.summary`), or None when the command stopped before it
    had one (then pass `error`, the message it printed). `exit_code`: the process's. `secret`: signs
    the body when set. `clock` gives the signature's time and measures the deadline."""
    shown = display_url(url)
    delivery = str(uuid.uuid4())
    try:
        url = check_notify_url(url)
        payload = build_payload(
            summary, exit_code, command=command, error=error, delivery=delivery, hide=(url,)
        )
        body = json.dumps(payload, default=str, separators=(",", ":")).encode("utf-8")
        return await _deliver(url, body, delivery, secret, transport, sleep, clock, attempt_timeout_s)
    except ConfigError as exc:
        return NotifyResult(shown, delivery, 0, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - a notification never fails the run, whatever went wrong
        return NotifyResult(shown, delivery, 0, error=_clean(f"{type(exc).__name__}: {exc}", url))


async def _deliver(
    url: str,
    body: bytes,
    delivery: str,
    secret: Secret | str | None,
    transport: httpx.AsyncBaseTransport | None,
    sleep: Callable[[float], Awaitable[None]],
    clock: Callable[[], float],
    attempt_timeout_s: float,
) -> NotifyResult:
    """The attempts of one delivery, as the retry policy says."""
    shown = display_url(url)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: EVENT_FINISHED,
        DELIVERY_HEADER: delivery,
    }
    deadline = clock() + DEADLINE_S
    async with httpx.AsyncClient(
        transport=transport, timeout=attempt_timeout_s, follow_redirects=False, trust_env=False
    ) as client:
        for attempt in range(1, ATTEMPTS + 1):
            if secret:
                headers[SIGNATURE_HEADER] = sign(secret, body, int(clock()))
            # The last try gets what is left of the deadline (at least a second), not a full attempt's time.
            timeout_s = min(attempt_timeout_s, max(1.0, deadline - clock()))
            try:
                status = await _attempt(client, url, body, headers, timeout_s, clock)
                return NotifyResult(shown, delivery, attempt, status)
            except _Failed as exc:
                failed = exc
            problem = str(failed)
            if not failed.retry or attempt == ATTEMPTS:
                break
            wait = BACKOFF_S[attempt - 1] if failed.wait_s is None else min(failed.wait_s, RETRY_AFTER_CAP_S)
            if clock() + wait + 1.0 > deadline:
                problem += f"; gave up: another try would pass the {DEADLINE_S:.0f} s limit"
                break
            await sleep(wait)
    return NotifyResult(shown, delivery, attempt, failed.status, _clean(problem, url))


async def _attempt(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout_s: float,
    clock: Callable[[], float],
) -> int:
    """One POST: its 2xx status, or _Failed saying why not and whether to try again."""
    try:
        # httpx bounds each read; this bounds the whole (a server trickling bytes).
        async with asyncio.timeout(timeout_s):
            response = await client.post(url, content=body, headers=headers)
    except TimeoutError:
        raise _Failed(f"no answer within {timeout_s:g} s") from None
    except httpx.TimeoutException as exc:
        raise _Failed(f"timed out ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        raise _Failed(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
    except httpx.HTTPError as exc:  # what a retry cannot change (the URL refused by httpx, say)
        raise _Failed(f"{type(exc).__name__}: {exc}", retry=False) from None
    status = response.status_code
    if 200 <= status < 300:
        return status
    reason = f"HTTP {status} {response.reason_phrase}".rstrip()
    if status == 429 or status >= 500:
        wait = parse_retry_after(response.headers.get("Retry-After"), now=clock())
        raise _Failed(reason, status=status, wait_s=wait)
    if 300 <= status < 400:
        reason += " (redirects are not followed: give the URL it redirects to)"
    raise _Failed(reason, status=status, retry=False)


def _clean(message: str, url: str) -> str:
    """`message` without the URL in it (an httpx error may quote it) or any credential."""
    return redact_text(message.replace(url, display_url(url)))


def send_notification(
    url: str, summary: Mapping[str, Any] | None, exit_code: int, **kwargs: Any
) -> NotifyResult:
    """`send_notification_async` from synchronous code (after the run's own `asyncio.run` returned)."""
    return asyncio.run(send_notification_async(url, summary, exit_code, **kwargs))
