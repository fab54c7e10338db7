"""The SmartSTREAM Ingest API client. It takes plain values and imports nothing of the layers above.

The names below load on first use (PEP 562), so that `settings.py` can import `api.models` and
`api.secret` without loading httpx.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .auth import Auth
    from .client import SmartStreamClient
    from .models import EncodeStatusMap, Job, JobProfile, Page
    from .ratelimit import RateLimiter, parse_retry_after
    from .secret import Secret

__all__ = [
    "Auth",
    "EncodeStatusMap",
    "Job",
    "JobProfile",
    "Page",
    "RateLimiter",
    "Secret",
    "SmartStreamClient",
    "parse_retry_after",
]

_LAZY = {
    "Auth": ".auth",
    "EncodeStatusMap": ".models",
    "Job": ".models",
    "JobProfile": ".models",
    "Page": ".models",
    "RateLimiter": ".ratelimit",
    "Secret": ".secret",
    "SmartStreamClient": ".client",
    "parse_retry_after": ".ratelimit",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
