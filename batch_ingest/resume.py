"""Continuing runs: `resume` a run from its journal, `retry` the rows of a run that did not succeed."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import polars as pl

from .api.client import SmartStreamClient
from .errors import UsageError
from .journal import JOURNAL_FILE, Journal
from .progress import Progress
from .report import PLAN_PARQUET, build_report
from .runner import RunOptions, RunResult, execute_journal, finish_run, prepare_run_dir, new_run_id
from .settings import Settings


def _open_run(run_dir: Path) -> tuple[Journal, pl.DataFrame, dict[str, Any]]:
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir} is not a run folder: give the folder that holds {JOURNAL_FILE}")
    journal = Journal.open(run_dir / JOURNAL_FILE)
    try:
        plan = pl.read_parquet(run_dir / PLAN_PARQUET)
    except (OSError, pl.exceptions.PolarsError) as exc:
        journal.close()
        raise UsageError(f"{run_dir / PLAN_PARQUET} cannot be read ({exc}): the run folder is incomplete") from None
    return journal, plan, journal.meta()


def stored_settings(run_dir: Path) -> dict[str, Any]:
    """The non-secret settings a run was started with (a layer under flags and environment on resume).

    Empty when `run_dir` holds no journal (the command then reports that itself).
    """
    if not (run_dir / JOURNAL_FILE).exists():
        return {}
    journal = Journal.open(run_dir / JOURNAL_FILE)
    try:
        return dict(journal.meta().get("settings") or {})
    finally:
        journal.close()


async def resume_run_async(
    run_dir: str | Path,
    settings: Settings,
    options: RunOptions = RunOptions(),
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Continue a run from its journal: finished rows stay, in-doubt rows are looked up, the rest sent."""
    run_dir = Path(run_dir)
    progress = progress or Progress()
    started = time.time()
    journal, plan, meta = _open_run(run_dir)
    try:
        stored = meta.get("options") or {}
        options = replace(
            options,
            max_failures=options.max_failures if options.max_failures is not None else stored.get("max_failures"),
            skip_existing=options.skip_existing or bool(stored.get("skip_existing")),
        )
        journal.set_meta(resumes=int(meta.get("resumes", 0)) + 1)
        if not journal.unfinished():
            # Nothing left: rewrite the report from the journal, without a single request.
            return finish_run(journal, run_dir, plan, meta.get("extras", []), started, None, None, None, progress)
        settings.require_api()
        async with SmartStreamClient.from_settings(settings, transport=transport) as client:
            return await execute_journal(journal, run_dir, plan, meta.get("extras", []), settings, options, client, progress, started)
    finally:
        journal.close()


RETRYABLE = ("failed", "error", "timed_out", "interrupted")


async def retry_run_async(
    source: str | Path,
    settings: Settings,
    options: RunOptions = RunOptions(),
    *,
    only: tuple[str, ...] = RETRYABLE,
    transport: httpx.AsyncBaseTransport | None = None,
    progress: Progress | None = None,
) -> RunResult | None:
    """A new run of the rows of an earlier run whose outcome is in `only`; None when there are none.

    Rows that were interrupted keep their job (polled, not sent again) or their doubt (looked up first).
    """
    source = Path(source)
    original = source if source.is_dir() else source.parent
    bad = sorted(set(only) - set(RETRYABLE))
    if bad:
        raise UsageError(f"--only takes {', '.join(RETRYABLE)}; not {', '.join(bad)} (rejected rows need a fixed manifest)")
    old_journal, old_plan, old_meta = _open_run(original)
    try:
        report = build_report(old_plan, old_journal.to_frame(), old_meta.get("extras", []))
        rows = report.filter(pl.col("outcome").is_in(list(only)))["row"].to_list()
        carried = [u for u in old_journal.unfinished() if u[0] in set(rows)]
    finally:
        old_journal.close()
    if not rows:
        return None
    plan = old_plan.filter(pl.col("row").is_in(rows))
    progress = progress or Progress()
    settings.require_api()
    started = time.time()
    run_id = options.run_dir.name if options.run_dir else new_run_id()
    run_dir = prepare_run_dir(options, run_id)
    plan.write_parquet(run_dir / PLAN_PARQUET)
    meta = {
        **{k: old_meta[k] for k in ("manifest", "extras") if k in old_meta},
        "run_id": run_id,
        "started_at": started,
        "retry_of": {"run_dir": str(original), "run_id": old_meta.get("run_id"), "only": list(only)},
        "settings": {k: v for k, v in settings.masked().items() if k not in ("api_key", "token", "password")},
        "options": {"max_failures": options.max_failures, "skip_existing": options.skip_existing},
    }
    journal = Journal.create(run_dir / JOURNAL_FILE, plan, meta)
    try:
        journal.carry_over(carried)
        # The original run must not poll, look up or send these rows again if it is resumed.
        old_journal = Journal.open(original / JOURNAL_FILE)
        try:
            old_journal.hand_over([c[0] for c in carried], str(run_dir))
        finally:
            old_journal.close()
        async with SmartStreamClient.from_settings(settings, transport=transport) as client:
            return await execute_journal(journal, run_dir, plan, meta.get("extras", []), settings, options, client, progress, started)
    finally:
        journal.close()


def resume_run(run_dir: str | Path, settings: Settings, options: RunOptions = RunOptions(), **kwargs: Any) -> RunResult:
    """Resume a run from synchronous code (see `resume_run_async`)."""
    return asyncio.run(resume_run_async(run_dir, settings, options, **kwargs))


def retry_run(source: str | Path, settings: Settings, options: RunOptions = RunOptions(), **kwargs: Any) -> RunResult | None:
    """Retry rows of a run from synchronous code (see `retry_run_async`)."""
    return asyncio.run(retry_run_async(source, settings, options, **kwargs))
