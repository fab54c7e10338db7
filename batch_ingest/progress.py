"""Progress sinks: the core reports events, the CLI picks bars, log lines or silence."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import TextIO


class Progress:
    """The silent sink, and the interface every sink has."""

    def start(self, *, rows: int, to_submit: int, upload_bytes: int) -> None:
        """A run begins: `to_submit` of `rows` will be sent, `upload_bytes` uploaded."""

    def row_submitted(self) -> None:
        """A job was created (or adopted) for one more row."""

    def row_finished(self, outcome: str) -> None:
        """One more row reached a final outcome."""

    def bytes_sent(self, n: int) -> None:
        """`n` more bytes of an upload left."""

    def message(self, text: str) -> None:
        """A line for the person watching (warnings, the resume hint)."""

    def close(self) -> None:
        """The run is over."""


class LogProgress(Progress):
    """A progress line at most every `every_s` seconds, for logs and cron mail."""

    def __init__(self, stream: TextIO | None = None, every_s: float = 60.0) -> None:
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.outcomes: Counter[str] = Counter()
        self.submitted = 0
        self.to_submit = 0
        self._last = time.monotonic()

    def start(self, *, rows: int, to_submit: int, upload_bytes: int) -> None:
        self.to_submit = to_submit
        self.message(f"{rows} rows, {to_submit} to submit, {upload_bytes} bytes to upload")

    def _maybe_report(self) -> None:
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            done = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())) or "none finished"
            self.message(f"submitted {self.submitted}/{self.to_submit}; {done}")

    def row_submitted(self) -> None:
        self.submitted += 1
        self._maybe_report()

    def row_finished(self, outcome: str) -> None:
        self.outcomes[outcome] += 1
        self._maybe_report()

    def message(self, text: str) -> None:
        print(f"batch-ingest: {text}", file=self.stream, flush=True)


class BarProgress(Progress):
    """tqdm bars on a terminal: submitted, finished and (when there are uploads) bytes."""

    def __init__(self) -> None:
        self._bars: list = []

    def start(self, *, rows: int, to_submit: int, upload_bytes: int) -> None:
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

    def row_submitted(self) -> None:
        self._submitted.update(1)

    def row_finished(self, outcome: str) -> None:
        self._finished.update(1)

    def bytes_sent(self, n: int) -> None:
        if self._bytes is not None:
            self._bytes.update(n)

    def message(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(f"batch-ingest: {text}", file=sys.stderr)

    def close(self) -> None:
        for bar in self._bars:
            bar.close()


def choose_progress(*, quiet: bool, stream: TextIO | None = None) -> Progress:
    """Bars on a terminal, log lines otherwise, nothing with --quiet."""
    if quiet:
        return Progress()
    stream = stream or sys.stderr
    return BarProgress() if stream.isatty() else LogProgress(stream)
