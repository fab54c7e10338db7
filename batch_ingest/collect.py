"""`collect`: the submitted jobs of many runs followed to their end by one poller.

Shards that each poll the whole account multiply the polling cost by N: the jobs list holds every
shard's jobs, and each shard would read all of it. With `run --no-wait` the shards only submit;
`collect RUN_DIR_OR_ROOT...` then locks every run, tracks all their jobs in one `Poller` (one read
of the changes serves every run), writes each run's journal as its jobs end, then each run's report
and summary, and a merged report of them all. Like a resume it can be stopped and started again:
the journals hold what was learnt, and a collect of runs that are all finished sends nothing.

To the poller the runs are one journal (`Collection`): a row of run i is the handle
`i * STRIDE + row`, split again wherever a journal is written or a row is shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from .errors import UsageError
from .journal import InFlight, JobUpdate
from .poll import Poller, PollPolicy
from .progress import Progress
from .resume import check_api_url
from .rundir import RunDir, RunResult, SegmentRecord
from .runfiles import JOURNAL_FILE
from .settings import Settings
from .shard import expected, shard_folders

STRIDE = 1 << 40  # past any manifest's row count


def expand(paths: Iterable[Path]) -> tuple[list[Path], list[str]]:
    """Run folders from run folders and run roots (a root stands for its shard folders), and warnings
    for the shards of a root that have no run yet (their rows cannot be collected)."""
    runs: list[Path] = []
    warnings: list[str] = []
    for path in paths:
        if (path / JOURNAL_FILE).exists():
            runs.append(path)
            continue
        shards = shard_folders(path)
        if not shards:
            raise UsageError(
                f"{path} is neither a run folder (it holds no {JOURNAL_FILE}) nor a run root with shard-I-of-N "
                "folders: give the folders `run --no-wait` wrote"
            )
        count = expected(path) or len(shards)
        started = {p.name for p in shards if (p / JOURNAL_FILE).exists()}
        missing = [f"shard-{i}-of-{count}" for i in range(count) if f"shard-{i}-of-{count}" not in started]
        if missing:
            warnings.append(
                f"{path}: {', '.join(missing)} holds no run yet (not started, or lost its disk): start it "
                "again with the same command (`run --adopt-existing` finds the jobs it already created)"
            )
        runs += [p for p in shards if p.name in started]
    unique = list(dict.fromkeys(p.resolve() for p in runs))
    return unique, warnings


class Collection:
    """The journals of several runs, as one journal to a `Poller` (rows are handles, see STRIDE)."""

    def __init__(self, runs: list[RunDir]) -> None:
        self.runs = runs

    def split(self, handle: int) -> tuple[RunDir, int]:
        index, row = divmod(handle, STRIDE)
        return self.runs[index], row

    def in_flight(self) -> list[InFlight]:
        return [
            replace(f, row=i * STRIDE + f.row)
            for i, run in enumerate(self.runs)
            for f in run.journal.in_flight()
        ]

    def record_progress(self, updates: list[JobUpdate]) -> None:
        if not updates:
            return
        by_run: dict[int, list[JobUpdate]] = defaultdict(list)
        for update in updates:
            index, row = divmod(update.row, STRIDE)
            by_run[index].append(replace(update, row=row))
        for index, mine in by_run.items():
            self.runs[index].journal.record_progress(mine)

    def resend(self, row: int, old_job_id: str, reason: str) -> None:
        run, own = self.split(row)
        run.journal.resend(own, old_job_id, reason)


class _RowsShown(Progress):
    """A progress sink that shows a handle as its run's folder and row."""

    def __init__(self, inner: Progress, collection: Collection) -> None:
        self.inner, self.collection = inner, collection

    def _where(self, row: int | None, details: dict[str, Any]) -> tuple[int | None, dict[str, Any]]:
        if row is None:
            return None, details
        run, own = self.collection.split(row)
        return own, {**details, "run": run.path.name}

    def start(self, **kwargs: Any) -> None:
        self.inner.start(**kwargs)

    def row_finished(self, outcome: str, *, row: int | None = None, **details: Any) -> None:
        own, details = self._where(row, details)
        self.inner.row_finished(outcome, row=own, **details)

    def retrying(self, *, row: int, error: str, **details: Any) -> None:
        own, details = self._where(row, details)
        self.inner.retrying(row=own or 0, error=error, **details)

    def message(self, text: str) -> None:
        self.inner.message(text)


@dataclass
class CollectResult:
    results: list[RunResult]
    merged: Path | None
    exit_code: int
    api_requests: int


