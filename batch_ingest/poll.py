"""Polling jobs to their end at a cost that does not grow with the number in flight.

Each poll reads the jobs list sorted by `updated_at`, newest first, page by page, only
back to the newest change the previous poll saw (less a small overlap for the platform's
commit lag). A job whose state did not change is never read again; a page holds 100
changes, so a poll costs about one request per 100 changes, whatever is in flight.

The interval follows the rate of change: it aims to collect about three pages of changes
per poll (each poll also reads into the overlap, usually a page: more changes per poll
amortise it), between the configured minimum and maximum. Once submission is over the budget has
room, and the interval stays at about two seconds (at most half the budget), so that a run
ends within seconds of its last job instead of a page-filling interval later. A job the list has not shown for a
long while is read on its own (`GET jobs/:id`), a few per poll at most, as a safety net.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .aio import unless_stopped, wait_any
from .api.client import MAX_PAGE_SIZE, MAX_POLL_PAGES, SmartStreamClient
from .api.models import EncodeStatusMap, Job, MalformedRecord, Verdict, parse_api_date
from .errors import EndlessListing, MalformedResponse, NotFoundError, TransientApiError
from .journal import InFlight, JobUpdate, RowTask
from .progress import Progress
from .vocabulary import (
    ADOPTED_MESSAGE,
    EXISTING_MESSAGE,
    RESEND_ON_FAILURE,
    TIMED_OUT_MESSAGE,
    Follow,
    RowState,
    SourceType,
)

OVERLAP_S = 2.0  # re-read this much before the last change seen: the platform's commit lag
TARGET_CHANGES_PER_POLL = 3 * MAX_PAGE_SIZE  # three full pages of changes per poll
FALLBACK_PER_POLL = 2
TAIL_INTERVAL_S = 2.0  # the poll interval once submission is over: the run ends this soon after its last job
SLACK_FOR_QUICK_POLLS = (
    0.5  # while submitting, poll at the tail interval when this share of the budget is unused
)


class PollJournal(Protocol):
    """What a poller reads and writes: a run's `Journal`, or the journals of many (`collect.Collection`)."""

    def in_flight(self) -> list[InFlight]: ...

    def record_progress(self, updates: list[JobUpdate]) -> None: ...

    def resend(self, row: int, old_job_id: str, reason: str) -> None: ...


@dataclass
class Tracked:
    """A job in flight."""

    row: int
    job_id: str
    deadline: float
    last_seen: float  # our clock: when we last learnt this job's state
    status: int | None
    key: str | None = None
    ref_id: str | None = None
    follow: str | None = None  # see journal.py: a re-checked or existing job, not created by this attempt
    signed_until: float | None = None  # an object source: when its signed URL stops working (platform time)
    progressed_at: float | None = None  # platform time it was first seen in another in-progress status


@dataclass(frozen=True)
class PollPolicy:
    """How jobs are followed: how long each may take, the bounds of the interval between polls, the
    account's rate (the tail interval takes at most half of it), and what encode statuses mean."""

    job_timeout: float
    min_interval: float
    max_interval: float
    rate_per_minute: float = 0.0  # 0: unknown or no limit
    fallback_after: float | None = None  # a job unseen this long is read on its own; None: from max_interval
    status_map: EncodeStatusMap = field(default_factory=EncodeStatusMap)
    presign_ttl: float | None = None  # the lifetime of the URLs signed for object sources (--presign-ttl)


