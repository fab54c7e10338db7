"""A run, wired: plan, journal, submitter and poller on one client; report and summary at the end."""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import polars as pl

from .api.client import SmartStreamClient
from .errors import (
    EXIT_ABORTED,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    AuthError,
    BatchIngestError,
    PermanentApiError,
    UsageError,
    error_log_folder,
    exit_code_for,
    first_leaf,
    local_state_problem,
    write_error_log,
)
from .journal import JOURNAL_FILE, Journal
from .plan import Plan, plan_manifest, resolve_profiles
from .poll import Poller
from .progress import Progress
from .report import (
    NOT_FAILED_OUTCOMES,
    PLAN_PARQUET,
    REPORT_CSV,
    REPORT_PARQUET,
    format_summary,
    write_atomically,
    write_report_in_chunks,
    write_summary,
)
from .runlock import LOCK_FILE, RunLock, make_private
from .settings import SECRET_FIELDS as SECRET_SETTINGS
from .settings import Settings
from .submit import SKIP_ANY, SKIP_NOT_FAILED, Submitter
from .subset import Subset
from .text import first_few, safe_text

STOP_GRACE_S = 30.0  # after a first Ctrl-C, how long requests in flight may take to finish
DEFAULT_REPORTS = Path("reports")


@dataclass(frozen=True)
class RunOptions:
    """How to run a manifest (the settings say how to reach the API)."""

    run_dir: Path | None = None  # the run's folder; default reports/<run-id>/
    fmt: str | None = None
    default_profile: str | None = None
    max_failures: int | None = None
    skip_existing: str | None = None  # None, "not-failed" or "any" (see submit.py)
    extra_columns: tuple[str, ...] = ()  # columns close to a known name that are meant as extras
    handle_signals: bool = False
    allow_api_url_change: bool = False  # resume/retry: the user named --api-url explicitly
    subset: Subset | None = None  # a canary run's rows (run), or held rows to take (resume); subset.py


@dataclass
class RunResult:
    """What a run left: its folder, the summary, the exit code and the report (read when first asked for:
    a million-row run does not hold its report in memory to return it)."""

    run_dir: Path
    summary: dict[str, Any]
    exit_code: int
    report_path: Path = field(default_factory=Path)

    @functools.cached_property
    def report(self) -> pl.DataFrame:
        """The report frame, one row per manifest row."""
        return pl.read_parquet(self.report_path, glob=False)

    def summary_text(self) -> str:
        """The terminal summary."""
        return format_summary(self.summary)


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus a short random suffix."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def prepare_run_dir(options: RunOptions, run_id: str) -> tuple[Path, RunLock]:
    """The run's folder, created and locked; refuses one that already holds a run (or is in use)."""
    run_dir = options.run_dir or DEFAULT_REPORTS / run_id
    _refuse_existing_run(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot create the run folder {run_dir}: {exc.strerror}: check --report-dir"
        ) from None
    lock = RunLock(run_dir).acquire()
    try:
        check_run_dir(run_dir)  # again, under the lock: another process may have just made it
    except BaseException:
        lock.release()
        raise
    make_private(run_dir)
    lock.write_pid()
    error_log_folder.set(run_dir)
    return run_dir, lock


def _refuse_existing_run(run_dir: Path) -> None:
    if (run_dir / JOURNAL_FILE).exists():
        raise UsageError(
            f"{run_dir} already holds a run: `batch-ingest resume {run_dir}` continues it, "
            "or pass another --report-dir"
        )


def check_run_dir(run_dir: Path) -> None:
    """UsageError unless `run_dir` can take a new run: absent, or an empty folder (a lock file aside)."""
    _refuse_existing_run(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--report-dir {run_dir} is a file, not a folder")
    foreign = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE) if run_dir.is_dir() else []
    if foreign:
        raise UsageError(
            f"{run_dir} is not empty and holds no run ({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}): "
            "batch-ingest would overwrite files there; choose an empty or new folder with --report-dir"
        )


