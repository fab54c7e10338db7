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
    profile_counts,
    read_report,
)
from .runfiles import JOURNAL_FILE, REPORT_PARQUET, SUMMARY_JSON
from .vocabulary import FIX_FIRST, OUTCOMES, Outcome, did_not_succeed, fix_for, needs_fix_first

EXAMPLES_PER_CODE = 3
FIX_FIRST_ROWS = 10  # row numbers named per group of rows to fix first
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
    return _nested(grouped.sort(column, "outcome"))


def _nested(grouped: pl.DataFrame) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for key, outcome, n in grouped.iter_rows():
        out.setdefault(key, {})[outcome] = n
    return out


def _per_profile(
    frame: pl.DataFrame, runs: tuple[LoadedRun, ...] | list[LoadedRun] = ()
) -> dict[str, dict[str, int]]:
    """Outcomes per profile the rows resolved to (one entry for `101` and `ref:hd` alike); a rejected
    row's profile was never looked up (or not found): it counts under its spelling, as unresolved."""
    if "profile" not in frame.columns and "job_profile_id" not in frame.columns:
        return {}
    resolved = pl.col("outcome") != Outcome.REJECTED.value
    names: dict[int, str] = {}
    for run in runs:  # the names the runs' profile look-ups found (a later run's win)
        for key, name in (run.summary.get("profiles") or {}).items():
            if str(key).isdigit() and name:
                names[int(key)] = str(name)
    return _nested(profile_counts(frame, resolved, names))


