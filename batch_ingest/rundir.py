"""A run folder as one object: its files, its lock, its journal and plan, its summary and lifecycle.

`RunDir.create` makes a new run's folder (refusing one that holds anything), `RunDir.open`
opens an existing one (resume, retry's original); both lock it (`runlock.py`) and return a
context manager that closes the journal and lets go of the lock however the block ends.
`run`, `resume` and `retry` are different ways to open a folder; what happens at the end
(report, summary, exit code) is `RunDir.finish`, the same for all three.

Opening does not write: a resume that finds nothing to do changes no file. `claim()` is the
point after which the process writes (its PID in the lock file, a journal migration).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import polars as pl

from .errors import EXIT_ABORTED, EXIT_INTERRUPTED, UsageError, error_log_folder
from .journal import NEW_SUFFIX, Journal
from .report import (
    ReportFacts,
    Summary,
    format_summary,
    read_summary,
    write_atomically,
    write_report_in_chunks,
    write_summary,
)
from .runfiles import ERROR_LOG, JOURNAL_FILE, LOCK_FILE, PLAN_PARQUET, REPORT_CSV, REPORT_PARQUET
from .runlock import RunLock, make_private
from .vocabulary import Outcome, SkipExisting, is_failure

# The segment figures a summary adds up over every process that worked the run.
SEGMENT_SUMS = (
    "elapsed_s",
    "api_requests",
    "rate_limited",
    "created",
    "adopted_after_doubt",
    "in_doubt",
    "polls",
)


@dataclass
class RunResult:
    """What a run left: its folder, the summary, the exit code and the report (read when first asked for:
    a million-row run does not hold its report in memory to return it)."""

    run_dir: Path
    summary: Summary
    exit_code: int
    report_path: Path = field(default_factory=Path)
    worked: bool = True  # False: nothing was left to do (a resume of a finished run), nothing ran

    @functools.cached_property
    def report(self) -> pl.DataFrame:
        """The report frame, one row per manifest row."""
        return pl.read_parquet(self.report_path, glob=False)

    def summary_text(self) -> str:
        """The terminal summary."""
        return format_summary(self.summary)


@dataclass(frozen=True)
class SegmentRecord:
    """One process's share of a run (`run`, each `resume`, a `retry`): what it spent, as the meta keeps it."""

    kind: str
    started_at: float
    finished_at: float
    api_requests: int = 0
    rate_limited: int = 0
    created: int = 0
    adopted_after_doubt: int = 0
    in_doubt: int = 0
    polls: int = 0
    exit_code: int = 0

    def as_meta(self) -> dict[str, Any]:
        """The record as the journal's meta stores it (and older versions wrote it)."""
        return {
            "kind": self.kind,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "elapsed_s": round(self.finished_at - self.started_at, 3),
            "api_requests": self.api_requests,
            "rate_limited": self.rate_limited,
            "created": self.created,
            "adopted_after_doubt": self.adopted_after_doubt,
            "in_doubt": self.in_doubt,
            "polls": self.polls,
            "exit_code": self.exit_code,
        }


def skip_mode(stored: Any) -> SkipExisting | None:
    """--skip-existing as stored by this or an older version (which stored a bool)."""
    if stored is True:
        return SkipExisting.NOT_FAILED
    return SkipExisting(stored) if stored in tuple(SkipExisting) else None