def run_meta(settings: Settings, options: RunOptions, **values: Any) -> dict[str, Any]:
    """What a new run records about itself: ids, the non-secret settings and the options."""
    return {
        **values,
        "settings": {k: v for k, v in settings.masked().items() if k not in SECRET_SETTINGS},
        "options": {
            "max_failures": options.max_failures,
            "default_profile": options.default_profile,
            "fmt": options.fmt,
            "skip_existing": options.skip_existing,
            "extra_columns": list(options.extra_columns),
        },
    }


async def plan_run(
    manifest: Path, settings: Settings | None, options: RunOptions, client: SmartStreamClient | None
) -> Plan:
    """Read, validate and (with a client) resolve profiles: everything short of sending."""
    plan = plan_manifest(
        manifest,
        fmt=options.fmt,
        default_profile=options.default_profile,
        extra_columns=options.extra_columns,
    )
    if client is not None:
        plan = await resolve_profiles(plan, client)
    return plan


async def run_manifest_async(
    manifest: str | Path,
    settings: Settings,
    options: RunOptions = RunOptions(),
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Run a manifest to the end: every row submitted, polled and reported."""
    manifest = Path(manifest)
    progress = progress or Progress()
    settings.require_api()
    if options.run_dir is not None:
        check_run_dir(options.run_dir)  # before a single request
    started = time.time()
    async with SmartStreamClient.from_settings(settings, transport=transport) as client:
        plan = await plan_run(manifest, settings, options, client)
        taken = choose_subset(plan, options.subset)
        run_id = options.run_dir.name if options.run_dir else new_run_id()
        run_dir, lock = prepare_run_dir(options, run_id)
        try:
            write_atomically(run_dir / PLAN_PARQUET, plan.frame.write_parquet)
            meta = run_meta(
                settings,
                options,
                run_id=run_id,
                manifest=str(manifest.resolve()),
                started_at=started,
                extras=plan.extras,
            )
            held = None
            if options.subset is not None and taken is not None:
                meta["subsets"] = [subset_record("run", options.subset, len(taken.taken))]
                held = (taken.held, held_message(run_dir, options.subset))
                progress.message(
                    f"canary run ({options.subset.describe()}): {len(taken.taken)} of {plan.ready.height} ready rows "
                    + (
                        f"taken, {len(taken.held)} held back; `batch-ingest resume {run_dir} --all` sends the rest"
                        if taken.held
                        else "taken: that is every ready row, nothing is held back"
                    )
                )
            journal = Journal.create(run_dir / JOURNAL_FILE, plan.frame, meta, held=held)
            try:
                return await execute_journal(
                    journal,
                    run_dir,
                    plan.frame,
                    plan.extras,
                    settings,
                    options,
                    client,
                    progress,
                    started,
                    "run",
                    notes=plan.notes,
                    secret_sources=plan.secrets,
                )
            finally:
                journal.close()
        finally:
            lock.release()


@dataclass(frozen=True)
class Taken:
    """A subset's choice: the ready rows taken now and those held back."""

    taken: list[int]
    held: list[int]


def choose_subset(plan: Plan, subset: Subset | None) -> Taken | None:
    """The rows a canary run takes (None: every row); UsageError when the subset takes none."""
    if subset is None:
        return None
    ready = plan.ready["row"].to_list()
    taken = subset.choose(ready)
    if not taken:
        raise UsageError(
            f"{subset.describe()} takes none of the manifest's {len(ready)} ready rows"
            + (f" (rows {ready[0]} to {ready[-1]})" if ready else "")
            + ": choose rows the manifest has"
        )
    chosen = set(taken)
    return Taken(taken, [r for r in ready if r not in chosen])


def canary_plan(plan: Plan, subset: Subset) -> Plan:
    """The plan as a canary would work it (validate, --dry-run): ready rows outside the subset are
    marked held, so the plan's counts and the estimate cover only the rows it takes."""
    taken = choose_subset(plan, subset)
    assert taken is not None
    not_taken = (pl.col("status") == "ready") & ~pl.col("row").is_in(taken.taken)
    frame = plan.frame.with_columns(
        pl.when(not_taken).then(pl.lit("held")).otherwise(pl.col("status")).alias("status")
    )
    note = f"canary ({subset.describe()}): the plan and estimate cover the rows it takes; {len(taken.held)} ready rows would be held back"
    return replace(plan, frame=frame, notes=[*plan.notes, note])


def held_message(run_dir: Path, subset: Subset) -> str:
    """What the report says of a held row."""
    return f"held back by a canary run ({subset.describe()}): `batch-ingest resume {run_dir} --all` sends it"


def subset_record(kind: str, subset: Subset, taken: int) -> dict[str, Any]:
    """A subset as the run's meta records it: which command took how many rows, chosen how."""
    return {"kind": kind, "selection": subset.describe(), "taken": taken, "at": time.time()}


@dataclass
class Segment:
    """One process's share of a run (`run`, each `resume`, a `retry`): what it spent."""

    kind: str
    started: float
    client: SmartStreamClient | None = None
    submitter: Submitter | None = None
    poller: Poller | None = None

    def record(self, finished: float, exit_code: int) -> dict[str, Any]:
        stats = self.submitter.stats if self.submitter else None
        return {
            "kind": self.kind,
            "started_at": self.started,
            "finished_at": finished,
            "elapsed_s": round(finished - self.started, 3),
            "api_requests": self.client.requests_sent if self.client else 0,
            "rate_limited": self.client.limiter.rate_limited_total if self.client else 0,
            "created": stats.created if stats else 0,
            "adopted_after_doubt": stats.adopted if stats else 0,
            "in_doubt": stats.in_doubt if stats else 0,
            "polls": self.poller.polls if self.poller else 0,
            "exit_code": exit_code,
        }


SEGMENT_SUMS = (
    "elapsed_s",
    "api_requests",
    "rate_limited",
    "created",
    "adopted_after_doubt",
    "in_doubt",
    "polls",
)


async def execute_journal(
    journal: Journal,
    run_dir: Path,
    plan: pl.DataFrame,
    extras: list[str],
    settings: Settings,
    options: RunOptions,
    client: SmartStreamClient,
    progress: Progress,
    started: float,
    kind: str,
    *,
    notes: list[str] | None = None,
    secret_sources: dict[int, str] | None = None,
) -> RunResult:
    """Submit and poll what the journal says is unfinished, then write the report."""
    stop = asyncio.Event()
    interrupted = _install_signal_handlers(stop, progress, run_dir) if options.handle_signals else None
    client.on_notice = progress.message
    counts = journal.counts()
    to_submit = counts.get("pending", 0) + counts.get("sending", 0)
    upload_bytes = journal.bytes_to_send()
    progress.start(
        rows=plan.height,
        to_submit=to_submit + counts.get("submitted", 0),
        upload_bytes=upload_bytes,
        run_id=journal.meta().get("run_id", run_dir.name),
    )
    for note in notes or ():
        progress.message(note)
    no_ref = _rows_without_ref(journal, options)
    if no_ref:
        progress.message(
            f"--skip-existing: {len(no_ref)} row(s) have no ref_id, so the platform cannot be asked about them: "
            f"they are always sent (rows {first_few(no_ref)})"
        )
    poller = Poller(
        client,
        journal,
        settings.encode_status_map,
        progress,
        job_timeout=settings.job_timeout,
        min_interval=settings.poll_min_interval,
        max_interval=settings.poll_max_interval,
        rate_per_minute=settings.rate,
        slack=client.limiter.slack,
    )
    submitter = Submitter(
        client,
        journal,
        concurrency=settings.concurrency,
        upload_concurrency=settings.upload_concurrency,
        retries=settings.retries,
        on_submitted=lambda row, job, now, task: poller.track(row, job, now, task),
        progress=progress,
        stop=stop,
        in_doubt_delay=settings.in_doubt_delay,
        max_failures=options.max_failures,
        skip_existing=options.skip_existing,
        status_map=settings.encode_status_map,
        follow=lambda row, job, now, task, follow: poller.track(row, job, now, task, follow),
        following=lambda: poller.following,
        secret_sources=secret_sources,
        max_in_flight=settings.max_in_flight,
        in_flight=lambda: poller.in_flight,
    )
    poller.on_final = lambda state: submitter.count_failure() if state not in NOT_FAILED_OUTCOMES else None
    poller.on_resend = submitter.resend
    poller.on_follow_end = submitter.wake
    poller.on_job_end = submitter.job_ended
    poller.resume_in_flight()
    submitting_done = asyncio.Event()

    async def submit() -> None:
        try:
            await submitter.run()
        finally:
            submitting_done.set()

    async def poll() -> None:
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

    work = asyncio.ensure_future(both())

    async def grace() -> None:
        await stop.wait()
        await asyncio.sleep(STOP_GRACE_S)
        work.cancel()

    grace_task = asyncio.create_task(grace())
    internal: BaseException | None = None
    try:
        await work
    except asyncio.CancelledError:
        if not stop.is_set():
            raise
        progress.message(f"requests still in flight after {STOP_GRACE_S:.0f} s were abandoned")
    except Exception as exc:  # noqa: BLE001 - a bug or the machine failing: keep what the journal holds
        internal = exc
    finally:
        grace_task.cancel()
        _remove_signal_handlers(options)

    segment = Segment(kind, started, client, submitter, poller)
    if internal is not None:
        return finish_after_internal_error(
            journal, run_dir, plan, extras, segment, progress, options, internal
        )
    return finish_run(journal, run_dir, plan, extras, segment, progress, interrupted, options)


def finish_after_internal_error(
    journal: Journal,
    run_dir: Path,
    plan: pl.DataFrame,
    extras: list[str],
    segment: Segment,
    progress: Progress,
    options: RunOptions,
    exc: BaseException,
) -> RunResult:
    """A failure that escaped the submitter or the poller: write the report of what the journal holds,
    and end with the failure's documented code. Ours keep theirs (an API error: 3); bad local state
    (disk full, a damaged journal) is 2 with the fix; anything else is an internal error, 4, with the
    traceback in RUN_DIR/error.log."""
    leaf = first_leaf(exc)
    if isinstance(leaf, BatchIngestError):
        code, text = exit_code_for(leaf), f"error: {leaf}"
    elif (local := local_state_problem(leaf)) is not None:
        code, text = EXIT_USAGE, f"error: {local}"
    else:
        log = write_error_log(run_dir, exc)
        code, text = (
            EXIT_INTERNAL,
            f"internal error: {type(leaf).__name__}: {leaf}"[:300] + f"; details in {log}",
        )
    print(f"batch-ingest: {safe_text(text)}", file=sys.stderr, flush=True)  # even with -q: it is an error
    progress.message(text)
    result = finish_run(journal, run_dir, plan, extras, segment, progress, None, options, exit_code=code)
    progress.message(f"the run can be continued with: batch-ingest resume {run_dir}")
    return result


def _rows_without_ref(journal: Journal, options: RunOptions) -> list[int]:
    if not options.skip_existing:
        return []
    return journal.rows_without_ref()


def finish_run(
    journal: Journal,
    run_dir: Path,
    plan: pl.DataFrame,
    extras: list[str],
    segment: Segment,
    progress: Progress,
    interrupted: dict[str, bool] | None = None,
    options: RunOptions | None = None,
    *,
    exit_code: int | None = None,
) -> RunResult:
    """Build and write the report and summary from the journal; work out the exit code.

    The summary's figures add up every segment of the run (run, resume, resume...).
    """
    facts = write_report_in_chunks(plan, journal, extras, run_dir)
    parquet = run_dir / REPORT_PARQUET
    forced, exit_code = exit_code, facts.exit_code
    abort_reason = segment.submitter.stats.abort_reason if segment.submitter else None
    if abort_reason:
        exit_code = EXIT_ABORTED
    signalled = bool(interrupted and interrupted["signalled"])
    if signalled:
        exit_code = EXIT_INTERRUPTED
    if forced is not None:
        exit_code = forced
    finished = time.time()
    meta = journal.meta()
    segments = [*meta.get("segments", []), segment.record(finished, exit_code)]
    journal.set_meta(segments=segments, last_exit_code=exit_code, finished_at=finished)
    totals = {name: sum(s.get(name, 0) for s in segments) for name in SEGMENT_SUMS}
    totals["elapsed_s"] = round(totals["elapsed_s"], 3)
    stored_options = meta.get("options") or {}
    skip_mode = (options.skip_existing if options else None) or _skip_mode(
        stored_options.get("skip_existing")
    )
    summary = {
        "run_id": meta.get("run_id", run_dir.name),
        "manifest": meta.get("manifest"),
        "run_dir": str(run_dir),
        "started_at": datetime.fromtimestamp(meta.get("started_at", segment.started), UTC).isoformat(),
        "finished_at": datetime.fromtimestamp(finished, UTC).isoformat(),
        **totals,
        "rows": facts.rows,
        "outcomes": facts.outcomes,
        # Jobs this run's own creates made (adopted after a doubt included); not skipped or carried jobs.
        "jobs_submitted": totals["created"] + totals["adopted_after_doubt"],
        "resumes": sum(1 for s in segments if s.get("kind") == "resume"),
        "segments": [
            {k: s.get(k) for k in ("kind", "elapsed_s", "api_requests", "exit_code")} for s in segments
        ],
        "abort_reason": abort_reason,
        "interrupted": signalled,
        "exit_code": exit_code,
        "first_failures": facts.first_failures,
        "not_succeeded": facts.failures,
        "report": {"parquet": str(parquet), "csv": str(run_dir / REPORT_CSV)},
        "settings": meta.get("settings"),
    }
    if skip_mode:
        summary["skip_existing"] = {
            "mode": skip_mode,
            "rows_without_ref_id": facts.without_ref_id,
            "rows_without_ref_id_first": facts.without_ref_id_first,
        }
    if "retry_of" in meta:
        summary["retry_of"] = meta["retry_of"]
    if meta.get("subsets"):
        summary["subsets"] = [{k: s.get(k) for k in ("kind", "selection", "taken")} for s in meta["subsets"]]
        summary["resume_all"] = f"batch-ingest resume {run_dir} --all"
    write_summary(summary, run_dir)
    if exit_code in (EXIT_ABORTED, EXIT_INTERRUPTED):
        progress.message(f"the run can be continued with: batch-ingest resume {run_dir}")
    progress.finished(summary)
    progress.close()
    return RunResult(run_dir, summary, exit_code, parquet)


def _skip_mode(stored: Any) -> str | None:
    """--skip-existing as stored by this or an older version (which stored a bool)."""
    if stored is True:
        return SKIP_NOT_FAILED
    return stored if stored in (SKIP_NOT_FAILED, SKIP_ANY) else None


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _install_signal_handlers(stop: asyncio.Event, progress: Progress, run_dir: Path) -> dict[str, bool]:
    """First SIGINT/SIGTERM: stop gracefully. Second: exit at once (the journal stays consistent)."""
    loop = asyncio.get_running_loop()
    state = {"signalled": False}

    def on_signal(signum: int) -> None:
        if state["signalled"]:
            sys.stderr.write(
                f"\nbatch-ingest: stopped at once; continue with: batch-ingest resume {run_dir}\n"
            )
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)
        state["signalled"] = True
        progress.message(
            f"{signal.Signals(signum).name}: no new submissions; finishing requests in flight "
            f"(at most {STOP_GRACE_S:.0f} s; signal again to stop at once)"
        )
        stop.set()

    for sig in _SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    return state


def _remove_signal_handlers(options: RunOptions) -> None:
    if not options.handle_signals:
        return
    loop = asyncio.get_running_loop()
    for sig in _SIGNALS:
        loop.remove_signal_handler(sig)


def run_manifest(
    manifest: str | Path,
    settings: Settings,
    options: RunOptions = RunOptions(),
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Run a manifest from synchronous code (see `run_manifest_async`)."""
    return asyncio.run(
        run_manifest_async(manifest, settings, options, transport=transport, progress=progress)
    )
