"""The emulator's state: configuration, job profiles, jobs moving through encode states, counters.

Encode progress is computed from the clock, not by background tasks: each job gets its
transition times at creation, and every request first applies the transitions that are due.
Applied transitions are appended to a log ordered by `updated_at`, so listing jobs newest-
first costs a walk from the log's end, not a sort of every job.

With `fetch_sources`, a job's transitions wait for its source's verdict instead (fetch.py fetches
or probes the source in the background): the verdict, arriving at emulator time T, schedules them
from max(the job's planned start, T), drawn at creation like every other duration.
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from ..api.models import format_api_date
from ..redact import redact_url
from .signed import SignatureInvalid, signed_url_expiry

# The vendor's page types `encode_status` as an integer and lists no values. These are our working
# assumption (the README's "encode-status assumption"; the client's --encode-status-map overrides it).
QUEUED, ENCODING, COMPLETED, FAILED, CANCELLED = 0, 1, 2, 3, 4
JOB_FIELDS = (
    "id",
    "ref_id",
    "name",
    "merchant_id",
    "job_profile_id",
    "media_id",
    "description",
    "encode_status",
    "source_type",
    "source_url",
    "created_at",
    "updated_at",
)
PROFILE_FIELDS = ("merchant_id", "id", "ref_id", "name", "description", "created_at", "updated_at")
DEFAULT_PROFILES = (
    ("100", "default", "Default (adaptive HLS)"),
    ("101", "hd", "HD 1080p"),
    ("102", "sd", "SD 480p"),
    ("103", "audio", "Audio only"),
)


UNREACHABLE_REASON = "cannot fetch the source: the emulator is told it is unreachable"
ENCODE_FAILED_REASON = "the encode failed (failure_rate)"


def _expired_reason(expires_at: float) -> str:
    return f"the signed source URL expired ({format_api_date(expires_at)}) before the job left the queue"


def _flag(help: str, *, choices: tuple[str, ...] = (), metavar: str | None = None) -> dict[str, Any]:
    """Field metadata for a knob that the `emulator` command offers as `--<field-name>`, with this help
    text (and, for a text knob, the values it takes or the metavar its help shows)."""
    return {"flag_help": help, "flag_choices": choices, "flag_metavar": metavar}


@dataclass(frozen=True)
class EmulatorConfig:
    """Every knob of the emulator. Faults are all off by default.

    A field with `_flag(...)` metadata is also a flag of `batch-ingest emulator`, named after the field
    (`queue_seconds` is `--queue-seconds`), with the field's default; the rest are for tests only.
    """

    merchant_id: str = field(default="demo", metadata=_flag("Merchant id the emulator accepts."))
    api_key: str = field(default="emulator-api-key", metadata=_flag("API key it accepts."))
    token: str = field(default="emulator-token", metadata=_flag("Static bearer token it accepts."))
    email: str = field(default="ops@example.com", metadata=_flag("Email its auth-token endpoint accepts."))
    password: str = field(default="emulator-password", metadata=_flag("Password for that email."))
    rate_limit: int = field(  # requests per rolling minute; 0 turns the limit off
        default=50, metadata=_flag("Requests per rolling minute (0: off).")
    )
    bucket_capacity: int = field(  # >0: enforce rate_limit as a token bucket of this capacity instead
        default=0,
        metadata=_flag(
            "Enforce --rate-limit as a token bucket of this capacity instead of a rolling minute "
            "(0: rolling minute)."
        ),
    )
    retry_after: str = field(
        default="seconds",
        metadata=_flag("Form of Retry-After on a 429.", choices=("seconds", "date", "none")),
    )
    max_in_flight: int = field(  # >0: a create while this many jobs are queued or encoding answers 429
        default=0,
        metadata=_flag(
            "Jobs queued or encoding at once on the account; a create over the cap answers 429 (0: no cap)."
        ),
    )
    queue_seconds: float = field(default=1.0, metadata=_flag("Time a job waits before encoding."))
    encode_seconds: float = field(default=5.0, metadata=_flag("Time an encode takes."))
    jitter: float = field(  # +/- share of randomness on both durations
        default=0.5, metadata=_flag("+/- share of randomness on durations.")
    )
    failure_rate: float = field(default=0.0, metadata=_flag("Share of encodes that fail."))
    unreachable: tuple[str, ...] = field(  # hosts under .invalid never can be fetched either
        default=(), metadata=_flag("Source URLs containing this text cannot be fetched (repeatable).")
    )
    token_ttl: float = field(  # the lifetime stated in the auth-token answer
        default=3600.0, metadata=_flag("Lifetime of issued tokens (s).")
    )
    static_token_ttl: float | None = field(  # the static token expires this long after start
        default=None, metadata=_flag("Fault: the static token expires after this (s).")
    )
    latency: float = field(  # seconds added before every API answer
        default=0.0, metadata=_flag("Fault: seconds added to every answer.")
    )
    error_rate: float = field(  # share of API requests answered 500 SERVER_ERROR (nothing done)
        default=0.0, metadata=_flag("Fault: share of requests answered 500.")
    )
    burst_429_rate: float = field(  # chance that a request starts a burst of 429s
        default=0.0, metadata=_flag("Fault: chance a 429 burst starts.")
    )
    drop_after_create_rate: float = field(
        default=0.0,
        metadata=_flag("Fault: share of creates that create the job, then drop the connection."),
    )
    hang_rate: float = (
        field(  # share of API requests that hang `hang_s` before answering (creates create first)
            default=0.0, metadata=_flag("Fault: share of requests that hang.")
        )
    )
    storage_missing: bool = field(
        default=False, metadata=_flag("Fault: every create answers STORAGE_NOT_FOUND.")
    )
    storage_missing_for: tuple[str, ...] = field(
        default=(),
        metadata=_flag(
            "Fault: creates whose source contains this text answer STORAGE_NOT_FOUND (repeatable; "
            "`run --emulator` uses 'no-storage', as manifests/sample.csv expects).",
            metavar="TEXT",
        ),
    )
    seed: int = field(default=0, metadata=_flag("Seed for durations, failures and faults."))
    time_scale: float = field(  # 10 makes a 30 s encode take 3 s
        default=1.0, metadata=_flag("Emulator seconds per real second.")
    )
    fetch_sources: bool = field(  # fetch.py: URL sources fetched, uploads probed, before encoding
        default=False,
        metadata=_flag(
            "Behave like the platform: fetch each URL source when its job leaves the queue (a bounded "
            "ranged GET) and fail the encode when it is unreachable, 4xx/5xx, not a video, or a signed "
            "URL that has expired; probe uploads."
        ),
    )
    # Knobs for tests only (no flag).
    token_revoke_after_s: float | None = None  # fault: issued tokens die this early, despite `expiration`
    burst_429_len: int = 5  # requests refused per burst
    hang_s: float = 30.0  # how long a hanging request hangs
    create_error_once: bool = False  # the first create of each source (since the knob was set) answers 500
    default_profile_id: str = "100"
    fetch_limit_bytes: int = 16 * 1024 * 1024  # fetch_sources: bytes asked of a source (Range), at most
    fetch_timeout_s: float = 10.0  # fetch_sources: a fetch that takes longer (real time) fails its encode
    fetch_concurrency: int = 16  # fetch_sources: fetches and probes at once
    profiles: tuple[tuple[str, str, str], ...] = DEFAULT_PROFILES

    def with_changes(self, **changes: Any) -> EmulatorConfig:
        """A copy with some knobs changed (unknown names raise TypeError)."""
        known = {f.name for f in fields(self)}
        bad = set(changes) - known
        if bad:
            raise TypeError(f"unknown emulator setting(s): {', '.join(sorted(bad))}")
        return EmulatorConfig(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})


@dataclass
class JobRecord:
    """A job as the emulator holds it, with the internals the API does not show."""

    id: str
    ref_id: str | None
    name: str | None
    description: str | None
    job_profile_id: str
    media_id: str
    source_type: str
    source_url: str
    created: float
    updated: float
    status: int = QUEUED
    seq: int = 0
    upload_size: int | None = None
    upload_sha256: str | None = None
    fail_reason: str | None = None  # why the encode failed (internal: the API shows no reason)
    # fetch_sources: what creation drew (planned start, encode time, failure_rate's verdict), the
    # signed source's expiry, and whether the job still waits for its source's verdict.
    start_at: float = 0.0
    encode_s: float = 0.0
    fails: bool = False
    expires_at: float | None = None
    awaiting_source: bool = False

    def view(self, merchant_id: str) -> dict[str, Any]:
        """The job as the API shows it."""
        return {
            "id": self.id,
            "ref_id": self.ref_id,
            "name": self.name,
            "merchant_id": merchant_id,
            "job_profile_id": self.job_profile_id,
            "media_id": self.media_id,
            "description": self.description,
            "encode_status": self.status,
            "source_type": self.source_type,
            "source_url": self.source_url,
            "created_at": format_api_date(self.created),
            "updated_at": format_api_date(self.updated),
        }


@dataclass
class Counters:
    """What the emulator saw, for tests and benchmarks."""

    requests: Counter = field(default_factory=Counter)  # (endpoint, status) -> n
    request_times: list[float] = field(default_factory=list)  # admitted API requests, for window checks
    faults: Counter = field(default_factory=Counter)
    fetch: Counter = field(default_factory=Counter)  # fetch_sources: source verdicts by outcome


class Store:
    """Jobs, profiles, tokens and counters behind one lock (the server may run in another thread)."""

    def __init__(self, config: EmulatorConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.lock = threading.RLock()
        self.rng = random.Random(config.seed)
        self.fault_rng = random.Random(config.seed + 1)
        self.started = clock()
        self.jobs: dict[str, JobRecord] = {}
        self.jobs_by_ref: dict[str, list[str]] = defaultdict(list)
        self.jobs_by_source: Counter = Counter()
        # (time, tiebreak, job id, new status, reason when it is FAILED)
        self._due: list[tuple[float, int, str, int, str | None]] = []
        self._log: list[tuple[float, int, str]] = []  # (updated, seq, job id), in order of `updated`
        self._seq = 0
        self.tokens: dict[str, tuple[float, float]] = {}  # token -> (stated expiry, real expiry)
        self.counters = Counters()
        self.window: list[float] = []  # admitted request times in the current rolling minute
        # Every API request's time in the last 60 s (admitted or answered 429), and the most there were:
        # the load the limiter saw, whoever sent it (stats' max_requests_per_minute).
        self._last_minute: deque[float] = deque()
        self.max_requests_per_minute = 0
        self.bucket: tuple[float, float] | None = None  # (tokens, when) in token-bucket mode
        self.burst_left = 0
        self.failed_once: set[str] = set()  # sources whose create already failed once (create_error_once)
        self.in_progress: Counter[str] = Counter()  # requests being handled now, by kind ("api", "upload")
        self.max_in_progress: Counter[str] = Counter()
        created = format_api_date(self.started)
        self.profiles = {
            pid: {
                "merchant_id": config.merchant_id,
                "id": pid,
                "ref_id": ref,
                "name": name,
                "description": f"{name} (emulator)",
                "created_at": created,
                "updated_at": created,
            }
            for pid, ref, name in config.profiles
        }
        self.profiles_by_ref = {p["ref_id"]: p for p in self.profiles.values()}

    # -- ids and time ---------------------------------------------------------------------------

    def _new_id(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"

    def _duration(self, mean: float) -> float:
        spread = self.config.jitter * mean
        return max(0.0, mean + self.rng.uniform(-spread, spread))

    def advance(self) -> float:
        """Apply every encode transition that is due; return the current time."""
        now = self.clock()
        due = self._due
        while due and due[0][0] <= now:
            when, _, job_id, status, reason = heapq.heappop(due)
            job = self.jobs[job_id]
            if status == FAILED:
                job.fail_reason = reason
            self._set_status(job, status, when)
        return now

    def _set_status(self, job: JobRecord, status: int, when: float) -> None:
        self._seq += 1
        job.status, job.updated, job.seq = status, when, self._seq
        self._log.append((when, self._seq, job.id))

    # -- jobs -----------------------------------------------------------------------------------

    def source_unreachable(self, url: str) -> bool:
        """True when the emulator is told (or the host says) that `url` cannot be fetched."""
        host = urlsplit(url).hostname or ""
        return host.endswith(".invalid") or any(s in url for s in self.config.unreachable)

    def create_job(
        self,
        *,
        source_type: str,
        source_url: str,
        job_profile_id: str,
        ref_id: str | None = None,
        name: str | None = None,
        description: str | None = None,
        upload_size: int | None = None,
        upload_sha256: str | None = None,
        await_source: bool = False,
    ) -> JobRecord:
        """Create a job; its encode transitions are scheduled from now.

        With `await_source` (fetch_sources), they wait for `settle_source` instead: the job comes
        back with `awaiting_source` set, for the caller to fetch or probe its source. A URL that the
        emulator is told cannot be fetched (`unreachable`, `.invalid`), or a signed URL expired by
        the job's planned start (or malformed), fails at that start without waiting."""
        now = self.advance()
        job = JobRecord(
            id=self._new_id(),
            ref_id=ref_id,
            name=name,
            description=description,
            job_profile_id=job_profile_id,
            media_id=self._new_id(),
            source_type=source_type,
            source_url=source_url,
            created=now,
            updated=now,
            upload_size=upload_size,
            upload_sha256=upload_sha256,
        )
        self.jobs[job.id] = job
        if ref_id:
            self.jobs_by_ref[ref_id].append(job.id)
        self.jobs_by_source[source_url] += 1
        self._set_status(job, QUEUED, now)
        start = now + self._duration(self.config.queue_seconds)
        if source_type == "url" and self.source_unreachable(source_url):
            if await_source:
                self.counters.fetch["unreachable"] += 1
            self._schedule(start, job.id, FAILED, UNREACHABLE_REASON)
            return job
        encode_s = self._duration(self.config.encode_seconds)
        fails = self.rng.random() < self.config.failure_rate
        if not await_source:
            self._schedule(start, job.id, ENCODING)
            self._schedule(start + encode_s, job.id, FAILED if fails else COMPLETED, ENCODE_FAILED_REASON)
            return job
        job.start_at, job.encode_s, job.fails = start, encode_s, fails
        if source_type == "url":
            try:
                job.expires_at = signed_url_expiry(source_url)
            except SignatureInvalid as exc:
                self.counters.fetch["signature_invalid"] += 1
                self._schedule(start, job.id, FAILED, f"the signed source URL is refused: {exc}")
                return job
            if job.expires_at is not None and job.expires_at <= start:
                self.counters.fetch["expired"] += 1
                self._schedule(start, job.id, FAILED, _expired_reason(job.expires_at))
                return job
        job.awaiting_source = True
        return job

    def settle_source(self, job_id: str, outcome: str, reason: str | None = None) -> None:
        """The verdict on a job's source (`outcome` "ok", or why it failed, with `reason`), arriving now.

        The job leaves the queue at max(its planned start, now): a good source encodes from then (and
        completes, or fails by `failure_rate`); a bad one, or a signed URL expired by then, fails then.
        A job that waits for no verdict is left alone."""
        now = self.advance()
        job = self.jobs.get(job_id)
        if job is None or not job.awaiting_source:
            return
        job.awaiting_source = False
        start = max(job.start_at, now)
        if outcome == "ok" and job.expires_at is not None and job.expires_at <= start:
            outcome, reason = "expired", _expired_reason(job.expires_at)
        self.counters.fetch[outcome] += 1
        if outcome != "ok":
            self._schedule(start, job.id, FAILED, reason or outcome)
            return
        self._schedule(start, job.id, ENCODING)
        self._schedule(start + job.encode_s, job.id, FAILED if job.fails else COMPLETED, ENCODE_FAILED_REASON)

    def _schedule(self, when: float, job_id: str, status: int, reason: str | None = None) -> None:
        self._seq += 1
        heapq.heappush(self._due, (when, self._seq, job_id, status, reason))

    def storage_missing(self, source: str) -> bool:
        """True when a create from `source` must answer STORAGE_NOT_FOUND."""
        return self.config.storage_missing or any(s in source for s in self.config.storage_missing_for)

    def queue_full(self) -> bool:
        """True when the account's cap of jobs queued or encoding (`max_in_flight`) is reached."""
        cap = self.config.max_in_flight
        if cap <= 0:
            return False
        self.advance()
        return sum(1 for j in self.jobs.values() if j.status in (QUEUED, ENCODING)) >= cap

    def fail_create_once(self, source: str) -> bool:
        """True (a 500, nothing created) for the first create of `source` while `create_error_once` is set."""
        if not self.config.create_error_once or source in self.failed_once:
            return False
        self.failed_once.add(source)
        self.counters.faults["500_once"] += 1
        return True

    def find_job(self, key: str) -> JobRecord | None:
        """A job by id, or by `ref:<ref_id>` (the newest job with that ref id)."""
        self.advance()
        if key.startswith("ref:"):
            ids = self.jobs_by_ref.get(key[4:])
            return self.jobs[ids[-1]] if ids else None
        return self.jobs.get(key)

    def list_jobs(self, *, limit: int, page: int, sort: str, order: str) -> list[JobRecord]:
        """One page of jobs in the requested order."""
        self.advance()
        offset = (page - 1) * limit
        if sort == "updated_at":
            entries = reversed(self._log) if order == "DESC" else iter(self._log)
            out: list[JobRecord] = []
            seen = 0
            for _, seq, job_id in entries:
                job = self.jobs[job_id]
                if job.seq != seq:
                    continue  # a later transition superseded this entry
                if seen >= offset:
                    out.append(job)
                    if len(out) == limit:
                        break
                seen += 1
            return out
        if sort == "created_at":
            ordered = list(self.jobs.values())  # insertion order is creation order
            if order == "DESC":
                ordered.reverse()
            return ordered[offset : offset + limit]
        key = "job_profile_id" if sort == "job_profile_id" else sort
        merchant = self.config.merchant_id
        ordered = sorted(
            self.jobs.values(),
            key=lambda j: (j.view(merchant)[key] is None, j.view(merchant)[key] or 0),
            reverse=order == "DESC",
        )
        return ordered[offset : offset + limit]

    def list_profiles(self, *, limit: int, page: int, sort: str, order: str) -> list[dict[str, Any]]:
        """One page of job profiles."""
        ordered = sorted(self.profiles.values(), key=lambda p: (p[sort] is None, p[sort] or ""))
        if order == "DESC":
            ordered.reverse()
        offset = (page - 1) * limit
        return ordered[offset : offset + limit]

    def find_profile(self, key: str) -> dict[str, Any] | None:
        """A profile by id or `ref:<ref_id>`."""
        if key.startswith("ref:"):
            return self.profiles_by_ref.get(key[4:])
        return self.profiles.get(key)

    # -- tokens ---------------------------------------------------------------------------------

    def issue_token(self) -> tuple[str, float]:
        """A new access token and its stated expiry."""
        now = self.clock()
        token = f"tok-{self._new_id()}"
        stated = now + self.config.token_ttl
        revoke = self.config.token_revoke_after_s
        real = stated if revoke is None else now + revoke
        self.tokens[token] = (stated, real)
        return token, stated

    def token_valid(self, token: str) -> bool:
        """True for the static token (until its fault expiry) or an issued, unexpired token."""
        now = self.clock()
        if token == self.config.token:
            ttl = self.config.static_token_ttl
            return ttl is None or now < self.started + ttl
        entry = self.tokens.get(token)
        return entry is not None and now < entry[1]

    # -- rate limit -----------------------------------------------------------------------------

    def admit(self) -> float | None:
        """Count one API request against the rolling minute. None if admitted, else seconds to wait."""
        limit = self.config.rate_limit
        now = self.clock()
        self._count_in_last_minute(now)
        if limit > 0 and self.config.bucket_capacity > 0:
            # A token bucket: `bucket_capacity` at once at most, refilled at rate_limit per minute.
            capacity, per_s = float(self.config.bucket_capacity), limit / 60.0
            tokens, last = self.bucket if self.bucket is not None else (capacity, now)
            tokens = min(capacity, tokens + (now - last) * per_s)
            if tokens < 1.0:
                self.bucket = (tokens, now)
                return max(0.001, (1.0 - tokens) / per_s)
            self.bucket = (tokens - 1.0, now)
        elif limit > 0:
            window = self.window
            cut = now - 60.0
            drop = 0
            while drop < len(window) and window[drop] <= cut:
                drop += 1
            if drop:
                del window[:drop]
            if len(window) >= limit:
                return max(0.001, window[-limit] + 60.0 - now)
            window.append(now)
        self.counters.request_times.append(now)
        return None

    def _count_in_last_minute(self, now: float) -> None:
        """Count one request at `now` in the rolling minute (now - 60, now], as the limit's window
        counts, and keep the most it ever held. Amortised O(1): each time is dropped once."""
        recent = self._last_minute
        recent.append(now)
        cut = now - 60.0
        while recent[0] <= cut:
            recent.popleft()
        self.max_requests_per_minute = max(self.max_requests_per_minute, len(recent))

    def enter(self, kind: str) -> None:
        """A request of `kind` starts being handled (for the concurrency high-water marks)."""
        self.in_progress[kind] += 1
        self.max_in_progress[kind] = max(self.max_in_progress[kind], self.in_progress[kind])

    def leave(self, kind: str) -> None:
        """That request is answered."""
        self.in_progress[kind] -= 1

    # -- introspection --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters by endpoint and status, jobs created, duplicates by ref_id and by source."""
        self.advance()
        by_endpoint: dict[str, dict[str, int]] = defaultdict(dict)
        for (endpoint, status), n in sorted(self.counters.requests.items()):
            by_endpoint[endpoint][str(status)] = n
        statuses = Counter(j.status for j in self.jobs.values())
        return {
            "requests_total": sum(self.counters.requests.values()),
            "requests": dict(by_endpoint),
            # The most API requests (429s included) in any rolling 60 s of the emulator's clock.
            "max_requests_per_minute": self.max_requests_per_minute,
            "max_concurrent_requests": self.max_in_progress["api"],
            "max_concurrent_uploads": self.max_in_progress["upload"],
            "rate_limited": sum(n for (_, s), n in self.counters.requests.items() if s == 429),
            "faults": dict(self.counters.faults),
            "fetch": dict(self.counters.fetch),
            "jobs_created": len(self.jobs),
            "jobs_by_encode_status": {str(k): v for k, v in sorted(statuses.items())},
            "uploads": sum(1 for j in self.jobs.values() if j.source_type == "file"),
            "upload_bytes": sum(j.upload_size or 0 for j in self.jobs.values()),
            "duplicate_ref_ids": {r: len(ids) for r, ids in self.jobs_by_ref.items() if len(ids) > 1},
            # Redacted: a source may be a signed URL, and stats are printed and saved by benchmarks.
            "duplicate_sources": {redact_url(s): n for s, n in self.jobs_by_source.items() if n > 1},
        }

    def dump_jobs(self) -> list[dict[str, Any]]:
        """Every job with its internal fields (upload size and sha256, why it failed), in creation order."""
        self.advance()
        merchant = self.config.merchant_id
        return [
            {
                **j.view(merchant),
                "upload_size": j.upload_size,
                "upload_sha256": j.upload_sha256,
                "fail_reason": j.fail_reason,
                "awaiting_source": j.awaiting_source,
            }
            for j in self.jobs.values()
        ]
