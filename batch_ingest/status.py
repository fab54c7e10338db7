"""`status`: how a run is doing, seen from another terminal, without disturbing it.

The journal is only ever read. With a process on the run (or a write-ahead log left beside the
journal) it is opened `mode=ro`: SQLite reads the log through the run's own -wal and -shm files and
writes nothing. With no process on it and no log, it is opened `immutable=1`, which creates no -wal or
-shm file and leaves the folder as it was (its mtime is what `prune` falls back on); should a process
have checkpointed into the journal meanwhile (its size or times changed, or a log appeared), the read
is done again the first way. Nothing migrates an old journal here.

Whether a process works the run is asked of its lock (`runlock.py`) with a shared, non-blocking flock
that is let go at once: it never waits and never keeps the lock (a run started in those microseconds is
told to try again, exit 75, as for any process on the folder).

A run is `running` (its lock is held), `finished` (every row final, and the report and summary written
after the journal's last change) or `stopped` (neither: `batch-ingest resume RUN_DIR` goes on).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from .errors import UsageError
from .journal import SCHEMA_VERSION
from .runfiles import JOURNAL_FILE, LOCK_FILE, REPORT_PARQUET, SUMMARY_JSON
from .shard import ROOT_RECORD, expected, shard_folders
from .vocabulary import UNFINISHED_STATES, RowState

RATE_WINDOW_S = 300.0  # the rate is measured over the last five minutes of the run's work
MIN_RATE_SPAN_S = 10.0  # ...or since the run's process began, but never over less than this
NEWEST_ERRORS = 5
# Rows whose error is news: they ended badly, or are being retried after a transient error.
_ERROR_STATES = (RowState.FAILED, RowState.ERROR, RowState.TIMED_OUT)
_UNFINISHED = tuple(s.value for s in UNFINISHED_STATES)
_T = TypeVar("_T")


class Phase(StrEnum):
    """Where a run is."""

    RUNNING = "running"  # a process holds its lock
    FINISHED = "finished"  # every row final, report and summary current
    STOPPED = "stopped"  # unfinished and nobody on it: resume it


@dataclass(frozen=True)
class LockState:
    """Whether a process holds a run folder's lock, and the PID it wrote there."""

    held: bool
    pid: int | None = None
    since: float | None = None  # when the holder took it (it writes its PID then: the file's mtime)


