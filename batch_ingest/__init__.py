"""batch-ingest: bulk ingest of video libraries into SmartSTREAM.

The library behind the `batch-ingest` command::

    from batch_ingest import resolve_settings, run_manifest
    result = run_manifest("videos.csv", resolve_settings())
    result.report  # a polars DataFrame, one row per manifest row
"""

__version__ = "0.1.0"

from .api import EncodeStatusMap, Job, JobProfile, RateLimiter, SmartStreamClient
from .errors import (
    ApiError,
    BatchIngestError,
    ConfigError,
    ManifestError,
    PermanentApiError,
    RunAborted,
    TransientApiError,
)
from .plan import Plan, plan_manifest
from .report import read_report
from .resume import resume_run, resume_run_async, retry_run, retry_run_async
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
    "RunAborted",
    "RunOptions",
    "RunResult",
    "Settings",
    "SmartStreamClient",
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
]
