"""Working a run folder: submitter and poller on one client until the journal has nothing left to do.

`work(run, ...)` is what `run`, `resume` and `retry` share once they have an open `RunDir`:
the submitter and the poller in one task group (a failure in either cancels the other), a
graceful stop on the first SIGINT/SIGTERM, and, however it ends, the report and summary
written from the journal (`RunDir.finish`) with the documented exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .aio import wait_any
from .api.client import SmartStreamClient
from .errors import (
    EXIT_ABORTED,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    AuthError,
    BatchIngestError,
    PermanentApiError,
    exit_code_for,
    first_leaf,
    local_state_problem,
    write_error_log,
)
from .options import RunOptions
from .poll import Poller, PollPolicy
from .progress import Progress
from .rundir import RunDir, RunResult, SegmentRecord
from .settings import Settings
from .submit import SubmitPolicy, Submitter
from .text import first_few, safe_text
from .vocabulary import Outcome, RowState, is_failure

STOP_GRACE_S = 30.0  # after a first Ctrl-C, how long requests in flight may take to finish


@dataclass(frozen=True)
class Work:
    """What a process is to do with an open run: the API, the options, and how it was started."""

    settings: Settings
    options: RunOptions
    client: SmartStreamClient
    progress: Progress
    kind: str  # "run", "resume" or "retry": the segment's name in the summary
    started: float = field(default_factory=time.time)
    notes: tuple[str, ...] = ()  # the plan's notes, shown once the run starts
    secret_sources: dict[int, str] = field(default_factory=dict)  # row -> real URL of redacted sources


async def work(run: RunDir, spec: Work) -> RunResult:
    """Submit and poll what the journal says is unfinished, then write the report and summary."""
    stop = asyncio.Event()
    progress, options, settings, client = spec.progress, spec.options, spec.settings, spec.client
    signals = _Signals(stop, progress, run) if options.handle_signals else None
    client.on_notice = progress.message
    counts = run.journal.counts()
    to_submit = sum(counts.get(s, 0) for s in (RowState.PENDING, RowState.SENDING))
    to_follow = counts.get(RowState.SUBMITTED, 0)
    if spec.kind == "resume":
        # What is left, not the whole manifest again: a resume of a 200,000-row run with 12 rows to go
        # says 12.
        progress.message(
            f"resuming {run.path}: {to_submit + to_follow} of {run.plan.height} rows left: {to_submit} to "
            f"submit (in doubt, looked up first: {counts.get(RowState.SENDING, 0)}), {to_follow} job(s) to "
            f"follow; {run.plan.height - to_submit - to_follow} rows ended before or not taken"
        )
    progress.start(
        rows=to_submit + to_follow if spec.kind == "resume" else run.plan.height,
        to_submit=to_submit + to_follow,
        upload_bytes=run.journal.bytes_to_send(),
        run_id=run.meta().get("run_id", run.path.name),
    )
    for note in spec.notes:
        progress.message(note)
    if (members := getattr(client.limiter, "members_seen", None)) is not None:
        progress.message(
            f"rate: --rate {settings.rate:g} per minute is shared through the rate store by {members} "
            "process(es) now, this one included"
        )
    no_ref = run.journal.rows_without_ref() if options.skip_existing else []
    if no_ref:
        progress.message(
            f"--skip-existing: {len(no_ref)} row(s) have no ref_id, so the platform cannot be asked about them: "
            f"they are always sent (rows {first_few(no_ref)})"
        )
    poller = Poller(
        client,
        run.journal,
        poll_policy(settings),
        progress=progress,
        slack=client.limiter.slack,
    )
    submitter = Submitter(
        client,
        run.journal,
        SubmitPolicy(
            concurrency=settings.concurrency,
            upload_concurrency=settings.upload_concurrency,
            retries=settings.retries,
            in_doubt_delay=settings.in_doubt_delay,
            max_failures=options.max_failures,
            skip_existing=options.skip_existing,
            adopt_existing=options.adopt_existing,
            send_without_ref_id=options.send_without_ref_id,
            max_in_flight=settings.max_in_flight,
            status_map=settings.encode_status_map,
            until=options.until,
            max_submissions=options.max_submissions,
        ),
        progress=progress,
        stop=stop,
        secret_sources=spec.secret_sources,
        objects=settings.make_object_stores(),
    )
    # The two meet only through these hooks: jobs go to the poller, ends and resends come back.
    submitter.on_submitted = lambda row, job, now, task: poller.track(row, job, now, task)
    submitter.follow = lambda row, job, now, task, follow: poller.track(row, job, now, task, follow)
    submitter.following = lambda: poller.following
    submitter.in_flight = lambda: poller.in_flight
    # Every row that ends counts towards --max-failures, a skipped one too (as a success): a rate taken
    # over failures alone would trip on a second pass that finds old failures.
    poller.on_final = lambda state: submitter.count_end(is_failure(state))
    poller.on_resend = submitter.resend
    poller.on_follow_end = submitter.wake
    poller.on_job_end = submitter.job_ended
    if options.no_wait:
        # Jobs are left to `collect`: a followed job (re-check, --skip-existing) is not waited for here.
        submitter.following = lambda: 0
    poller.resume_in_flight()
    if options.until is not None or options.max_submissions is not None:
        # For `status` in another terminal while this runs (the summary records the window at the end).
        run.journal.set_meta(window_open={"until": options.until, "max_submissions": options.max_submissions})
    deadline = asyncio.create_task(_close_at(options.until, submitter, stop)) if options.until else None
    try:
        internal = await _submit_and_poll(submitter, poller, stop, progress, wait=not options.no_wait)
    finally:
        if deadline is not None:
            deadline.cancel()
        if signals is not None:
            signals.remove()
    stats = submitter.stats
    segment = SegmentRecord(
        kind=spec.kind,
        started_at=spec.started,
        finished_at=spec.started,  # set by finish
        api_requests=client.requests_sent,
        rate_limited=client.limiter.rate_limited_total,
        created=stats.created,
        adopted_after_doubt=stats.adopted,
        in_doubt=stats.in_doubt,
        polls=poller.polls,
    )
    forced = _report_internal_error(run, internal, progress) if internal is not None else None
    window = None
    if options.until is not None or options.max_submissions is not None:
        run.journal.set_meta(window_open=None)
        window = {
            "until": datetime.fromtimestamp(options.until).astimezone().isoformat()
            if options.until
            else None,
            "max_submissions": options.max_submissions,
            "submissions": stats.submissions,
            "closed_by": stats.window_closed,
        }
    return finish(
        run,
        segment,
        progress,
        abort_reason=stats.abort_reason,
        interrupted=forced is None and signals is not None and signals.signalled,
        forced_exit_code=forced,
        options=options,
        window=window,
    )


async def _close_at(until: float, submitter: Submitter, stop: asyncio.Event) -> None:
    """--until: at that time the run ends as a graceful stop does (requests on the wire finish, the
    rest stays for `resume`), whether it is sending or only polling by then."""
    await _wait_until(until)
    submitter.close_window("--until reached")
    stop.set()


async def _wait_until(until: float) -> None:
    await asyncio.sleep(max(0.0, until - time.time()))


def poll_policy(settings: Settings) -> PollPolicy:
    """How jobs are followed, from the settings (a run's poller, and `collect`'s)."""
    return PollPolicy(
        job_timeout=settings.job_timeout,
        min_interval=settings.poll_min_interval,
        max_interval=settings.poll_max_interval,
        rate_per_minute=settings.rate,
        status_map=settings.encode_status_map,
        presign_ttl=settings.presign_ttl,
    )


async def _submit_and_poll(
    submitter: Submitter, poller: Poller, stop: asyncio.Event, progress: Progress, *, wait: bool = True
) -> BaseException | None:
    """Run both to the end (or to `stop` plus the grace period); the failure that escaped them, if any.

    Without `wait` (`run --no-wait`) nothing is polled: jobs final in their create answer are
    recorded, the others stay `submitted` for `collect`."""
    submitting_done = asyncio.Event()

    async def submit() -> None:
        try:
            await submitter.run()
        finally:
            submitting_done.set()

    async def poll() -> None:
        if not wait:
            await wait_any(submitting_done, stop)
            poller.finish_ready()
            return
        try:
            await poller.run(submitting_done, stop)
        except AuthError as exc:
            submitter.abort(f"authentication failed while polling: {exc}")
        except PermanentApiError as exc:  # a listing without end, a 4xx to a read: polling cannot go on
            submitter.abort(f"polling failed for good: {exc}")

    async def both() -> None:
        # A failure in either cancels the other (and every task under it) and is raised here.
        async with asyncio.TaskGroup() as group:
            group.create_task(submit())
            group.create_task(poll())

    running = asyncio.ensure_future(both())

    async def grace() -> None:
        await stop.wait()
        await asyncio.sleep(STOP_GRACE_S)
        running.cancel()

    grace_task = asyncio.create_task(grace())
    try:
        await running
    except asyncio.CancelledError:
        if not stop.is_set():
            raise
        progress.message(f"requests still in flight after {STOP_GRACE_S:.0f} s were abandoned")
    except Exception as exc:  # noqa: BLE001 - a bug or the machine failing: keep what the journal holds
        return exc
    finally:
        grace_task.cancel()
    return None


def _report_internal_error(run: RunDir, exc: BaseException, progress: Progress) -> int:
    """A failure that escaped the submitter or the poller: say so, and return the documented exit code.

    Ours keep theirs (an API error: 3); bad local state (disk full, a damaged journal) is 2 with the
    fix; anything else is an internal error, 4, with the traceback in RUN_DIR/error.log. The report
    of what the journal holds is written all the same."""
    leaf = first_leaf(exc)
    if isinstance(leaf, BatchIngestError):
        code, text = exit_code_for(leaf), f"error: {leaf}"
    elif (local := local_state_problem(leaf)) is not None:
        code, text = EXIT_USAGE, f"error: {local}"
    else:
        log = write_error_log(run.path, exc)
        code = EXIT_INTERNAL
        text = f"internal error: {type(leaf).__name__}: {leaf}"[:300] + f"; details in {log}"
    with contextlib.suppress(OSError):  # stderr may be a closed pipe: the exit code and error.log still tell
        print(f"batch-ingest: {safe_text(text)}", file=sys.stderr, flush=True)  # even with -q: it is an error
    progress.message(text)
    return code


def finish(
    run: RunDir,
    segment: SegmentRecord,
    progress: Progress,
    *,
    abort_reason: str | None = None,
    interrupted: bool = False,
    forced_exit_code: int | None = None,
    options: RunOptions | None = None,
    window: dict[str, Any] | None = None,
) -> RunResult:
    """`RunDir.finish`, then tell the user how it ended and how to go on."""
    result = run.finish(
        segment,
        abort_reason=abort_reason,
        interrupted=interrupted,
        forced_exit_code=forced_exit_code,
        skip_existing=options.skip_existing if options else None,
        no_wait=options.no_wait if options else False,
        window=window,
    )
    left = result.summary["outcomes"].get(Outcome.INTERRUPTED, 0)
    if result.exit_code in (EXIT_ABORTED, EXIT_INTERRUPTED) or (window and window.get("closed_by") and left):
        progress.message(f"the run can be continued with: batch-ingest resume {run.path}")
    progress.finished(result.summary)
    progress.close()
    if forced_exit_code is not None:  # after the summary too: a failure's last word is how to go on
        progress.message(f"the run can be continued with: batch-ingest resume {run.path}")
    return result


class _Signals:
    """First SIGINT/SIGTERM: stop gracefully. Second: exit at once (the journal stays consistent)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, stop: asyncio.Event, progress: Progress, run: RunDir) -> None:
        self.signalled = False
        self._stop, self._progress, self._run_dir = stop, progress, run.path
        self._loop = asyncio.get_running_loop()
        for sig in self.SIGNALS:
            self._loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, signum: int) -> None:
        if self.signalled:
            sys.stderr.write(
                f"\nbatch-ingest: stopped at once; continue with: batch-ingest resume {self._run_dir}\n"
            )
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)
        self.signalled = True
        self._progress.message(
            f"{signal.Signals(signum).name}: no new submissions; finishing requests in flight "
            f"(at most {STOP_GRACE_S:.0f} s; signal again to stop at once)"
        )
        self._stop.set()

    def remove(self) -> None:
        for sig in self.SIGNALS:
            self._loop.remove_signal_handler(sig)
