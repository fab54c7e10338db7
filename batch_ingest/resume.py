"""Continuing runs: `resume` a run from its journal, `retry` the rows of a run that did not succeed.

Both lock the run folders they work on (`runlock.py`), send credentials only to the API URL
the user's own flags, environment or config name (never silently to the one a run folder
stores), and keep a row to one job: `retry` never adopts a job of the run it retries, re-checks
timed-out rows by polling the job they have, and marks every row it takes so that a second
retry of the same run leaves them alone.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import polars as pl

from .api.client import SmartStreamClient
from .errors import BatchIngestError, UsageError, error_log_folder
from .journal import JOURNAL_FILE, RECHECK, Journal
from .plan import plan_manifest
from .progress import Progress
from .redact import redact_url
from .report import PLAN_PARQUET, REPORT_PARQUET, read_summary, write_atomically, write_report_in_chunks
from .runlock import RunLock, locked
from .runner import (
    RunOptions,
    RunResult,
    Segment,
    _skip_mode,
    check_run_dir,
    execute_journal,
    finish_run,
    new_run_id,
    prepare_run_dir,
    run_meta,
    subset_record,
)
from .settings import Settings
from .subset import Subset
from .text import first_few

RETRYABLE = ("failed", "error", "timed_out", "interrupted")


class NothingToRetry(Exception):
    """No row of the run is left to retry; the message says why (exit 0)."""


# Settings a resume does not take from the run folder: where credentials go is the user's word.
NOT_INHERITED = ("api_url",)


def _open_run(run_dir: Path, *, migrate: bool = True) -> tuple[Journal, pl.DataFrame, dict[str, Any]]:
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir} is not a run folder: give the folder that holds {JOURNAL_FILE}")
    journal = Journal.open(run_dir / JOURNAL_FILE, migrate=migrate)
    try:
        plan = pl.read_parquet(run_dir / PLAN_PARQUET, glob=False)
    except (OSError, pl.exceptions.PolarsError) as exc:
        journal.close()
        raise UsageError(
            f"{run_dir / PLAN_PARQUET} cannot be read ({exc}): the run folder is incomplete"
        ) from None
    return journal, plan, journal.meta()


def stored_settings(run_dir: Path) -> dict[str, Any]:
    """The non-secret settings a run was started with, but the API URL (a layer under flags and
    environment on resume). Empty when `run_dir` holds no journal (the command reports that itself)."""
    if not (run_dir / JOURNAL_FILE).exists():
        return {}
    journal = Journal.open(run_dir / JOURNAL_FILE, migrate=False)  # not under the run's lock yet
    try:
        stored = journal.meta().get("settings") or {}
    finally:
        journal.close()
    return {k: v for k, v in stored.items() if k not in NOT_INHERITED}


def recover_secret_sources(
    meta: dict[str, Any], stored: dict[int, str], progress: Progress
) -> dict[int, str]:
    """The real URLs of the rows whose source is stored redacted, read again from the run's manifest
    (matched by row and by their redacted form: a URL signed anew since is taken).

    A row whose URL the manifest no longer holds (gone, edited) is left out: it ends as an error
    naming the fix, and every other row goes on."""
    if not stored:
        return {}
    options = meta.get("options") or {}
    manifest = str(meta.get("manifest") or "")
    try:
        plan = plan_manifest(
            manifest,
            fmt=options.get("fmt"),
            default_profile=options.get("default_profile"),
            extra_columns=tuple(options.get("extra_columns") or ()),
        )
    except (BatchIngestError, OSError) as exc:
        progress.message(
            f"{len(stored)} row(s) have URLs with credentials, which are never stored, and the manifest "
            f"{manifest} cannot be read again ({exc}): those rows end as errors"
        )
        return {}
    # The same URL but for its credential (a URL signed anew is welcome): the row's own video.
    found = {row: url for row, url in plan.secrets.items() if stored.get(row) == redact_url(url)}
    if len(found) < len(stored):
        progress.message(
            f"{len(stored) - len(found)} row(s) have URLs with credentials that the manifest {manifest} no longer "
            "holds as they were: those rows end as errors"
        )
    return found


def check_api_url(run_dir: Path, meta: dict[str, Any], settings: Settings, options: RunOptions) -> None:
    """Refuse to send credentials to an API URL other than the run's own unless the user named it."""
    started_with = str((meta.get("settings") or {}).get("api_url") or "").rstrip("/")
    current = settings.api_url.rstrip("/")
    if not started_with or started_with == current or options.allow_api_url_change:
        return
    raise UsageError(
        f"{run_dir} was started against {started_with}, but the API URL now is {current} "
        "(from SMARTSTREAM_API_URL, the config file or the default). Credentials go only where you say: "
        f"pass --api-url {started_with} to continue against the run's own API, or --api-url {current} "
        "to continue against this one"
    )


