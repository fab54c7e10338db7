"""`batch-ingest emulator` in a child process of its own, for tests and benchmarks that want the
emulator's CPU, memory and event loop apart from their own."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from .server import free_port

STARTUP_TIMEOUT_S = 30.0


class EmulatorProcess:
    """`batch-ingest emulator --port PORT ARGS...` on a free loopback port. Use as a context manager.

    `proc.stdout` carries the printed `export ...` lines (pass `stdout=subprocess.DEVNULL` to drop them).
    """

    def __init__(
        self,
        *args: str,
        stdout: int | IO[Any] | None = subprocess.PIPE,
        cwd: str | Path | None = None,
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
    ) -> None:
        self.args = args
        self.port = free_port()
        self._stdout = stdout
        self._cwd = cwd
        self._startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        """Base URL of the API, e.g. http://127.0.0.1:8123."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self) -> EmulatorProcess:
        """Start the process; return once its port accepts connections (RuntimeError if it never does)."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "batch_ingest", "emulator", "--port", str(self.port), *self.args],
            stdout=self._stdout,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self._cwd,
        )
        deadline = time.monotonic() + self._startup_timeout_s
        while True:
            if self.proc.poll() is not None:
                errors = self.proc.stderr.read()[-2000:] if self.proc.stderr else ""
                raise RuntimeError(f"the emulator exited early: {errors}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("the emulator did not start listening in time") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Terminate the process (kill it if it does not end within 10 s) and close its pipes."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
