"""The report: one row per manifest row, built from the plan and the journal; files and summaries."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, cast

import polars as pl

from .journal import Journal
from .runfiles import REPORT_CSV, REPORT_PARQUET, SUMMARY_JSON
from .vocabulary import INTERRUPTED_STATES, OUTCOMES, Outcome, RowState, did_not_succeed

REPORT_COLUMNS = (
    "row",
    "ref_id",
    "source",
    "source_type",
    "profile",
    "job_profile_id",
    "job_id",
    "media_id",
    "outcome",
    "encode_status",
    "http_status",
    "error_code",
    "error_message",
    "attempts",
    "submitted_at",
    "finished_at",
    "duration_s",
    "bytes",
    "source_status",
    "source_bytes",
    "source_content_type",
    "media_duration_s",
    "media_format",
    "video_codec",
    "width",
    "height",
    "audio_codec",
    "encode_s",
    "key",
)
# What `--check-sources` found of a URL source (sources.py); null when the source was not checked
# (not asked for, a local file, or a run folder written before the checks existed).
SOURCE_CHECK_COLUMNS = {"source_status": pl.Int64, "source_bytes": pl.Int64, "source_content_type": pl.String}
# What `--probe` found of a row's media (sources.py, probe.py); null when it was not probed.
MEDIA_COLUMNS = {
    "media_duration_s": pl.Float64,
    "media_format": pl.String,
    "video_codec": pl.String,
    "width": pl.Int64,
    "height": pl.Int64,
    "audio_codec": pl.String,
}
FIRST_FAILURES = 10
REPORT_CHUNK_ROWS = 100_000  # report rows built and written at a time (about 50 MB each)


def _epoch_to_datetime(name: str) -> pl.Expr:
    return (pl.col(name) * 1_000_000).round(0).cast(pl.Int64).cast(pl.Datetime("us", "UTC")).alias(name)


def _api_time(name: str) -> pl.Expr:
    return pl.col(name).str.to_datetime("%Y-%m-%dT%H:%M:%S%.3fZ", time_zone="UTC", strict=False)


def build_report(
    plan: pl.DataFrame, journal: pl.DataFrame, extras: list[str], *, handed_to_collect: bool = False
) -> pl.DataFrame:
    """Join plan and journal into the report frame, in manifest order. With `handed_to_collect` (the
    run's last segment was `run --no-wait`), a submitted row is `submitted`, not `interrupted`."""
    handed = (pl.col("state") == RowState.SUBMITTED.value) if handed_to_collect else pl.lit(False)
    unfinished = pl.col("state").is_in([s.value for s in INTERRUPTED_STATES]) & ~handed
    frame = plan.join(journal, on="row", how="left", suffix="_journal", maintain_order="left")
    unchecked = [
        pl.lit(None, dtype).alias(c)
        for c, dtype in {**SOURCE_CHECK_COLUMNS, **MEDIA_COLUMNS}.items()
        if c not in plan.columns
    ]
    frame = frame.with_columns(*unchecked).with_columns(
        pl.when(unfinished)
        .then(pl.lit(Outcome.INTERRUPTED.value))
        .when(handed)
        .then(pl.lit(Outcome.SUBMITTED.value))
        .otherwise(pl.col("state"))
        .alias("outcome"),
        pl.coalesce(pl.col("journal_profile_id"), pl.col("job_profile_id")).alias("job_profile_id"),
        pl.coalesce(pl.col("error_code_journal"), pl.col("error_code")).alias("error_code"),
        pl.when(handed & pl.col("error_message").is_null())
        .then(
            pl.lit("submitted without waiting (--no-wait): `batch-ingest collect` follows the job to its end")
        )
        .when(unfinished & pl.col("error_message").is_null())
        .then(
            pl.when(pl.col("state") == RowState.SENDING)
            .then(
                pl.lit(
                    "the run stopped while the create was in doubt: resume looks it up before sending again"
                )
            )
            .otherwise(pl.lit("the run stopped before this row finished: resume the run to finish it"))
        )
        .otherwise(pl.coalesce(pl.col("error_message"), pl.col("reason")))
        .alias("error_message"),
        _epoch_to_datetime("submitted_at"),
        _epoch_to_datetime("finished_at"),
        pl.when(pl.col("finished_at").is_not_null() & pl.col("submitted_at").is_not_null())
        .then((pl.col("finished_at") - pl.col("submitted_at")).round(3))
        .otherwise(None)
        .alias("duration_s"),
        # The platform's own time from job creation to its final state (queueing included).
        pl.when(pl.col("state").is_in([RowState.SUCCEEDED.value, RowState.FAILED.value]))
        .then((_api_time("job_updated_at") - _api_time("job_created_at")).dt.total_milliseconds() / 1000.0)
        .otherwise(None)
        .alias("encode_s"),
    )
    return frame.select(*REPORT_COLUMNS, *extras).with_columns(
        pl.col("row").cast(pl.Int64),
        pl.col("attempts").fill_null(0).cast(pl.Int64),
    )


@dataclass
class ReportFacts:
    """What the summary needs of a report, gathered while it is written a chunk at a time."""

    rows: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    first_failures: list[dict[str, Any]] = field(default_factory=list)
    failures: int = 0  # rows whose outcome counts as not succeeded (vocabulary.is_failure)
    without_ref_id: int = 0  # sent (or to send) rows with no ref_id: --skip-existing cannot ask about them
    without_ref_id_first: list[int] = field(default_factory=list)
    media_probed: int = 0  # rows whose media `--probe` read (rejected ones left out)
    media_seconds: float = 0.0  # their duration together: the video to ingest

    def add(self, chunk: pl.DataFrame) -> None:
        self.rows += chunk.height
        probed = chunk.filter(
            pl.col("media_duration_s").is_not_null() & (pl.col("outcome") != Outcome.REJECTED)
        )
        self.media_probed += probed.height
        self.media_seconds += float(probed["media_duration_s"].sum() or 0.0)
        for outcome, n in outcome_counts(chunk).items():
            self.outcomes[outcome] += n
        failed = chunk.filter(did_not_succeed())
        self.failures += failed.height
        if len(self.first_failures) < FIRST_FAILURES:
            self.first_failures += first_failures(failed, FIRST_FAILURES - len(self.first_failures))
        no_ref = chunk.filter(pl.col("ref_id").is_null() & (pl.col("outcome") != Outcome.REJECTED))["row"]
        self.without_ref_id += no_ref.len()
        self.without_ref_id_first += no_ref.head(20 - len(self.without_ref_id_first)).to_list()

    @property
    def exit_code(self) -> int:
        """0 when every row succeeded, was skipped or is held back by a canary run; else 1."""
        return 1 if self.failures else 0


def write_report_in_chunks(
    plan: pl.DataFrame,
    journal: Journal,
    extras: list[str],
    run_dir: Path,
    *,
    chunk_rows: int = REPORT_CHUNK_ROWS,
    handed_to_collect: bool = False,
) -> ReportFacts:
    """Build and write report.parquet and report.csv from the plan and the journal, a chunk
    of rows at a time, so that a million-row report never sits in memory whole; return its facts.

    The plan is in row order; each chunk of it joins the journal's rows of the same range. Parquet
    parts go to a private folder in the run folder and are streamed into one file at the end; both
    files replace the old ones atomically."""
    facts = ReportFacts()
    parts = Path(tempfile.mkdtemp(prefix=".report-parts.", dir=run_dir))
    schema: dict[str, pl.DataType] | None = None
    try:

        def write_csv(f: Any) -> None:
            nonlocal schema
            for index, start in enumerate(range(0, max(plan.height, 1), chunk_rows)):
                part = plan.slice(start, chunk_rows)
                rows = part["row"]
                states = (
                    journal.to_frame(cast(int, rows.min()), cast(int, rows.max()))
                    if part.height
                    else journal.to_frame(0, -1)
                )
                chunk = build_report(part, states, extras, handed_to_collect=handed_to_collect)
                if schema is None:
                    schema = dict(chunk.schema)
                else:  # a column all null in one chunk keeps the type it has in the others
                    chunk = chunk.cast(schema)  # type: ignore[arg-type]
                facts.add(chunk)
                chunk.write_parquet(parts / f"{index:08d}.parquet")
                csv_safe(flat_for_csv(chunk)).write_csv(f, include_header=index == 0)

        write_atomically(run_dir / REPORT_CSV, write_csv)
        files = sorted(parts.glob("*.parquet"))
        write_atomically(
            run_dir / REPORT_PARQUET, lambda f: pl.scan_parquet(files, glob=False).sink_parquet(f)
        )
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    return facts


def write_atomically(path: Path, write: Callable[[Any], Any]) -> None:
    """Write `path` through a private temporary file beside it, created exclusively (never through a
    planted symlink), then renamed over `path`: a reader sees the old file or the new one, whole."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# OWASP's advice for CSV injection: a cell a spreadsheet would read as a formula gets a leading quote.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(frame: pl.DataFrame) -> pl.DataFrame:
    """Text cells starting with =, +, -, @, TAB or CR prefixed with ' (the Parquet report keeps them raw)."""
    text = [n for n, t in frame.schema.items() if t == pl.String]
    starts = "^[" + re.escape("".join(_FORMULA_START)) + "]"
    safe = frame.with_columns(
        [
            pl.when(pl.col(n).str.contains(starts))
            .then(pl.lit("'") + pl.col(n))
            .otherwise(pl.col(n))
            .alias(n)
            for n in text
        ]
    )
    # Column names are cells of the header row: a manifest's own column names are escaped the same way.
    return safe.rename({n: "'" + n for n in safe.columns if n.startswith(_FORMULA_START)})


def flat_for_csv(frame: pl.DataFrame) -> pl.DataFrame:
    """The frame with nested or binary columns (from a Parquet or NDJSON manifest's extras) as JSON text."""
    nested = [n for n, t in frame.schema.items() if t.is_nested() or t == pl.Binary]
    return frame.with_columns(
        [pl.Series(n, [_json_cell(v) for v in frame[n].to_list()], dtype=pl.String) for n in nested]
    )


def _json_cell(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return json.dumps(value.decode("utf-8", "backslashreplace"))
    return json.dumps(value, default=str, ensure_ascii=False)


def read_report(path: Path) -> pl.DataFrame:
    """A report from a run folder, a .parquet or a .csv file."""
    if path.is_dir():
        path = path / REPORT_PARQUET
    if path.suffix.lower() == ".csv":
        return pl.read_csv(path, try_parse_dates=True, glob=False)
    return pl.read_parquet(path, glob=False)


def outcome_counts(report: pl.DataFrame) -> dict[str, int]:
    """Rows per outcome, every outcome present (zeros included), in a fixed order."""
    counts = dict(report.group_by("outcome").len().iter_rows())
    return {o: int(counts.get(o, 0)) for o in OUTCOMES}


DEFAULT_PROFILE = "(platform default)"  # a row without a profile: the platform chooses
UNRESOLVED = "unresolved"


def profile_counts(
    frame: pl.DataFrame, resolved: pl.Expr, names: Mapping[int, str] | None = None
) -> pl.DataFrame:
    """Rows per profile (and outcome, when the frame has one): columns `profile`, (`outcome`,) `len`, in
    the order to list them. Where `resolved` holds and the row has a `job_profile_id`, rows count under
    the profile they resolved to, however they spelt it: `101 (ref:hd)` for `101` and `ref:hd` together.
    Other rows (rejected, or never looked up) count under their spelling, marked `(unresolved)`.
    `names` (id -> the profile's name on the platform) adds the name: `101 "HD 1080p" (ref:hd)`."""
    columns = set(frame.columns)
    spelling = pl.col("profile").cast(pl.String) if "profile" in columns else pl.lit(None, pl.String)
    profile_id = (
        pl.when(resolved).then(pl.col("job_profile_id").cast(pl.Int64, strict=False)).otherwise(None)
        if "job_profile_id" in columns
        else pl.lit(None, pl.Int64)
    )
    by = ["outcome"] if "outcome" in columns else []
    counts = frame.group_by(
        spelling.fill_null(DEFAULT_PROFILE).alias("_spelling"), profile_id.alias("_id"), *by
    ).len()
    # A row never looked up (rejected for its source, say) whose spelling other rows resolved counts
    # under that profile too: one line per profile, not one more for its rejected rows.
    known = (
        counts.filter(pl.col("_id").is_not_null() & (pl.col("_spelling") != DEFAULT_PROFILE))
        .group_by("_spelling")
        .agg(pl.col("_id").first().alias("_known"))
    )
    counts = (
        counts.join(known, on="_spelling", how="left")
        .with_columns(pl.coalesce("_id", "_known").alias("_id"))
        .drop("_known")
    )
    # Each resolved id's label names the other spellings its rows used (a handful per profile).
    others = (
        counts.filter(pl.col("_id").is_not_null())
        .group_by("_id")
        .agg(
            pl.col("_spelling")
            .filter(pl.col("_spelling") != pl.col("_id").cast(pl.String))
            .replace(DEFAULT_PROFILE, DEFAULT_PROFILE.strip("()"))
            .unique()
            .sort()
            .str.join(", ")
            .alias("_others")
        )
    )
    named = pl.DataFrame(
        {"_id": list((names or {}).keys()), "_name": [f'"{n}"' for n in (names or {}).values()]},
        schema={"_id": pl.Int64, "_name": pl.String},
    )
    others = others.join(named, on="_id", how="full", coalesce=True)
    shown_id = pl.concat_str(pl.col("_id").cast(pl.String), pl.col("_name"), separator=" ", ignore_nulls=True)
    label = (
        pl.when(pl.col("_id").is_null() & (pl.col("_spelling") == DEFAULT_PROFILE))
        .then(pl.col("_spelling"))
        .when(pl.col("_id").is_null())
        .then(pl.format("{} ({})", pl.col("_spelling"), pl.lit(UNRESOLVED)))
        .when(pl.col("_others").fill_null("") == "")
        .then(shown_id)
        .otherwise(pl.format("{} ({})", shown_id, pl.col("_others")))
    )
    return (
        counts.join(others, on="_id", how="left")
        .group_by(label.alias("profile"), *by)
        .agg(pl.col("len").sum(), pl.col("_id").first())
        .sort(pl.col("_id").is_null(), "_id", "profile", *by, nulls_last=True)  # resolved ids first
        .select("profile", *by, "len")
    )


def first_failures(report: pl.DataFrame, n: int = FIRST_FAILURES) -> list[dict[str, Any]]:
    """The first `n` rows that did not succeed, with their reasons."""
    rows = report.filter(did_not_succeed()).head(n)
    return rows.select("row", "ref_id", "source", "outcome", "error_code", "error_message").to_dicts()


class Summary(TypedDict, total=False):
    """summary.json: what a run (all its segments) did, for people and programs. Every key is
    written by `RunDir.finish`; a summary read back from an older version may lack some."""

    run_id: str
    manifest: str | None
    run_dir: str
    started_at: str  # ISO 8601, UTC
    finished_at: str
    elapsed_s: float  # the segments' figures, added up
    api_requests: int
    rate_limited: int
    created: int
    adopted_after_doubt: int
    in_doubt: int
    polls: int
    rows: int
    outcomes: dict[str, int]
    jobs_submitted: int
    resumes: int
    segments: list[dict[str, Any]]  # kind, elapsed_s, api_requests, exit_code
    abort_reason: str | None
    interrupted: bool
    exit_code: int
    first_failures: list[dict[str, Any]]
    not_succeeded: int
    report: dict[str, str]  # parquet, csv
    settings: dict[str, Any] | None
    skip_existing: dict[str, Any]  # only with --skip-existing
    retry_of: dict[str, Any]  # only for a retry run
    subsets: list[dict[str, Any]]  # only for a canary run
    resume_all: str
    media: dict[str, Any]  # only with --probe: rows probed and the minutes of video they hold
    shard: dict[str, Any]  # only for a shard's run: index, count, by, origin
    window: dict[str, Any]  # only with --until or --max-submissions: the limits and what closed it
    profiles: dict[str, str]  # the profiles the run looked up: id (as text) -> name on the platform


def read_summary(run_dir: Path) -> Summary | None:
    """A run folder's summary.json, or None when it has none."""
    path = run_dir / SUMMARY_JSON
    if not path.exists():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return cast(Summary, data) if isinstance(data, dict) else None


def write_summary(summary: Summary, run_dir: Path) -> Path:
    """Write summary.json atomically."""
    path = run_dir / SUMMARY_JSON
    data = (json.dumps(summary, indent=2, default=str) + "\n").encode("utf-8")
    write_atomically(path, lambda f: f.write(data))
    return path


def format_summary(summary: Summary) -> str:
    """The terminal summary: outcomes, first failures, time, requests."""
    counts = summary["outcomes"]
    parts = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
    submitted = summary.get("jobs_submitted") or 0
    per_job = f" ({summary['api_requests'] / submitted:.2f} per submitted job)" if submitted else ""
    lines = [
        f"run {summary['run_id']}: {summary['rows']} rows in {summary['elapsed_s']:.1f} s: {parts or 'nothing to do'}",
        f"API requests: {summary['api_requests']}{per_job}, 429s: {summary.get('rate_limited', 0)}",
    ]
    if summary.get("abort_reason"):
        lines.append(f"aborted: {summary['abort_reason']}")
    if summary.get("media"):
        media = summary["media"]
        lines.append(f"video probed: {media['rows']} rows, {media['minutes']:,.1f} minutes to ingest")
    if counts.get(Outcome.HELD):
        steps = ", then ".join(
            f"{s['kind']} {s['selection']} took {s['taken']}" for s in summary.get("subsets") or []
        )
        lines.append(
            f"held back: {counts['held']} rows not sent yet (canary: {steps}); "
            f"send them with: {summary.get('resume_all') or 'batch-ingest resume RUN_DIR --all'}"
        )
    failures = summary.get("first_failures") or []
    if failures:
        lines.append("first rows that did not succeed:")
        for f in failures:
            code = f" {f['error_code']}" if f.get("error_code") else ""
            lines.append(
                f"  row {f['row']} [{f['outcome']}{code}] {f['source']}: {f.get('error_message') or ''}"
            )
        more = int(summary.get("not_succeeded") or len(failures)) - len(failures)
        if more > 0:
            lines.append(
                f"  ... and {more} more: batch-ingest report {summary['run_dir']} --failed lists them all"
            )
    return "\n".join(lines)


def format_counts(summary: Summary) -> str:
    """One line of counts per outcome (what `-q` prints when a run did not fully succeed)."""
    parts = ", ".join(f"{k} {v}" for k, v in summary["outcomes"].items() if v)
    line = f"run {summary['run_id']}: {parts or 'no rows'} (exit {summary['exit_code']})"
    if summary.get("abort_reason"):
        line += f"; aborted: {summary['abort_reason']}"
    return line
