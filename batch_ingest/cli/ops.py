"""Commands for looking after runs from cron and other terminals: status, prune."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .common import echo, handle_errors, main

if TYPE_CHECKING:
    from ..prune import PruneEntry, PruneResult
    from ..status import RootStatus, RowError, RunStatus


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON, for scripts.")
@click.option(
    "--watch",
    type=click.FloatRange(min=0.5),
    metavar="SECONDS",
    help="Show the status again every SECONDS while the run is running (JSON lines with --json); "
    "stops when it is not, or on Ctrl-C.",
)
@click.option(
    "--errors",
    "newest",
    type=click.IntRange(0, 1000),
    metavar="N",
    default=5,
    show_default=True,
    help="How many of the newest errors to show.",
)
@handle_errors
def status(run_dir: Path, as_json: bool, watch: float | None, newest: int) -> None:
    """Show how the run in RUN_DIR is doing, from another terminal: rows per state, rows finished and
    submitted a minute over the last minutes, the time left at that rate, the newest errors, and
    whether the run is running (a process holds it), finished (report and summary current) or stopped
    unfinished (`batch-ingest resume RUN_DIR` goes on). A run root of shards shows a line per shard
    and a total.

    It only reads: the journal is opened read-only and the run's lock is only tested, never kept, so
    the run, or a resume started meanwhile, goes on undisturbed.

    Exit codes: 0 the status was shown, whatever the run's state (--json's `state` says running,
    finished or stopped; Ctrl-C ends --watch with 0 too); 2 RUN_DIR is not a run folder or run root, or
    its journal cannot be read; 4 internal error.
    """
    from ..status import status_of
    from ..status import watch as watch_status

    def show(current: RunStatus | RootStatus) -> None:
        if as_json:
            echo(json.dumps(current.as_json(), indent=None if watch else 2))
        else:
            if watch and sys.stdout.isatty():
                click.clear()
            echo(format_status(current) + ("\n" if watch else ""))
        sys.stdout.flush()

    if watch is None:
        show(status_of(run_dir, errors=newest))
        return
    try:
        watch_status(run_dir, watch, show, errors=newest)
    except KeyboardInterrupt:
        return  # the way to stop watching: nothing went wrong


@main.command()
@click.argument("reports_root", type=click.Path(path_type=Path))
@click.option(
    "--keep-days",
    type=click.FloatRange(min=0),
    metavar="D",
    help="Keep the runs that finished within the last D days (summary.json's finish time; the folder's "
    "mtime without one).",
)
@click.option(
    "--keep", type=click.IntRange(min=0), metavar="N", help="Keep the newest N runs, whatever their age."
)
@click.option(
    "--include-unfinished",
    is_flag=True,
    help="Also delete unfinished runs (rows not final, or no current report). A run in use never goes.",
)
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print what was decided as JSON, for scripts.")
@click.option(
    "-q", "--quiet", is_flag=True, help="Print only the folders that could not be deleted (for cron)."
)
@handle_errors
def prune(
    reports_root: Path,
    keep_days: float | None,
    keep: int | None,
    include_unfinished: bool,
    dry_run: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Delete old run folders under REPORTS_ROOT (its run folders, and run roots of shards, each
    as one run), keeping those that --keep-days and --keep keep: given both, a run goes only when
    both let it go.

    A run in use (a process holds its lock) is never deleted; an unfinished one only with
    --include-unfinished. Each run is locked while it is deleted, so a run started meanwhile is
    never deleted under it. Symbolic links are not followed (a symlinked folder is skipped with a
    note). Prints a line per deleted folder and per folder kept because it is in use or unfinished,
    then the total and the bytes freed.

    Exit codes: 0 done (nothing to delete included); 1 a folder could not be deleted (named, with the
    reason); 2 usage error: neither --keep-days nor --keep, or REPORTS_ROOT is not a folder of runs;
    4 internal error.
    """
    from ..prune import prune as prune_runs

    result = prune_runs(
        reports_root, keep_days=keep_days, keep=keep, include_unfinished=include_unfinished, dry_run=dry_run
    )
    if as_json:
        echo(json.dumps(result.as_json(), indent=2))
    elif quiet:
        from ..prune import Verdict

        for entry in result.having(Verdict.FAILED):
            echo(_prune_line(entry, result), err=True)
    else:
        echo(format_prune(result))
    sys.exit(result.exit_code)


# -- text for a terminal ------------------------------------------------------------------------


def format_status(status: RunStatus | RootStatus) -> str:
    """A run's (or a run root's) status as lines for a terminal."""
    from ..status import Phase, RootStatus

    if isinstance(status, RootStatus):
        return _format_root(status)
    lines = [f"{status.path}: {status.phase}, {status.note} (run {status.run_id})"]
    lines.append(f"  rows: {status.rows}: {_counts(status.counts)}")
    if status.phase == Phase.RUNNING:
        lines.append(
            f"  rate over the last {_duration(status.window_s)}: {status.finished_per_min:.1f} rows finished "
            f"a minute, {status.submitted_per_min:.1f} submitted"
        )
        lines.append(f"  left: {_left(status.remaining, status.eta_s, status.read_at)}")
    lines += _errors(status.errors)
    if status.next_step:
        lines.append(f"  next: {status.next_step}")
    return "\n".join(lines)