def _with_fix_first(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with `_fix_first`: whether the row's failure is one a retry cannot fix (vocabulary's
    `needs_fix_first`), decided once per distinct error code and HTTP status."""
    code = pl.col("error_code").cast(pl.String) if "error_code" in frame.columns else pl.lit(None, pl.String)
    status = (
        pl.col("http_status").cast(pl.Int64, strict=False)
        if "http_status" in frame.columns
        else pl.lit(None, pl.Int64)
    )
    frame = frame.with_columns(code.alias("_code"), status.alias("_status"))
    pairs = frame.select("_code", "_status").unique()
    verdicts = pairs.with_columns(
        pl.Series("_fix_first", [needs_fix_first(c, h) for c, h in pairs.iter_rows()], dtype=pl.Boolean)
    )
    # Joined on sentinels: a null code or status is a value to match here, not a missing one.
    keys = [pl.col("_code").fill_null("\x00").alias("_ck"), pl.col("_status").fill_null(-1).alias("_sk")]
    return (
        frame.with_columns(keys)
        .join(verdicts.with_columns(keys).drop("_code", "_status"), on=["_ck", "_sk"], how="left")
        .drop("_ck", "_sk")
    )


def _retry_advice(run: LoadedRun, mine: pl.DataFrame) -> tuple[str | None, list[dict[str, Any]]]:
    """The `retry` command for the rows of `run` a retry can fix (None when there are none), and one
    entry per group of rows (outcome, code) that need a fix first: what to fix, and whether that
    command sends them anyway (`retry --only` takes outcomes, not codes)."""
    retried = (Outcome.FAILED, Outcome.ERROR, Outcome.TIMED_OUT)
    failed = _with_fix_first(
        mine.filter(pl.col("outcome").is_in([o.value for o in (*retried, Outcome.REJECTED)]))
    )
    sendable = failed.filter(pl.col("outcome").is_in([o.value for o in retried]) & ~pl.col("_fix_first"))
    only = [o for o in retried if (sendable["outcome"] == o.value).any()]
    step = None
    if only:
        step = f"batch-ingest retry {run.run_dir} --only {','.join(only)}"
        if (sendable["_code"] == "SIGNATURE_EXPIRED").any():
            # The signatures ran out in the platform's queue: the same lifetime would fail again.
            ttl = int((run.summary.get("settings") or {}).get("presign_ttl") or 86_400)
            step += f" --presign-ttl {min(ttl * 4, 7 * 86_400)}"
    stuck = failed.filter((pl.col("outcome") == Outcome.REJECTED.value) | pl.col("_fix_first"))
    groups = (
        stuck.group_by("outcome", "_code", "_status")
        .agg(pl.len().alias("count"), pl.col("row").sort().head(FIX_FIRST_ROWS).alias("rows"))
        .sort("count", "outcome", "_code", descending=[True, False, False], nulls_last=True)
    )
    fixes = []
    for outcome, code, status, n, rows in groups.iter_rows():
        what = code or (f"HTTP {status}" if status is not None else "no code")
        some = f"{n} {outcome} row{'s' if n != 1 else ''} with {what} (row{'s' if n != 1 else ''} "
        some += ", ".join(map(str, rows)) + (", ..." if n > len(rows) else "") + ")"
        these, they, them = ("these rows", "they", "them") if n != 1 else ("this row", "it", "it")
        if outcome == Outcome.REJECTED:
            fix = fix_for(code, status) if code in FIX_FIRST else "error_message says why: correct the row"
            message = (
                f"{some}: {fix}. Never sent, and `retry` does not take rejected rows: once corrected, run "
                f"{them} again"
            )
            sent = False
        else:
            fix = fix_for(code, status)
            sent = outcome in only
            if sent:
                message = (
                    f"{some}: {fix}. `{step}` sends {these} again as the run planned {them}: {they} will fail the "
                    "same way until that is fixed"
                )
            else:
                message = (
                    f"{some}: {fix}. Left out of the retry: sent again as planned, {they} would fail the same way. "
                    f"Once that is fixed, `batch-ingest retry {run.run_dir} --only {outcome}` sends {them} (a "
                    "corrected manifest needs a new run instead)"
                )
        fixes.append(
            {
                "run_dir": str(run.run_dir),
                "outcome": outcome,
                "error_code": code,
                "http_status": status,
                "count": n,
                "rows": rows,
                "fix": fix,
                "sent_by_retry": sent,
                "message": message,
            }
        )
    return step, fixes


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
    next_steps: list[str] = []
    fix_first: list[dict[str, Any]] = []
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
        step, fixes = _retry_advice(run, mine)
        if step:
            next_steps.append(step)
        fix_first.extend(fixes)
    return {
        "reports": [str(r.path) for r in runs],
        "rows": merged.height,
        "outcomes": outcome_counts(merged),
        "per_profile": _per_profile(merged, runs),
        "per_source_type": _counts(merged, "source_type"),
        "failures_by_code": by_code,
        "durations_s": {
            "encode": _percentiles(merged["encode_s"]) if "encode_s" in merged.columns else None,
            "end_to_end": _percentiles(merged["duration_s"]) if "duration_s" in merged.columns else None,
        },
        "next_steps": next_steps,
        # Rows a plain retry would send again as they are, to fail the same way: what to fix first.
        "fix_first": fix_first,
        "aborted": [
            {"run": str(r.run_dir or r.path), "abort_reason": r.summary["abort_reason"]}
            for r in runs
            if r.summary.get("abort_reason")
        ],
    }


def format_review(info: dict[str, Any]) -> str:
    """The review as text for a terminal."""
    lines = [f"{info['rows']} rows from {len(info['reports'])} report(s)"]
    lines.append("outcomes: " + ", ".join(f"{k} {v}" for k, v in info["outcomes"].items() if v))
    for aborted in info.get("aborted") or []:
        lines.append(f"aborted: {aborted['abort_reason']} ({aborted['run']})")
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
            if (more := group["count"] - len(group["examples"])) > 0:
                lines.append(f"    ... and {more} more (`report --failed` lists every row)")
    for name, stats in info["durations_s"].items():
        if stats:
            label = (
                "encode (platform, creation to final state)"
                if name == "encode"
                else "end to end (submitted to finished)"
            )
            lines.append(f"{label}: " + ", ".join(f"{k} {v:.1f}s" for k, v in stats.items()))
    fixes = info.get("fix_first") or []
    if info["next_steps"] or fixes:
        lines.append("next:")
        lines.extend(f"  {cmd}" for cmd in info["next_steps"])
        lines.extend(f"  fix first: {fix['message']}" for fix in fixes)
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
