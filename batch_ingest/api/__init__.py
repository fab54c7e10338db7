"""The SmartSTREAM Ingest API client."""

from .auth import Auth
from .client import SmartStreamClient
from .models import EncodeStatusMap, Job, JobProfile, Page
from .ratelimit import RateLimiter, parse_retry_after

__all__ = [
    "Auth",
    "EncodeStatusMap",
    "Job",
    "JobProfile",
    "Page",
    "RateLimiter",
    "SmartStreamClient",
    "parse_retry_after",
]