def _format_root(root: RootStatus) -> str:
    from ..status import Phase

    total = root.as_json()
    lines = [f"{root.path}: run root of {len(root.shards) + len(root.missing)} shards, {root.phase}"]
    for s in root.shards:
        line = f"  {s.path.name}: {s.phase}, {s.note}: {s.rows} rows, {s.remaining} left"
        if s.phase == Phase.RUNNING:
            line += f", {s.finished_per_min:.1f} finished a minute, {_left(s.remaining, s.eta_s, s.read_at)}"
        lines.append(line)
    lines += [f"  {name}: no run yet (`batch-ingest run ... --shard I/N` starts it)" for name in root.missing]
    lines.append(f"  total: {total['rows']} rows: {_counts(root.counts)}")
    if root.phase == Phase.RUNNING:
        read_at = max(s.read_at for s in root.shards)
        lines.append(
            f"  total left: {_left(total['remaining'], root.eta_s, read_at)} "
            f"({total['rate']['finished_per_min']:.1f} finished a minute)"
        )
    lines += _errors(root.errors)
    lines += [f"  next: {s.next_step}" for s in root.shards if s.next_step]
    return "\n".join(lines)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{state} {n}" for state, n in counts.items() if n) or "none"


def _left(remaining: int, eta_s: float | None, read_at: float) -> str:
    if not remaining:
        return "no row: the run is writing its report"
    if eta_s is None:
        return f"{remaining} rows; time left not known yet (no row finished recently)"
    return f"{remaining} rows, about {_duration(eta_s)} at this rate (until about {_when(read_at + eta_s)})"


def _errors(errors: list[RowError]) -> list[str]:
    lines = ["  newest errors:"] if errors else []
    for e in errors:
        where = f"{e.shard} " if e.shard else ""
        ref = f" ref_id {e.ref_id}" if e.ref_id else ""
        code = f" {e.code}" if e.code else ""
        at = f" at {_when(e.at)}" if e.at is not None else ""
        lines.append(f"    {where}row {e.row}{ref} [{e.state}{code}]{at}: {e.message or ''}")
    return lines


def format_prune(result: PruneResult) -> str:
    """What prune did (or would do), a line per folder that matters, then the total."""
    from ..prune import Verdict

    lines = [_prune_line(e, result) for e in result.entries if e.verdict != Verdict.KEEP]
    deleted = result.having(Verdict.DELETE)
    freed = _bytes(result.bytes_freed)
    if result.dry_run:
        lines.append(
            f"would delete {len(deleted)} folder(s), freeing {freed}; --dry-run: nothing was deleted"
        )
    else:
        lines.append(f"deleted {len(deleted)} folder(s), {freed} freed")
    groups = (
        ("by --keep-days/--keep", result.having(Verdict.KEEP)),
        ("in use", result.having(Verdict.IN_USE)),
        ("unfinished", result.having(Verdict.UNFINISHED)),
    )
    kept = [(what, len(found)) for what, found in groups if found]
    if kept:
        lines[-1] += f"; kept {sum(n for _, n in kept)} run(s): " + ", ".join(f"{n} {w}" for w, n in kept)
    failed = result.having(Verdict.FAILED)
    if failed:
        lines[-1] += f"; {len(failed)} could not be deleted"
    return "\n".join(lines)


def _prune_line(e: PruneEntry, result: PruneResult) -> str:
    from ..prune import Verdict

    if e.verdict == Verdict.DELETE:
        verb = "would delete" if result.dry_run else "deleted"
        when = ""
        if e.time is not None:
            what = "finished" if e.time_from == "summary.json" else "last changed (folder mtime)"
            when = f"{what} {_when(e.time)}, {_duration(max(0.0, result.now - e.time))} ago, "
        note = f"; {e.reason}" if e.reason else ""
        return f"{verb} {e.path} ({when}{_bytes(e.bytes, exact=False)}){note}"
    if e.verdict == Verdict.UNFINISHED:
        return f"kept {e.path}: {e.reason}; --include-unfinished deletes it"
    if e.verdict == Verdict.IN_USE:
        return f"kept {e.path}: {e.reason}"
    if e.verdict == Verdict.SYMLINK:
        return f"skipped {e.path}: {e.reason}"
    return f"could not delete {e.path}: {e.reason}"


def _when(at: float | None) -> str:
    return "?" if at is None else datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    """`45 s`, `14 min`, `3 h 05 min`, `2.5 days`."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    return f"{seconds / 86400:.1f} days"


def _bytes(n: int, *, exact: bool = True) -> str:
    """`1.5 MiB (1,572,864 bytes)`, or without `exact` `1.5 MiB`."""
    size, unit = float(n), "bytes"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    if unit == "bytes":
        return f"{n:,} bytes"
    return f"{size:.1f} {unit}" + (f" ({n:,} bytes)" if exact else "")