def probe_lock(run_dir: Path) -> LockState:
    """Ask the run's lock whether a process holds it, without waiting and without keeping it."""
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return LockState(False)  # no process ever locked the folder
    except OSError as exc:
        raise UsageError(
            f"cannot read the lock of {run_dir}: {exc.strerror}: check the folder's permissions"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return LockState(True, int(text) if text.isdigit() else None, os.fstat(fd).st_mtime)
    except OSError as exc:
        raise UsageError(f"cannot test the lock of {run_dir}: {exc.strerror}") from None
    finally:
        os.close(fd)  # lets go of the shared lock when it was taken
    return LockState(False)


@dataclass(frozen=True)
class RowError:
    """A row that met an error: ended failed, error or timed out, or retried after a transient error."""

    row: int
    ref_id: str | None
    state: str
    code: str | None
    message: str | None
    at: float | None  # when it finished, or its last attempt
    shard: str | None = None  # the shard folder, in a run root's status


class JournalReader:
    """A journal opened for reading only: never a write, a migration or a lock of the run."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn

    @classmethod
    def open(cls, path: Path, *, immutable: bool = False) -> JournalReader:
        """The journal at `path`; UsageError when it is not one this version reads."""
        uri = f"file:{urllib.parse.quote(str(path.absolute()))}?mode=ro" + (
            "&immutable=1" if immutable else ""
        )
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=5.0)
            conn.execute("PRAGMA query_only=ON")
            version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise UsageError(
                f"{path} cannot be read as a batch-ingest journal ({exc}): check the path and its permissions"
            ) from None
        if version is None or not str(version[0]).isdigit() or int(version[0]) > SCHEMA_VERSION:
            conn.close()
            raise UsageError(
                f"{path} has journal schema {version[0] if version else '?'}; this batch-ingest reads "
                f"{SCHEMA_VERSION} and older: use the batch-ingest that wrote it"
            )
        return cls(path, conn)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> JournalReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[JournalReader]:
        """One read transaction: every read in the block sees the journal as of one commit."""
        self._conn.execute("BEGIN")
        try:
            yield self
        finally:
            self._conn.execute("ROLLBACK")

    def meta(self) -> dict[str, Any]:
        """The meta table, JSON-decoded."""
        out: dict[str, Any] = {}
        for key, value in self._conn.execute("SELECT key, value FROM meta"):
            try:
                out[key] = json.loads(value)
            except ValueError:
                out[key] = value
        return out

    def counts(self) -> dict[str, int]:
        """Rows per state, every state listed (zeros included)."""
        found = dict(self._conn.execute("SELECT state, count(*) FROM rows GROUP BY state").fetchall())
        return {s.value: int(found.pop(s.value, 0)) for s in RowState} | found

    def last_activity(self) -> float | None:
        """The newest time the journal records of any row (sent, submitted or finished)."""
        found = self._conn.execute(
            "SELECT max(sent_at), max(submitted_at), max(finished_at) FROM rows"
        ).fetchone()
        times = [t for t in found if t is not None]
        return max(times) if times else None

    def activity(self, start: float, end: float) -> tuple[int, int, float | None]:
        """Rows finished and rows submitted in (start, end], and the first event after `start`."""
        unfinished = ", ".join(f":u{i}" for i in range(len(_UNFINISHED)))
        found = self._conn.execute(
            "SELECT count(CASE WHEN finished_at > :start AND finished_at <= :end "
            f"AND state NOT IN ({unfinished}) THEN 1 END), "
            "count(CASE WHEN submitted_at > :start AND submitted_at <= :end THEN 1 END), "
            "min(CASE WHEN sent_at > :start THEN sent_at END), "
            "min(CASE WHEN submitted_at > :start THEN submitted_at END), "
            "min(CASE WHEN finished_at > :start THEN finished_at END) FROM rows",
            {"start": start, "end": end} | {f"u{i}": s for i, s in enumerate(_UNFINISHED)},
        ).fetchone()
        firsts = [t for t in found[2:] if t is not None]
        return int(found[0]), int(found[1]), min(firsts) if firsts else None

    def newest_errors(self, n: int) -> list[RowError]:
        """The `n` rows that met an error most recently, newest first."""
        if n <= 0:
            return []
        cur = self._conn.execute(
            "SELECT row, ref_id, state, error_code, error_message, coalesce(finished_at, sent_at, submitted_at) AS at "
            f"FROM rows WHERE state IN ({', '.join('?' * len(_ERROR_STATES))}) "
            f"OR (error_code IS NOT NULL AND state IN ({', '.join('?' * len(_UNFINISHED))})) "
            "ORDER BY at IS NULL, at DESC, row DESC LIMIT ?",
            (*_ERROR_STATES, *_UNFINISHED, n),
        )
        return [RowError(*r) for r in cur.fetchall()]


def read_journal(path: Path, lock: LockState, read: Callable[[JournalReader], _T]) -> _T:
    """`read(reader)` in one snapshot of the journal at `path`, creating no file where none is needed."""
    wal = path.with_name(path.name + "-wal")
    if not lock.held and not wal.exists():
        before = _stamp(path)
        try:
            with JournalReader.open(path, immutable=True) as reader, reader.snapshot():
                found = read(reader)
        except (UsageError, sqlite3.Error):
            pass  # changed under the read, perhaps: read it again the careful way
        else:
            if not wal.exists() and _stamp(path) == before:
                return found
    with JournalReader.open(path) as reader, reader.snapshot():
        return read(reader)


def _stamp(path: Path) -> tuple[int, ...]:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class RunStatus:
    """One run folder as `status` shows it."""

    path: Path
    phase: Phase
    run_id: str
    counts: dict[str, int]  # rows per journal state
    pid: int | None = None  # the process that holds the lock (as it wrote itself there)
    finished_per_min: float = 0.0  # rows that reached a final state, a minute, over `window_s`
    submitted_per_min: float = 0.0
    window_s: float = 0.0
    eta_s: float | None = None  # time left at that rate, while running
    errors: list[RowError] = field(default_factory=list)
    started_at: float | None = None
    finished_at: float | None = None  # the end of the run's last segment
    exit_code: int | None = None  # the last segment's
    note: str = ""  # what the phase means here
    window: dict[str, Any] | None = None  # a running run's --until (epoch s) and --max-submissions
    next_step: str | None = None  # the command that goes on
    read_at: float = 0.0  # when the status was read (the ETA counts from there)

    @property
    def rows(self) -> int:
        return sum(self.counts.values())

    @property
    def remaining(self) -> int:
        """Rows still to finish: pending, in doubt or submitted (held rows wait for `resume --all`)."""
        return sum(self.counts.get(s, 0) for s in _UNFINISHED)

    def as_json(self) -> dict[str, Any]:
        """The status for scripts (times as ISO 8601, UTC)."""
        return {
            "path": str(self.path),
            "run_id": self.run_id,
            "state": self.phase.value,
            "pid": self.pid,
            "rows": self.rows,
            "remaining": self.remaining,
            "counts": self.counts,
            "rate": {
                "finished_per_min": round(self.finished_per_min, 3),
                "submitted_per_min": round(self.submitted_per_min, 3),
                "window_s": round(self.window_s, 3),
            },
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "eta_at": None if self.eta_s is None else _iso(self.read_at + self.eta_s),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "exit_code": self.exit_code,
            "note": self.note,
            "next": self.next_step,
            "window": None
            if not self.window
            else {
                "until": _iso(_number(self.window.get("until"))),
                "max_submissions": self.window.get("max_submissions"),
            },
            "newest_errors": [_error_json(e) for e in self.errors],
        }


def run_status(run_dir: Path, *, now: float | None = None, errors: int = NEWEST_ERRORS) -> RunStatus:
    """The status of the run in `run_dir`, read without its lock and without writing."""
    if not (run_dir / JOURNAL_FILE).is_file():
        raise UsageError(_not_a_run(run_dir))
    return inspect_run(run_dir, probe_lock(run_dir), now=now, errors=errors)


@dataclass(frozen=True)
class _Facts:
    """What one snapshot of a journal says (see `inspect_run`)."""

    meta: dict[str, Any]
    counts: dict[str, int]
    last: float | None  # the newest event
    end: float  # the end of the span the rate is measured over
    finished: int
    submitted: int
    first: float | None  # the first event in that span
    errors: list[RowError]


def inspect_run(
    run_dir: Path, lock: LockState, *, now: float | None = None, errors: int = NEWEST_ERRORS
) -> RunStatus:
    """The status of the run in `run_dir`, its lock being as `lock` says (see `run_status`).

    The rate is measured over the last RATE_WINDOW_S of the run's work: up to `now` while it runs
    (since the process took the run, when that is more recent), up to its last event otherwise (since
    the first event in that span)."""
    now = time.time() if now is None else now

    def read(reader: JournalReader) -> _Facts:
        last = reader.last_activity()
        end = now if lock.held else (last or now)
        found = reader.activity(end - RATE_WINDOW_S, end)
        return _Facts(reader.meta(), reader.counts(), last, end, *found, reader.newest_errors(errors))

    facts = read_journal(run_dir / JOURNAL_FILE, lock, read)
    meta, counts = facts.meta, facts.counts
    began = lock.since if lock.held else facts.first
    span = RATE_WINDOW_S if began is None else min(RATE_WINDOW_S, max(facts.end - began, MIN_RATE_SPAN_S))
    exit_code = meta.get("last_exit_code")
    status = RunStatus(
        run_dir,
        Phase.STOPPED,
        str(meta.get("run_id") or run_dir.name),
        counts,
        pid=lock.pid,
        finished_per_min=facts.finished * 60.0 / span,
        submitted_per_min=facts.submitted * 60.0 / span,
        window_s=span,
        errors=facts.errors,
        started_at=_number(meta.get("started_at")),
        finished_at=_number(meta.get("finished_at")),
        exit_code=exit_code if isinstance(exit_code, int) else None,
        read_at=now,
    )
    left = status.remaining
    if lock.held:
        rate = status.finished_per_min / 60.0
        eta = 0.0 if not left else (left / rate if rate > 0 else None)
        who = f"process {lock.pid}" if lock.pid else "another process"
        note = f"in use by {who}"
        window = meta.get("window_open") if isinstance(meta.get("window_open"), dict) else None
        if window:
            until = _number(window.get("until"))
            if until is not None:
                note += f"; stops submitting at {_clock(until)} (--until)"
                if eta is not None and now + eta > until:
                    note += ": the rest is left for `resume`"
            if window.get("max_submissions"):
                note += f"; sends at most {window['max_submissions']} creates (--max-submissions)"
        return replace(status, phase=Phase.RUNNING, note=note, eta_s=eta, window=window)
    if left and meta.get("no_wait") and left == counts[RowState.SUBMITTED]:
        note = f"{left} rows submitted without waiting (--no-wait): `collect` follows their jobs"
        return replace(status, note=note, next_step=f"batch-ingest collect {run_dir}")
    if left:
        return replace(status, note=f"{left} of {status.rows} rows unfinished", next_step=_resume(run_dir))
    if not _report_current(run_dir, meta, facts.last):
        note = "every row is final, but the report was not written since"
        return replace(status, note=note, next_step=_resume(run_dir))
    held = counts[RowState.HELD]
    note = f"at {_clock(status.finished_at)}, exit {status.exit_code}"
    if held:
        note += f"; {held} rows held back by a canary run"
    return replace(
        status, phase=Phase.FINISHED, note=note, next_step=_resume(run_dir) + " --all" if held else None
    )


def _resume(run_dir: Path) -> str:
    return f"batch-ingest resume {run_dir}"


def _report_current(run_dir: Path, meta: dict[str, Any], last: float | None) -> bool:
    """Whether report and summary were written after the journal's last change (`RunDir.finish`
    records its end in the meta after the report, then writes the summary with the same time)."""
    ended = _number(meta.get("finished_at"))
    if ended is None or meta.get("no_wait") or (last is not None and last > ended):
        return False
    if not (run_dir / REPORT_PARQUET).is_file():
        return False
    written = summary_finished_at(run_dir)
    return written is not None and abs(written - ended) < 0.001


def summary_finished_at(run_dir: Path) -> float | None:
    """The finish time summary.json records (epoch seconds), or None without a readable one."""
    try:
        summary = json.loads((run_dir / SUMMARY_JSON).read_text(encoding="utf-8"))
        return datetime.fromisoformat(summary["finished_at"]).timestamp()
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class RootStatus:
    """A run root of shards: one status per shard that has a run, and the shards that have none."""

    path: Path
    shards: list[RunStatus]
    missing: list[str]  # shard folders with no run (yet)
    errors: list[RowError] = field(default_factory=list)  # the newest of every shard's

    @property
    def phase(self) -> Phase:
        phases = {s.phase for s in self.shards}
        if Phase.RUNNING in phases:
            return Phase.RUNNING
        return Phase.FINISHED if phases == {Phase.FINISHED} and not self.missing else Phase.STOPPED

    @property
    def counts(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for shard in self.shards:
            for state, n in shard.counts.items():
                total[state] = total.get(state, 0) + n
        return total

    @property
    def eta_s(self) -> float | None:
        """When the last shard with rows left ends (None when one of them will not: it is stopped)."""
        left = [s.eta_s for s in self.shards if s.remaining]
        return None if any(e is None for e in left) else max((e for e in left if e is not None), default=0.0)

    def as_json(self) -> dict[str, Any]:
        counts = self.counts
        return {
            "root": str(self.path),
            "state": self.phase.value,
            "rows": sum(counts.values()),
            "remaining": sum(s.remaining for s in self.shards),
            "counts": counts,
            "rate": {
                "finished_per_min": round(sum(s.finished_per_min for s in self.shards), 3),
                "submitted_per_min": round(sum(s.submitted_per_min for s in self.shards), 3),
            },
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "missing": self.missing,
            "shards": [s.as_json() for s in self.shards],
            "newest_errors": [_error_json(e) for e in self.errors],
        }


def root_status(root: Path, *, now: float | None = None, errors: int = NEWEST_ERRORS) -> RootStatus:
    """The status of every shard of the run root `root`."""
    folders = shard_folders(root)
    started = [p for p in folders if (p / JOURNAL_FILE).is_file()]
    count = expected(root) or max((int(p.name.rsplit("-", 1)[1]) for p in folders), default=0)
    names = {p.name for p in started}
    missing = [f"shard-{i}-of-{count}" for i in range(count) if f"shard-{i}-of-{count}" not in names]
    shards = [run_status(folder, now=now, errors=errors) for folder in started]
    newest = sorted(
        (replace(e, shard=s.path.name) for s in shards for e in s.errors),
        key=lambda e: (e.at is not None, e.at or 0.0),
        reverse=True,
    )[:errors]
    return RootStatus(root, shards, missing, newest)


def status_of(path: Path, *, now: float | None = None, errors: int = NEWEST_ERRORS) -> RunStatus | RootStatus:
    """The status of a run folder, or of a run root of shards; UsageError for anything else."""
    if not path.is_dir():
        raise UsageError(_not_a_run(path))
    if (path / JOURNAL_FILE).is_file():
        return run_status(path, now=now, errors=errors)
    if shard_folders(path) or (path / ROOT_RECORD).is_file():
        return root_status(path, now=now, errors=errors)
    raise UsageError(_not_a_run(path))


def watch(
    path: Path,
    every: float,
    show: Callable[[RunStatus | RootStatus], None],
    *,
    errors: int = NEWEST_ERRORS,
    sleep: Callable[[float], None] | None = None,
) -> RunStatus | RootStatus:
    """Show the status every `every` seconds while the run is running; return the last one.

    Ctrl-C ends it (KeyboardInterrupt reaches the caller, which decides what that means)."""
    while True:
        current = status_of(path, errors=errors)
        show(current)
        if current.phase != Phase.RUNNING:
            return current
        (sleep or time.sleep)(every)


def _not_a_run(path: Path) -> str:
    what = (
        "does not exist"
        if not path.exists()
        else "is not a folder"
        if not path.is_dir()
        else "is not a run folder"
    )
    return (
        f"{path} {what}: give a run folder (the folder `batch-ingest run` wrote, reports/<run-id> by default, "
        f"holding {JOURNAL_FILE}) or a run root of shards (holding shard-I-of-N folders)"
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _iso(when: float | None) -> str | None:
    return None if when is None else datetime.fromtimestamp(when, UTC).isoformat()


def _error_json(e: RowError) -> dict[str, Any]:
    found = {
        "row": e.row,
        "ref_id": e.ref_id,
        "state": e.state,
        "error_code": e.code,
        "error_message": e.message,
    }
    return found | {"at": _iso(e.at)} | ({"shard": e.shard} if e.shard else {})


def _clock(when: float | None) -> str:
    return "?" if when is None else datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
