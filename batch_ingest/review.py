"""Reviewing runs: load and merge reports (latest attempt per row), summarise, suggest what to do next."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import polars as pl

from .errors import UsageError
from .report import (
    Summary,
    csv_safe,
    flat_for_csv,
    outcome_counts,
    read_report,
)
from .runfiles import JOURNAL_FILE, REPORT_PARQUET, SUMMARY_JSON
from .vocabulary import OUTCOMES, Outcome, did_not_succeed

EXAMPLES_PER_CODE = 3
PERCENTILES = (0.5, 0.9, 0.99)


@dataclass
class LoadedRun:
    """One report and what its run folder says about it."""

    path: Path
    report: pl.DataFrame
    summary: Summary

    @property
    def manifest(self) -> str:
        return str(self.summary.get("manifest") or self.path)

    @property
    def run_dir(self) -> Path | None:
        folder = self.path if self.path.is_dir() else self.path.parent
        return folder if (folder / JOURNAL_FILE).exists() else None


def load_run(path: Path) -> LoadedRun:
    """A run folder or a report file (Parquet or CSV), with the folder's summary.json when there is one."""
    if not path.exists():
        raise UsageError(f"{path} does not exist: give a run folder or a report file")
    if path.is_dir() and not (path / REPORT_PARQUET).exists():
        raise UsageError(
            f"{path} holds no {REPORT_PARQUET}: is it a run folder? (resume it to write its report)"
        )
    try:
        report = read_report(path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise UsageError(f"{path}: cannot read the report: {exc}") from None
    missing = {"row", "outcome"} - set(report.columns)
    if missing:
        raise UsageError(f"{path} is not a batch-ingest report: no {', '.join(sorted(missing))} column")
    folder = path if path.is_dir() else path.parent
    summary: Summary = {}
    if (folder / SUMMARY_JSON).exists():
        try:
            summary = json.loads((folder / SUMMARY_JSON).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            summary = {}
    return LoadedRun(path, report, summary)


def merge_runs(runs: list[LoadedRun]) -> pl.DataFrame:
    """One row per (manifest, row): the latest attempt wins (runs ordered by start time)."""
    ordered = sorted(enumerate(runs), key=lambda ir: (ir[1].summary.get("started_at") or "", ir[0]))
    manifests: dict[str, int] = {}
    frames = []
    for attempt, (_, run) in enumerate(ordered):
        manifests.setdefault(run.manifest, len(manifests))
        frames.append(
            run.report.with_columns(
                pl.lit(run.manifest).alias("_manifest"),
                pl.lit(manifests[run.manifest]).alias("_manifest_order"),
                pl.lit(attempt).alias("_attempt"),
                pl.lit(run.summary.get("run_dir") or str(run.path)).alias("_run"),
            )
        )
    merged = pl.concat(frames, how="diagonal_relaxed")
    latest = merged.sort("_attempt").unique(subset=["_manifest", "row"], keep="last")
    return latest.sort("_manifest_order", "row")


def not_succeeded(frame: pl.DataFrame) -> pl.DataFrame:
    """The rows whose outcome is a failure (not succeeded, skipped or held)."""
    return frame.filter(did_not_succeed())


def write_html_report(paths: list[Path], out: Path) -> None:
    """The merged HTML report of the runs or reports at `paths`."""
    from .html import write_html

    runs = [load_run(p) for p in paths]
    merged = merge_runs(runs)
    write_html(merged, summarize(merged, runs), out)


def _percentiles(series: pl.Series) -> dict[str, float] | None:
    values = series.drop_nulls()
    if values.is_empty():
        return None
    return {f"p{int(q * 100)}": round(float(values.quantile(q, "linear") or 0.0), 3) for q in PERCENTILES} | {
        "max": round(float(cast(float, values.max())), 3)
    }


def _counts(frame: pl.DataFrame, column: str) -> dict[str, dict[str, int]]:
    if column not in frame.columns:
        return {}
    grouped = (
        frame.with_columns(pl.col(column).cast(pl.String).fill_null("(none)"))
        .group_by(column, "outcome")
        .len()
    )
    out: dict[str, dict[str, int]] = {}
    for key, outcome, n in grouped.sort(column, "outcome").iter_rows():
        out.setdefault(key, {})[outcome] = n
    return out


def summarize(merged: pl.DataFrame, runs: list[LoadedRun]) -> dict[str, Any]:
    """Totals, per profile and source type, failures by error code, durations, and next commands."""
    failed = not_succeeded(merged)
    by_code = []
    if not failed.is_empty():
        codes = failed.with_columns(pl.col("error_code").fill_null("(none)"))
        for code, n in (
            codes.group_by("error_code").len().sort("len", "error_code", descending=[True, False]).iter_rows()
        ):
            examples = codes.filter(pl.col("error_code") == code).head(EXAMPLES_PER_CODE)
            by_code.append(
                {
                    "error_code": code,
                    "count": n,
                    "examples": examples.select(
                        [
                            c
                            for c in ("row", "ref_id", "source", "outcome", "error_message")
                            if c in examples.columns
                        ]
                    ).to_dicts(),
                }
            )
    next_steps = []
    for run in runs:
        if run.run_dir is None:
            continue
        # Only rows whose latest attempt is this run: a later retry may already have redone the rest.
        mine = merged.filter(pl.col("_run") == (run.summary.get("run_dir") or str(run.path)))
        counts = outcome_counts(mine)
        if counts[Outcome.INTERRUPTED] or counts[Outcome.HELD]:
            next_steps.append(
                f"batch-ingest resume {run.run_dir}" + (" --all" if counts[Outcome.HELD] else "")
            )
        retryable = [o for o in (Outcome.FAILED, Outcome.ERROR, Outcome.TIMED_OUT) if counts[o]]
        if retryable:
            step = f"batch-ingest retry {run.run_dir} --only {','.join(retryable)}"
            if "error_code" in mine.columns and (mine["error_code"] == "SIGNATURE_EXPIRED").any():
                # The signatures ran out in the platform's queue: the same lifetime would fail again.
                ttl = int((run.summary.get("settings") or {}).get("presign_ttl") or 86_400)
                step += f" --presign-ttl {min(ttl * 4, 7 * 86_400)}"
            next_steps.append(step)
    return {
        "reports": [str(r.path) for r in runs],
        "rows": merged.height,
        "outcomes": outcome_counts(merged),
        "per_profile": _counts(merged, "profile"),
        "per_source_type": _counts(merged, "source_type"),
        "failures_by_code": by_code,
        "durations_s": {
            "encode": _percentiles(merged["encode_s"]) if "encode_s" in merged.columns else None,
            "end_to_end": _percentiles(merged["duration_s"]) if "duration_s" in merged.columns else None,
        },
        "next_steps": next_steps,
    }


def format_review(info: dict[str, Any]) -> str:
    """The review as text for a terminal."""
    lines = [f"{info['rows']} rows from {len(info['reports'])} report(s)"]
    lines.append("outcomes: " + ", ".join(f"{k} {v}" for k, v in info["outcomes"].items() if v))
    for title, key in (("per profile", "per_profile"), ("per source type", "per_source_type")):
        if info[key]:
            lines.append(f"{title}:")
            for name, counts in info[key].items():
                lines.append(f"  {name}: " + ", ".join(f"{o} {counts[o]}" for o in OUTCOMES if o in counts))
    if info["failures_by_code"]:
        lines.append("rows that did not succeed, by error code:")
        for group in info["failures_by_code"]:
            lines.append(f"  {group['error_code']}: {group['count']}")
            for ex in group["examples"]:
                lines.append(
                    f"    row {ex['row']} [{ex['outcome']}] {ex.get('source')}: {ex.get('error_message') or ''}"
                )
    for name, stats in info["durations_s"].items():
        if stats:
            label = (
                "encode (platform, creation to final state)"
                if name == "encode"
                else "end to end (submitted to finished)"
            )
            lines.append(f"{label}: " + ", ".join(f"{k} {v:.1f}s" for k, v in stats.items()))
    if info["next_steps"]:
        lines.append("next:")
        lines.extend(f"  {cmd}" for cmd in info["next_steps"])
    return "\n".join(lines)


def write_frame(frame: pl.DataFrame, out: Path) -> None:
    """Write a report frame as Parquet or CSV, by the file's extension."""
    frame = frame.drop([c for c in frame.columns if c.startswith("_")])
    suffix = out.suffix.lower()
    try:
        if suffix == ".parquet":
            frame.write_parquet(out)
        elif suffix == ".csv":
            csv_safe(flat_for_csv(frame)).write_csv(out)
        else:
            raise UsageError(f"--out {out}: name the file .parquet or .csv")
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write: {exc.strerror}") from None
