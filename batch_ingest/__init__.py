"""batch-ingest: bulk ingest of video libraries into SmartSTREAM.

The library behind the `batch-ingest` command::

    from batch_ingest import resolve_settings, run_manifest
    result = run_manifest("videos.csv", resolve_settings())
    result.report  # a polars DataFrame, one row per manifest row

The names below load on first use (PEP 562): `import batch_ingest` (and with it the command line,
which starts with `--help` in a fraction of a second) does not load polars or httpx until a name
that needs them is asked for.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .api import EncodeStatusMap, Job, JobProfile, RateLimiter, SmartStreamClient
    from .errors import (
        ApiError,
        BatchIngestError,
        ConfigError,
        ManifestError,
        PermanentApiError,
        TransientApiError,
    )
    from .plan import Plan, plan_manifest
    from .report import Summary, read_report
    from .resume import resume_run, resume_run_async
    from .retry import retry_run, retry_run_async
    from .runner import RunOptions, RunResult, run_manifest, run_manifest_async
    from .settings import Settings, resolve_settings

__all__ = [
    "ApiError",
    "BatchIngestError",
    "ConfigError",
    "EncodeStatusMap",
    "Job",
    "JobProfile",
    "ManifestError",
    "PermanentApiError",
    "Plan",
    "RateLimiter",
    "RunOptions",
    "RunResult",
    "Settings",
    "SmartStreamClient",
    "Summary",
    "TransientApiError",
    "__version__",
    "plan_manifest",
    "read_report",
    "resolve_settings",
    "resume_run",
    "resume_run_async",
    "retry_run",
    "retry_run_async",
    "run_manifest",
    "run_manifest_async",
    "send_notification",
    "status_of",
    "write_metrics",
]

# Each public name and the module that holds it.
_LAZY = {
    **dict.fromkeys(["EncodeStatusMap", "Job", "JobProfile", "RateLimiter", "SmartStreamClient"], ".api"),
    **dict.fromkeys(
        [
            "ApiError",
            "BatchIngestError",
            "ConfigError",
            "ManifestError",
            "PermanentApiError",
            "TransientApiError",
        ],
        ".errors",
    ),
    **dict.fromkeys(["Plan", "plan_manifest"], ".plan"),
    **dict.fromkeys(["Summary", "read_report"], ".report"),
    **dict.fromkeys(["resume_run", "resume_run_async"], ".resume"),
    **dict.fromkeys(["retry_run", "retry_run_async"], ".retry"),
    **dict.fromkeys(["RunOptions", "RunResult", "run_manifest", "run_manifest_async"], ".runner"),
    **dict.fromkeys(["Settings", "resolve_settings"], ".settings"),
    "send_notification": ".notify",
    "write_metrics": ".metrics",
    "status_of": ".status",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # the next look-up is an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
