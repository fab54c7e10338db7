"""Submitting rows: bounded workers, retries, and the look-up that keeps a row to one job.

A create that got no answer (connection dropped, read timeout, 5xx) may have created the
job. Such a row is *in doubt*: before it is sent again the platform is searched for it, by
`ref_id` when the row has one, otherwise among the newest jobs by source, profile and
creation time. A job found is adopted only if this attempt could have created it: never a
job this run (or the run it retries) already knows, never one stamped before the attempt was
sent (in the platform's clock, see `api/clock.py`). The journal holds the row in `sending`
while in doubt, so a crash at any moment leaves the doubt on record for `resume`.

A row is marked `sending` only once the rate limiter has admitted its create, just before
the request leaves: a row waiting for a slot is still `pending`. On a stop, every row whose
create is not on the wire is abandoned at once (it stays `pending`, or `sending` when it was
already in doubt); only requests on the wire are waited for.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .aio import unless_stopped, wait_any
from .api.client import SmartStreamClient
from .api.models import EncodeStatusMap, Job, Verdict, parse_api_date
from .api.retry import call_with_retries
from .budget import FailureBudget
from .errors import (
    ApiConnectionError,
    ApiError,
    AuthError,
    NotFoundError,
    PermanentApiError,
    ServerError,
    SourceUnreadable,
    TransientApiError,
)
from .journal import Journal, RowTask
from .objects import ObjectError, ObjectStores, names_object, scrub_signed
from .progress import Progress
from .redact import redact_url
from .vocabulary import (
    ADOPTED_MESSAGE,
    EXISTING_FAILED_MESSAGE,
    EXISTING_MESSAGE,
    NO_REF_ID_MESSAGE,
    Follow,
    RowState,
    SkipExisting,
    SourceType,
)

LOOKUP_PAGES = 5  # newest-jobs pages searched for an in-doubt row without ref_id


@dataclass
class SubmitStats:
    """What the submitter did, for the summary."""

    created: int = 0
    adopted: int = 0
    in_doubt: int = 0
    abort_reason: str | None = None
    failures: int = 0
    window_closed: str | None = None  # why submission ended early by design (--until, --max-submissions)
    submissions: int = 0  # rows whose create left (once per row, however retried): --max-submissions


@dataclass(frozen=True)
class SubmitPolicy:
    """How rows are sent: the bounds, the retries, the wait before a create in doubt is looked up,
    when the run stops itself, and what happens to rows whose ref_id the platform already has."""

    concurrency: int  # requests in flight
    upload_concurrency: int  # uploads in flight, part of `concurrency`
    retries: int  # per row, for transient errors (a 429 never uses one up)
    in_doubt_delay: float = 2.0
    max_failures: int | str | FailureBudget | None = None  # None: never stop for failures (budget.py)
    skip_existing: SkipExisting | None = None
    adopt_existing: bool = False  # a row's job made by an earlier run (a lost run folder) is this run's
    send_without_ref_id: bool = False  # with adopt_existing: send rows that cannot be looked up anyway
    max_in_flight: int = 0  # 0: no cap on jobs queued or encoding on the platform
    status_map: EncodeStatusMap = field(default_factory=EncodeStatusMap)
    until: float | None = None  # --until: no create leaves at or after this time (epoch seconds)
    max_submissions: int | None = None  # --max-submissions: creates this process may send


class Submitter:
    """Sends every pending row once, with at most `concurrency` requests in flight."""

    def __init__(
        self,
        client: SmartStreamClient,
        journal: Journal,
        policy: SubmitPolicy,
        *,
        progress: Progress,
        stop: asyncio.Event,
        secret_sources: dict[int, str] | None = None,
        objects: ObjectStores | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.journal = journal
        self.policy = policy
        self.progress = progress
        self.stop = stop
        self.secret_sources = secret_sources or {}  # row -> real URL of a source stored redacted
        self.objects = objects  # signs s3://, gs://, az:// sources per attempt (None: made when first needed)
        # What the engine wires to the poller after construction (alone, a submitter needs none of it):
        self.on_submitted: Callable[[int, Job, float, RowTask], None] = lambda row, job, now, task: None
        # hand a job found by --skip-existing, still encoding, to the poller
        self.follow: Callable[[int, Job, float, RowTask, str], None] | None = None
        self.following: Callable[[], int] = lambda: 0  # followed jobs in flight: any may send its row again
        self.in_flight: Callable[[], int] = lambda: 0  # jobs the poller follows now (--max-in-flight)
        self._existing: dict[str, Job] | None = None  # ref_id -> newest job, when listing all was cheaper
        self._reserved = 0  # rows between their slot and the poller
        self._slot_freed = asyncio.Event()
        self._resend: deque[int] = deque()  # rows whose followed job failed: send again
        self._wake = asyncio.Event()
        self._on_wire: dict[asyncio.Task, bool] = {}  # row tasks -> is their create on the wire
        self._uploads = asyncio.Semaphore(policy.upload_concurrency)
        self._sleep = sleep
        self._clock = clock
        self.stats = SubmitStats()
        self._taken = 0  # rows reserved against --max-submissions
        self._counted: set[int] = set()  # rows whose create left (however often retried)
        self._settled = asyncio.Event()  # a reservation was used or given back
        budget = FailureBudget.parse(policy.max_failures)
        self.budget = FailureBudget.parse(budget.text()) if budget else None  # this process's own count

    def abort(self, reason: str) -> None:
        """Stop sending: the run ends with exit 3 after what is in flight."""
        if self.stats.abort_reason is None:
            self.stats.abort_reason = reason
        self.stop.set()

    def count_failure(self) -> None:
        """One more row that did not succeed, counted the moment it is known; trips --max-failures."""
        self.stats.failures += 1
        self._count(failed=True)

    def count_end(self, failed: bool) -> None:
        """A row ended (the poller saw its job's end): the rows a --max-failures rate is taken over."""
        if failed:
            self.count_failure()
        else:
            self._count(failed=False)

    def _count(self, *, failed: bool) -> None:
        if self.budget is not None and (reason := self.budget.record(failed)) is not None:
            self.abort(reason)

    def close_window(self, reason: str) -> None:
        """Send nothing more (--until, --max-submissions): rows not yet sent stay for the next run."""
        if self.stats.window_closed is None:
            self.stats.window_closed = reason
            self.progress.message(
                f"{reason}: no new submissions; the rows left wait for `batch-ingest resume`"
            )
        self._wake.set()

    def _halted(self) -> bool:
        """Whether no more rows are to be sent: a stop, or the window closed."""
        if self.stop.is_set() or self.stats.window_closed is not None:
            return True
        if self.policy.until is not None and self._clock() >= self.policy.until:
            self.close_window("--until reached")
            return True
        return False

    async def _take_submission(self) -> bool:
        """Reserve one row's create against --max-submissions (and check --until): False when none may
        go. `stats.submissions` counts the rows whose create the limiter then let out; a reservation
        that sent nothing (adopted after a look-up, a file gone before its upload) is given back, so
        while reservations are still open the window waits for them rather than closing short."""
        limit = self.policy.max_submissions
        while not self._halted():
            if limit is None or self._taken < limit:
                self._taken += 1
                return True
            if self.stats.submissions >= limit:
                self.close_window(f"--max-submissions {limit} reached")
                return False
            self._settled.clear()
            await wait_any(self._settled, self.stop)
        return False

    async def _send_counted(self, task: RowTask) -> None:
        """`_send` on a reservation, given back unless this call's create left."""
        before = task.row in self._counted
        try:
            await self._send(task)
        finally:
            if before or task.row not in self._counted:
                self._taken -= 1
            self._settled.set()

    def resend(self, row: int) -> None:
        """A followed job failed or vanished: the row (back to `pending` in the journal) is sent again."""
        self._resend.append(row)
        self._wake.set()

    def wake(self) -> None:
        """Something the feed may be waiting for changed (a followed job ended)."""
        self._wake.set()

    def job_ended(self) -> None:
        """A job the poller followed ended: a --max-in-flight slot is free."""
        self._slot_freed.set()

    async def run(self) -> SubmitStats:
        """Submit rows in doubt (looked up first), then pending rows, in manifest order; then rows
        whose followed job failed, until no followed job is left."""
        stopper = asyncio.create_task(self._abandon_on_stop())
        try:
            if self.policy.skip_existing or self.policy.adopt_existing:
                flag = "--skip-existing" if self.policy.skip_existing else "--adopt-existing"
                try:
                    await unless_stopped(self._prepare_skip_existing(), self.stop)
                except AuthError as exc:
                    self.abort(f"authentication failed: {exc}")
                except ApiError as exc:  # a listing without end, a refused or failing read after its retries
                    self.abort(f"{flag} could not read the platform's jobs: {exc}")
            await self._run_queue()
        finally:
            stopper.cancel()
        return self.stats

    async def _run_queue(self) -> None:
        queue: asyncio.Queue[RowTask | None] = asyncio.Queue(maxsize=self.policy.concurrency * 2)
        busy = [0]

        queued: set[int] = set()  # rows on the queue or with a worker: never queued twice

        async def put(task: RowTask) -> None:
            queued.add(task.row)
            await queue.put(task)

        async def rows() -> None:
            for states in ((RowState.SENDING,), (RowState.PENDING,)):
                after = 0
                while not self._halted():
                    batch = self.journal.tasks(states, after_row=after, limit=500)
                    if not batch:
                        break
                    for task in batch:
                        if self._halted():
                            return
                        if task.row not in queued and task.row not in self._resend:
                            await put(task)
                    after = batch[-1].row
            # Followed jobs (re-checks, --skip-existing) may still fail and send their row again.
            while not self._halted():
                deferred: list[int] = []
                while self._resend and not self._halted():
                    row = self._resend.popleft()
                    if row in queued:
                        deferred.append(row)  # a worker still has it: look again once it lets go
                        continue
                    resent = self.journal.task(row)
                    if resent is not None and resent.state == RowState.PENDING:
                        await put(resent)
                self._resend.extend(deferred)
                if not (self._resend or busy[0] or not queue.empty() or self.following()):
                    return
                self._wake.clear()
                await wait_any(self._wake, self.stop)

        async def feed() -> None:
            await rows()
            # Only on the way out in good order: if anything failed, the task group cancels the
            # workers instead, so this never waits on a queue nobody reads.
            for _ in range(self.policy.concurrency):
                await queue.put(None)

        async def work() -> None:
            while (task := await queue.get()) is not None:
                if self._halted():
                    queued.discard(task.row)
                    continue
                busy[0] += 1
                try:
                    await self._submit_row_abandonable(task)
                finally:
                    busy[0] -= 1
                    queued.discard(task.row)
                    self._wake.set()

        async with asyncio.TaskGroup() as group:
            group.create_task(feed())
            for _ in range(self.policy.concurrency):
                group.create_task(work())

    async def _submit_row_abandonable(self, task: RowTask) -> None:
        """Submit one row in a task of its own, so that a stop can abandon it while nothing is on the wire."""
        row_task = asyncio.create_task(self._submit_row(task))
        self._on_wire[row_task] = False
        try:
            await row_task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this worker itself is being cancelled (the stop's grace period ran out)
            # abandoned by the stop: the row stays as the journal has it
        finally:
            self._on_wire.pop(row_task, None)

    async def _abandon_on_stop(self) -> None:
        await self.stop.wait()
        for row_task, on_wire in list(self._on_wire.items()):
            if not on_wire:
                row_task.cancel()

    def _set_on_wire(self, value: bool) -> None:
        current = asyncio.current_task()
        if current in self._on_wire:
            self._on_wire[current] = value

    async def _pause(self, seconds: float) -> None:
        """A backoff or in-doubt pause that a stop ends at once (the row is left as it is)."""
        if self.stop.is_set():
            raise _Stopped()
        await unless_stopped(self._sleep(seconds), self.stop)
        if self.stop.is_set():
            raise _Stopped()

    async def _prepare_skip_existing(self) -> None:
        """Pick the cheaper way to learn which ref_ids exist: one GET per row, or listing every job."""
        refs = self.journal.pending_ref_ids()
        if not refs:
            return
        first = await self.client.list_jobs(limit=100, page=1, sort="created_at", order="DESC")
        pages = -(-first.count // 100) if first.count is not None else None
        if pages is None or pages > len(refs):
            return  # per-row look-ups are cheaper
        existing: dict[str, Job] = {}

        def keep(job: Job) -> None:  # newest first: the first job seen for a ref_id is its newest
            if job.ref_id in refs and job.ref_id not in existing:
                existing[job.ref_id] = job

        for job in first.items:
            keep(job)
        if len(first.items) == 100:
            async for job in self.client.iter_jobs(limit=100, sort="created_at", order="DESC", page=2):
                keep(job)  # only our rows' jobs are kept: the account may hold millions
        self._existing = existing

    async def _find_existing(self, task: RowTask) -> Job | None:
        if self._existing is not None:
            return self._existing.get(task.ref_id or "")
        try:
            return await self.client.get_job_by_ref(task.ref_id or "")
        except NotFoundError:
            return None

    async def _settled_by_existing(self, task: RowTask) -> bool:
        """--skip-existing or --adopt-existing: True when the platform's job for this row's ref_id settles
        the row, so nothing is sent.

        --skip-existing: a job that succeeded makes the row `skipped`; one still encoding is followed to
        its end. A failed job never hides a failure: the row is sent again (mode `not-failed`), or
        reported `failed` with that job (mode `any`).

        --adopt-existing (a run whose folder was lost): a job that an earlier run of this very row could
        have made (same source and profile, see `_plausible`) is this run's own: `succeeded` or `failed`
        as it ended, followed to its end while it encodes. A job of the ref_id for another source (a
        new batch reusing ids) is not this row's: the row is sent.
        """
        adopt = not self.policy.skip_existing
        job = await self._find_existing(task)
        if job is None or self.journal.knows_job(job.id):
            return False
        if adopt:
            address = (
                await self._stores().address(task.source) if task.source_type == SourceType.OBJECT else None
            )
            if not self._plausible(job, task, float("-inf"), address):
                return False
        verdict = self.policy.status_map.classify(job.encode_status)
        profile_id = _profile_id(job.job_profile_id)
        now = self._clock()
        if verdict == Verdict.FAILED and not adopt and self.policy.skip_existing != SkipExisting.ANY:
            # Sent again; the failed job is never this row's to adopt in a look-up.
            self.journal.add_known_jobs([job.id], f"failed job of row {task.row} found by --skip-existing")
            return False
        # Claimed by the row's journal entry written next (mark_existing or mark_submitted), with no
        # await in between: no other row's look-up can see the job unclaimed.
        if verdict in (Verdict.SUCCEEDED, Verdict.FAILED):
            if verdict == Verdict.FAILED:
                state, message = RowState.FAILED, ADOPTED_MESSAGE if adopt else EXISTING_FAILED_MESSAGE
            else:
                state = RowState.SUCCEEDED if adopt else RowState.SKIPPED
                message = ADOPTED_MESSAGE if adopt else EXISTING_MESSAGE
            self.journal.mark_existing(
                task.row,
                state=state,
                job_id=job.id,
                media_id=job.media_id,
                encode_status=job.encode_status,
                job_profile_id=profile_id,
                created_at=job.created_at,
                updated_at=job.updated_at,
                now=now,
                message=message,
            )
            # Every row that ends counts, on both sides: a --max-failures rate over rows whose failures
            # count and whose successes do not would see a second pass fail at 100%.
            self.count_end(failed=state == RowState.FAILED)
            self.progress.row_finished(state, row=task.row, key=task.key, ref_id=task.ref_id, job_id=job.id)
            return True
        if adopt:
            follow = Follow.ADOPTED
        else:
            follow = Follow.EXISTING_ANY if self.policy.skip_existing == SkipExisting.ANY else Follow.EXISTING
        self.journal.mark_submitted(
            task.row,
            job_id=job.id,
            media_id=job.media_id,
            job_profile_id=profile_id,
            encode_status=job.encode_status,
            created_at=job.created_at,
            updated_at=job.updated_at,
            now=now,
            follow=follow,
            message=ADOPTED_MESSAGE if adopt else EXISTING_MESSAGE,
        )
        if adopt:
            self.progress.row_submitted(row=task.row, key=task.key, ref_id=task.ref_id, job_id=job.id)
        if self.follow is not None:
            self.follow(task.row, job, now, task, follow)
        return True

    def _source(self, task: RowTask) -> str:
        """The URL or path to send: a redacted URL's real form comes from memory only."""
        if not task.source_secret:
            return task.source
        real = self.secret_sources.get(task.row)
        if real is None:
            raise SourceUnreadable(
                "this row's URL carries a credential, which batch-ingest never stores, and the manifest no "
                "longer holds it: give the run its manifest as it was, then resume"
            )
        return real

    def _stores(self) -> ObjectStores:
        if self.objects is None:
            self.objects = ObjectStores()
        return self.objects

    async def _submit_row(self, task: RowTask) -> None:
        try:
            await self._submit_row_or_raise(task)
        except (SourceUnreadable, ObjectError) as exc:
            self._set_on_wire(False)
            self.journal.mark_error(
                task.row, http_status=None, code=exc.code, message=str(exc), now=self._clock()
            )
            self.progress.row_finished(
                RowState.ERROR, row=task.row, key=task.key, ref_id=task.ref_id, error=f"{exc.code}: {exc}"
            )
            self.count_failure()

    async def _submit_row_or_raise(self, task: RowTask) -> None:
        adopting = self.policy.adopt_existing and not self.policy.skip_existing
        if (
            adopting
            and not task.ref_id
            and task.state == RowState.PENDING
            and not self.policy.send_without_ref_id
        ):
            self.journal.mark_error(
                task.row, http_status=None, code="NO_REF_ID", message=NO_REF_ID_MESSAGE, now=self._clock()
            )
            self.progress.row_finished(
                RowState.ERROR, row=task.row, key=task.key, error=f"NO_REF_ID: {NO_REF_ID_MESSAGE}"
            )
            self.count_failure()
            return
        if (self.policy.skip_existing or adopting) and task.ref_id and task.state == RowState.PENDING:
            try:
                if await self._settled_by_existing(task):
                    return
            except AuthError as exc:
                self.abort(f"authentication failed: {exc}")
                return
            except ApiError as exc:
                # Could not tell whether the video is already there (a failing or refused look-up):
                # sending might ingest it twice, so the row waits for a later run or resume.
                self.journal.note_error(task.row, http_status=exc.status, code=exc.code, message=exc.message)
                return
        if not self.policy.max_in_flight:
            if await self._take_submission():
                await self._send_counted(task)
            return
        # --max-in-flight: wait for the platform's queue to have room; the slot is this row's until
        # its job is with the poller (which counts it) or the row ends.
        while self.in_flight() + self._reserved >= self.policy.max_in_flight:
            self._slot_freed.clear()
            await wait_any(self._slot_freed, self.stop)
            if self.stop.is_set():
                return
        if not await self._take_submission():
            return
        self._reserved += 1
        try:
            await self._send_counted(task)
        finally:
            self._reserved -= 1
            self._slot_freed.set()

    async def _send(self, task: RowTask) -> None:
        """Create the row's job (looking up first when in doubt), with retries; record the outcome."""
        in_doubt = task.state == RowState.SENDING
        sent_at = task.sent_at

        async def admitted() -> None:
            # The limiter let the create go: on record as `sending` before it leaves.
            nonlocal sent_at, in_doubt
            self._set_on_wire(True)
            if in_doubt:
                return  # resent after a 401 within the same attempt: already on record
            if task.row not in self._counted:
                self._counted.add(task.row)
                self.stats.submissions += 1
            sent_at = self._clock()
            in_doubt = True
            await self.journal.sending(task.row, sent_at)

        async def attempt() -> Job:
            nonlocal in_doubt, sent_at
            if in_doubt:
                if (found := await self._adopt(task, sent_at)) is not None:
                    return found
                in_doubt = False
                self.journal.mark_pending(task.row)
            if self.stop.is_set():
                raise _Stopped()
            try:
                job = await self._create(task, admitted)
            except (ApiConnectionError, ServerError) as exc:
                self._set_on_wire(False)
                if not in_doubt:
                    raise  # never left: nothing to look up or undo
                if isinstance(exc, ServerError) or exc.in_doubt:
                    self.stats.in_doubt += 1
                    await self._pause(self.policy.in_doubt_delay)
                    if (found := await self._adopt(task, sent_at)) is not None:
                        return found
                in_doubt = False
                self.journal.mark_pending(task.row)
                self.journal.note_error(task.row, http_status=exc.status, code=exc.code, message=exc.message)
                self.progress.retrying(row=task.row, error=str(exc))
                raise
            except TransientApiError as exc:  # 429: refused, so surely not created
                self._set_on_wire(False)
                in_doubt = False
                self.journal.mark_pending(task.row)
                self.journal.note_error(task.row, http_status=exc.status, code=exc.code, message=exc.message)
                raise
            except PermanentApiError:
                self._set_on_wire(False)
                in_doubt = False  # answered: surely not created
                raise
            except BaseException:
                # Cancelled or anything unforeseen mid-request: the row stays `sending`, in doubt.
                raise
            self._set_on_wire(False)
            self.stats.created += 1
            return job

        try:
            job = await call_with_retries(
                attempt, self.policy.retries, sleep=self._pause, wait_for_budget=True
            )
        except _Stopped:
            return
        except AuthError as exc:
            if not in_doubt:
                self.journal.mark_pending(task.row)
            self.abort(f"authentication failed: {exc}")
            return
        except PermanentApiError as exc:
            if in_doubt:
                # The look-up itself was refused (403, 400...): the create may still have made a job,
                # so the row stays `sending` for a later resume to look up, never `error` to be re-sent.
                self.journal.note_error(task.row, http_status=exc.status, code=exc.code, message=exc.message)
                self.progress.message(
                    f"row {task.row}: in doubt and the look-up failed ({exc}): resume looks again"
                )
                return
            self._fail(task, exc)
            return
        except TransientApiError as exc:
            if in_doubt:
                return  # still in doubt after every retry: the row stays `sending` for `resume` to look up
            if isinstance(exc, ApiConnectionError):
                self.abort(f"the API stayed unreachable through {self.policy.retries} retries: {exc}")
                return
            self._fail(task, exc)
            return
        now = self._clock()
        self.journal.mark_submitted(  # claims the job: no other row's look-up adopts it
            task.row,
            job_id=job.id,
            media_id=job.media_id,
            job_profile_id=_profile_id(job.job_profile_id),
            encode_status=job.encode_status,
            created_at=job.created_at,
            updated_at=job.updated_at,
            now=now,
        )
        self.progress.row_submitted(row=task.row, key=task.key, ref_id=task.ref_id, job_id=job.id)
        self.on_submitted(task.row, job, now, task)

    def _fail(self, task: RowTask, exc: ApiError) -> None:
        self.journal.mark_error(
            task.row, http_status=exc.status, code=exc.code, message=exc.message, now=self._clock()
        )
        self.progress.row_finished(
            RowState.ERROR,
            row=task.row,
            key=task.key,
            ref_id=task.ref_id,
            error=f"{exc.code or exc.status}: {exc.message}",
        )
        self.count_failure()

    async def _create(self, task: RowTask, admitted: Callable[[], Awaitable[None]]) -> Job:
        if task.source_type in (SourceType.URL, SourceType.OBJECT):
            assert task.job_profile_id is not None
            # An object is signed for this attempt only: the URL lives in this call and nowhere else.
            signed = await self._stores().sign(task.source) if task.source_type == SourceType.OBJECT else None
            try:
                return await self.client.create_job(
                    signed or self._source(task),
                    task.job_profile_id,
                    ref_id=task.ref_id,
                    name=task.name,
                    description=task.description,
                    on_admitted=admitted,
                )
            except ApiError as exc:  # a server that echoes a signed URL, in whatever form, must not leak it
                if signed is not None:
                    exc.message = scrub_signed(exc.message, signed)
                    exc.args = (exc.message,)
                raise
        async with self._uploads:
            return await self.client.upload_job(
                task.source_path or task.source,
                profile_id=task.job_profile_id,
                ref_id=task.ref_id,
                name=task.name,
                description=task.description,
                on_progress=self.progress.bytes_sent,
                on_admitted=admitted,
                expected_size=task.bytes,
            )

    async def _adopt(self, task: RowTask, sent_at: float | None) -> Job | None:
        """The in-doubt row's job if the platform has it (counted as adopted), else None."""
        found = await self._look_up(task, sent_at)
        if found is not None:
            self.stats.adopted += 1
        return found

    async def _look_up(self, task: RowTask, sent_at: float | None) -> Job | None:
        """The job an in-doubt create made, if the platform has it and this attempt could have made it."""
        earliest = self.client.platform_clock.floor(sent_at) if sent_at is not None else float("-inf")
        address = await self._stores().address(task.source) if task.source_type == SourceType.OBJECT else None
        if task.ref_id:
            try:
                job = await self.client.get_job_by_ref(task.ref_id)
            except NotFoundError:
                return None
            return job if self._plausible(job, task, earliest, address) else None
        page = 1
        while page <= LOOKUP_PAGES:
            result = await self.client.list_jobs(limit=100, page=page, sort="created_at", order="DESC")
            candidates = [j for j in result.items if self._plausible(j, task, earliest, address)]
            if candidates:
                return min(candidates, key=lambda j: j.created_at or "")
            oldest = parse_api_date(result.items[-1].created_at) if result.items else None
            if len(result.items) < 100 or (oldest is not None and oldest.timestamp() < earliest):
                return None
            page += 1
        return None

    def _plausible(self, job: Job, task: RowTask, earliest: float, address: str | None) -> bool:
        if self.journal.knows_job(job.id):  # another row's, or one this run must never adopt
            return False
        created = parse_api_date(job.created_at)
        if created is not None and created.timestamp() < earliest:
            return False
        if task.source_type == SourceType.OBJECT:
            # A signed URL differs at each attempt: the echo is compared without its query with the
            # store's address of the object, else by bucket and key (see names_object).
            if job.source_url is not None and not names_object(job.source_url, task.source, address):
                return False
        elif task.source_type == SourceType.URL:
            real = self.secret_sources.get(task.row) if task.source_secret else task.source
            if job.source_url is not None and (
                not same_url(job.source_url, real)
                if real is not None
                else not same_url(redact_url(job.source_url), task.source)
            ):
                return False
        elif job.source_url is not None and job.source_url != Path(task.source_path or task.source).name:
            return False
        if task.job_profile_id is not None and job.job_profile_id not in (None, str(task.job_profile_id)):
            return False
        if task.ref_id and job.ref_id not in (None, task.ref_id):
            return False
        return True


_DEFAULT_PORTS = {"http": 80, "https": 443}


def same_url(a: str, b: str) -> bool:
    """Whether two spellings name the same URL: the scheme and host in any case, the default port
    written or not (`HTTPS://Host:443/x` is `https://host/x`). The path and query stay as they are:
    servers may tell their case apart."""
    if a == b:
        return True

    def canonical(url: str) -> tuple[str, str, int | None, str, str] | None:
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError:
            return None
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").lower()
        if port == _DEFAULT_PORTS.get(scheme):
            port = None
        return scheme, host, port, parts.path or "/", parts.query

    left, right = canonical(a), canonical(b)
    return left is not None and left == right


class _Stopped(Exception):
    """The run is stopping: leave the row as it is."""


def _profile_id(value: str | None) -> int | None:
    """A job's profile id as the journal keeps it: a number, or None when the API gave none or not a number."""
    return int(value) if value is not None and value.isdigit() else None