async def collect_async(
    paths: list[Path],
    settings: Settings,
    *,
    merged_out: Path | None = None,
    allow_api_url_change: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
    progress: Progress | None = None,
) -> CollectResult:
    """Follow every submitted job of the runs in `paths` with one poller, then write their reports."""
    from .options import RunOptions

    progress = progress or Progress()
    folders, warnings = expand(paths)
    for warning in warnings:
        progress.message(f"warning: {warning}")
    if not folders:
        raise UsageError("no run to collect: none of these folders holds a run yet")
    started = time.time()
    with contextlib.ExitStack() as stack:
        # Every run locked (a shard still running is named, with its PID), and each run's API checked,
        # before a single request.
        runs = [stack.enter_context(RunDir.open(folder, error_log=False)) for folder in folders]
        check = RunOptions(allow_api_url_change=allow_api_url_change)
        for run in runs:
            run.plan  # noqa: B018 - a folder without a readable plan is refused before anything else
            check_api_url(run.path, run.meta(), settings, check)
        collection = Collection(runs)
        in_flight = collection.in_flight()
        mine = {id(run) for run in runs if _to_write(run)} | {
            id(collection.split(f.row)[0]) for f in in_flight
        }
        for run in runs:
            if id(run) in mine:
                run.claim()
        requests = rate_limited = polls = 0
        if in_flight:
            settings.require_api()
            shown = _RowsShown(progress, collection)
            shown.start(rows=len(in_flight), to_submit=0, upload_bytes=0, run_id="collect")
            progress.message(f"collecting {len(in_flight)} job(s) of {len(runs)} run(s) with one poller")
            async with settings.make_client(transport=transport) as client:
                client.on_notice = progress.message
                poller = Poller(
                    client,
                    collection,
                    PollPolicy(
                        job_timeout=settings.job_timeout,
                        min_interval=settings.poll_min_interval,
                        max_interval=settings.poll_max_interval,
                        rate_per_minute=settings.rate,
                        status_map=settings.encode_status_map,
                        presign_ttl=settings.presign_ttl,
                    ),
                    progress=shown,
                    slack=client.limiter.slack,
                )
                poller.resume_in_flight()
                submitted = asyncio.Event()
                submitted.set()  # nothing is submitted here: poll until every job has ended
                await poller.run(submitted, asyncio.Event())
                requests, rate_limited, polls = (
                    client.requests_sent,
                    client.limiter.rate_limited_total,
                    poller.polls,
                )
        shares = _shares(
            requests, [sum(1 for f in in_flight if collection.split(f.row)[0] is run) for run in runs]
        )
        results = []
        for run, share in zip(runs, shares, strict=True):
            if id(run) not in mine:
                done = run.finished_result()
                assert done is not None  # see _to_write
                results.append(done)
                continue
            segment = SegmentRecord(
                "collect",
                started,
                started,
                api_requests=share,
                rate_limited=rate_limited if share else 0,
                polls=polls,
            )
            results.append(run.finish(segment))
    merged = _write_merged(results, merged_out) if merged_out is not None else None
    return CollectResult(results, merged, max(r.exit_code for r in results), requests)


def _to_write(run: RunDir) -> bool:
    """A run whose report must be written again: none yet, or the one `run --no-wait` left."""
    return run.finished_result() is None or not run.report_is_current()


def _shares(total: int, weights: list[int]) -> list[int]:
    """`total` split in proportion to `weights` (whole numbers that add up to `total`)."""
    whole = sum(weights)
    if not whole:
        return [0] * len(weights)
    shares = [total * w // whole for w in weights]
    for i in sorted(range(len(weights)), key=lambda i: -weights[i])[: total - sum(shares)]:
        shares[i] += 1
    return shares


def _write_merged(results: list[RunResult], out: Path) -> Path:
    """One report of every run's rows (Parquet, and CSV beside it), in run then row order."""
    from .review import load_run, merge_runs, write_frame

    merged = merge_runs([load_run(r.run_dir) for r in results])
    write_frame(merged, out)
    if out.suffix.lower() == ".parquet":
        write_frame(merged, out.with_suffix(".csv"))
    return out


def default_merged(paths: list[Path]) -> Path | None:
    """Where the merged report goes when not told: in the run root, when one root was given."""
    if len(paths) == 1 and not (paths[0] / JOURNAL_FILE).exists() and shard_folders(paths[0]):
        return paths[0] / "report.parquet"
    return None


def collect(paths: list[Path], settings: Settings, **kwargs: Any) -> CollectResult:
    """`collect_async` from synchronous code."""
    return asyncio.run(collect_async(paths, settings, **kwargs))