class RunDir:
    """An open, locked run folder. Make one with `create` or `open`; use it in a `with` block."""

    def __init__(self, path: Path, lock: RunLock, journal: Journal) -> None:
        self.path = path
        self.journal = journal
        self._lock = lock

    # -- files ----------------------------------------------------------------------------------

    @property
    def report_parquet(self) -> Path:
        return self.path / REPORT_PARQUET

    @property
    def report_csv(self) -> Path:
        return self.path / REPORT_CSV

    @functools.cached_property
    def plan(self) -> pl.DataFrame:
        """The plan the run was made from (every manifest row, validated)."""
        try:
            return pl.read_parquet(self.path / PLAN_PARQUET, glob=False)
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise UsageError(
                f"{self.path / PLAN_PARQUET} cannot be read ({exc}): the run folder is incomplete"
            ) from None

    def meta(self) -> dict[str, Any]:
        """What the run recorded about itself (ids, settings, options, segments...)."""
        return self.journal.meta()

    @property
    def extras(self) -> list[str]:
        """Manifest columns carried into the report unchanged."""
        return list(self.meta().get("extras") or [])

    # -- lifecycle ------------------------------------------------------------------------------

    @staticmethod
    def check_new(path: Path) -> None:
        """UsageError unless `path` can take a new run: absent, or an empty folder (a lock file aside)."""
        if (path / JOURNAL_FILE).exists():
            raise UsageError(
                f"{path} already holds a run: `batch-ingest resume {path}` continues it, "
                "or pass another --report-dir"
            )
        if path.exists() and not path.is_dir():
            raise UsageError(f"--report-dir {path} is a file, not a folder")
        foreign = sorted(p.name for p in path.iterdir() if p.name != LOCK_FILE) if path.is_dir() else []
        # What a run's creation leaves when it dies before its journal is in place: nothing was sent
        # yet, so a new run may take the folder (its plan and journal replace these).
        unfinished = {PLAN_PARQUET, ERROR_LOG, *(JOURNAL_FILE + NEW_SUFFIX + s for s in ("", "-wal", "-shm"))}
        if foreign and not set(foreign) <= unfinished:
            more = ", ..." if len(foreign) > 5 else ""
            raise UsageError(
                f"{path} is not empty and holds no run ({', '.join(foreign[:5])}{more}): "
                "batch-ingest would overwrite files there; choose an empty or new folder with --report-dir"
            )

    @classmethod
    def create(
        cls,
        path: Path,
        plan: pl.DataFrame,
        meta: dict[str, Any],
        *,
        held: tuple[list[int], str] | None = None,
    ) -> RunDir:
        """A new run's folder, created private and locked, holding the plan and a new journal.

        `held`: (ready rows a canary run holds back, the reason the report gives for them).
        From here on an internal error's traceback goes to this folder's error.log."""
        cls.check_new(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"cannot create the run folder {path}: {exc.strerror}: check --report-dir"
            ) from None
        lock = RunLock(path).acquire()
        try:
            cls.check_new(path)  # again, under the lock: another process may have just made it
            make_private(path)
            lock.write_pid()
            error_log_folder.set(path)
            write_atomically(path / PLAN_PARQUET, plan.write_parquet)
            journal = Journal.create(path / JOURNAL_FILE, plan, meta, held=held)
        except BaseException:
            lock.release()
            raise
        run = cls(path, lock, journal)
        run.__dict__["plan"] = plan  # no need to read back what was just written
        return run

    @classmethod
    def open(cls, path: Path, *, error_log: bool = True) -> RunDir:
        """An existing run's folder, locked, its journal open for reading (see `claim`).

        `error_log`: an internal error's traceback goes to this folder's error.log (not for the run a
        `retry` reads: its own new folder takes the log)."""
        if not path.is_dir():
            raise UsageError(f"{path} is not a run folder: give the folder that holds {JOURNAL_FILE}")
        lock = RunLock(path).acquire()
        try:
            if error_log:
                error_log_folder.set(path)
            journal = Journal.open(path / JOURNAL_FILE, migrate=False)
        except BaseException:
            lock.release()
            raise
        return cls(path, lock, journal)

    def claim(self) -> None:
        """From here on this process writes to the folder: its PID in the lock, the journal up to date."""
        self._lock.write_pid()
        self.journal.migrate()

    def close(self) -> None:
        """Close the journal and let go of the lock."""
        try:
            self.journal.close()
        finally:
            self._lock.release()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- results --------------------------------------------------------------------------------

    def write_report(self, *, no_wait: bool | None = None) -> ReportFacts:
        """Write the report (Parquet and CSV) from the plan and the journal as they are now. `no_wait`:
        the segment left its jobs to `collect` (its submitted rows are `submitted`); None: as the last
        finished segment recorded."""
        handed = bool(self.meta().get("no_wait")) if no_wait is None else no_wait
        return write_report_in_chunks(
            self.plan, self.journal, self.extras, self.path, handed_to_collect=handed
        )

    def report_is_current(self) -> bool:
        """False when the report on disk may be older than the journal: the last finished segment left
        its jobs to `collect` (rows `submitted`), which any later segment that follows them rewrites."""
        return not self.meta().get("no_wait")

    def finished_result(self) -> RunResult | None:
        """The result of a finished run as its files hold it, or None when a file is missing or unreadable."""
        try:
            pl.read_parquet_schema(
                self.report_parquet
            )  # there and readable; the rows are read when asked for
            summary = read_summary(self.path)
        except (OSError, ValueError, pl.exceptions.PolarsError):
            return None
        if summary is None:
            return None
        return RunResult(self.path, summary, int(summary.get("exit_code", 1)), self.report_parquet)

    def finish(
        self,
        segment: SegmentRecord,
        *,
        abort_reason: str | None = None,
        interrupted: bool = False,
        forced_exit_code: int | None = None,
        skip_existing: SkipExisting | None = None,
        no_wait: bool = False,
        window: dict[str, Any] | None = None,
    ) -> RunResult:
        """Write the report and the summary from the journal, record `segment`, and work out the exit code.

        The summary's figures add up every segment of the run (run, resume, resume...). `forced_exit_code`
        (a failure that escaped the workers) wins over an interruption, which wins over an abort."""
        facts = self.write_report(no_wait=no_wait)
        exit_code = facts.exit_code
        if no_wait and not facts.outcomes.get(Outcome.INTERRUPTED):
            # `run --no-wait` did its part once every row is submitted or ended: the verdict on the rows
            # is `collect`'s (an engine must not hold the collector back for a failed row).
            exit_code = 0
        if (
            window
            and window.get("closed_by")
            and not any(n for o, n in facts.outcomes.items() if is_failure(o) and o != Outcome.INTERRUPTED)
        ):
            # --until or --max-submissions ended it as planned: the rows left wait for the next run,
            # which is not a failure (as a canary's held rows are not).
            exit_code = 0
        if abort_reason:
            exit_code = EXIT_ABORTED
        if interrupted:
            exit_code = EXIT_INTERRUPTED
        if forced_exit_code is not None:
            exit_code = forced_exit_code
        finished = time.time()
        meta = self.meta()
        record = replace(segment, finished_at=finished, exit_code=exit_code)
        segments = [*meta.get("segments", []), record.as_meta()]
        # After the report: a process that dies in between leaves the old flag, and the next segment
        # writes the report again.
        self.journal.set_meta(
            segments=segments, last_exit_code=exit_code, finished_at=finished, no_wait=no_wait
        )
        totals: dict[str, Any] = {name: sum(s.get(name, 0) for s in segments) for name in SEGMENT_SUMS}
        totals["elapsed_s"] = round(totals["elapsed_s"], 3)
        mode = skip_existing or skip_mode((meta.get("options") or {}).get("skip_existing"))
        summary: Summary = {
            "run_id": meta.get("run_id", self.path.name),
            "manifest": meta.get("manifest"),
            "run_dir": str(self.path),
            "started_at": datetime.fromtimestamp(meta.get("started_at", segment.started_at), UTC).isoformat(),
            "finished_at": datetime.fromtimestamp(finished, UTC).isoformat(),
            "elapsed_s": totals["elapsed_s"],
            "api_requests": totals["api_requests"],
            "rate_limited": totals["rate_limited"],
            "created": totals["created"],
            "adopted_after_doubt": totals["adopted_after_doubt"],
            "in_doubt": totals["in_doubt"],
            "polls": totals["polls"],
            "rows": facts.rows,
            "outcomes": facts.outcomes,
            # Jobs this run's own creates made (adopted after a doubt included); not skipped or carried jobs.
            "jobs_submitted": totals["created"] + totals["adopted_after_doubt"],
            "resumes": sum(1 for s in segments if s.get("kind") == "resume"),
            "segments": [
                {k: s.get(k) for k in ("kind", "elapsed_s", "api_requests", "exit_code")} for s in segments
            ],
            "abort_reason": abort_reason,
            "interrupted": interrupted,
            "exit_code": exit_code,
            "first_failures": facts.first_failures,
            "not_succeeded": facts.failures,
            "report": {"parquet": str(self.report_parquet), "csv": str(self.report_csv)},
            "settings": meta.get("settings"),
        }
        if mode:
            summary["skip_existing"] = {
                "mode": mode.value,
                "rows_without_ref_id": facts.without_ref_id,
                "rows_without_ref_id_first": facts.without_ref_id_first,
            }
        if window:
            summary["window"] = window
        if meta.get("profiles"):
            summary["profiles"] = meta["profiles"]
        if meta.get("shard"):
            summary["shard"] = meta["shard"]
        if facts.media_probed:
            summary["media"] = {"rows": facts.media_probed, "minutes": round(facts.media_seconds / 60, 2)}
        if "retry_of" in meta:
            summary["retry_of"] = meta["retry_of"]
        if meta.get("subsets"):
            summary["subsets"] = [
                {k: s.get(k) for k in ("kind", "selection", "taken")} for s in meta["subsets"]
            ]
            summary["resume_all"] = f"batch-ingest resume {self.path} --all"
        write_summary(summary, self.path)
        return RunResult(self.path, summary, exit_code, self.report_parquet)
