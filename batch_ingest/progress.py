"""Progress sinks: the core reports events, the CLI picks bars, log lines or silence."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .estimate import format_duration
from .text import safe_text
from .vocabulary import Outcome

if TYPE_CHECKING:
    from .report import Summary


class Progress:
    """The silent sink, and the interface every sink has."""

    def start(self, *, rows: int, to_submit: int, upload_bytes: int, run_id: str | None = None) -> None:
        """A run begins: `to_submit` of `rows` will be sent, `upload_bytes` uploaded."""

    def row_submitted(self, *, row: int | None = None, **details: Any) -> None:
        """A job was created (or adopted) for one more row (details: key, ref_id, job_id)."""

    def row_finished(self, outcome: str, *, row: int | None = None, **details: Any) -> None:
        """One more row reached a final outcome (details: key, ref_id, job_id, encode_status, error)."""

    def retrying(self, *, row: int, error: str, **details: Any) -> None:
        """A row's request failed in a way worth retrying (details: key, ref_id)."""

    def finished(self, summary: Summary) -> None:
        """The run's report is written: its summary (counts, exit code, report path)."""

    def bytes_sent(self, n: int) -> None:
        """`n` more bytes of an upload left."""

    def message(self, text: str) -> None:
        """A line for the person watching (warnings, the resume hint)."""

    def close(self) -> None:
        """The run is over."""


class LogProgress(Progress):
    """A progress line at most every `every_s` seconds, for logs and cron mail."""

    def __init__(
        self, stream: TextIO | None = None, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.clock = clock
        self.outcomes: Counter[str] = Counter()
        self.submitted = 0
        self.to_submit = 0
        self._started = self._last = clock()

    def start(self, *, rows: int, to_submit: int, upload_bytes: int, run_id: str | None = None) -> None:
        self.to_submit = to_submit
        self._started = self._last = self.clock()
        self.message(f"{rows} rows, {to_submit} to submit, {upload_bytes} bytes to upload")

    def _maybe_report(self) -> None:
        now = self.clock()
        if now - self._last >= self.every_s:
            self._last = now
            done = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())) or "none finished"
            pace = eta(sum(self.outcomes.values()), self.submitted, self.to_submit, now - self._started)
            self.message(f"submitted {self.submitted}/{self.to_submit}; {done}{pace}")

    def row_submitted(self, **_: Any) -> None:
        self.submitted += 1
        self._maybe_report()

    def row_finished(self, outcome: str, **_: Any) -> None:
        self.outcomes[outcome] += 1
        self._maybe_report()

    def message(self, text: str) -> None:
        print(f"batch-ingest: {safe_text(text)}", file=self.stream, flush=True)


def eta(finished: int, submitted: int, total: int, elapsed_s: float) -> str:
    """`; 12.0 jobs/min, ETA 42 min` from the rate measured so far (finished jobs, or before the first
    finishes, submissions); empty while nothing has been measured."""
    done = finished or submitted
    if done <= 0 or elapsed_s <= 0 or total <= finished:
        return ""
    per_s = done / elapsed_s
    return f"; {per_s * 60:.1f} jobs/min, ETA {format_duration((total - finished) / per_s)}"


