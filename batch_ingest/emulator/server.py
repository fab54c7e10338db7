"""Serving the emulator with uvicorn: in the foreground (the CLI) or in a background thread."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import Any

import httpx
import uvicorn

from .app import create_app
from .faults import DroppedConnection
from .store import EmulatorConfig, Store

STARTUP_TIMEOUT_S = 15.0


class _HideInjectedDrops(logging.Filter):
    """uvicorn logs a traceback for every injected dropped connection: they are on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DroppedConnection)


def _uvicorn_config(app: Any, host: str, port: int, log_level: str) -> uvicorn.Config:
    logging.getLogger("uvicorn.error").addFilter(_HideInjectedDrops())
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        timeout_keep_alive=30,
        date_header=False,  # the app stamps Date from the emulator's clock
        # Large uploads arrive as a stream; nothing in uvicorn needs a size cap here.
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmulatorServer:
    """The emulator on a real socket, in a background thread. Use as a context manager."""

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
    ) -> None:
        self.config = config or EmulatorConfig()
        self.app = create_app(self.config)
        self.host = host
        self.port = port or free_port(host)
        self._server = uvicorn.Server(_uvicorn_config(self.app, self.host, self.port, log_level))
        self._thread: threading.Thread | None = None

    @property
    def store(self) -> Store:
        """The emulator's state (lock it while reading)."""
        return self.app.state.store

    @property
    def url(self) -> str:
        """Base URL of the API, e.g. http://127.0.0.1:8123."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> EmulatorServer:
        """Start serving; returns once the socket accepts connections."""
        self._thread = threading.Thread(target=self._server.run, name="emulator", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the emulator did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        """GET /_emulator/stats over the socket."""
        return self._get("/_emulator/stats")

    def jobs(self) -> list[dict[str, Any]]:
        """GET /_emulator/jobs over the socket."""
        return self._get("/_emulator/jobs")["jobs"]

    def wait_for_sources(self, timeout: float = 60.0) -> bool:
        """With `fetch_sources`: wait until every source fetch and upload probe has settled its job
        (False if `timeout` passed first). Without it there is nothing to wait for."""
        fetcher = self.app.state.fetcher
        return fetcher is None or fetcher.wait_idle(timeout)

    def _get(self, path: str) -> Any:
        # Plain http on loopback: verify=False spares building a TLS context (loading the CA bundle).
        return httpx.get(f"{self.url}{path}", timeout=60, trust_env=False, verify=False).json()

    def env(self) -> dict[str, str]:
        """The SMARTSTREAM_* settings that point a client at this emulator."""
        return env_for(self.config, self.url)


def env_for(config: EmulatorConfig, url: str) -> dict[str, str]:
    """SMARTSTREAM_* variables for an emulator at `url` (static token)."""
    return {
        "SMARTSTREAM_API_URL": url,
        "SMARTSTREAM_MERCHANT_ID": config.merchant_id,
        "SMARTSTREAM_API_KEY": config.api_key,
        "SMARTSTREAM_TOKEN": config.token,
    }


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on host:port (port 0: a free one). Raises OSError when taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only when the protocol says
    # TCP, and without it every answer waits ~40 ms on Nagle and the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def serve_forever(config: EmulatorConfig, sock: socket.socket, log_level: str = "info") -> None:
    """Serve on a bound socket in the foreground until interrupted (`batch-ingest emulator`)."""
    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(_uvicorn_config(create_app(config), host, port, log_level))
    asyncio.run(server.serve(sockets=[sock]))


# The emulator behind `run --emulator`: the platform's default rate limit, quick encodes, and
# sources that fail on purpose so a rehearsal shows every kind of outcome.
RUN_CONFIG = EmulatorConfig(
    queue_seconds=0.5, encode_seconds=2.0, jitter=0.5, rate_limit=50, storage_missing_for=("no-storage",)
)
