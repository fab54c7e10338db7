"""`report`: one or more runs reviewed, merged (the latest attempt per row wins)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..errors import BatchIngestError
from .common import echo, handle_errors, main


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--failed", is_flag=True, help="List only the rows that did not succeed.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON, for scripts.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the merged (or --failed) report: .parquet or .csv.",
)
@click.option(
    "--html", type=click.Path(dir_okay=False, path_type=Path), help="Write a self-contained HTML report."
)
@handle_errors
def report(paths: tuple[Path, ...], failed: bool, as_json: bool, out: Path | None, html: Path | None) -> None:
    """Summarise one or more runs (run folders or report files), merged: the latest attempt per row wins.

    Prints totals per outcome, profile and source type, failures grouped by error code with
    examples, duration percentiles, and the commands that retry or resume what did not succeed.
    """
    import polars as pl

    from ..collect import expand, unstarted_rows
    from ..review import format_review, load_run, merge_runs, not_succeeded, summarize, write_frame
    from ..shard import shard_folders

    # A shards' run root stands for its shard folders; one it lacks, or one without a report yet (still
    # running, or stopped before it wrote one), is named, not left out quietly.
    runs, missing = [], []
    for p in paths:
        shards = shard_folders(p)
        if not shards:
            runs.append(load_run(p))
            continue
        _, gaps = expand([p])  # shards with no run: their rows come from the manifest, as collect has them
        unreported = []
        for folder in shards:
            try:
                runs.append(load_run(folder))
            except BatchIngestError:
                unreported.append(folder.name)
        if unreported:
            echo(
                f"batch-ingest: warning: {p}: no report yet from {', '.join(sorted(unreported))} (running, or "
                "stopped: `batch-ingest resume` on its folder finishes it): their rows are not in this report",
                err=True,
            )
        metas = [(r.path, _run_meta(r.path)) for r in runs if r.path.parent == p]
        for gap in gaps:
            echo(
                f"batch-ingest: warning: {p}: {gap.names()} holds no run yet: its rows are `interrupted` here",
                err=True,
            )
            missing.append(unstarted_rows(gap, metas, lambda text: echo(f"batch-ingest: {text}", err=True)))
    if not runs:
        raise click.UsageError("no shard of these run roots has a report yet")
    merged = merge_runs(runs)
    if any(not m.is_empty() for m in missing):
        merged = pl.concat([merged, *(m for m in missing if not m.is_empty())], how="diagonal_relaxed").sort(
            "row", maintain_order=True
        )
    info = summarize(merged, runs)
    shown = not_succeeded(merged) if failed else merged
    if out is not None:
        write_frame(shown, out)
    if html is not None:
        from ..html import write_html

        write_html(merged, info, html)
    if as_json:
        echo(json.dumps(info, indent=2, default=str))
    elif failed:
        cols = [
            c
            for c in ("row", "ref_id", "source", "outcome", "error_code", "error_message")
            if c in shown.columns
        ]
        for rec in shown.select(cols).iter_rows(named=True):
            echo("\t".join("" if rec[c] is None else str(rec[c]) for c in cols))
    else:
        echo(format_review(info))
    if out is not None and not as_json:
        echo(f"wrote {out}", err=True)


def _run_meta(folder: Path) -> dict[str, Any]:
    """A run folder's recorded meta, read without its lock (report only reads); {} when unreadable."""
    from ..journal import Journal
    from ..runfiles import JOURNAL_FILE

    try:
        journal = Journal.open(folder / JOURNAL_FILE, migrate=False)
    except Exception:  # noqa: BLE001 - no journal, or one being written: no meta to read the manifest from
        return {}
    try:
        return journal.meta()
    finally:
        journal.close()
