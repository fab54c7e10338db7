"""`retry`: a new run of the rows of an earlier run that did not succeed.

A retry never adopts a job of the run it retries, re-checks timed-out rows by polling the job
they have, and marks every row it takes in the original (a hand-over), so that resuming the
original leaves them alone and a second retry of it skips them: a row is never worked by two
runs. Until the original has let go (`handover_pending`), the new run refuses to be worked.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import polars as pl

from .errors import UsageError
from .journal import CarriedRow
from .options import RunOptions
from .progress import Progress
from .resume import check_api_url, continue_run
from .rundir import RunDir, RunResult
from .runner import new_run_id, run_meta
from .settings import Settings
from .vocabulary import RETRYABLE_OUTCOMES, Follow, Outcome

# The outcomes `retry --only` takes, by default all of them.
RETRYABLE = tuple(o.value for o in RETRYABLE_OUTCOMES)


class NothingToRetry(Exception):
    """No row of the run is left to retry; the message says why (exit 0)."""


def _check_only(only: tuple[str, ...], original: Path) -> None:
    bad = sorted(set(only) - set(RETRYABLE))
    if bad:
        hint = "rejected rows need a fixed manifest"
        if Outcome.HELD in bad:
            hint += f"; held rows are sent by `batch-ingest resume {original} --all`"
        raise UsageError(f"--only takes {', '.join(RETRYABLE)}; not {', '.join(bad)} ({hint})")


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
    original_dir = source if source.is_dir() else source.parent
    _check_only(only, original_dir)
    progress = progress or Progress()
    with RunDir.open(original_dir, error_log=False) as original:
        original.claim()
        original.plan  # noqa: B018 - read now: a folder without a readable plan is refused first
        old_meta = original.meta()
        handed = original.journal.handed_to()
        wanted = original.journal.rows_with_outcomes(
            only, handed_to_collect=not original.report_is_current()
        )  # in SQL: not a whole report in memory
        rows = [r for r in wanted if r not in handed]
        started = time.time()
        carried: list[CarriedRow] = [
            replace(c, submitted_at=started) if c.follow == Follow.RECHECK else c
            for c in original.journal.carried_rows(rows)
        ]
        known = original.journal.job_ids()
        if len(rows) < len(wanted):
            taken = sorted({handed[r] for r in wanted if r in handed})
            already = (
                f"{len(wanted) - len(rows)} row(s) were already retried by {', '.join(taken)}: "
                "retry that run for them instead"
            )
            progress.message(already)
            if not rows:
                raise NothingToRetry(already)
        if not rows:
            raise NothingToRetry(f"nothing to retry: no row of {original_dir} has outcome {', '.join(only)}")
        _warn_fix_first(original.journal.error_codes(rows), progress)
        check_api_url(original_dir, old_meta, settings, options)
        if options.run_dir is not None:
            RunDir.check_new(options.run_dir)
        plan = original.plan.filter(pl.col("row").is_in(rows))
        settings.require_api()
        run_id = options.run_dir.name if options.run_dir else new_run_id()
        meta = run_meta(
            settings,
            options,
            **{k: old_meta[k] for k in ("manifest", "extras", "profiles") if k in old_meta},
            run_id=run_id,
            started_at=started,
            retry_of={"run_dir": str(original_dir), "run_id": old_meta.get("run_id"), "only": list(only)},
            # Until the original lets go of the rows, both runs hold them: this run must not work them.
            handover_pending=True,
        )
        with RunDir.create(options.run_dir or _beside(original_dir) / run_id, plan, meta) as run:
            run.journal.carry_over(carried)
            run.journal.add_known_jobs(
                known, f"a job of the retried run {old_meta.get('run_id') or original_dir}"
            )
            # The original run must not poll, look up, send or retry these rows again, and its report
            # says so from now on (resuming it later finds nothing to do and writes nothing).
            original.journal.hand_over(rows, str(run.path))
            original.write_report()
            run.journal.set_meta(handover_pending=False)
            return await continue_run(
                run, settings, options, kind="retry", started=started, transport=transport, progress=progress
            )


def _warn_fix_first(codes: dict[tuple[str | None, int | None], list[int]], progress: Progress) -> None:
    """Say so when the retry takes rows whose error a retry cannot fix (`report` lists them apart): they
    are sent again as the first run planned them, and will fail the same way unless fixed meanwhile."""
    from .text import first_few
    from .vocabulary import fix_for, needs_fix_first

    for (code, status), rows in sorted(codes.items(), key=lambda item: -len(item[1])):
        if needs_fix_first(code, status):
            progress.message(
                f"warning: {len(rows)} row(s) failed with {code or f'HTTP {status}'} (rows {first_few(rows)}): "
                f"sent again as they are, they fail the same way unless fixed first: {fix_for(code, status)}"
            )


def _beside(original: Path) -> Path:
    """Where a retry's run goes by default: beside the run it retries (not under --reports-root), so the
    two are read together; a shard's retry beside the shards' run root, never inside it (a root holds
    its shards only: prune, status and collect take it as one run)."""
    from .shard import ROOT_RECORD

    folder = original.resolve().parent
    return folder.parent if (folder / ROOT_RECORD).exists() else folder


def retry_run(
    source: str | Path, settings: Settings, options: RunOptions = RunOptions(), **kwargs: Any
) -> RunResult:
    """Retry rows of a run from synchronous code (see `retry_run_async`)."""
    return asyncio.run(retry_run_async(source, settings, options, **kwargs))
