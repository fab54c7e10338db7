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
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import polars as pl

from .engine import poll_policy
from .errors import EXIT_ROWS_FAILED, UsageError
from .journal import InFlight, JobUpdate
from .poll import Poller
from .progress import Progress
from .resume import check_api_url, note_lost_store
from .rundir import RunDir, RunResult, SegmentRecord
from .runfiles import JOURNAL_FILE
from .settings import Settings
from .shard import expected, shard_folders
from .vocabulary import Outcome

STRIDE = 1 << 40  # past any manifest's row count


@dataclass(frozen=True)
class Unstarted:
    """Shards of a run root that hold no run: their rows are in no journal."""

    root: Path
    indices: tuple[int, ...]
    count: int

    def names(self) -> str:
        return ", ".join(f"shard-{i}-of-{self.count}" for i in self.indices)


def expand(paths: Iterable[Path]) -> tuple[list[Path], list[Unstarted]]:
    """Run folders from run folders and run roots (a root stands for its shard folders), and the shards
    of each root that have no run yet (not started, or started on a disk that was lost)."""
    runs: list[Path] = []
    unstarted: list[Unstarted] = []
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
        # N from the root's record, else from the folders' names (shard-I-of-N), never from their number.
        count = expected(path) or max(int(p.name.rsplit("-", 1)[1]) for p in shards)
        started = {p.name for p in shards if (p / JOURNAL_FILE).exists()}
        missing = tuple(i for i in range(count) if f"shard-{i}-of-{count}" not in started)
        if missing:
            unstarted.append(Unstarted(path, missing, count))
        runs += [p for p in shards if p.name in started]
    unique = list(dict.fromkeys(p.resolve() for p in runs))
    return unique, unstarted


def unstarted_rows(
    gap: Unstarted, metas: list[tuple[Path, dict[str, Any]]], warn: Callable[[str], object]
) -> pl.DataFrame:
    """The manifest rows of shards that have no run, `interrupted` with the command that sends them:
    read again from the manifest a started shard of the same root records (its options, its split),
    only when it is still the manifest the shards split (its SHA-256 in the root's record)."""
    import json

    from .plan import plan_manifest
    from .shard import ROOT_RECORD, Shard, file_sha256, select

    root = gap.root.resolve()
    meta = next((m for folder, m in metas if folder.resolve().parent == root), None)
    if meta is None:
        return pl.DataFrame()
    options, recorded = meta.get("options") or {}, meta.get("shard") or {}
    manifest = Path(str(meta.get("manifest")))
    try:
        expected_sha = json.loads((root / ROOT_RECORD).read_text(encoding="utf-8")).get("manifest_sha256")
        same = expected_sha is not None and file_sha256(manifest) == expected_sha
    except (OSError, ValueError, AttributeError):
        same = False
    if not same:
        warn(
            f"warning: the rows of {gap.names()} are not in the merged report: the manifest {manifest} is gone, "
            f"changed since the shards split it, or {root / ROOT_RECORD} is missing"
        )
        return pl.DataFrame()
    plan = plan_manifest(
        manifest,
        fmt=options.get("fmt"),
        default_profile=options.get("default_profile"),
        extra_columns=tuple(options.get("extra_columns") or ()),
        delimiter=options.get("delimiter"),
        encoding=options.get("encoding"),
    )
    frames = []
    for index in gap.indices:
        rows = select(plan.frame, Shard(index, gap.count, by=recorded.get("by")), plan.extras)
        frames.append(
            rows.select(
                [
                    c
                    for c in ("row", "key", "ref_id", "source", "source_type", "job_profile_id")
                    if c in rows.columns
                ]
            ).with_columns(
                pl.lit(Outcome.INTERRUPTED.value).alias("outcome"),
                pl.lit("SHARD_NOT_RUN").alias("error_code"),
                pl.lit(
                    f"shard {index} of {gap.count} has no run in {gap.root}: start it with the shards' command "
                    f"(--shard {index}/{gap.count}), then collect again"
                ).alias("error_message"),
            )
        )
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


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
    folders, unstarted = expand(paths)
    for gap in unstarted:
        progress.message(
            f"warning: {gap.root}: {gap.names()} holds no run yet (not started, or started on a disk that was "
            "lost): start it again with the shards' command; its rows are `interrupted` in the merged report"
        )
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
        note_lost_store(runs[0].meta(), settings, progress)
        collection = Collection(runs)
        in_flight = collection.in_flight()
        mine = {id(run) for run in runs if _to_write(run)} | {
            id(collection.split(f.row)[0]) for f in in_flight
        }
        for run in runs:
            if id(run) in mine:
                run.claim()
        requests = rate_limited = polls = 0
        interrupted = False
        if in_flight:
            settings.require_api()
            shown = _RowsShown(progress, collection)
            shown.start(rows=len(in_flight), to_submit=0, upload_bytes=0, run_id="collect")
            async with settings.make_client(
                transport=transport,
                shared=True,
                member="collect:" + ",".join(str(r.path.resolve()) for r in runs),
            ) as client:
                client.on_notice = progress.message
                poller = Poller(
                    client,
                    collection,
                    poll_policy(settings),
                    progress=shown,
                    slack=client.limiter.slack,
                )
                poller.resume_in_flight()
                submitted = asyncio.Event()
                submitted.set()  # nothing is submitted here: poll until every job has ended
                with _stop_on_signal(progress) as stop:
                    progress.message(
                        f"collecting {len(in_flight)} job(s) of {len(runs)} run(s) with one poller"
                    )
                    await poller.run(submitted, stop)
                interrupted = stop.is_set()
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
            results.append(run.finish(segment, interrupted=interrupted))
        metas = [(run.path, run.meta()) for run in runs]
        gaps = [unstarted_rows(gap, metas, progress.message) for gap in unstarted]
    exit_code = max(r.exit_code for r in results)
    if any(not g.is_empty() for g in gaps) or unstarted:
        exit_code = max(exit_code, EXIT_ROWS_FAILED)  # rows no shard has sent yet
    merged = _write_merged(results, merged_out, gaps) if merged_out is not None else None
    return CollectResult(results, merged, exit_code, requests)


@contextlib.contextmanager
def _stop_on_signal(progress: Progress) -> Iterator[asyncio.Event]:
    """SIGINT or SIGTERM: stop polling and write every run's report of what is known (exit 130); the
    journals hold the rest, and collecting again goes on from there."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        progress.message(
            f"{signal.Signals(signum).name}: writing the reports of what is known; collect again to go on"
        )
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


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


def _write_merged(results: list[RunResult], out: Path, gaps: list[pl.DataFrame]) -> Path:
    """One report of every run's rows and of the rows of shards that did not run (Parquet, and CSV
    beside it), in row order."""
    from .review import load_run, merge_runs, write_frame

    merged = merge_runs([load_run(r.run_dir) for r in results])
    missing = [g for g in gaps if not g.is_empty()]
    if missing:  # the rows of shards that did not run, in their manifest's order among the others'
        merged = pl.concat([merged, *missing], how="diagonal_relaxed").sort("row", maintain_order=True)
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
