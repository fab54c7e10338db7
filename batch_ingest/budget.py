"""`--max-failures`: when a run stops itself because too many rows fail.

Two forms. A count (`--max-failures 20`): the run aborts once more than 20 rows have failed in
this process. A rate (`--max-failures 5%`, or `5%/200` for a window of 200): the run aborts once
more than 5% of the most recent rows to end (the last 100 by default) failed, judged from the
moment `MIN_SAMPLE` rows have ended, so that a batch that turns bad half-way stops, while a few
failures spread over a night do not.

Every row that ends counts the moment its end is known: a refused create at once, an encode
failure or a timeout when the platform reports it. Jobs still encoding cannot count yet, so a run
may have sent more rows by the time their failures arrive; `--max-in-flight` bounds how many.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from .errors import UsageError

DEFAULT_WINDOW = 100  # rows: the last hundred to end
MIN_SAMPLE = 20  # rows that must have ended before a rate is judged


@dataclass
class FailureBudget:
    """How many failures a run tolerates: `count` in all, or `percent` of the last `window` rows."""

    count: int | None = None
    percent: float | None = None
    window: int = DEFAULT_WINDOW
    failures: int = 0
    _recent: deque[bool] = field(default_factory=deque, repr=False)

    @classmethod
    def parse(cls, value: int | str | FailureBudget | None) -> FailureBudget | None:
        """The budget from `--max-failures`' text (`20`, `5%`, `5%/200`), an int, or None (no budget)."""
        if value is None or isinstance(value, FailureBudget):
            return value
        if isinstance(value, bool):
            raise UsageError(f"--max-failures takes a count or a percentage, got {value!r}")
        text = str(value).strip()
        hint = (
            "give a count of rows (20) or a percentage of recent rows (5%, or 5%/200 over the last 200 rows)"
        )
        if "%" not in text:
            try:
                count = int(text)
            except ValueError:
                raise UsageError(f"--max-failures {text!r}: {hint}") from None
            if count < 0:
                raise UsageError(f"--max-failures {text!r}: at least 0; {hint}")
            return cls(count=count)
        head, _, tail = text.partition("%")
        try:
            percent = float(head)
            window = int(tail.removeprefix("/")) if tail else DEFAULT_WINDOW
        except ValueError:
            raise UsageError(f"--max-failures {text!r}: {hint}") from None
        if not (math.isfinite(percent) and 0 <= percent < 100) or (tail and not tail.startswith("/")):
            raise UsageError(f"--max-failures {text!r}: the percentage is from 0 to under 100; {hint}")
        if window < MIN_SAMPLE:
            raise UsageError(f"--max-failures {text!r}: the window is at least {MIN_SAMPLE} rows; {hint}")
        return cls(percent=percent, window=window)

    def text(self) -> str:
        """As the flag is written: what the run records and a resume takes again."""
        if self.percent is None:
            return str(self.count)
        shown = f"{self.percent:g}%"
        return shown if self.window == DEFAULT_WINDOW else f"{shown}/{self.window}"

    def record(self, failed: bool) -> str | None:
        """One row ended; the abort reason when the budget is now spent, else None."""
        if failed:
            self.failures += 1
        if self.percent is None:
            if failed and self.count is not None and self.failures > self.count:
                return f"more than --max-failures {self.count} rows failed"
            return None
        self._recent.append(failed)
        if len(self._recent) > self.window:
            self._recent.popleft()
        if len(self._recent) < min(MIN_SAMPLE, self.window):
            return None  # a success may complete the sample: failures seen before it count then
        bad = sum(self._recent)
        if bad * 100 > self.percent * len(self._recent):
            return (
                f"--max-failures {self.text()}: {bad} of the last {len(self._recent)} rows to end failed "
                f"({bad * 100 / len(self._recent):.0f}%)"
            )
        return None
