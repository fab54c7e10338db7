"""How far the platform's clock may be behind ours: the bound an in-doubt look-up uses.

A create in doubt is matched to a job on the platform by creation time, and a job created
before the attempt was sent is never its job (it belongs to an earlier attempt, an earlier run,
or the run being retried). The platform stamps `created_at` with its own clock, so the
attempt's send time must be translated to platform time first.

Every answer teaches a lower bound of the offset (platform minus local): a job we created,
stamped `created_at` = c, was created before we read the answer at local time t, so
offset >= c - t; an HTTP `Date` header D (whole seconds) was stamped before the answer
arrived, so offset >= D - t. Taking the largest bound seen, `floor(sent_at)` is a platform
time no job of this attempt can predate. A small margin covers the platform's own clock
steps; a larger one applies while only `Date` (possibly a proxy's clock) has been seen, and
the wide `UNKNOWN_SKEW_S` while nothing has.
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime

from .models import parse_api_date

CREATED_MARGIN_S = 1.0  # bound learnt from created_at: the platform's own clock
DATE_MARGIN_S = 10.0  # bound learnt from Date headers only: maybe a proxy's clock, whole seconds
UNKNOWN_SKEW_S = 300.0  # nothing learnt yet: assume clocks within five minutes


class PlatformClock:
    """The largest lower bound of (platform clock - local clock) seen so far."""

    def __init__(self) -> None:
        self.from_created: float | None = None
        self.from_date: float | None = None

    def observe_created(self, created_at: str | None, received_at: float) -> None:
        """A job this process created, stamped `created_at`, answered by local time `received_at`."""
        created = parse_api_date(created_at)
        if created is not None:
            bound = created.timestamp() - received_at
            self.from_created = bound if self.from_created is None else max(self.from_created, bound)

    def observe_date(self, header: str | None, received_at: float) -> None:
        """An answer's `Date` header, read by local time `received_at`."""
        if not header:
            return
        try:
            stamped = parsedate_to_datetime(header)
            if stamped is None or stamped.tzinfo is None:
                return
            bound = stamped.timestamp() - received_at
        except (TypeError, ValueError, IndexError, OverflowError):
            return  # a Date no clock could show: learn nothing from it
        self.from_date = bound if self.from_date is None else max(self.from_date, bound)

    def floor(self, sent_at: float) -> float:
        """A platform time before which no job created by a request sent at local `sent_at` can be stamped."""
        if self.from_created is not None:
            return sent_at + self.from_created - CREATED_MARGIN_S
        if self.from_date is not None:
            return sent_at + self.from_date - DATE_MARGIN_S
        return sent_at - UNKNOWN_SKEW_S
