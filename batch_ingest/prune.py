"""`prune`: delete old run folders under a reports root, never one in use, nor an unfinished one unasked.

The runs are REPORTS_ROOT's direct children that are runs: a run folder (it holds journal.sqlite), or
a run root of shards (shard-I-of-N folders, shards.json), which is one run: it goes whole or not at
all. A run's time is its finish in summary.json (a root's: its newest shard's), else the folder's
mtime. `keep_days` keeps the runs that finished within that many days, `keep` the newest N runs;
given both, a run goes only when both let it go. A run in use (a process holds its lock) is never
deleted; an unfinished one (a row not final, or no report written since the journal last changed;
a shard with no run) only with `include_unfinished`.

Deleting takes the run's lock (every shard's), looks again under it, renames the folder to a hidden
name in REPORTS_ROOT (from then on a process started on the old path finds no run there, rather than
half of one), lets go of the lock and removes the renamed folder. A prune that dies meanwhile leaves
that hidden folder behind, and the next prune removes it. Symbolic links are never followed: a
symlinked child is skipped with a note, and nothing inside a folder is followed out of it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from .errors import RunInUse, UsageError
from .runfiles import JOURNAL_FILE
from .runlock import RunLock
from .shard import ROOT_RECORD, expected, shard_folders
from .status import LockState, Phase, inspect_run, probe_lock, summary_finished_at

DAY_S = 86_400.0
TRASH_PREFIX = ".batch-ingest-pruning-"  # a run folder being deleted (renamed out of the way first)


class Verdict(StrEnum):
    """What prune did (or, with dry_run, would do) with a child of the reports root."""

    DELETE = "delete"  # deleted (dry run: would be)
    KEEP = "keep"  # young enough, or among the newest: kept by the policy
    IN_USE = "in_use"  # a process holds its lock: never deleted
    UNFINISHED = "unfinished"  # kept: deleted only with include_unfinished
    SYMLINK = "symlink"  # a symbolic link: not followed
    FAILED = "failed"  # could not be deleted


@dataclass(frozen=True)
class PruneEntry:
    """One child of the reports root and what became of it."""

    path: Path
    verdict: Verdict
    reason: str = ""
    time: float | None = None  # the run's finish (or its folder's mtime)
    time_from: str = ""  # "summary.json" or "folder mtime"
    bytes: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "verdict": self.verdict.value,
            "reason": self.reason,
            "time": self.time,
            "time_from": self.time_from,
            "bytes": self.bytes,
        }


@dataclass(frozen=True)
class PruneResult:
    """Every run prune looked at (and the notes it made), in the order it decided."""

    root: Path
    dry_run: bool
    now: float  # the time the ages count to
    entries: list[PruneEntry] = field(default_factory=list)

    def having(self, *verdicts: Verdict) -> list[PruneEntry]:
        return [e for e in self.entries if e.verdict in verdicts]

    @property
    def bytes_freed(self) -> int:
        """Bytes the deleted folders held (with dry_run: would free)."""
        return sum(e.bytes for e in self.having(Verdict.DELETE))

    @property
    def exit_code(self) -> int:
        """1 when a folder could not be deleted, else 0."""
        return 1 if self.having(Verdict.FAILED) else 0

    def as_json(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "dry_run": self.dry_run,
            "now": self.now,
            "deleted": len(self.having(Verdict.DELETE)),
            "bytes_freed": self.bytes_freed,
            "entries": [e.as_json() for e in self.entries],
        }


@dataclass(frozen=True)
class _Run:
    """A run under the root: a run folder, or a run root of shards."""

    path: Path
    folders: tuple[Path, ...]  # its run folders: itself, or the root's shard folders that hold a run
    missing: tuple[str, ...]  # a root's shards that have no run
    time: float
    time_from: str
    is_root: bool = False


def prune(
    root: Path,
    *,
    keep_days: float | None = None,
    keep: int | None = None,
    include_unfinished: bool = False,
    dry_run: bool = False,
    now: float | None = None,
) -> PruneResult:
    """Delete the runs under `root` that the policy lets go (see the module docstring); with `dry_run`
    decide the same and delete nothing."""
    if keep_days is None and keep is None:
        raise UsageError(
            "say what to keep: --keep-days D (runs that finished within D days), --keep N (the newest N "
            "runs), or both (a run goes only when both let it go)"
        )
    if (keep_days is not None and keep_days < 0) or (keep is not None and keep < 0):
        raise UsageError("--keep-days and --keep take a number of 0 or more")
    _check_root(root)
    now = time.time() if now is None else now
    result = PruneResult(root, dry_run, now)
    runs: list[_Run] = []
    for child in sorted(root.iterdir()):
        if child.is_symlink():
            result.entries.append(PruneEntry(child, Verdict.SYMLINK, "a symbolic link: not followed"))
        elif child.name.startswith(TRASH_PREFIX) and child.is_dir():
            result.entries.append(_finish_leftover(child, dry_run))
        elif child.is_dir() and (run := _as_run(child)) is not None:
            runs.append(run)
    runs.sort(key=lambda r: (r.time, r.path.name), reverse=True)
    for rank, run in enumerate(runs):
        young = keep_days is not None and now - run.time <= keep_days * DAY_S
        if young or (keep is not None and rank < keep):
            why = "newer than --keep-days" if young else f"among the newest {keep} (--keep)"
            result.entries.append(PruneEntry(run.path, Verdict.KEEP, why, run.time, run.time_from))
        else:
            result.entries.append(_settle(run, root, include_unfinished=include_unfinished, dry_run=dry_run))
    return result


def _check_root(root: Path) -> None:
    if not root.exists():
        raise UsageError(
            f"{root} does not exist: give the folder that holds the run folders (reports/ by default)"
        )
    if not root.is_dir():
        raise UsageError(
            f"{root} is not a folder: give the folder that holds the run folders (reports/ by default)"
        )
    if (root / JOURNAL_FILE).exists():
        raise UsageError(f"{root} is a run folder, not a folder of runs: give the folder that holds it")
    if shard_folders(root) or (root / ROOT_RECORD).exists():
        raise UsageError(
            f"{root} is a run root of shards (one run): give the folder that holds it; its shards go together"
        )


def _as_run(folder: Path) -> _Run | None:
    """The run `folder` holds, or None when it is no run (prune leaves it alone)."""
    if (folder / JOURNAL_FILE).is_file():
        finished = summary_finished_at(folder)
        if finished is not None:
            return _Run(folder, (folder,), (), finished, "summary.json")
        return _Run(folder, (folder,), (), folder.lstat().st_mtime, "folder mtime")
    shards = shard_folders(folder)
    if not shards and not (folder / ROOT_RECORD).is_file():
        return None
    started = _started_shards(folder)
    count = expected(folder) or max((int(p.name.rsplit("-", 1)[1]) for p in shards), default=0)
    names = {p.name for p in started}
    missing = tuple(f"shard-{i}-of-{count}" for i in range(count) if f"shard-{i}-of-{count}" not in names)
    times = [(summary_finished_at(p), p) for p in started]
    if started and all(t is not None for t, _ in times):
        newest = max(t for t, _ in times if t is not None)
        return _Run(folder, started, missing, newest, "summary.json", is_root=True)
    mtimes = [p.lstat().st_mtime for p in (folder, *shards)]
    return _Run(folder, started, missing, max(mtimes), "folder mtime", is_root=True)


def _settle(run: _Run, root: Path, *, include_unfinished: bool, dry_run: bool) -> PruneEntry:
    """Delete `run` unless it is in use or (without include_unfinished) unfinished."""
    entry = PruneEntry(run.path, Verdict.DELETE, "", run.time, run.time_from)
    if any(p.is_symlink() for p in shard_folders(run.path)):
        return replace(
            entry, verdict=Verdict.SYMLINK, reason="a shard folder in it is a symbolic link: not followed"
        )
    try:
        kept = _why_kept(run, [probe_lock(p) for p in run.folders], include_unfinished)
    except UsageError as exc:
        return replace(entry, verdict=Verdict.FAILED, reason=str(exc))
    if kept is not None:
        return kept
    entry = replace(entry, bytes=_size(run.path))
    if dry_run:
        return entry
    locks: list[RunLock] = []
    try:
        for folder in run.folders:
            locks.append(RunLock(folder).acquire())
        # Again under the locks: a run may have been resumed, or a shard started, since the first look.
        if run.is_root and _started_shards(run.path) != run.folders:
            return replace(
                entry, verdict=Verdict.UNFINISHED, reason="its shards changed meanwhile: prune again"
            )
        kept = _why_kept(run, [LockState(False)] * len(run.folders), include_unfinished)
        if kept is not None:
            return kept
        trash = root / f"{TRASH_PREFIX}{run.path.name}.{secrets.token_hex(4)}"
        os.rename(run.path, trash)
    except RunInUse as exc:
        return replace(entry, verdict=Verdict.IN_USE, reason=str(exc))
    except (UsageError, OSError) as exc:
        return replace(entry, verdict=Verdict.FAILED, reason=f"cannot delete it: {_reason(exc)}")
    finally:
        for lock in reversed(locks):
            lock.release()
    try:
        shutil.rmtree(trash)
    except OSError as exc:
        reason = f"moved to {trash} but not removed ({_reason(exc)}): the next prune removes it"
        return replace(entry, verdict=Verdict.FAILED, reason=reason)
    return entry


def _started_shards(root: Path) -> tuple[Path, ...]:
    """A run root's shard folders that hold a run."""
    return tuple(p for p in shard_folders(root) if (p / JOURNAL_FILE).is_file())