class Poller:
    """Follows every submitted job until it succeeds, fails or times out."""

    def __init__(
        self,
        client: SmartStreamClient,
        journal: PollJournal,
        policy: PollPolicy,
        *,
        progress: Progress,
        slack: Callable[[], float] = lambda: 0.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.client = client
        self.journal = journal
        self.status_map = policy.status_map
        self.progress = progress
        self.job_timeout = policy.job_timeout
        self.min_interval = policy.min_interval
        self.max_interval = policy.max_interval
        self.presign_ttl = policy.presign_ttl
        # What the engine wires to the submitter after construction (alone, a poller needs none of it):
        self.on_final: Callable[[str], None] = lambda outcome: None  # a row reached its final state
        self.on_resend: Callable[[int], None] = lambda row: None  # a followed job failed or vanished
        self.on_follow_end: Callable[[], None] = lambda: None
        self.on_job_end: Callable[[], None] = lambda: None
        self.following = 0  # followed jobs in flight
        self.fallback_after = (
            policy.fallback_after
            if policy.fallback_after is not None
            else max(600.0, 20 * policy.max_interval)
        )
        self._clock = clock
        self._sleep = sleep
        self._jobs: dict[str, Tracked] = {}
        self._deadlines: list[tuple[float, str]] = []  # heap of (deadline, job id); stale entries skipped
        self._ready: list[str] = []  # jobs final on arrival
        self._watermark: float | None = None  # platform time up to which every change was seen
        # Changes (job id, updated_at) of any job seen within the overlap of the watermark: a late commit is
        # a change not among them, whoever's job it is (see `poll_once`).
        self._recent: dict[tuple[str, str], float] = {}
        self._wake = asyncio.Event()
        self.interval = policy.min_interval
        # Once nothing is left to submit: TAIL_INTERVAL_S apart (or the configured maximum, when that is
        # shorter: no wait is ever longer than it), but never more than half the budget (one request a
        # poll when little changes), so that others on the account keep theirs.
        rate = policy.rate_per_minute
        self.tail_interval = max(
            policy.min_interval, min(TAIL_INTERVAL_S, policy.max_interval), 120.0 / rate if rate > 0 else 0.0
        )
        self.slack = slack  # the share of the rate budget left unused lately (RateLimiter.slack)
        self.polls = 0

    def track(
        self, row: int, job: Job, submitted_at: float, task: RowTask | None = None, follow: str | None = None
    ) -> None:
        """Follow a job created, adopted or (with `follow`) found for `row`."""
        key, ref_id = (task.key, task.ref_id) if task is not None else (None, None)
        self._track(
            row,
            job.id,
            submitted_at=submitted_at,
            status=job.encode_status,
            updated_at=job.updated_at or job.created_at,
            key=key,
            ref_id=ref_id,
            follow=follow,
        )
        if task is not None and task.source_type == SourceType.OBJECT:
            self._signed(job.id, job.created_at, submitted_at)

    def _signed(self, job_id: str, created_at: str | None, submitted_at: float) -> None:
        """Note when the URL signed for an object's job stops working, on the platform's clock (it was
        signed just before the job was created): a failure reported after it is one the platform may
        have met because the signature no longer worked."""
        tracked = self._jobs.get(job_id)
        if tracked is not None and self.presign_ttl:
            created = parse_api_date(created_at)
            tracked.signed_until = (created.timestamp() if created else submitted_at) + self.presign_ttl

    def _track(
        self,
        row: int,
        job_id: str,
        *,
        submitted_at: float,
        status: int | None,
        updated_at: str | None,
        key: str | None = None,
        ref_id: str | None = None,
        follow: str | None = None,
    ) -> None:
        seen_at = parse_api_date(updated_at)
        if seen_at is not None and (self._watermark is None or seen_at.timestamp() < self._watermark):
            # A job older than the watermark (adopted, or resumed) might have changed unseen.
            self._watermark = seen_at.timestamp()
        tracked = Tracked(
            row, job_id, submitted_at + self.job_timeout, self._clock(), status, key, ref_id, follow
        )
        if job_id in self._jobs:
            return
        self._jobs[job_id] = tracked
        if follow is not None:
            self.following += 1
        heapq.heappush(self._deadlines, (tracked.deadline, job_id))
        if status is not None and self.status_map.classify(status) != Verdict.IN_PROGRESS:
            self._ready.append(job_id)  # already final in the create answer: record it without a request
        self._wake.set()

    def resume_in_flight(self) -> None:
        """Track every job the journal says is submitted and unfinished (after a crash or stop)."""
        for f in self.journal.in_flight():
            self._track(
                f.row,
                f.job_id,
                submitted_at=f.submitted_at or self._clock(),
                status=None,
                updated_at=f.job_updated_at,
                key=f.key,
                ref_id=f.ref_id,
                follow=f.follow,
            )
            if f.source_type == SourceType.OBJECT:  # signed with the run's --presign-ttl (kept by resume)
                self._signed(f.job_id, f.job_created_at, f.submitted_at or self._clock())

    @property
    def in_flight(self) -> int:
        """Jobs still being followed."""
        return len(self._jobs)

    async def run(self, submitting_done: asyncio.Event, stop: asyncio.Event) -> None:
        """Poll until nothing is in flight and submission is over, or until `stop`."""
        while not stop.is_set():
            if not self._jobs:
                if submitting_done.is_set():
                    return
                self._wake.clear()
                await wait_any(self._wake, submitting_done, stop)
                continue
            if submitting_done.is_set():
                # Submission is over: the budget has room, so the last jobs are noticed within
                # seconds of ending instead of a page-filling interval later.
                await wait_any(stop, timeout=min(self.interval, self.tail_interval), sleep=self._sleep)
            else:
                # While submitting, polls yield to creates, unless the limiter is not the bottleneck
                # (half the budget unused): then progress, too, follows the platform within seconds.
                roomy = self.slack() >= SLACK_FOR_QUICK_POLLS
                interval = min(self.interval, self.tail_interval) if roomy else self.interval
                await wait_any(stop, submitting_done, timeout=interval, sleep=self._sleep)
            if stop.is_set():
                return
            self.finish_ready()
            if self._jobs:
                await self._poll_within_deadlines(stop)

    async def _poll_within_deadlines(self, stop: asyncio.Event) -> None:
        """One poll, but jobs whose deadline passes while it waits (retries of a slow or failing page)
        end on time; a stop, or no job left to follow, ends the poll (it only reads)."""
        poll = asyncio.ensure_future(self.poll_once())
        try:
            while True:
                while self._deadlines and self._deadlines[0][1] not in self._jobs:
                    heapq.heappop(self._deadlines)  # a job that already ended
                earliest = self._deadlines[0][0] if self._deadlines else None
                timeout = None if earliest is None else max(0.0, earliest - self._clock()) + 0.01
                await unless_stopped(asyncio.wait({poll}, timeout=timeout), stop)
                if poll.done() or stop.is_set():
                    break
                self.journal.record_progress(self._expire(self._clock()))
                if not self._jobs:
                    break
        finally:
            if not poll.done():
                poll.cancel()
                await asyncio.gather(poll, return_exceptions=True)
        if not poll.cancelled():
            poll.result()

    def finish_ready(self) -> None:
        """Record jobs already final (from a create answer) and jobs past their timeout, for free."""
        now = self._clock()
        updates: list[JobUpdate] = []
        ready, self._ready = self._ready, []
        for job_id in ready:
            job = self._jobs.get(job_id)
            if job is not None:
                self._final(
                    job,
                    status=job.status,
                    updated_at=None,
                    verdict=self.status_map.classify(job.status),
                    now=now,
                    updates=updates,
                )
        updates.extend(self._expire(now))
        self.journal.record_progress(updates)

    def _expire(self, now: float) -> list[JobUpdate]:
        """Final updates for every job past its deadline."""
        updates: list[JobUpdate] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, job_id = heapq.heappop(self._deadlines)
            job = self._jobs.get(job_id)
            if job is not None and job.deadline <= now:
                self._final(job, status=job.status, updated_at=None, verdict=None, now=now, updates=updates)
        return updates

    def _untrack(self, job: Tracked) -> None:
        if self._jobs.pop(job.job_id, None) is None:
            return  # already ended (a deadline passed while a read of it was under way)
        self.on_job_end()
        if job.follow is not None:
            self.following -= 1
            self.on_follow_end()

    def _final(
        self,
        job: Tracked,
        *,
        status: int | None,
        updated_at: str | None,
        verdict: Verdict | None,  # None: the job's time is up
        now: float,
        updates: list[JobUpdate],
    ) -> None:
        """Untrack a job that reached its end, and add its row's final state to `updates` (unless a
        followed job failed: its row is sent again instead)."""
        state = {Verdict.SUCCEEDED: RowState.SUCCEEDED, Verdict.FAILED: RowState.FAILED}.get(
            verdict or Verdict.IN_PROGRESS, RowState.TIMED_OUT
        )
        if state == RowState.SUCCEEDED and job.follow in (Follow.EXISTING, Follow.EXISTING_ANY):
            state = RowState.SKIPPED  # the platform's own job succeeded: this run sent nothing
        self._untrack(job)
        if state == RowState.FAILED and job.follow in RESEND_ON_FAILURE:
            self._resend(job, f"job {job.job_id} ended with encode_status {status}: sent again")
            return
        self.progress.row_finished(
            state, row=job.row, key=job.key, ref_id=job.ref_id, job_id=job.job_id, encode_status=status
        )
        self.on_final(state)
        failed = ("ENCODE_FAILED", f"the encode ended with encode_status {status}")
        ended = parse_api_date(updated_at)
        if (
            job.signed_until is not None
            # seen encoding while the signature still worked: the platform had fetched the source
            and (job.progressed_at is None or job.progressed_at >= job.signed_until)
            and ended is not None
            and ended.timestamp() >= job.signed_until
        ):
            failed = (
                "SIGNATURE_EXPIRED",
                f"the encode ended with encode_status {status} after the URL signed for this object had "
                f"expired (--presign-ttl {self.presign_ttl:g} s): the platform probably fetched it "
                "too late; `batch-ingest retry` signs again: give it a --presign-ttl longer than the "
                "platform's queue",
            )
        code, message = {
            RowState.FAILED: failed,
            RowState.TIMED_OUT: ("JOB_TIMEOUT", TIMED_OUT_MESSAGE),
            RowState.SKIPPED: (None, EXISTING_MESSAGE),  # a followed existing job succeeded
        }.get(state, (None, None))
        if job.follow == Follow.ADOPTED:  # the report says where the job came from, however it ended
            message = f"{message}; {ADOPTED_MESSAGE}" if message else ADOPTED_MESSAGE
        updates.append(JobUpdate(job.row, status, updated_at, state, now, code, message))

    def _resend(self, job: Tracked, reason: str) -> None:
        """A followed job failed or vanished: the row goes back to `pending` and to the submitter."""
        self.journal.resend(job.row, job.job_id, reason)
        self.progress.retrying(row=job.row, key=job.key, ref_id=job.ref_id, error=reason)
        self.on_resend(job.row)

    async def poll_once(self) -> None:
        """One poll: the changed jobs, newest first, back to the watermark; then the fallback reads."""
        self.polls += 1
        now = self._clock()
        updates: list[JobUpdate] = []
        changes = 0
        newest: float | None = None
        page = 1
        previous: list[Any] | None = None
        seen: dict[tuple[str, str], float] = {}
        try:
            while True:
                items, count = await self.client.list_jobs_raw(
                    limit=MAX_PAGE_SIZE, page=page, sort="updated_at", order="DESC"
                )
                # The time of the answer, not of the ask: the ask may have waited on the rate limiter,
                # and a job's end recorded before its own submission would give a negative duration.
                now = self._clock()
                if (
                    count is not None
                    and count > MAX_PAGE_SIZE
                    and (page - 1) * MAX_PAGE_SIZE >= count + MAX_PAGE_SIZE
                ):
                    raise EndlessListing(
                        f"the jobs list said it holds {count} jobs but page {page} still came: it pages without end"
                    )
                ids = [item.get("id") for item in items]
                if previous is not None and ids and ids == previous:
                    raise EndlessListing(
                        f"page {page} of the jobs list repeats page {page - 1}: the API pages without end"
                    )
                previous = ids
                news = 0  # changes this poll had not seen before, of any job
                for item in items:
                    stamp = item.get("updated_at")
                    updated = parse_api_date(stamp) if isinstance(stamp, str) else None
                    if updated is not None:
                        if newest is None or updated.timestamp() > newest:
                            newest = updated.timestamp()
                        change = (str(item.get("id")), str(stamp))
                        if change not in self._recent:
                            news += 1
                        seen[change] = updated.timestamp()
                    # Build a Job only for our own jobs: the list also holds everyone else's.
                    if (
                        isinstance(item.get("id"), str)
                        and item["id"] in self._jobs
                        and self._observe(_job(item), now, updates)
                    ):
                        changes += 1
                last = parse_api_date(items[-1].get("updated_at")) if items else None
                if len(items) < MAX_PAGE_SIZE or last is None:
                    break
                # Past the last change seen: read on through the overlap while pages bring changes not
                # seen before, ours or others' (a late commit of ours may sit on the next page, behind
                # others' late commits). A page of nothing new inside the overlap ends the poll: a late
                # commit behind a whole page of changes already seen (over 50 changes a second) waits
                # for the fallback read.
                if (
                    self._watermark is not None
                    and last.timestamp() < self._watermark
                    and (news == 0 or last.timestamp() < self._watermark - OVERLAP_S)
                ):
                    break
                if page >= MAX_POLL_PAGES:
                    raise EndlessListing(
                        f"the jobs list did not end within {MAX_POLL_PAGES} pages of changes"
                    )
                # A long walk: jobs whose time is up end now, not after it.
                now = self._clock()
                updates.extend(self._expire(now))
                if not self._jobs:
                    break
                page += 1
        except TransientApiError as exc:
            self.progress.message(f"polling failed this time, will try again: {exc}")
            self.interval = min(self.max_interval, max(self.interval, self.min_interval) * 2)
            return
        finally:
            # Whatever ends the poll (an error, a stop, a deadline that cancels it), every job it saw
            # end is recorded: it was already announced and counted.
            self.journal.record_progress(updates)
            updates = []
        if newest is not None:
            self._watermark = newest if self._watermark is None else max(self._watermark, newest)
        if self._watermark is not None:
            floor = self._watermark - OVERLAP_S
            self._recent = {c: t for c, t in (self._recent | seen).items() if t >= floor}
        try:
            await self._fallback(now, updates)
        except TransientApiError as exc:
            self.progress.message(f"reading a job on its own failed this time, will try again: {exc}")
        finally:
            self.journal.record_progress(updates)
        self._adapt(changes, now)

    def _observe(self, job: Job, now: float, updates: list[JobUpdate]) -> bool:
        tracked = self._jobs.get(job.id)
        if tracked is None:
            return False
        tracked.last_seen = now
        changed = job.encode_status != tracked.status
        verdict = self.status_map.classify(job.encode_status)
        if (
            changed
            and verdict == Verdict.IN_PROGRESS
            and tracked.status is not None
            and tracked.progressed_at is None
        ):
            moved = parse_api_date(job.updated_at)  # it left the queue: the source was fetched by then
            tracked.progressed_at = moved.timestamp() if moved else float("-inf")
        tracked.status = job.encode_status
        if verdict != Verdict.IN_PROGRESS:
            self._final(
                tracked,
                status=job.encode_status,
                updated_at=job.updated_at,
                verdict=verdict,
                now=now,
                updates=updates,
            )
        elif changed:
            updates.append(JobUpdate(tracked.row, job.encode_status, job.updated_at, None, now))
        return changed

    async def _fallback(self, now: float, updates: list[JobUpdate]) -> None:
        stale = sorted(
            (j for j in self._jobs.values() if now - j.last_seen >= self.fallback_after),
            key=lambda j: j.last_seen,
        )
        for tracked in stale[:FALLBACK_PER_POLL]:
            if tracked.job_id not in self._jobs:
                continue
            try:
                job = await self.client.get_job(tracked.job_id)
                now = self._clock()  # the answer's time (see poll_once)
            except NotFoundError:
                if tracked.job_id not in self._jobs:
                    continue  # it ended meanwhile
                tracked.last_seen = now
                if tracked.follow in RESEND_ON_FAILURE:
                    self._untrack(tracked)
                    self._resend(tracked, f"job {tracked.job_id} is gone from the platform: sent again")
                continue  # a job this run created: wait for the timeout
            self._observe(job, now, updates)
            tracked.last_seen = now

    def _adapt(self, changes: int, now: float) -> None:
        if changes == 0:
            self.interval = min(self.max_interval, max(self.interval, self.min_interval) * 1.5)
            return
        rate = changes / max(self.interval, 1e-3)  # changes per second over the last interval
        self.interval = min(self.max_interval, max(self.min_interval, TARGET_CHANGES_PER_POLL / rate))


def _job(item: dict[str, Any]) -> Job:
    try:
        return Job.from_api(item)
    except MalformedRecord as exc:
        raise MalformedResponse(f"malformed job in the jobs list: {exc}", method="GET", path="jobs") from None
