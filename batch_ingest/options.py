"""How to run a manifest: the options of `run`, `resume` and `retry` (the settings say how to reach the API)."""

from __future__ import annotations

from dataclasses import dataclass
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

    run_dir: Path | None = None  # the run's folder; default reports/<run-id>/
    fmt: str | None = None
    default_profile: str | None = None
    max_failures: int | None = None
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

    def __post_init__(self) -> None:
        if self.skip_existing is not None and not isinstance(self.skip_existing, SkipExisting):
            object.__setattr__(self, "skip_existing", SkipExisting(self.skip_existing))  # "any" from a caller