def _why_kept(run: _Run, locks: list[LockState], include_unfinished: bool) -> PruneEntry | None:
    """The entry of a run that must stay (in use, or unfinished unless asked), or None."""
    keep = PruneEntry(run.path, Verdict.IN_USE, "", run.time, run.time_from, 0)
    for folder, lock in zip(run.folders, locks, strict=True):
        if lock.held:
            who = f"process {lock.pid}" if lock.pid else "another process"
            where = f" ({folder.name})" if folder != run.path else ""
            return replace(keep, verdict=Verdict.IN_USE, reason=f"in use by {who}{where}: never deleted")
    if include_unfinished:
        return None
    if run.missing:
        return replace(
            keep, verdict=Verdict.UNFINISHED, reason=f"unfinished: {', '.join(run.missing)} has no run yet"
        )
    for folder, lock in zip(run.folders, locks, strict=True):
        try:
            status = inspect_run(folder, lock, errors=0)
        except UsageError as exc:
            return replace(keep, verdict=Verdict.UNFINISHED, reason=f"its journal cannot be read: {exc}")
        if status.phase == Phase.RUNNING:
            return replace(keep, verdict=Verdict.IN_USE, reason=f"{status.note}: never deleted")
        if status.phase != Phase.FINISHED:
            where = f"{folder.name}: " if folder != run.path else ""
            nxt = f" (`{status.next_step}` finishes it)" if status.next_step else ""
            return replace(keep, verdict=Verdict.UNFINISHED, reason=f"unfinished: {where}{status.note}{nxt}")
    return None


def _finish_leftover(trash: Path, dry_run: bool) -> PruneEntry:
    """A folder an earlier prune renamed to delete and did not finish deleting: finish it."""
    entry = PruneEntry(trash, Verdict.DELETE, "left half deleted by an earlier prune", bytes=_size(trash))
    if dry_run:
        return entry
    try:
        shutil.rmtree(trash)
    except FileNotFoundError:
        pass  # another prune is removing it right now
    except OSError as exc:
        return replace(entry, verdict=Verdict.FAILED, reason=f"cannot delete it: {_reason(exc)}")
    return entry


def _size(path: Path) -> int:
    """Bytes of the files under `path` (symbolic links counted as links, never followed)."""
    total, folders = 0, [path]
    while folders:
        try:
            with os.scandir(folders.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(Path(entry.path))
                    else:
                        total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue  # unreadable: its bytes are not counted
    return total


def _reason(exc: BaseException) -> str:
    return exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)