async def resume_run_async(
    run_dir: str | Path,
    settings: Settings,
    options: RunOptions = RunOptions(),
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Continue a run from its journal: finished rows stay, in-doubt rows are looked up, the rest sent.

    A run with nothing left to do changes no file: its report and summary are read back as they are.
    """
    run_dir = Path(run_dir)
    progress = progress or Progress()
    started = time.time()
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir} is not a run folder: give the folder that holds {JOURNAL_FILE}")
    lock = RunLock(run_dir).acquire()
    error_log_folder.set(run_dir)
    try:
        journal, plan, meta = _open_run(run_dir, migrate=False)
        try:
            if options.subset is not None:
                lock.write_pid()
                journal.migrate()
                check_api_url(run_dir, meta, settings, options)
                settings.require_api()
                _take_held(journal, run_dir, meta, options.subset, progress)
                meta = journal.meta()
            if not journal.has_unfinished():
                done = _finished_result(run_dir)
                if done is not None:
                    return done
                # Finished, but the report was never written (the process died just before): write it.
                lock.write_pid()
                journal.migrate()
                return finish_run(
                    journal, run_dir, plan, meta.get("extras", []), Segment("resume", started), progress
                )
            if meta.get("handover_pending"):
                retried = (meta.get("retry_of") or {}).get("run_dir")
                raise UsageError(
                    f"{run_dir} is a retry run that stopped before {retried} let go of its rows, so that run still "
                    f"owns them: resume {retried} (or retry it again) instead, and delete {run_dir}"
                )
            lock.write_pid()
            journal.migrate()
            check_api_url(run_dir, meta, settings, options)
            stored = meta.get("options") or {}
            options = replace(
                options,
                max_failures=options.max_failures
                if options.max_failures is not None
                else stored.get("max_failures"),
                skip_existing=options.skip_existing or _skip_mode(stored.get("skip_existing")),
            )
            settings.require_api()
            return await _continue(
                journal, run_dir, plan, meta, settings, options, transport, progress, started, "resume"
            )
        finally:
            journal.close()
    finally:
        lock.release()


def _take_held(
    journal: Journal, run_dir: Path, meta: dict[str, Any], subset: Subset, progress: Progress
) -> None:
    """Widen a canary run: the held rows `subset` chooses become pending, and the meta records it.

    A run that holds nothing back is left as it is (a repeated `resume --all` is a no-op)."""
    held = journal.held_rows()
    if not held:
        progress.message(f"{run_dir} holds no rows back: {subset.describe()} takes nothing")
        return
    chosen = subset.choose(held)
    if not chosen:
        raise UsageError(
            f"{subset.describe()} takes none of the {len(held)} rows {run_dir} holds back "
            f"(rows {first_few(held)}): choose among them, or pass --all"
        )
    journal.take(chosen)
    journal.set_meta(subsets=[*(meta.get("subsets") or []), subset_record("resume", subset, len(chosen))])
    progress.message(f"taking {len(chosen)} of the {len(held)} held rows ({subset.describe()})")


async def _continue(
    journal: Journal,
    run_dir: Path,
    plan: pl.DataFrame,
    meta: dict[str, Any],
    settings: Settings,
    options: RunOptions,
    transport: httpx.AsyncBaseTransport | None,
    progress: Progress,
    started: float,
    kind: str,
) -> RunResult:
    """Work an existing journal (a resume, or a retry's new run) to its end on one client."""
    secrets = recover_secret_sources(meta, journal.secret_rows(), progress)
    async with SmartStreamClient.from_settings(settings, transport=transport) as client:
        return await execute_journal(
            journal,
            run_dir,
            plan,
            meta.get("extras", []),
            settings,
            options,
            client,
            progress,
            started,
            kind,
            secret_sources=secrets,
        )


def _finished_result(run_dir: Path) -> RunResult | None:
    """The result of a finished run as its files hold it, or None when a file is missing or unreadable."""
    try:
        pl.read_parquet_schema(
            run_dir / REPORT_PARQUET
        )  # there and readable; the rows are read when asked for
        summary = read_summary(run_dir)
    except (OSError, ValueError, pl.exceptions.PolarsError):
        return None
    if summary is None:
        return None
    return RunResult(run_dir, summary, int(summary.get("exit_code", 1)), run_dir / REPORT_PARQUET)


async def retry_run_async(
    source: str | Path,
    settings: Settings,
    options: RunOptions = RunOptions(),
    *,
    only: tuple[str, ...] = RETRYABLE,
    transport: httpx.AsyncBaseTransport | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """A new run of the rows of an earlier run whose outcome is in `only`; NothingToRetry when there are none.

    Interrupted rows keep their job (polled, not sent again) or their doubt (looked up first).
    Timed-out rows keep their job too: it is polled again with this run's `--job-timeout`, and
    the row is sent again only if that job fails or is gone. Failed and error rows are sent
    again; no job of the original run is ever adopted for them. The original run hands every
    retried row over: resuming it leaves them alone, retrying it again skips them.
    """
    source = Path(source)
    original = source if source.is_dir() else source.parent
    bad = sorted(set(only) - set(RETRYABLE))
    if bad:
        hint = "rejected rows need a fixed manifest"
        if "held" in bad:
            hint += f"; held rows are sent by `batch-ingest resume {original} --all`"
        raise UsageError(f"--only takes {', '.join(RETRYABLE)}; not {', '.join(bad)} ({hint})")
    progress = progress or Progress()
    if not original.is_dir():
        raise UsageError(f"{original} is not a run folder: give the folder that holds {JOURNAL_FILE}")
    with locked(original):
        old_journal, old_plan, old_meta = _open_run(original)
        try:
            handed = old_journal.handed_to()
            wanted = old_journal.rows_with_outcomes(only)  # in SQL: not a whole report in memory
            rows = [r for r in wanted if r not in handed]
            started = time.time()
            carried = [
                replace(c, submitted_at=started) if c.follow == RECHECK else c
                for c in old_journal.carried_rows(rows)
            ]
            known = old_journal.job_ids()
        finally:
            old_journal.close()
        already = ""
        if len(rows) < len(wanted):
            taken = sorted({handed[r] for r in wanted if r in handed})
            already = (
                f"{len(wanted) - len(rows)} row(s) were already retried by {', '.join(taken)}: "
                "retry that run for them instead"
            )
            progress.message(already)
        if not rows:
            raise NothingToRetry(
                already or f"nothing to retry: no row of {original} has outcome {', '.join(only)}"
            )
        check_api_url(original, old_meta, settings, options)
        if options.run_dir is not None:
            check_run_dir(options.run_dir)
        plan = old_plan.filter(pl.col("row").is_in(rows))
        settings.require_api()
        run_id = options.run_dir.name if options.run_dir else new_run_id()
        run_dir, lock = prepare_run_dir(options, run_id)
        try:
            write_atomically(run_dir / PLAN_PARQUET, plan.write_parquet)
            meta = run_meta(
                settings,
                options,
                **{k: old_meta[k] for k in ("manifest", "extras") if k in old_meta},
                run_id=run_id,
                started_at=started,
                retry_of={"run_dir": str(original), "run_id": old_meta.get("run_id"), "only": list(only)},
                # Until the original lets go of the rows, both runs hold them: this run must not work them.
                handover_pending=True,
            )
            journal = Journal.create(run_dir / JOURNAL_FILE, plan, meta)
            try:
                journal.carry_over(carried)
                journal.add_known_jobs(
                    known, f"a job of the retried run {old_meta.get('run_id') or original}"
                )
                # The original run must not poll, look up, send or retry these rows again.
                old_journal = Journal.open(original / JOURNAL_FILE)
                try:
                    old_journal.hand_over(rows, str(run_dir))
                    # Its report says so from now on (resuming it later finds nothing to do and writes nothing).
                    write_report_in_chunks(old_plan, old_journal, old_meta.get("extras", []), original)
                finally:
                    old_journal.close()
                journal.set_meta(handover_pending=False)
                meta["handover_pending"] = False
                return await _continue(
                    journal, run_dir, plan, meta, settings, options, transport, progress, started, "retry"
                )
            finally:
                journal.close()
        finally:
            lock.release()


def resume_run(
    run_dir: str | Path, settings: Settings, options: RunOptions = RunOptions(), **kwargs: Any
) -> RunResult:
    """Resume a run from synchronous code (see `resume_run_async`)."""
    return asyncio.run(resume_run_async(run_dir, settings, options, **kwargs))


def retry_run(
    source: str | Path, settings: Settings, options: RunOptions = RunOptions(), **kwargs: Any
) -> RunResult:
    """Retry rows of a run from synchronous code (see `retry_run_async`)."""
    return asyncio.run(retry_run_async(source, settings, options, **kwargs))
