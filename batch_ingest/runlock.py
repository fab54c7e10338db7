"""One process per run folder: an OS file lock held for the whole `run`, `resume` or `retry`.

`flock` on `RUN_DIR/run.lock`: the kernel releases it when the process ends, however it ends
(kill -9 included), so a lock is never stale. The holder writes its PID into the file so that
a second process can name it. The lock file is the only file a process that finds nothing to
do may touch, and it does not even write its PID then.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import RunInUse, UsageError
from .runfiles import LOCK_FILE


class RunLock:
    """An exclusive, non-blocking lock on one run folder."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock, or raise RunInUse (exit 75) naming the process that holds it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise UsageError(f"cannot lock the run folder {self.run_dir}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"process {holder}" if holder else "another process"
            raise RunInUse(
                f"{self.run_dir} is in use by {who} (batch-ingest run, resume, retry or collect): "
                "one process per run folder; wait for it to end or stop it, then try again"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise UsageError(f"cannot lock the run folder {self.run_dir}: {exc.strerror}") from None
        self._fd = fd
        return self

    def write_pid(self) -> None:
        """Record this process as the holder (for the message a second process prints)."""
        if self._fd is None:
            return
        data = f"{os.getpid()}\n".encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        """Let go of the lock (the kernel would at exit anyway)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def locked(*run_dirs: Path, write_pid: bool = True) -> Iterator[list[RunLock]]:
    """Hold the locks of every folder in `run_dirs` (in the order given) for the block."""
    locks: list[RunLock] = []
    try:
        for run_dir in run_dirs:
            locks.append(RunLock(run_dir).acquire())
            if write_pid:
                locks[-1].write_pid()
        yield locks
    finally:
        for lock in reversed(locks):
            lock.release()


def make_private(run_dir: Path) -> None:
    """The run folder is its user's alone (0700), whatever the umask: nothing in it is readable by
    others, since they cannot enter it."""
    try:
        os.chmod(run_dir, 0o700)
    except OSError as exc:
        raise UsageError(f"cannot make the run folder {run_dir} private: {exc.strerror}") from None
