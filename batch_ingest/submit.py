"""Submitting rows: bounded workers, retries, and the look-up that keeps a row to one job.

A create that got no answer (connection dropped, read timeout, 5xx) may have created the
job. Such a row is *in doubt*: before it is sent again the platform is searched for it, by
`ref_id` when the row has one, otherwise among the newest jobs by source, profile and
creation time. A job found is adopted. The journal holds the row in `sending` while in
doubt, so a crash at any moment leaves the doubt on record for `resume`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from .api.client import SmartStreamClient
from .api.models import Job, parse_api_date
from .api.retry import call_with_retries
from .errors import (
    ApiConnectionError,
    ApiError,
    AuthError,
    NotFoundError,
    PermanentApiError,
    ServerError,
    TransientApiError,
)
from .journal import PENDING, SENDING, Journal, RowTask
from .progress import Progress

CLOCK_SKEW_S = 300.0  # how far the platform's clock may be from ours when matching creation times
LOOKUP_PAGES = 5  # newest-jobs pages searched for an in-doubt row without ref_id


@dataclass
class SubmitStats:
    """What the submitter did, for the summary."""

    created: int = 0
    adopted: int = 0
    in_doubt: int = 0
    errors: int = 0
    abort_reason: str | None = None
    failures: int = 0
    known_job_ids: set[str] = field(default_factory=set)


class Submitter:
    """Sends every pending row once, with at most `concurrency` requests in flight."""

    def __init__(
        self,
        client: SmartStreamClient,
        journal: Journal,
        *,
        concurrency: int,
        upload_concurrency: int,
        retries: int,
        on_submitted: Callable[[int, Job, float], None],
        progress: Progress,
        stop: asyncio.Event,
        in_doubt_delay: float = 2.0,
        max_failures: int | None = None,
        skip_existing: bool = False,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.journal = journal
        self.concurrency = concurrency
        self.retries = retries
        self.on_submitted = on_submitted
        self.progress = progress
        self.stop = stop
        self.in_doubt_delay = in_doubt_delay
        self.max_failures = max_failures
        self.skip_existing = skip_existing
        self._existing: dict[str, Job] | None = None  # ref_id -> newest job, when listing all was cheaper
        self._uploads = asyncio.Semaphore(upload_concurrency)
        self._sleep = sleep
        self._clock = clock
        self.stats = SubmitStats(known_job_ids=journal.job_ids())
        self._claimed: set[str] = set(self.stats.known_job_ids)

    def abort(self, reason: str) -> None:
        """Stop sending: the run ends with exit 3 after what is in flight."""
        if self.stats.abort_reason is None:
            self.stats.abort_reason = reason
        self.stop.set()

    def count_failure(self) -> None:
        """One more row that did not succeed; trips --max-failures."""
        self.stats.failures += 1
        if self.max_failures is not None and self.stats.failures > self.max_failures:
            self.abort(f"more than --max-failures {self.max_failures} rows failed")

    async def run(self) -> SubmitStats:
        """Submit rows in doubt (looked up first), then pending rows, in manifest order."""
        if self.skip_existing:
            await self._prepare_skip_existing()
        queue: asyncio.Queue[RowTask | None] = asyncio.Queue(maxsize=self.concurrency * 2)

        async def feed() -> None:
            try:
                for states in ((SENDING,), (PENDING,)):
                    after = 0
                    while not self.stop.is_set():
                        batch = self.journal.tasks(states, after_row=after, limit=500)
                        if not batch:
                            break
                        for task in batch:
                            if self.stop.is_set():
                                return
                            await queue.put(task)
                        after = batch[-1].row
            finally:
                for _ in range(self.concurrency):
                    await queue.put(None)

        async def work() -> None:
            while (task := await queue.get()) is not None:
                if self.stop.is_set():
                    continue
                await self._submit_row(task)

        await asyncio.gather(feed(), *(work() for _ in range(self.concurrency)))
        return self.stats

    async def _prepare_skip_existing(self) -> None:
        """Pick the cheaper way to learn which ref_ids exist: one GET per row, or listing every job."""
        refs = {t.ref_id for t in self.journal.tasks((PENDING,), limit=10**9) if t.ref_id}
        if not refs:
            return
        first = await self.client.list_jobs(limit=100, page=1, sort="created_at", order="DESC")
        pages = -(-first.count // 100) if first.count is not None else None
        if pages is None or pages > len(refs):
            return  # per-row look-ups are cheaper
        existing: dict[str, Job] = {}
        jobs = list(first.items)
        if len(first.items) == 100:
            jobs += [j async for j in self.client.iter_jobs(limit=100, sort="created_at", order="DESC", page=2)]
        for job in jobs:  # newest first: the first job seen for a ref_id is its newest
            if job.ref_id and job.ref_id not in existing:
                existing[job.ref_id] = job
        self._existing = existing

    async def _find_existing(self, task: RowTask) -> Job | None:
        if self._existing is not None:
            return self._existing.get(task.ref_id or "")
        try:
            return await self.client.get_job_by_ref(task.ref_id or "")
        except NotFoundError:
            return None

    async def _skip_if_exists(self, task: RowTask) -> bool:
        """--skip-existing: record the platform's job for this ref_id instead of sending. True if skipped."""
        job = await self._find_existing(task)
        if job is None:
            return False
        self.journal.mark_skipped(
            task.row,
            job_id=job.id,
            media_id=job.media_id,
            encode_status=job.encode_status,
            job_profile_id=int(job.job_profile_id) if (job.job_profile_id or "").isdigit() else None,
            now=self._clock(),
        )
        self._claimed.add(job.id)
        self.progress.row_finished("skipped", row=task.row, job_id=job.id)
        return True

    async def _submit_row(self, task: RowTask) -> None:
        if self.skip_existing and task.ref_id and task.state == PENDING:
            try:
                if await self._skip_if_exists(task):
                    return
            except AuthError as exc:
                self.abort(f"authentication failed: {exc}")
                return
            except TransientApiError as exc:
                # Could not tell whether the video is already there: sending might ingest it twice.
                self.journal.note_error(task.row, http_status=exc.status, code=exc.code, message=exc.message)
                return
        in_doubt = task.state == SENDING
        sent_at = task.sent_at

        async def attempt() -> Job:
            nonlocal in_doubt, sent_at
            if in_doubt:
                if (found := await self._adopt(task, sent_at)) is not None:
                    return found
                in_doubt = False
                self.journal.mark_pending(task.row)
            if self.stop.is_set():
                raise _Stopped()
            sent_at = self._clock()
            await self.journal.sending(task.row, sent_at)
            try:
                job = await self._create(task)
            except (ApiConnectionError, ServerError) as exc:
                if isinstance(exc, ServerError) or exc.in_doubt:
                    in_doubt = True
                    self.stats.in_doubt += 1
                    await self._sleep(self.in_doubt_delay)
                    if (found := await self._adopt(task, sent_at)) is not None:
                        return found
                    in_doubt = False
                self.journal.mark_pending(task.row)
                self.journal.note_error(task.row, http_status=exc.status, code=exc.code, message=exc.message)
                self.progress.retrying(row=task.row, error=str(exc))
                raise
            except TransientApiError as exc:  # 429: refused, so surely not created
                self.journal.mark_pending(task.row)
                self.journal.note_error(task.row, http_status=exc.status, code=exc.code, message=exc.message)
                raise
            except BaseException:
                # Cancelled or anything unforeseen mid-request: the row stays `sending`, in doubt.
                raise
            self.stats.created += 1
            return job

        try:
            job = await call_with_retries(attempt, self.retries, sleep=self._sleep)
        except _Stopped:
            return
        except AuthError as exc:
            if not in_doubt:
                self.journal.mark_pending(task.row)
            self.abort(f"authentication failed: {exc}")
            return
        except PermanentApiError as exc:
            self._fail(task, exc)
            return
        except TransientApiError as exc:
            if in_doubt:
                return  # still in doubt after every retry: the row stays `sending` for `resume` to look up
            if isinstance(exc, ApiConnectionError):
                self.abort(f"the API stayed unreachable through {self.retries} retries: {exc}")
                return
            self._fail(task, exc)
            return
        now = self._clock()
        self._claimed.add(job.id)
        self.journal.mark_submitted(
            task.row,
            job_id=job.id,
            media_id=job.media_id,
            job_profile_id=int(job.job_profile_id) if (job.job_profile_id or "").isdigit() else None,
            encode_status=job.encode_status,
            created_at=job.created_at,
            updated_at=job.updated_at,
            now=now,
        )
        self.progress.row_submitted(row=task.row, job_id=job.id)
        self.on_submitted(task.row, job, now)

    def _fail(self, task: RowTask, exc: ApiError) -> None:
        self.journal.mark_error(task.row, http_status=exc.status, code=exc.code, message=exc.message, now=self._clock())
        self.stats.errors += 1
        self.progress.row_finished("error", row=task.row, error=f"{exc.code or exc.status}: {exc.message}")
        self.count_failure()

    async def _create(self, task: RowTask) -> Job:
        if task.source_type == "url":
            assert task.job_profile_id is not None
            return await self.client.create_job(
                task.source,
                task.job_profile_id,
                ref_id=task.ref_id,
                name=task.name,
                description=task.description,
            )
        async with self._uploads:
            return await self.client.upload_job(
                task.source_path or task.source,
                profile_id=task.job_profile_id,
                ref_id=task.ref_id,
                name=task.name,
                description=task.description,
                on_progress=self.progress.bytes_sent,
            )

    async def _adopt(self, task: RowTask, sent_at: float | None) -> Job | None:
        """The in-doubt row's job if the platform has it (counted as adopted), else None."""
        found = await self._look_up(task, sent_at)
        if found is not None:
            self.stats.adopted += 1
        return found

    async def _look_up(self, task: RowTask, sent_at: float | None) -> Job | None:
        """The job an in-doubt create made, if the platform has it and no other row claimed it."""
        earliest = (sent_at or 0.0) - CLOCK_SKEW_S
        if task.ref_id:
            try:
                job = await self.client.get_job_by_ref(task.ref_id)
            except NotFoundError:
                return None
            return job if self._plausible(job, task, earliest) else None
        page = 1
        while page <= LOOKUP_PAGES:
            result = await self.client.list_jobs(limit=100, page=page, sort="created_at", order="DESC")
            candidates = [j for j in result.items if self._plausible(j, task, earliest)]
            if candidates:
                return min(candidates, key=lambda j: j.created_at or "")
            oldest = parse_api_date(result.items[-1].created_at) if result.items else None
            if len(result.items) < 100 or (oldest is not None and oldest.timestamp() < earliest):
                return None
            page += 1
        return None

    def _plausible(self, job: Job, task: RowTask, earliest: float) -> bool:
        if job.id in self._claimed:
            return False
        created = parse_api_date(job.created_at)
        if created is not None and created.timestamp() < earliest:
            return False
        expected_source = task.source if task.source_type == "url" else Path(task.source_path or task.source).name
        if job.source_url is not None and job.source_url != expected_source:
            return False
        if task.job_profile_id is not None and job.job_profile_id not in (None, str(task.job_profile_id)):
            return False
        if task.ref_id and job.ref_id not in (None, task.ref_id):
            return False
        return True


class _Stopped(Exception):
    """The run is stopping: leave the row as it is."""