class BarProgress(Progress):
    """tqdm bars on a terminal: submitted, finished and (when there are uploads) bytes."""

    def __init__(self) -> None:
        self._bars: list = []

    def start(self, *, rows: int, to_submit: int, upload_bytes: int, run_id: str | None = None) -> None:
        from tqdm import tqdm

        self._submitted = tqdm(total=to_submit, desc="submitted", unit="job", position=0, leave=True)
        self._finished = tqdm(total=to_submit, desc="finished ", unit="job", position=1, leave=True)
        self._bars = [self._submitted, self._finished]
        self._bytes = None
        if upload_bytes:
            self._bytes = tqdm(
                total=upload_bytes, desc="uploaded ", unit="B", unit_scale=True, unit_divisor=1024, position=2
            )
            self._bars.append(self._bytes)

    def row_submitted(self, **_: Any) -> None:
        self._submitted.update(1)

    def row_finished(self, outcome: str, **_: Any) -> None:
        self._finished.update(1)

    def bytes_sent(self, n: int) -> None:
        if self._bytes is not None:
            self._bytes.update(n)

    def message(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(f"batch-ingest: {safe_text(text)}", file=sys.stderr)

    def close(self) -> None:
        for bar in self._bars:
            bar.close()


class EventLog(Progress):
    """One log record per submission, state change and error, as text or JSON lines (for cron).

    Only row numbers, job ids, outcomes and API error codes and messages are logged: never
    settings, headers or credentials.
    """

    def __init__(self, path: Path, fmt: str = "text") -> None:
        # A file of its own, line-buffered: not a logger in the global registry (one per instance would
        # pile up there, and a library must not configure the application's logging).
        self._file = path.open("a", encoding="utf-8", buffering=1)
        self._path = path
        self._failed = False  # a write failed (disk full...): said once, the run goes on without the log
        self.fmt = fmt
        self.run_id: str | None = None

    def _emit(self, event: str, level: int = logging.INFO, **fields: Any) -> None:
        fields = {"run_id": self.run_id, **{k: v for k, v in fields.items() if v is not None}}
        fields = {k: v for k, v in fields.items() if v is not None}
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"
        if self.fmt == "json":
            line = json.dumps(
                {"ts": stamp, "level": logging.getLevelName(level).lower(), "event": event, **fields}
            )
        else:
            line = f"{stamp} {logging.getLevelName(level)} {event} " + " ".join(
                f"{k}={_one_line(v)}" for k, v in fields.items()
            )
        if self._failed:
            return
        try:
            self._file.write(line + "\n")
        except (OSError, ValueError) as exc:  # ValueError: the file was closed
            self._failed = True
            print(
                f"batch-ingest: cannot write the event log {self._path} ({exc}): the run goes on without it",
                file=sys.stderr,
                flush=True,
            )

    def start(self, *, rows: int, to_submit: int, upload_bytes: int, run_id: str | None = None) -> None:
        self.run_id = run_id
        self._emit("run_started", rows=rows, to_submit=to_submit, upload_bytes=upload_bytes)

    def row_submitted(self, *, row: int | None = None, **details: Any) -> None:
        self._emit("submitted", row=row, **details)

    def row_finished(self, outcome: str, *, row: int | None = None, **details: Any) -> None:
        level = logging.INFO if outcome in (Outcome.SUCCEEDED, Outcome.SKIPPED) else logging.WARNING
        self._emit("finished", level, row=row, outcome=outcome, **details)

    def retrying(self, *, row: int, error: str, **details: Any) -> None:
        self._emit("retrying", logging.WARNING, row=row, error=error, **details)

    def message(self, text: str) -> None:
        self._emit("message", text=text)

    def finished(self, summary: Summary) -> None:
        self.run_id = summary.get("run_id") or self.run_id
        level = logging.INFO if summary.get("exit_code") == 0 else logging.WARNING
        self._emit(
            "run_ended",
            level,
            outcomes=summary.get("outcomes"),
            exit_code=summary.get("exit_code"),
            report=(summary.get("report") or {}).get("parquet"),
        )

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:  # the last lines could not be flushed: said already, or nothing more to say
            pass


def _one_line(value: Any) -> str:
    """A value for a text log line: no line breaks or control characters a server could forge lines with."""
    return safe_text(str(value)).replace("\n", "\\n")


class Tee(Progress):
    """Every event to every sink."""

    def __init__(self, *sinks: Progress) -> None:
        self.sinks = sinks

    def start(self, **kw: Any) -> None:
        for s in self.sinks:
            s.start(**kw)

    def row_submitted(self, **kw: Any) -> None:
        for s in self.sinks:
            s.row_submitted(**kw)

    def row_finished(self, outcome: str, **kw: Any) -> None:
        for s in self.sinks:
            s.row_finished(outcome, **kw)

    def retrying(self, **kw: Any) -> None:
        for s in self.sinks:
            s.retrying(**kw)

    def finished(self, summary: Summary) -> None:
        for s in self.sinks:
            s.finished(summary)

    def bytes_sent(self, n: int) -> None:
        for s in self.sinks:
            s.bytes_sent(n)

    def message(self, text: str) -> None:
        for s in self.sinks:
            s.message(text)

    def close(self) -> None:
        for s in self.sinks:
            s.close()


class Resilient(Progress):
    """A screen sink whose stream may break (stderr into a pipe whose reader went away): its output
    stops there, and the run goes on to its report and exit code."""

    def __init__(self, inner: Progress) -> None:
        self.inner = inner
        self.broken = False

    def _call(self, name: str, *args: Any, **kw: Any) -> None:
        if self.broken:
            return
        try:
            getattr(self.inner, name)(*args, **kw)
        except OSError:
            self.broken = True

    def start(self, **kw: Any) -> None:
        self._call("start", **kw)

    def row_submitted(self, **kw: Any) -> None:
        self._call("row_submitted", **kw)

    def row_finished(self, outcome: str, **kw: Any) -> None:
        self._call("row_finished", outcome, **kw)

    def retrying(self, **kw: Any) -> None:
        self._call("retrying", **kw)

    def finished(self, summary: Summary) -> None:
        self._call("finished", summary)

    def bytes_sent(self, n: int) -> None:
        self._call("bytes_sent", n)

    def message(self, text: str) -> None:
        self._call("message", text)

    def close(self) -> None:
        self._call("close")


def choose_progress(
    *, quiet: bool, stream: TextIO | None = None, log_file: Path | None = None, log_format: str = "text"
) -> Progress:
    """Bars on a terminal, log lines otherwise, nothing with --quiet; plus an event log with --log-file."""
    stream = stream or sys.stderr
    screen = Progress() if quiet else Resilient(BarProgress() if stream.isatty() else LogProgress(stream))
    return Tee(screen, EventLog(log_file, log_format)) if log_file else screen
