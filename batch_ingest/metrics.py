"""The last run's figures for Prometheus: a file for node_exporter's textfile collector.

`write_metrics` writes the text exposition format (version 0.0.4), every family with HELP and TYPE::

    batch_ingest_rows{outcome="succeeded"} 980           one line per outcome, zeros included
    batch_ingest_api_requests 1032                        requests the run spent (all its segments)
    batch_ingest_rate_limited 0                           429 answers the run got
    batch_ingest_run_duration_seconds 1843.2              the run's working time (its segments, added)
    batch_ingest_exit_code 1
    batch_ingest_last_run_timestamp_seconds 1.8e9         when the run finished
    batch_ingest_last_success_timestamp_seconds 1.7e9     when a run last exited 0 (kept from the
                                                          file when this one did not; 0: never yet)

All are gauges: each holds the last run's figure, which starts again at the next run, so none is
named ``_total`` (that suffix promises a counter, whose drop PromQL's rate() takes for a restart).
An alert on a cron that stopped succeeding is then
``time() - batch_ingest_last_success_timestamp_seconds > 36 * 3600`` (a nightly run, with slack).

Labels are few on purpose: no run id or manifest (a new series every night). `batch` names the
job when several write into one collector folder; it is not called ``job``, which Prometheus sets
itself on every scraped series (ours would be renamed ``exported_job``). Give each cron job its
own file: the file holds one job's series, and another job writing it would replace them.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import BatchIngestError, ConfigError
from .journal import fsync_folder  # a rename made durable, as the journal does its own
from .vocabulary import OUTCOMES

PREFIX = "batch_ingest_"
LAST_SUCCESS = PREFIX + "last_success_timestamp_seconds"
# The textfile collector runs as its own user, often not ours, and the CLI sets umask 077: the file is
# made readable by everyone explicitly (it holds counts and times, nothing secret).
FILE_MODE = 0o644


class MetricsWriteError(BatchIngestError):
    """The metrics file could not be written. The caller shows it as a warning: a run's exit code is the
    run's, not its monitoring's."""


def check_metrics_path(path: Path | str, *, option: str = "--metrics-file") -> Path:
    """`path` as a Path when a file can be written there (its folder exists; it is no folder itself),
    else ConfigError naming `option` and the fix: for a check before the run starts."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder: give a file path, e.g. {path / 'batch_ingest.prom'}")
    if not path.parent.is_dir():
        raise ConfigError(
            f"{option} {path}: the folder {path.parent} does not exist: create it, or give the folder "
            "node_exporter's --collector.textfile.directory reads"
        )
    return path


def escape_label(value: str) -> str:
    """A label value as the exposition format quotes it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in pairs) + "}" if pairs else ""


def _timestamp(iso: Any) -> float | None:
    """Unix seconds of a summary's ISO 8601 time, None when absent or unreadable."""
    if not isinstance(iso, str) or not iso:
        return None
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


def render_metrics(
    summary: Mapping[str, Any] | None,
    exit_code: int,
    *,
    batch: str | None = None,
    last_success: float | None = None,
    now: float | None = None,
) -> str:
    """The exposition text for a run that ended with `exit_code` (see the module's docstring).

    `summary`: the run's summary, or None when the command stopped before it had one (then every count
    is 0). `last_success`: the previous success's time, kept when `exit_code` is not 0. `now`: the
    finish time when the summary has none."""
    summary = summary or {}
    base = [("batch", batch)] if batch else []
    finished = _timestamp(summary.get("finished_at"))
    if finished is None:
        finished = time.time() if now is None else now
    if exit_code == 0:
        last_success = finished
    counts = dict.fromkeys([o.value for o in OUTCOMES], 0)
    counts.update({str(k): int(v or 0) for k, v in (summary.get("outcomes") or {}).items()})
    families: list[tuple[str, str, list[tuple[list[tuple[str, str]], float]]]] = [
        (
            "rows",
            "Rows of the last run by outcome (every outcome, 0 included).",
            [([*base, ("outcome", o)], n) for o, n in counts.items()],
        ),
        (
            "api_requests",
            "SmartSTREAM API requests the last run spent (all its segments).",
            [(base, int(summary.get("api_requests") or 0))],
        ),
        (
            "rate_limited",
            "HTTP 429 answers the last run got from the API.",
            [(base, int(summary.get("rate_limited") or 0))],
        ),
        (
            "run_duration_seconds",
            "Working time of the last run in seconds (its segments added up).",
            [(base, float(summary.get("elapsed_s") or 0.0))],
        ),
        (
            "exit_code",
            "Exit code of the last run (0: nothing failed; see the README's exit codes).",
            [(base, int(exit_code))],
        ),
        (
            "last_run_timestamp_seconds",
            "Unix time the last run finished.",
            [(base, round(finished, 3))],
        ),
        (
            "last_success_timestamp_seconds",
            "Unix time a run last exited 0 (0: none has yet, as far as this file knows).",
            [(base, round(last_success or 0.0, 3))],
        ),
    ]
    lines: list[str] = []
    for name, help_text, samples in families:
        full = PREFIX + name
        lines += [f"# HELP {full} {_escape_help(help_text)}", f"# TYPE {full} gauge"]
        lines += [f"{full}{_labels(labels)} {_number(value)}" for labels, value in samples]
    return "\n".join(lines) + "\n"


