"""The exception tree of batch-ingest and the process exit codes.

::

    BatchIngestError
    ├── UsageError              bad option or setting             exit 2
    │   └── ConfigError         missing/invalid configuration     exit 2
    ├── ManifestError           manifest unreadable or malformed  exit 2
    ├── SourceUnreadable        a row's local file vanished or changed (a row outcome, SOURCE_UNREADABLE)
    ├── MetricsWriteError       --metrics-file not written (metrics.py; a warning: the run's code stands)
    └── ApiError                anything the SmartSTREAM API did (method, path, status, code, message)
        ├── TransientApiError   worth retrying
        │   ├── ApiConnectionError   no answer: connect/read/write failure or timeout
        │   │   │                    (``in_doubt`` when the request may have reached the server)
        │   │   └── MalformedResponse   a 2xx answer that is not what the API documents (in doubt)
        │   ├── RateLimitedError     429, with ``retry_after`` seconds when the server said so
        │   └── ServerError          5xx
        └── PermanentApiError   4xx other than 429: retrying cannot help
            ├── AuthError            401
            ├── NotFoundError        404 (JOB_NOT_FOUND, JOB_PROFILE_NOT_FOUND, STORAGE_NOT_FOUND)
            └── EndlessListing       a listing that pages without end (the run aborts, exit 3)

The retry policy keys on TransientApiError versus PermanentApiError and nothing else.
No exception carries request headers, tokens or passwords.
"""

from __future__ import annotations

import contextvars
import errno
import os
import sqlite3
import tempfile
import time
import traceback
from pathlib import Path

from .runfiles import ERROR_LOG

# Exit codes, documented in the README. Mapped from exceptions in one place: ``exit_code_for``.
# 0: every row succeeded (or was skipped, or is held back by a canary run).
EXIT_ROWS_FAILED = 1
EXIT_USAGE = 2
EXIT_ABORTED = 3
EXIT_INTERNAL = 4  # an error we did not foresee (a bug, or the machine failing): traceback in error.log
# Try again later (EX_TEMPFAIL): the run folder is in use by another process, or the rate store does not
# answer. Nothing is wrong with the command and nothing was sent: the same command later succeeds, so an
# engine retries it (a Kubernetes pod failure policy fails the Job on 2).
EXIT_TRY_AGAIN = 75
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # the reader of our output went away (`| head`): 128 + SIGPIPE, as a shell reports it
# The run folder of the command under way, where an internal error's traceback goes.
error_log_folder: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "error_log_folder", default=None
)


class BatchIngestError(Exception):
    """Root of every error batch-ingest raises on purpose."""

    exit_code = EXIT_ABORTED


class UsageError(BatchIngestError):
    """A command-line option or argument is wrong."""

    exit_code = EXIT_USAGE


class RunInUse(UsageError):
    """Another process holds the run folder's lock: try again once it ends (exit 75, not 2)."""

    exit_code = EXIT_TRY_AGAIN


class ConfigError(UsageError):
    """A required setting is missing or a setting has an invalid value."""


class ManifestError(BatchIngestError):
    """The manifest as a whole cannot be used (unreadable, no header, no source column...)."""

    exit_code = EXIT_USAGE


class SourceUnreadable(BatchIngestError):
    """A row's local file could not be read for upload (gone, unreadable, a folder, changed size)."""

    code = "SOURCE_UNREADABLE"


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
        url: str = "",
    ) -> None:
        self.method = method
        self.path = path
        self.url = url  # the whole URL the request went to (set by the client): a doubled /v1 shows
        self.status = status
        self.code = code
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.method} {self.url or self.path}".strip()
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


class MalformedResponse(ApiConnectionError):
    """A 2xx answer whose body is not what the API documents (not JSON, wrong types, too large).

    The server did something, so a create answered this way is in doubt: looked up, never
    blindly sent again."""

    def __init__(self, message: str, **kwargs) -> None:
        super().__init__(message, in_doubt=True, **kwargs)


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


class EndlessListing(PermanentApiError):
    """A paginated listing that never ends (repeats pages, or passes every bound): the API misbehaves."""


class NotFoundError(PermanentApiError):
    """HTTP 404: the job, job profile or storage does not exist."""


def exit_code_for(exc: BaseException) -> int:
    """The process exit code for an exception that ended a command."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, BatchIngestError):
        return exc.exit_code
    return EXIT_ABORTED


def write_error_log(folder: Path | None, exc: BaseException) -> Path:
    """Append `exc`'s traceback to FOLDER/error.log (or a private file in the temp folder when there
    is no folder, or it cannot be written); return the file's path. Never raises."""
    text = f"--- {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} pid {os.getpid()}\n" + "".join(
        traceback.format_exception(exc)
    )
    candidates = [folder / ERROR_LOG] if folder is not None else []
    for path in candidates:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as f:
                f.write(text)
            return path
        except OSError:
            continue
    fd, name = tempfile.mkstemp(prefix="batch-ingest-error-", suffix=".log")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(name)


def first_leaf(exc: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups, or `exc` itself."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


_LOCAL_ERRNOS = {
    errno.ENOSPC: "free some space, then resume the run (`batch-ingest resume RUN_DIR`)",
    errno.EDQUOT: "free some space (disk quota), then resume the run",
    errno.EACCES: "check the permissions of that path (or choose another with --report-dir)",
    errno.EPERM: "check the permissions of that path (or choose another with --report-dir)",
    errno.EROFS: "the file system is read-only: choose another folder with --report-dir",
}


def local_state_problem(exc: BaseException) -> str | None:
    """A message naming the fix when `exc` is the machine's state (disk, permissions, a damaged
    journal, a bad path) rather than a bug; None otherwise."""
    exc = first_leaf(exc)
    if isinstance(exc, sqlite3.DatabaseError):
        return (
            f"the run's journal cannot be used ({exc}): it is damaged, not a batch-ingest journal, or not "
            "writable; check the run folder's permissions and free space, or start a new run"
        )
    if isinstance(exc, OSError) and exc.errno in _LOCAL_ERRNOS:
        where = f" {exc.filename}" if exc.filename else ""
        return f"cannot write{where}: {exc.strerror}: {_LOCAL_ERRNOS[exc.errno]}"
    if isinstance(exc, ValueError) and "null byte" in str(exc):
        return (
            "a path contains a NUL byte: check the file names given on the command line and in the manifest"
        )
    return None
