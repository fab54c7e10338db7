"""The exception tree of batch-ingest and the process exit codes.

::

    BatchIngestError
    ├── UsageError              bad option or setting             exit 2
    │   └── ConfigError         missing/invalid configuration     exit 2
    ├── ManifestError           manifest unreadable or malformed  exit 2
    ├── RunAborted              the run stopped itself            exit 3
    └── ApiError                anything the SmartSTREAM API did (method, path, status, code, message)
        ├── TransientApiError   worth retrying
        │   ├── ApiConnectionError   no answer: connect/read/write failure or timeout
        │   │                        (``in_doubt`` when the request may have reached the server)
        │   ├── RateLimitedError     429, with ``retry_after`` seconds when the server said so
        │   └── ServerError          5xx
        └── PermanentApiError   4xx other than 429: retrying cannot help
            ├── AuthError            401
            └── NotFoundError        404 (JOB_NOT_FOUND, JOB_PROFILE_NOT_FOUND, STORAGE_NOT_FOUND)

The retry policy keys on TransientApiError versus PermanentApiError and nothing else.
No exception carries request headers, tokens or passwords.
"""

from __future__ import annotations

# Exit codes, documented in the README. Mapped from exceptions in one place: ``exit_code_for``.
EXIT_OK = 0
EXIT_ROWS_FAILED = 1
EXIT_USAGE = 2
EXIT_ABORTED = 3
EXIT_INTERRUPTED = 130


class BatchIngestError(Exception):
    """Root of every error batch-ingest raises on purpose."""

    exit_code = EXIT_ABORTED


class UsageError(BatchIngestError):
    """A command-line option or argument is wrong."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A required setting is missing or a setting has an invalid value."""


class ManifestError(BatchIngestError):
    """The manifest as a whole cannot be used (unreadable, no header, no source column...)."""

    exit_code = EXIT_USAGE


class RunAborted(BatchIngestError):
    """The run stopped before finishing: authentication failed, API unreachable, too many failures."""

    exit_code = EXIT_ABORTED


class ApiError(BatchIngestError):
    """A failed call to the SmartSTREAM API."""

    def __init__(
        self,
        message: str,
        *,
        method: str = "",
        path: str = "",
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.code = code
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.method} {self.path}".strip()
        status = f"HTTP {self.status}" if self.status is not None else "no answer"
        code = f" {self.code}" if self.code else ""
        return f"{where}: {status}{code}: {self.message}" if where else f"{status}{code}: {self.message}"


class TransientApiError(ApiError):
    """A failure that may go away on its own: retry with backoff."""


class ApiConnectionError(TransientApiError):
    """No HTTP answer arrived. ``in_doubt`` is True when the request may have reached the server."""

    def __init__(self, message: str, *, in_doubt: bool, **kwargs) -> None:
        self.in_doubt = in_doubt
        super().__init__(message, **kwargs)


class RateLimitedError(TransientApiError):
    """HTTP 429. ``retry_after`` is the wait in seconds the server asked for, if it asked."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kwargs)


class ServerError(TransientApiError):
    """HTTP 5xx."""


class PermanentApiError(ApiError):
    """HTTP 4xx other than 429: the request itself is wrong; do not retry."""


class AuthError(PermanentApiError):
    """HTTP 401: the API key or token was refused."""


class NotFoundError(PermanentApiError):
    """HTTP 404: the job, job profile or storage does not exist."""


def exit_code_for(exc: BaseException) -> int:
    """The process exit code for an exception that ended a command."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, BatchIngestError):
        return exc.exit_code
    return EXIT_ABORTED