_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"'
_LAST_SUCCESS_LINE = re.compile(
    rf"^{LAST_SUCCESS}(?:\{{((?:{_LABEL})(?:,{_LABEL})*)?,?\}})?[ \t]+(\S+)(?:[ \t]+-?\d+)?[ \t]*$",
    re.MULTILINE,
)


def read_last_success(path: Path | str, *, batch: str | None = None) -> float | None:
    """The last-success time a metrics file holds for `batch`, or None (no file, unreadable, no such
    line, another batch's, or a value that is not a positive number)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    wanted = _labels([("batch", batch)] if batch else [])[1:-1]
    for match in _LAST_SUCCESS_LINE.finditer(text):
        if (match.group(1) or "").rstrip(",") != wanted:
            continue
        try:
            value = float(match.group(2))
        except ValueError:
            return None
        return value if math.isfinite(value) and value > 0 else None
    return None


def write_metrics(
    path: Path | str,
    summary: Mapping[str, Any] | None,
    exit_code: int,
    *,
    batch: str | None = None,
    now: float | None = None,
) -> Path:
    """Write the run's metrics to `path` atomically and return it; MetricsWriteError (naming the path, the
    reason and the fix) when that fails. The caller shows that error as a warning.

    Atomically: through a temporary file in the same folder (not named *.prom, so the collector never
    reads it half-written), flushed to disk, made readable by others (0644, whatever the umask:
    node_exporter usually runs as another user), then renamed over `path`. When the run did not exit 0,
    the previous success's time is read from the file being replaced and kept."""
    path = Path(path)
    kept = None if exit_code == 0 else read_last_success(path, batch=batch)
    data = render_metrics(summary, exit_code, batch=batch, last_success=kept, now=now).encode("utf-8")
    tmp: str | None = None
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "Is a directory", str(path))
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), FILE_MODE)
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_folder(path.parent)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise MetricsWriteError(
            f"cannot write the metrics file {path}: {reason}: check that its folder exists and this user "
            "may write there (or change --metrics-file); the run's result is unchanged"
        ) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return path


def merge_summaries(summaries: Sequence[Mapping[str, Any]], *, exit_code: int) -> dict[str, Any]:
    """One summary of several runs (what `collect` finished): counts, requests and 429s added up,
    the earliest start, the latest finish, the longest working time; the run folders and ids listed."""
    outcomes: dict[str, int] = {}
    for s in summaries:
        for outcome, n in (s.get("outcomes") or {}).items():
            outcomes[outcome] = outcomes.get(outcome, 0) + int(n or 0)
    starts = [s["started_at"] for s in summaries if s.get("started_at")]
    ends = [s["finished_at"] for s in summaries if s.get("finished_at")]

    def total(key: str) -> int:
        return sum(int(s.get(key) or 0) for s in summaries)

    return {
        "run_ids": [s.get("run_id") for s in summaries],
        "run_dirs": [s.get("run_dir") for s in summaries],
        "runs": len(summaries),
        "started_at": min(starts, key=lambda t: _timestamp(t) or 0.0) if starts else None,
        "finished_at": max(ends, key=lambda t: _timestamp(t) or 0.0) if ends else None,
        # Runs work side by side (shards), so their times are not added: the longest one is the wait.
        "elapsed_s": max((float(s.get("elapsed_s") or 0.0) for s in summaries), default=0.0),
        "rows": total("rows"),
        "outcomes": outcomes,
        "api_requests": total("api_requests"),
        "rate_limited": total("rate_limited"),
        "jobs_submitted": total("jobs_submitted"),
        "not_succeeded": total("not_succeeded"),
        "abort_reasons": [s["abort_reason"] for s in summaries if s.get("abort_reason")],
        "exit_code": exit_code,
    }
