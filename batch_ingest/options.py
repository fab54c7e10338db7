"""How to run a manifest: the options of `run`, `resume` and `retry` (the settings say how to reach the API)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path

from .shard import Shard
from .subset import Subset
from .vocabulary import SkipExisting


@dataclass(frozen=True)
class ProbeOptions:
    """`--probe`: open each local file (and, with `remote`, each URL and object) as media before sending."""

    remote: bool = False
    max_size: int | None = None  # bytes
    max_duration: float | None = None  # seconds


@dataclass(frozen=True)
class RunOptions:
    """How to run a manifest (the settings say how to reach the API)."""

    run_dir: Path | None = None  # the run's folder; default <reports_root>/<run-id>/ (a setting)
    fmt: str | None = None
    delimiter: str | None = None  # CSV: the field separator as given; None: detected (manifest.py)
    encoding: str | None = None  # CSV: the file's encoding as given; None: UTF-8 (or what its BOM says)
    default_profile: str | None = None
    max_failures: int | str | None = None  # a count or a rate (`5%`): budget.py; kept as the flag's text
    skip_existing: SkipExisting | None = None  # see submit.py
    extra_columns: tuple[str, ...] = ()  # columns close to a known name that are meant as extras
    handle_signals: bool = False
    allow_api_url_change: bool = False  # resume/retry: the user named --api-url explicitly
    subset: Subset | None = None  # a canary run's rows (run), or held rows to take (resume); subset.py
    check_sources: str | None = None  # run: None, "reject" or "warn" (sources.py)
    probe: ProbeOptions | None = None  # run: media probes before sending (sources.py, probe.py)
    shard: Shard | None = None  # run: this process's part of the manifest; run_dir is then the root
    no_wait: bool = False  # run: submit and record the job ids, leave following them to `collect`
    adopt_existing: bool = False  # run: adopt the jobs an earlier run of a row created (a lost run folder)
    send_without_ref_id: bool = False  # with adopt_existing: send rows that cannot be looked up anyway
    until: float | None = None  # --until: stop submitting then, as a graceful stop (epoch seconds)
    max_submissions: int | None = None  # --max-submissions: creates this process may send

    def __post_init__(self) -> None:
        if self.max_failures is not None:
            from .budget import FailureBudget

            budget = FailureBudget.parse(self.max_failures)  # UsageError (exit 2) naming the fix
            object.__setattr__(self, "max_failures", budget.text() if budget else None)
        if self.skip_existing is not None and not isinstance(self.skip_existing, SkipExisting):
            object.__setattr__(self, "skip_existing", SkipExisting(self.skip_existing))  # "any" from a caller


def parse_until(text: str, now: datetime | None = None) -> float:
    """`--until`'s time as epoch seconds: `HH:MM` is the next such local time (22:00 tonight, 06:00
    tomorrow when it is past 06:00 now); an ISO timestamp is taken as it is (local time when it names
    no offset). UsageError naming the forms otherwise."""
    from .errors import UsageError

    now = (now or datetime.now().astimezone()).astimezone()
    value = text.strip()
    try:
        clock = time.fromisoformat(value) if len(value) <= 8 and ":" in value else None
    except ValueError:
        clock = None
    if clock is not None and clock.tzinfo is None:
        # Naive local times made aware by the zone's own rules: right across a daylight-saving change.
        at = datetime.combine(now.date(), clock)
        if at.astimezone() <= now:
            at += timedelta(days=1)
        return at.astimezone().timestamp()
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"--until {text!r}: give a local time HH:MM (the next one: 06:00 stops at six tomorrow morning "
            "when it is later now) or an ISO timestamp such as 2026-12-01T06:00 or 2026-12-01T06:00+09:00"
        ) from None
    if stamp.tzinfo is None:
        stamp = stamp.astimezone()  # local time
    if stamp <= now:
        # A stale date in a crontab would otherwise make every night an empty, green run.
        raise UsageError(
            f"--until {text!r} is already past ({now.isoformat(timespec='minutes')} now): nothing would be sent; "
            "give a later time, or HH:MM for the next such time of day"
        )
    return stamp.timestamp()
